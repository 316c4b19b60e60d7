"""The outbox: agent replies, recorded exactly once and delivered to a sink.

A reply is keyed by (job, attempt, position), where position is the line's
number in the attempt's output.  Reading the same output twice (after a
reclaim, or a crash between reading and recording) records nothing twice.
Delivery is a separate step with its own retries: a reply is marked
delivered only after its sink accepted it, and undelivered replies survive
restarts.  Output is recorded by :meth:`moorage.queue.Queue.record_output`,
which also acts on the agent's signals in the same transaction.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from moorage.clock import Clock, SystemClock
from moorage.models import Job
from moorage.store import Database
from moorage.store import queries as q

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reply:
    id: int
    job_id: int
    attempt: int
    position: int  # line number in the attempt's output; -1 for a failure notice
    group_id: str
    chat_jid: str | None
    kind: str  # "reply", or "failed" when the job failed for good
    text: str
    created_at: float
    tries: int
    delivered_at: float | None = None

    def idempotency_key(self, install: str) -> str:
        """Stable across restarts and retries: a receiver drops repeats by it."""
        return f"{install[:12]}-{self.job_id}-{self.attempt}-{self.position}"

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "job_id": self.job_id,
            "attempt": self.attempt,
            "position": self.position,
            "group_id": self.group_id,
            "chat_jid": self.chat_jid,
            "kind": self.kind,
            "text": self.text,
            "created_at": self.created_at,
            "delivered_at": self.delivered_at,
        }


def parse_line(line: str) -> dict[str, Any] | None:
    """The JSON object an output line carries, or None for a log line."""
    stripped = line.strip()
    if not stripped.startswith("{"):
        return None
    try:
        document = json.loads(stripped)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def parse_reply(line: str) -> str | None:
    """The reply text of an output line, or None if the line is not a reply.

    A reply is a JSON object ``{"type": "reply", "text": "..."}``; every other
    line is log output of the agent (or one of the signals below).
    """
    document = parse_line(line)
    if document is None or document.get("type") != "reply":
        return None
    text = document.get("text")
    return text if isinstance(text, str) else None


@dataclass(frozen=True)
class Signal:
    """A line in which the agent tells moorage about its state:
    ``{"type": "received", "id": 42}`` (it took follow-up 42 from its inbox)
    or ``{"type": "idle"}`` (it answered everything it took)."""

    kind: str  # "received" or "idle"
    position: int
    job_id: int | None = None


def parse_signal(line: str, position: int) -> Signal | None:
    document = parse_line(line)
    if document is None:
        return None
    kind = document.get("type")
    if kind == "idle":
        return Signal("idle", position)
    job = document.get("id")
    if kind == "received" and isinstance(job, int) and not isinstance(job, bool):
        return Signal("received", position, job)
    return None


def write_output(
    conn: sqlite3.Connection, job: Job, start: int, lines: Iterable[str], now: float
) -> tuple[int, list[Signal]]:
    """Inside the caller's transaction: record the reply lines among
    ``lines`` (output lines ``start``… of the job's current attempt) and
    advance the read position.  Returns the number of replies newly recorded
    and the signals found, in output order."""
    params = []
    signals = []
    end = start
    for end, line in enumerate(lines, start=start + 1):
        text = parse_reply(line)
        if text is None:
            signal = parse_signal(line, end - 1)
            if signal is not None:
                signals.append(signal)
            continue
        params.append(
            {
                "job_id": job.id,
                "attempt": job.attempt,
                "position": end - 1,
                "group_id": job.group_id,
                "chat_jid": job.chat_jid,
                "kind": "reply",
                "text": text,
                "now": now,
            }
        )
    if end == start:
        return 0, []
    before = conn.total_changes
    conn.executemany(q.INSERT_REPLY, params)
    added = conn.total_changes - before
    conn.execute(
        q.ADVANCE_OUTPUT, {"job_id": job.id, "attempt": job.attempt, "position": end}
    )
    if added:
        logger.debug(
            "recorded %d replies of job %d attempt %d",
            added,
            job.id,
            job.attempt,
            extra={"action": "reply", "job": job.id, "attempt": job.attempt},
        )
    return added, signals


class Outbox:
    def __init__(self, db: Database, clock: Clock | None = None) -> None:
        self.db = db
        self.clock = clock or SystemClock()

    def position(self, job: Job) -> int:
        """How many output lines of the job's current attempt are recorded."""
        with self.db.reading() as conn:
            row = conn.execute(
                q.OUTPUT_POSITION, {"job_id": job.id, "attempt": job.attempt}
            ).fetchone()
        return 0 if row is None else int(row[0])

    def due(self, limit: int = 100) -> list[Reply]:
        with self.db.reading() as conn:
            rows = conn.execute(
                q.DUE_REPLIES, {"now": self.clock.now(), "limit": limit}
            ).fetchall()
        return [Reply(*row) for row in rows]

    def mark_delivered(self, reply: Reply) -> None:
        with self.db.transaction() as conn:
            conn.execute(q.MARK_DELIVERED, {"id": reply.id, "now": self.clock.now()})

    def mark_undelivered(self, reply: Reply, error: str, retry_in: float) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                q.MARK_UNDELIVERED,
                {
                    "id": reply.id,
                    "error": error[:500],
                    "next_try_at": self.clock.now() + retry_in,
                },
            )

    def undelivered(self) -> int:
        with self.db.reading() as conn:
            (count,) = conn.execute(q.COUNT_UNDELIVERED).fetchone()
        return int(count)

    def for_job(self, job_id: int) -> list[Reply]:
        with self.db.reading() as conn:
            rows = conn.execute(q.JOB_REPLIES, {"job_id": job_id}).fetchall()
        return [Reply(*row) for row in rows]

    def replies_per_minute(self, minutes: int) -> list[int]:
        """Replies recorded (not delivered) in each of the last ``minutes``
        whole minutes, the current minute first; failure notices excluded."""
        now = self.clock.now()
        counts = [0] * minutes
        with self.db.reading() as conn:
            rows = conn.execute(
                q.REPLIES_PER_MINUTE, {"now": now, "since": now - 60 * minutes}
            ).fetchall()
        for minute, count in rows:
            if 0 <= minute < minutes:
                counts[minute] += count
        return counts
