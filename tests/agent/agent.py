"""moorage test agent for the process runtime: the Python twin of agent.sh.

Behaviour is driven by the "text" of every message in the input document, in
order; see docs/runtimes.md ("The test agent") for the grammar.  Like the shell
agent, it takes text values in their JSON-escaped form straight from the
compact input moorage writes and prints them back in that form, so both
agents produce the same bytes for the same input.

With ``converse=N`` it then talks: it prints ``{"type":"idle"}`` and polls the
inbox for ``message-*.json`` files (name order, each once), printing
``{"type":"received","id":ID}`` before running the directives of each and
``{"type":"idle"}`` after; ``close.json`` ends it with 0 (unless
``close=ignore``), and so does N seconds without a new message (0 = no limit).
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

_TEXT_RE = re.compile(r'"text":"((?:[^"\\]|\\.)*)"')
_ID_RE = re.compile(r'"id":([0-9]+)')
_POLL = 0.05


@dataclass
class _Agent:
    inbox: Path
    converse: int | None = None  # seconds without a message; None = no talk
    ignore_close: bool = False


def _out(line: str, end: str = "\n") -> None:
    sys.stdout.write(line + end)
    sys.stdout.flush()


def _number(value: str) -> bool:
    return value.isascii() and value.isdigit()


def _run(directive: str, agent: _Agent) -> None:
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
    elif key == "lines" and _number(value):
        for i in range(1, int(value) + 1):
            _out(f'{{"type":"reply","text":"line {i}"}}')
    elif key == "sleep":
        with contextlib.suppress(ValueError):  # not a number: ignored
            time.sleep(float(value))
    elif key == "exit" and _number(value):
        sys.exit(int(value) & 0xFF)
    elif key == "await" and value and not value.startswith(".") and "/" not in value:
        path = agent.inbox / value
        while not path.is_file():
            time.sleep(_POLL)
        document = path.read_text()
        _out(f'{{"type":"inbox","name":"{value}","document":{document}}}')
    elif key == "converse" and _number(value):
        agent.converse = int(value)
    elif key == "close" and value == "ignore":
        agent.ignore_close = True


def _run_texts(raw: str, agent: _Agent) -> None:
    for line in raw.splitlines():
        for match in _TEXT_RE.finditer(line):
            for directive in match.group(1).split(";"):
                _run(directive, agent)


def _take(path: Path, agent: _Agent) -> None:
    raw = path.read_text()
    found = _ID_RE.search(raw)
    if found is None:
        return
    _out(f'{{"type":"received","id":{found.group(1)}}}')
    _run_texts(raw, agent)
    _out('{"type":"idle"}')


def _messages(inbox: Path) -> list[Path]:
    try:
        names = sorted(os.listdir(inbox))
    except FileNotFoundError:
        return []
    return [
        inbox / name
        for name in names
        if fnmatch.fnmatchcase(name, "message-*.json") and (inbox / name).is_file()
    ]


def _talk(agent: _Agent) -> None:
    _out('{"type":"idle"}')
    seen: set[str] = set()
    last = time.monotonic()
    while True:
        # close.json is looked for first, so every message delivered before
        # it is seen by the scan below and taken before the agent leaves.
        closing = (agent.inbox / "close.json").is_file()
        for path in _messages(agent.inbox):
            if path.name not in seen:
                seen.add(path.name)
                last = time.monotonic()
                _take(path, agent)
        if closing and not agent.ignore_close:
            return
        limit = agent.converse or 0
        if limit > 0 and time.monotonic() - last >= limit:
            return
        time.sleep(_POLL)


def main() -> int:
    source = Path(os.environ.get("MOORAGE_INPUT", "/moorage/input.json"))
    agent = _Agent(Path(os.environ.get("MOORAGE_INBOX", "/moorage/in")))
    _run_texts(source.read_text(), agent)
    if agent.converse is not None:
        _talk(agent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
