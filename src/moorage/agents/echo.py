"""The built-in echo agent: ``python -m moorage.agents.echo``.

Reads the input document named by ``MOORAGE_INPUT`` (default
``/moorage/input.json``) and prints one reply line per message,
``{"type": "reply", "text": "echo: <text>"}``.  The document is either a
batch, ``{"job", "attempt", "group", "messages": [{"id", "chat_jid", "kind",
"text"}, ...]}``, or a single job with those fields at the top level.

Then it converses: it prints ``{"type": "idle"}`` and answers every
``message-*.json`` that arrives in the inbox (``MOORAGE_INBOX``, default
``/moorage/in``), in name order, with ``{"type": "received", "id": <id>}``,
the reply and ``{"type": "idle"}`` again.  It exits 0 when ``close.json``
appears (after answering the messages that came before it) or after
``MOORAGE_ECHO_LINGER`` seconds (default 60) without a new message;
``MOORAGE_ECHO_LINGER=0`` makes it exit right after the input, as a one-shot
agent.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: Seconds without a new message after which the agent leaves by itself.
DEFAULT_LINGER = 60.0
_POLL = 0.05


def messages(document: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The messages of a batch, or the single job as a one-message batch."""
    batch = document.get("messages")
    if isinstance(batch, list):
        return [m for m in batch if isinstance(m, Mapping)]
    return [document]


def linger_from(environ: Mapping[str, str]) -> float:
    """``MOORAGE_ECHO_LINGER`` in seconds; ValueError if it is not a finite
    number of at least 0."""
    raw = environ.get("MOORAGE_ECHO_LINGER", "").strip()
    if not raw:
        return DEFAULT_LINGER
    linger = float(raw)
    if not math.isfinite(linger) or linger < 0:
        raise ValueError(raw)
    return linger


def _print(line: Mapping[str, Any]) -> None:
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


def _answer(message: Mapping[str, Any]) -> None:
    text = message.get("text")
    if isinstance(text, str):
        _print({"type": "reply", "text": f"echo: {text}"})


def _take(path: Path) -> None:
    """Answer one inbox message; a file that is not one is skipped."""
    try:
        message = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"echo: skipping {path.name}: {exc}\n")
        return
    ident = message.get("id") if isinstance(message, Mapping) else None
    if not isinstance(ident, int) or isinstance(ident, bool):
        sys.stderr.write(f"echo: skipping {path.name}: no message id\n")
        return
    _print({"type": "received", "id": ident})
    _answer(message)
    _print({"type": "idle"})


def _new_messages(inbox: Path, seen: set[str]) -> list[Path]:
    try:
        names = sorted(os.listdir(inbox))
    except FileNotFoundError:
        return []
    return [
        inbox / name
        for name in names
        if name not in seen and fnmatch.fnmatchcase(name, "message-*.json")
    ]


def converse(inbox: Path, linger: float) -> None:
    """Answer inbox messages until close.json or ``linger`` quiet seconds."""
    _print({"type": "idle"})
    seen: set[str] = set()
    last = time.monotonic()
    while True:
        # Looked for before the scan: every message delivered before
        # close.json is then answered before the agent leaves.
        closing = (inbox / "close.json").is_file()
        for path in _new_messages(inbox, seen):
            seen.add(path.name)
            last = time.monotonic()
            _take(path)
        if closing or time.monotonic() - last >= linger:
            return
        time.sleep(_POLL)


def main() -> int:
    try:
        linger = linger_from(os.environ)
    except ValueError as exc:
        sys.stderr.write(f"echo: MOORAGE_ECHO_LINGER is not seconds: {exc}\n")
        return 2
    path = Path(os.environ.get("MOORAGE_INPUT", "/moorage/input.json"))
    document = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(document, Mapping):
        sys.stderr.write("echo: the input document is not a JSON object\n")
        return 2
    for message in messages(document):
        _answer(message)
    sys.stdout.flush()
    if linger > 0:
        converse(Path(os.environ.get("MOORAGE_INBOX", "/moorage/in")), linger)
    return 0


if __name__ == "__main__":
    sys.exit(main())
