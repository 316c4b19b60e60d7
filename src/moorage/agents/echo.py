"""The built-in echo agent: ``python -m moorage.agents.echo``.

Reads the input document named by ``MOORAGE_INPUT`` (default
``/moorage/input.json``) and prints one reply line per message,
``{"type": "reply", "text": "echo: <text>"}``, then exits 0.  The document is
either a batch, ``{"job", "attempt", "group", "messages": [{"id", "chat_jid",
"kind", "text"}, ...]}``, or a single job with those fields at the top level.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def messages(document: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The messages of a batch, or the single job as a one-message batch."""
    batch = document.get("messages")
    if isinstance(batch, list):
        return [m for m in batch if isinstance(m, Mapping)]
    return [document]


def main() -> int:
    path = Path(os.environ.get("MOORAGE_INPUT", "/moorage/input.json"))
    document = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(document, Mapping):
        sys.stderr.write("echo: the input document is not a JSON object\n")
        return 2
    for message in messages(document):
        text = message.get("text")
        if isinstance(text, str):
            reply = {"type": "reply", "text": f"echo: {text}"}
            sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
