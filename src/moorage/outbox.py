"""The outbox: agent replies, recorded exactly once and delivered to a sink.

A reply is keyed by (job, attempt, position), where position is the line's
number in the attempt's output.  Reading the same output twice (after a
reclaim, or a crash between reading and recording) records nothing twice.
Delivery is a separate step with its own retries: a reply is marked
delivered only after its sink accepted it, and undelivered replies survive
restarts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass

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


def parse_reply(line: str) -> str | None:
    """The reply text of an output line, or None if the line is not a reply.

    A reply is a JSON object ``{"type": "reply", "text": "..."}``; every other
    line is log output of the agent.
    """
    stripped = line.strip()
    if not stripped.startswith("{"):
        return None
    try:
        document = json.loads(stripped)
    except ValueError:
        return None
    if not isinstance(document, dict) or document.get("type") != "reply":
        return None
    text = document.get("text")
    return text if isinstance(text, str) else None


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

    def record(self, job: Job, start: int, lines: Iterable[str]) -> int:
        """Record the reply lines among ``lines`` (output lines ``start``… of
        the job's current attempt) and advance the read position, in one
        transaction.  Returns the number of replies newly recorded."""
        params = []
        end = start
        for end, line in enumerate(lines, start=start + 1):
            text = parse_reply(line)
            if text is not None:
                params.append(
                    {
                        "job_id": job.id,
                        "attempt": job.attempt,
                        "position": end - 1,
                        "group_id": job.group_id,
                        "chat_jid": job.chat_jid,
                        "kind": "reply",
                        "text": text,
                    }
                )
        if end == start:
            return 0
        with self.db.transaction() as conn:
            now = self.clock.now()
            before = conn.total_changes
            conn.executemany(q.INSERT_REPLY, [dict(p, now=now) for p in params])
            added = conn.total_changes - before
            conn.execute(
                q.ADVANCE_OUTPUT,
                {"job_id": job.id, "attempt": job.attempt, "position": end},
            )
        if added:
            logger.debug(
                "recorded %d replies of job %d attempt %d",
                added,
                job.id,
                job.attempt,
                extra={"action": "reply", "job": job.id, "attempt": job.attempt},
            )
        return added

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
