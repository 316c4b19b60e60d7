"""Log output for the command line (library modules only create loggers).

``configure_logging`` installs one handler on the root logger, writing to
stderr, as plain text or as one JSON object per line.  Calling it again
replaces the handler it installed before, so it is safe to call per command.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Literal

from moorage.errors import ConfigError

LogFormat = Literal["text", "json"]

#: The structured ``extra`` keys moorage's modules log with, in output order.
EXTRA_KEYS = ("action", "job", "group", "attempt", "container")

LEVELS = ("debug", "info", "warning", "error", "critical")

_handler: logging.Handler | None = None


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {key: getattr(record, key) for key in EXTRA_KEYS if hasattr(record, key)}


class TextFormatter(logging.Formatter):
    """``time level logger: message [key=value ...]``"""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = _extras(record)
        if not extras:
            return line
        # The exception text, if any, follows the first line; keep keys on it.
        first, sep, rest = line.partition("\n")
        pairs = " ".join(f"{key}={value}" for key, value in extras.items())
        return f"{first} [{pairs}]{sep}{rest}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger,
    message, the structured keys present, and ``exc`` for a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_extras(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=True)


def configure_logging(level: str | int = "warning", fmt: LogFormat = "text") -> None:
    """Send log records at ``level`` and above to stderr in format ``fmt``.

    Raises :class:`ConfigError` for an unknown level or format.
    """
    global _handler

    if isinstance(level, str):
        if level.lower() not in LEVELS:
            raise ConfigError(f"log level must be one of {', '.join(LEVELS)}")
        number = logging.getLevelName(level.upper())
    else:
        number = level
    if fmt == "text":
        formatter: logging.Formatter = TextFormatter()
    elif fmt == "json":
        formatter = JsonFormatter()
    else:
        raise ConfigError(f"log format must be text or json, not {fmt!r}")

    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    # Bound to the current stderr, which a test runner may have replaced.
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(formatter)
    root.addHandler(_handler)
    root.setLevel(number)
