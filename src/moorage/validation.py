"""Checks on everything that comes in from outside, before anything is stored.

Each check returns the normalised value or raises InvalidInput with a message
that names the field and the rule.
"""

from __future__ import annotations

import math
import re
import unicodedata

from moorage.errors import InvalidInput

MAX_GROUP_ID_CHARS = 128
MAX_CHAT_JID_CHARS = 256
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024

_JID_RE = re.compile(r"^[A-Za-z0-9._:@+\-]+$")


def _has_control_or_unprintable(text: str) -> bool:
    if text.isascii():
        # The common case, without a look-up per character: ASCII's only
        # unprintable characters are its controls (category Cc).
        return not text.isprintable()
    # Categories C* are control, format, surrogate, private-use and unassigned
    # characters; Z[lp] are line and paragraph separators.
    return any(
        unicodedata.category(ch)[0] == "C" or unicodedata.category(ch) in ("Zl", "Zp")
        for ch in text
    )


def group_id(value: object) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"group id must be text, got {type(value).__name__}")
    if not value or not value.strip():
        raise InvalidInput("group id must not be empty")
    if len(value) > MAX_GROUP_ID_CHARS:
        raise InvalidInput(f"group id is longer than {MAX_GROUP_ID_CHARS} characters")
    if value != value.strip():
        raise InvalidInput("group id must not start or end with white space")
    if _has_control_or_unprintable(value):
        raise InvalidInput("group id must be printable (no control characters)")
    return value


def chat_jid(value: object) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"chat_jid must be text, got {type(value).__name__}")
    if len(value) > MAX_CHAT_JID_CHARS:
        raise InvalidInput(f"chat_jid is longer than {MAX_CHAT_JID_CHARS} characters")
    if not _JID_RE.match(value):
        raise InvalidInput(
            "chat_jid may hold only letters, digits and . _ : @ + - (like 12345@g.us)"
        )
    return value


def message_text(value: object, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"message text must be text, got {type(value).__name__}")
    size = len(value.encode("utf-8", errors="surrogatepass"))
    if size > max_bytes:
        raise InvalidInput(f"message text is {size} bytes; the limit is {max_bytes}")
    if "\x00" in value:
        raise InvalidInput("message text must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput(
            "message text is not valid Unicode (lone surrogate)"
        ) from exc
    return value


def seconds(name: str, value: object, *, allow_none: bool = True) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInput(f"{name} must be a number of seconds")
    result = float(value)
    if not math.isfinite(result) or result < 0:
        raise InvalidInput(f"{name} must be a finite, non-negative number of seconds")
    return result


def positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInput(f"{name} must be a positive whole number")
    return value


def job_id(value: object) -> int:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInput(f"job id must be a positive whole number, got {value!r}")
    return value


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def duration(text: str) -> float:
    """Parse '90', '90s', '15m', '24h', '7d', '2w' into seconds."""
    match = _DURATION_RE.match(text)
    if not match:
        raise InvalidInput(f"not a duration: {text!r} (use e.g. 90s, 15m, 24h, 7d)")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2) or "s"]


MAX_IDEMPOTENCY_KEY_CHARS = 200


def idempotency_key(value: object) -> str:
    """A caller's idempotency key: 1-200 printable ASCII characters, no spaces."""
    if not isinstance(value, str):
        raise InvalidInput(f"idempotency key must be text, got {type(value).__name__}")
    if not value or len(value) > MAX_IDEMPOTENCY_KEY_CHARS:
        raise InvalidInput(
            f"idempotency key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters"
        )
    if not all("!" <= ch <= "~" for ch in value):
        raise InvalidInput(
            "idempotency key may hold only printable ASCII characters, no spaces"
        )
    return value
