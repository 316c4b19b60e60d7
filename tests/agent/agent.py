"""moorage test agent for the process runtime: the Python twin of agent.sh.

Behaviour is driven by the "text" of every message in the input document, in
order; see docs/runtimes.md ("The test agent") for the grammar.  Like the shell
agent, it takes text values in their JSON-escaped form straight from the
compact input moorage writes and prints them back in that form, so both
agents produce the same bytes for the same input.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from pathlib import Path

_TEXT_RE = re.compile(r'"text":"((?:[^"\\]|\\.)*)"')


def _out(line: str, end: str = "\n") -> None:
    sys.stdout.write(line + end)
    sys.stdout.flush()


def _run(directive: str, inbox: Path) -> None:
    key, sep, value = directive.strip(" ").partition("=")
    if not sep:
        return
    if key == "reply":
        _out('{"type":"reply","text":"' + value + '"}')
    elif key == "log":
        _out(value)
    elif key == "stderr":
        sys.stderr.write(value + "\n")
        sys.stderr.flush()
    elif key == "partial":
        _out(value, end="")
    elif key == "lines" and value.isascii() and value.isdigit():
        for i in range(1, int(value) + 1):
            _out(f'{{"type":"reply","text":"line {i}"}}')
    elif key == "sleep":
        with contextlib.suppress(ValueError):  # not a number: ignored
            time.sleep(float(value))
    elif key == "exit" and value.isascii() and value.isdigit():
        sys.exit(int(value) & 0xFF)
    elif key == "await" and value and not value.startswith(".") and "/" not in value:
        path = inbox / value
        while not path.is_file():
            time.sleep(0.05)
        document = path.read_text()
        _out(f'{{"type":"inbox","name":"{value}","document":{document}}}')


def main() -> int:
    source = Path(os.environ.get("MOORAGE_INPUT", "/moorage/input.json"))
    inbox = Path(os.environ.get("MOORAGE_INBOX", "/moorage/in"))
    for line in source.read_text().splitlines():
        for match in _TEXT_RE.finditer(line):
            for directive in match.group(1).split(";"):
                _run(directive, inbox)
    return 0


if __name__ == "__main__":
    sys.exit(main())
