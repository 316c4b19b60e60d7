"""The values the queue deals in: statuses, priorities, kinds, jobs, events."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from moorage.errors import InvalidInput


class Status(enum.StrEnum):
    WAITING = "waiting"  # durable and runnable once due; holds its place in its group
    ACTIVE = "active"  # claimed: an attempt is (being) run; at most one per group
    COMPLETED = "completed"  # an attempt exited 0; final
    FAILED = "failed"  # out of retries (or failed for good); `retry` revives it
    CANCELLED = "cancelled"  # withdrawn while waiting; `retry` revives it

    @property
    def is_final(self) -> bool:
        return self in (Status.COMPLETED, Status.FAILED, Status.CANCELLED)


class Priority(enum.IntEnum):
    """Lower value = more urgent; stored as the integer so SQL can order it."""

    HIGH = 0
    NORMAL = 1
    LOW = 2

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, value: str | int | Priority) -> Priority:
        if isinstance(value, Priority):
            return value
        if isinstance(value, str):
            try:
                return cls[value.strip().upper()]
            except KeyError:
                pass
        raise InvalidInput(f"priority must be one of high, normal, low; got {value!r}")


class Kind(enum.StrEnum):
    MESSAGE = "message"  # text a person wrote; the reply goes to chat_jid
    TASK = "task"  # scheduled or system work; may go ahead of its group's messages


@dataclass(frozen=True)
class Job:
    id: int
    group_id: str
    kind: Kind
    status: Status
    priority: Priority
    message_text: str
    chat_jid: str | None
    enqueued_at: float
    run_after: float
    started_at: float | None
    finished_at: float | None
    attempt: int  # number of the current or last attempt; 0 = never claimed
    retry_count: int  # failed attempts counted against max_retries
    max_retries: int
    timeout: float | None
    container_id: str | None
    last_error: str | None
    #: The lead job whose attempt carries this one: set for a batch member,
    #: and for a follow-up offered to a running attempt but not yet received.
    batch_of: int | None = None
    idle_since: float | None = None  # lead: its agent said it was idle then
    closing_at: float | None = None  # lead: moorage asked its agent to close then
    repeat: str | None = None  # recurring task: "every <s>" or "cron <expr>"
    series_id: int | None = None  # recurring task: the series' first occurrence
    scheduled_for: float | None = None  # recurring task: this occurrence's slot
    follows: int | None = None  # recurring task: the occurrence before this one

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "group_id": self.group_id,
            "kind": self.kind.value,
            "status": self.status.value,
            "priority": self.priority.label,
            "message_text": self.message_text,
            "chat_jid": self.chat_jid,
            "enqueued_at": self.enqueued_at,
            "run_after": self.run_after,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "attempt": self.attempt,
            "retry_count": self.retry_count,
            "max_retries": self.max_retries,
            "timeout": self.timeout,
            "container_id": self.container_id,
            "last_error": self.last_error,
            "batch_of": self.batch_of,
            "idle_since": self.idle_since,
            "closing_at": self.closing_at,
            "repeat": self.repeat,
            "series_id": self.series_id,
            "scheduled_for": self.scheduled_for,
            "follows": self.follows,
        }


@dataclass(frozen=True)
class Event:
    """One transition in a job's history."""

    id: int
    job_id: int
    at: float
    from_status: Status | None  # None for the enqueue that created the job
    to_status: Status
    attempt: int
    detail: str | None

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "job_id": self.job_id,
            "at": self.at,
            "from_status": None if self.from_status is None else self.from_status.value,
            "to_status": self.to_status.value,
            "attempt": self.attempt,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class GroupStatus:
    group_id: str
    active_job: int | None
    waiting: int


@dataclass(frozen=True)
class QueueStatus:
    counts: dict[str, int]  # every Status value -> number of jobs
    groups: list[GroupStatus] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "counts": dict(self.counts),
            "groups": [
                {
                    "group_id": g.group_id,
                    "active_job": g.active_job,
                    "waiting": g.waiting,
                }
                for g in self.groups
            ],
        }
