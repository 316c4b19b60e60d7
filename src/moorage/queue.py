"""The queue: the job state machine on the store.

One verb per state change, each one transaction that also appends one event:

- ``enqueue``  (new) -> waiting
- ``claim``    waiting -> active, under a new attempt number (the fencing token)
- ``start``    records the container of the current attempt
- ``reclaim``  records that a restarted moorage took the attempt back
- ``finish``   active -> completed
- ``fail``     active -> waiting (after a backoff) or failed (out of retries)
- ``release``  active -> waiting without spending a retry (engine outage)
- ``cancel``   waiting -> cancelled, or active -> cancelled with its attempt
- ``retry``    failed or cancelled -> waiting, with a fresh retry budget
- ``prune``    deletes finished jobs (and their history) past an age

``finish``, ``fail``, ``start``, ``reclaim`` and ``release`` name the attempt
they are about; if that attempt is no longer current they change nothing and
raise :class:`StaleAttempt`.  The queue knows nothing of containers.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from moorage import validation
from moorage.clock import Clock, SystemClock
from moorage.errors import InvalidInput, InvalidTransition, JobNotFound
from moorage.models import Event, GroupStatus, Job, Kind, Priority, QueueStatus, Status
from moorage.outbox import write_output
from moorage.schedule import parse_repeat
from moorage.store import Database, prepare_data_dir
from moorage.store import queries as q
from moorage.store.sqlite import DB_FILENAME, Synchronous

logger = logging.getLogger(__name__)

DAY = 86400.0
#: Outbox position of the notice sent when a job fails for good.
FAILURE_NOTICE_POSITION = -1


#: The job made under an idempotency key.
_SELECT_KEY = "SELECT job_id FROM idempotency_keys WHERE key = ?"
#: Remember the job made under an idempotency key (same transaction as the job).
_INSERT_KEY = "INSERT INTO idempotency_keys (key, job_id, created_at) VALUES (?, ?, ?)"


#: How a request to close begins in a job's history: "asked to close (idle)".
_CLOSE_DETAIL = "asked to close ("


class StaleAttempt(InvalidTransition):
    """The attempt named is no longer the job's current one; nothing changed."""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: ``base * 2**(n-1)``, capped, times a random factor
    in ``[1 - jitter, 1 + jitter]``; after ``max_retries`` failed retries the
    job fails for good."""

    max_retries: int = 5
    base: float = 5.0
    cap: float = 3600.0
    jitter: float = 0.2

    def delay(self, retry_number: int, rng: random.Random) -> float:
        raw = min(self.cap, self.base * 2.0 ** (retry_number - 1))
        return raw * rng.uniform(1 - self.jitter, 1 + self.jitter)


@dataclass(frozen=True)
class Batch:
    """How many waiting messages of a group one attempt may take at once
    (the head message included), and their total size in bytes; the head
    message always goes, whatever its size."""

    messages: int = 1
    bytes: int = 1024 * 1024

    def __post_init__(self) -> None:
        validation.positive_int("batch messages", self.messages)
        validation.positive_int("batch bytes", self.bytes)

    def fit(self, rows: list[tuple[int, int]]) -> list[int]:
        """Ids of the messages after the head (``rows[0]``) that fit."""
        if not rows:
            return []
        total = rows[0][1]
        riders = []
        for job_id, size in rows[1 : self.messages]:
            total += size
            if total > self.bytes:
                break
            riders.append(job_id)
        return riders


@dataclass(frozen=True)
class Output:
    """What one call of :meth:`Queue.record_output` found and recorded."""

    replies: int  # reply lines newly recorded
    received: list[Job]  # follow-ups the agent took (now members)
    idle_since: float | None  # the lead's idle mark after these lines
    closing_at: float | None
    current: bool = True  # False: the attempt had ended; nothing was recorded


@dataclass(frozen=True)
class PruneResult:
    completed: int
    failed: int
    cancelled: int

    @property
    def total(self) -> int:
        return self.completed + self.failed + self.cancelled


#: Job's fields, in the order of q.JOB_COLUMNS (a test keeps them equal).
_JOB_FIELDS = tuple(f.name for f in dataclasses.fields(Job))
_KINDS = {k.value: k for k in Kind}
_STATUSES = {s.value: s for s in Status}
#: The text stored for each status and kind, as a plain str: the driver
#: binds a str subclass (an enum member) only after a slow adapter look-up.
_SQL: dict[Status | Kind, str] = {m: m.value for m in (*Status, *Kind)}
_PRIORITIES = {int(p): p for p in Priority}


def _job(row: sqlite3.Row | tuple[Any, ...]) -> Job:
    """A Job from a row of ``q.JOB_COLUMNS``.  Every verb makes one, so this
    fills the frozen instance's ``__dict__`` directly: five times faster
    than ``Job(...)``, whose frozen ``__setattr__`` runs once per field."""
    job = object.__new__(Job)
    values = job.__dict__
    values.update(zip(_JOB_FIELDS, row, strict=True))
    values["kind"] = _KINDS[row[2]]
    values["status"] = _STATUSES[row[3]]
    values["priority"] = _PRIORITIES[row[4]]
    return job


class Queue:
    """The durable per-group queue over one database.

    Safe to share between the threads of a process; several processes may
    use one database at once (writers are serialised by SQLite).
    """

    def __init__(
        self,
        db: Database,
        *,
        clock: Clock | None = None,
        retry_policy: RetryPolicy | None = None,
        max_message_bytes: int = validation.DEFAULT_MAX_MESSAGE_BYTES,
        rng: random.Random | None = None,
    ) -> None:
        self.db = db
        self.clock = clock or SystemClock()
        self.retry_policy = retry_policy or RetryPolicy()
        self.max_message_bytes = max_message_bytes
        self._rng = rng or random.Random()
        install = db.meta("install_id")
        if install is None:  # migrations always write it
            raise InvalidTransition("database has no install id")
        self.install_id = install

    @classmethod
    def open(
        cls,
        data_dir: str | Path,
        *,
        synchronous: Synchronous = "FULL",
        **kwargs: Any,
    ) -> Queue:
        """Open (creating if needed) the queue of a data directory."""
        path = prepare_data_dir(Path(data_dir))
        return cls(Database(path / DB_FILENAME, synchronous=synchronous), **kwargs)

    def close(self) -> None:
        self.db.close()

    # -- transitions ---------------------------------------------------------

    def enqueue(
        self,
        group_id: str,
        text: str,
        *,
        kind: str | Kind = Kind.MESSAGE,
        chat_jid: str | None = None,
        priority: str | Priority = Priority.NORMAL,
        run_after: float | None = None,
        max_retries: int | None = None,
        timeout: float | None = None,
        idempotency_key: str | None = None,
        repeat: str | None = None,
    ) -> Job:
        """Add a waiting job; when this returns, the job is committed durably.

        ``run_after`` (epoch seconds) schedules a task; messages always run in
        their group's order and cannot be scheduled.  ``repeat`` (an interval
        such as ``15m`` or a five-field cron expression, in UTC or after
        ``TZ=<zone>``) makes a task
        recurring: each occurrence, when it finishes, creates the next in the
        same transaction (see :mod:`moorage.schedule`); without ``run_after``
        the first occurrence is due now (interval) or at the first cron slot.
        With an
        ``idempotency_key`` already used, nothing is added and the job made
        under that key is returned; the key is recorded in the same
        transaction as the job it names.
        """
        key = (
            None
            if idempotency_key is None
            else validation.idempotency_key(idempotency_key)
        )
        group = validation.group_id(group_id)
        body = validation.message_text(text, self.max_message_bytes)
        jid = validation.chat_jid(chat_jid)
        job_kind = _kind(kind)
        prio = Priority.parse(priority)
        retries = self.retry_policy.max_retries if max_retries is None else max_retries
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise InvalidInput("max_retries must be a whole number ≥ 0")
        limit = validation.seconds("timeout", timeout)
        if limit is not None and limit <= 0:
            raise InvalidInput("timeout must be more than 0 seconds")
        due = validation.seconds("run_after", run_after)
        if due is not None and job_kind is Kind.MESSAGE:
            raise InvalidInput(
                "only tasks can be scheduled with run_after; messages run in order"
            )
        recurrence = None if repeat is None else parse_repeat(repeat)
        if recurrence is not None and job_kind is Kind.MESSAGE:
            raise InvalidInput("only tasks can repeat; messages run once")

        with self.db.transaction() as conn:
            now = self.clock.now()
            if key is not None:
                known = conn.execute(_SELECT_KEY, (key,)).fetchone()
                if known is not None:
                    return self._get(conn, known[0])
            values = {
                "group_id": group,
                "kind": _SQL[job_kind],
                "priority": int(prio),
                "text": body,
                "chat_jid": jid,
                "now": now,
                "run_after": now if due is None else due,
                "max_retries": retries,
                "timeout": limit,
            }
            if recurrence is None:
                job = self._insert(conn, values)
            else:
                if due is None:
                    values["run_after"] = recurrence.first(now)
                values.update(
                    repeat=recurrence.spec,
                    series_id=None,
                    scheduled_for=values["run_after"],
                    follows=None,
                )
                job = self._insert(conn, values)
                job = _change(conn, q.START_SERIES, {"job_id": job.id})
            if key is not None:
                conn.execute(_INSERT_KEY, (key, job.id, now))
        return job

    def _insert(self, conn: sqlite3.Connection, values: dict[str, Any]) -> Job:
        """Insert a waiting job (an occurrence of a series when ``values``
        names its ``repeat``) with its first event, and join its lane."""
        series = "repeat" in values
        cursor = conn.execute(q.INSERT_OCCURRENCE if series else q.INSERT_JOB, values)
        # The new row as SELECT_JOB would read it (the column defaults of
        # a waiting job; tests compare the two), without reading it back.
        job = _job(
            (
                cursor.lastrowid,
                values["group_id"],
                values["kind"],
                "waiting",
                values["priority"],
                values["text"],
                values["chat_jid"],
                values["now"],
                values["run_after"],
                None,  # started_at
                None,  # finished_at
                0,  # attempt
                0,  # retry_count
                values["max_retries"],
                values["timeout"],
                None,  # container_id
                None,  # last_error
                None,  # batch_of
                None,  # idle_since
                None,  # closing_at
                values["repeat"] if series else None,
                values["series_id"] if series else None,
                values["scheduled_for"] if series else None,
                values["follows"] if series else None,
            )
        )
        conn.execute(q.INSERT_FIRST_EVENT, {"job_id": job.id})
        _join_lane(conn, job.group_id, job.priority, job.id, job.run_after)
        return job

    def claim(
        self,
        max_concurrent: int,
        limit: int | None = None,
        *,
        batch: Batch | None = None,
    ) -> list[Job]:
        """Move the next runnable jobs to active, each under a new attempt.

        Takes at most ``max_concurrent`` minus the attempts already running
        (in every process using this database), and at most ``limit``.  Free
        groups are taken most urgent first; each gives its head job: its
        earliest due task, else its oldest message.  With ``batch``, the
        messages that follow a head message in its group ride along as
        members of its attempt (see :meth:`members`); tasks always run alone.
        Returns the head (lead) jobs, [] when nothing is runnable.  Atomic:
        either every returned job was claimed or none.
        """
        validation.positive_int("max_concurrent", max_concurrent)
        batch = batch or _ONE_JOB
        room: dict[str, float] = {
            "max_concurrent": max_concurrent,
            "limit": max_concurrent if limit is None else limit,
        }
        with self.db.transaction() as conn:
            now = self.clock.now()
            room["now"] = now
            groups = [row[0] for row in conn.execute(q.READY_LANES, room)]
            claimed = []
            for group in groups:
                job = self._claim_head(conn, group, now, batch)
                if job is not None:
                    claimed.append(job)
        if logger.isEnabledFor(logging.DEBUG):
            for job in claimed:
                logger.debug(
                    "claimed job %d attempt %d",
                    job.id,
                    job.attempt,
                    extra={
                        "action": "claim",
                        "job": job.id,
                        "group": job.group_id,
                        "attempt": job.attempt,
                    },
                )
        return claimed

    def _claim_head(
        self, conn: sqlite3.Connection, group: str, now: float, batch: Batch
    ) -> Job | None:
        task, messages = _group_next(conn, group, now, batch.messages)
        if task is None and not messages:
            self._refresh_lane(conn, group, now)  # the lane was stale; mend it
            return None
        head = task if task is not None else messages[0][0]
        riders = [] if task is not None else batch.fit(messages)
        job = _change(conn, q.CLAIM_JOB, {"job_id": head, "now": now})
        detail = "claimed"
        if riders:
            detail = f"claimed with {len(riders)} more messages of the group"
        self._event(
            conn, job.id, now, Status.WAITING, Status.ACTIVE, job.attempt, detail
        )
        for rider in riders:
            member = _change(
                conn, q.CLAIM_MEMBER, {"job_id": rider, "now": now, "lead": job.id}
            )
            self._event(
                conn,
                member.id,
                now,
                Status.WAITING,
                Status.ACTIVE,
                member.attempt,
                f"claimed in the batch of job {job.id} attempt {job.attempt}",
            )
        self._refresh_lane(conn, group, now, clear_hold=True)
        return job

    def start(self, job_id: int, attempt: int, container_id: str) -> Job:
        """Record the container that runs the current attempt."""
        with self.db.transaction() as conn:
            now = self.clock.now()
            job = _changed(
                conn,
                q.START_JOB,
                {"job_id": job_id, "attempt": attempt, "container_id": container_id},
            )
            if job is None:
                self._stale(conn, job_id, attempt, "start")
            conn.execute(
                q.START_MEMBERS, {"lead": job_id, "container_id": container_id}
            )
            self._event(
                conn,
                job_id,
                now,
                Status.ACTIVE,
                Status.ACTIVE,
                attempt,
                f"started {container_id}",
            )
        return job

    def reclaim(self, job_id: int, attempt: int, detail: str) -> Job:
        """Record that this process took back a running attempt after a restart."""
        with self.db.transaction() as conn:
            now = self.clock.now()
            row = conn.execute(q.SELECT_JOB, {"job_id": job_id}).fetchone()
            if row is None or row[3] != Status.ACTIVE or row[11] != attempt:
                self._stale(conn, job_id, attempt, "reclaim")
            self._event(
                conn, job_id, now, Status.ACTIVE, Status.ACTIVE, attempt, detail
            )
        return _job(row)

    def finish(self, job_id: int, attempt: int, detail: str = "exit 0") -> Job:
        """The current attempt succeeded: active -> completed."""
        with self.db.transaction() as conn:
            now = self.clock.now()
            job = self._finalize(
                conn, job_id, attempt, Status.COMPLETED, None, now, "finish"
            )
            self._event(
                conn, job_id, now, Status.ACTIVE, Status.COMPLETED, attempt, detail
            )
            self._settle_members(conn, job, now, Status.COMPLETED, None)
            self._schedule_next(conn, job, now)
        logger.info(
            "job %d completed (attempt %d)",
            job_id,
            attempt,
            extra={
                "action": "finish",
                "job": job_id,
                "group": job.group_id,
                "attempt": attempt,
            },
        )
        return job

    def fail(
        self, job_id: int, attempt: int, error: str, *, retryable: bool = True
    ) -> Job:
        """The current attempt failed.  If the job has retries left (and the
        failure is retryable) it waits out a backoff, holding its group;
        otherwise it is failed for good."""
        error = error[:2000]
        with self.db.transaction() as conn:
            now = self.clock.now()
            current = self._current(conn, job_id, attempt, "fail")
            if retryable and current.retry_count < current.max_retries:
                number = current.retry_count + 1
                delay = self.retry_policy.delay(number, self._rng)
                job = _change(
                    conn,
                    q.REQUEUE_JOB,
                    {
                        "job_id": job_id,
                        "attempt": attempt,
                        "run_after": now + delay,
                        "retry_count": number,
                        "error": error,
                    },
                )
                detail = (
                    f"{error}; retry {number}/{current.max_retries} in {delay:.1f}s"
                )
                self._event(
                    conn, job_id, now, Status.ACTIVE, Status.WAITING, attempt, detail
                )
                self._requeue_members(conn, job, now, error, spent=1)
                self._refresh_lane(conn, job.group_id, now, hold=now + delay)
                logger.warning(
                    "job %d attempt %d failed (%s); retry %d/%d in %.1f s",
                    job_id,
                    attempt,
                    error,
                    number,
                    current.max_retries,
                    delay,
                    extra={
                        "action": "retry",
                        "job": job_id,
                        "group": job.group_id,
                        "attempt": attempt,
                    },
                )
                return job
            job = self._finalize(
                conn, job_id, attempt, Status.FAILED, error, now, "fail"
            )
            self._event(conn, job_id, now, Status.ACTIVE, Status.FAILED, attempt, error)
            self._settle_members(conn, job, now, Status.FAILED, error)
            self._schedule_next(conn, job, now)
            # The failure notice is committed with the failure itself, so a
            # crash can neither lose it nor send one for a job that recovers.
            conn.execute(
                q.INSERT_REPLY,
                {
                    "job_id": job_id,
                    "attempt": attempt,
                    "position": FAILURE_NOTICE_POSITION,
                    "group_id": job.group_id,
                    "chat_jid": job.chat_jid,
                    "kind": "failed",
                    "text": error,
                    "now": now,
                },
            )
        logger.error(
            "job %d failed for good after attempt %d: %s",
            job_id,
            attempt,
            error,
            extra={
                "action": "fail",
                "job": job_id,
                "group": job.group_id,
                "attempt": attempt,
            },
        )
        return job

    def release(self, job_id: int, attempt: int, reason: str) -> Job:
        """Give a claim back without spending a retry (the attempt never ran)."""
        with self.db.transaction() as conn:
            now = self.clock.now()
            current = self._current(conn, job_id, attempt, "release")
            job = _change(
                conn,
                q.REQUEUE_JOB,
                {
                    "job_id": job_id,
                    "attempt": attempt,
                    "run_after": now,
                    "retry_count": current.retry_count,
                    "error": reason,
                },
            )
            self._event(
                conn,
                job_id,
                now,
                Status.ACTIVE,
                Status.WAITING,
                attempt,
                f"released: {reason}",
            )
            self._requeue_members(conn, job, now, reason, spent=0)
            self._refresh_lane(conn, job.group_id, now)
        return job

    # -- conversations ---------------------------------------------------------

    def members(self, lead_id: int) -> list[Job]:
        """The jobs riding on a lead's current attempt, in order (batched at
        claim, or follow-ups the agent received)."""
        with self.db.reading() as conn:
            return [_job(r) for r in conn.execute(q.BATCH_MEMBERS, {"lead": lead_id})]

    def busy_groups(self) -> dict[str, int]:
        """Groups with a running attempt and waiting jobs: group -> waiting
        (offered follow-ups included)."""
        with self.db.reading() as conn:
            return dict(conn.execute(q.BUSY_LANES).fetchall())

    def offered(self, lead_id: int) -> list[Job]:
        """Follow-ups offered to a lead's running attempt, not yet received."""
        with self.db.reading() as conn:
            return [_job(r) for r in conn.execute(q.OFFERED, {"lead": lead_id})]

    def due_task(self, group_id: str) -> bool:
        """Whether a task of the group is due (it goes before messages)."""
        with self.db.reading() as conn:
            row = conn.execute(
                q.GROUP_DUE_TASK, {"group_id": group_id, "now": self.clock.now()}
            ).fetchone()
        return row is not None

    def offer(self, lead_id: int, attempt: int, limit: int) -> list[Job]:
        """Offer the group's next waiting messages to a lead's running
        attempt as follow-ups, oldest first, at most ``limit``.

        An offered message stays waiting (and holds its place) until the
        agent says it received it (:meth:`record_output`); if the attempt
        ends first, it goes back in line as if never offered.  Nothing is
        offered to a task, to an attempt asked to close, or while a task of
        the group is due (tasks go first).  Returns the offered jobs.
        """
        validation.positive_int("limit", limit)
        with self.db.transaction() as conn:
            now = self.clock.now()
            lead = self._current(conn, lead_id, attempt, "offer to")
            if lead.kind is Kind.TASK or lead.closing_at is not None:
                return []
            task, messages = _group_next(conn, lead.group_id, now, limit)
            if task is not None:
                return []
            offered = []
            for job_id, _ in messages:
                job = _change(conn, q.OFFER_JOB, {"job_id": job_id, "lead": lead_id})
                self._event(
                    conn,
                    job.id,
                    now,
                    Status.WAITING,
                    Status.WAITING,
                    job.attempt,
                    f"offered to job {lead_id} attempt {attempt}",
                )
                offered.append(job)
        return offered

    def record_output(self, lead: Job, start: int, lines: list[str]) -> Output:
        """Record output lines ``start``… of a lead's current attempt, in one
        transaction: replies into the outbox, the read position, and the
        agent's signals — ``received`` makes an offered follow-up a member
        of the attempt, ``idle`` marks the lead idle (until it receives
        more).  Reading the same lines again records nothing twice.  Output
        of an attempt that is no longer running (it was cancelled meanwhile)
        is not recorded: ``Output.current`` is then False."""
        received: list[Job] = []
        with self.db.transaction() as conn:
            now = self.clock.now()
            running = self._get(conn, lead.id)
            if (
                running.status is not Status.ACTIVE
                or running.attempt != lead.attempt
                or running.batch_of is not None
            ):
                return Output(0, [], running.idle_since, running.closing_at, False)
            added, signals = write_output(conn, lead, start, lines, now)
            idle: object = Queue._KEEP
            for signal in signals:
                if signal.kind == "idle":
                    idle = now
                elif signal.job_id is not None:
                    job = self._receive(conn, lead, signal.job_id, now)
                    if job is not None:
                        received.append(job)
                        idle = None
            if idle is not Queue._KEEP:
                conn.execute(
                    q.MARK_IDLE,
                    {"job_id": lead.id, "attempt": lead.attempt, "at": idle},
                )
            current = _job(conn.execute(q.SELECT_JOB, {"job_id": lead.id}).fetchone())
        return Output(
            replies=added,
            received=received,
            idle_since=current.idle_since,
            closing_at=current.closing_at,
        )

    def request_close(self, lead_id: int, attempt: int, reason: str) -> Job:
        """Record that moorage asks the lead's agent to close (once per
        attempt; asking again changes nothing).  From here nothing more is
        offered to it, and however it exits the attempt counts as done: it
        is only asked when idle, with everything it took answered."""
        with self.db.transaction() as conn:
            now = self.clock.now()
            closed = _changed(
                conn, q.CLOSE_JOB, {"job_id": lead_id, "attempt": attempt, "now": now}
            )
            if closed is None:
                return self._current(conn, lead_id, attempt, "close")
            self._event(
                conn,
                lead_id,
                now,
                Status.ACTIVE,
                Status.ACTIVE,
                attempt,
                f"{_CLOSE_DETAIL}{reason})",
            )
        return closed

    def close_reason(self, job_id: int, attempt: int) -> str | None:
        """Why the attempt was asked to close (``request_close``), or None."""
        with self.db.reading() as conn:
            rows = conn.execute(q.SELECT_EVENTS, {"job_id": job_id}).fetchall()
        for row in reversed(rows):
            detail = row[6] or ""
            if row[5] == attempt and detail.startswith(_CLOSE_DETAIL):
                return detail[len(_CLOSE_DETAIL) :].removesuffix(")")
        return None

    def cancel(self, job_id: int) -> Job:
        """Withdraw a waiting job, or stop a running attempt.

        A waiting job is cancelled.  An active lead is cancelled at once,
        with the members riding on its attempt; follow-ups offered to it and
        not received go back in line.  Its container is then owned by no
        active job, so the dispatcher stops and removes it (at its next poll
        or, if it is not running, at the next start's recovery), and output
        not recorded by then is dropped.  A member cannot be cancelled on
        its own, nor can a message being offered to a running attempt."""
        with self.db.transaction() as conn:
            now = self.clock.now()
            cancelled = _changed(conn, q.CANCEL_JOB, {"job_id": job_id, "now": now})
            if cancelled is not None:
                self._event(
                    conn,
                    job_id,
                    now,
                    Status.WAITING,
                    Status.CANCELLED,
                    cancelled.attempt,
                    "cancelled",
                )
                self._refresh_lane(conn, cancelled.group_id, now, recompute_hold=True)
                return cancelled
            job = self._get(conn, job_id)
            if job.status is Status.ACTIVE and job.batch_of is None:
                return self._cancel_attempt(conn, job, now)
            if job.status is Status.ACTIVE:
                raise InvalidTransition(
                    f"job {job_id} runs in the attempt of job {job.batch_of}; "
                    f"cancel job {job.batch_of} to stop that attempt"
                )
            if job.status is Status.WAITING:
                raise InvalidTransition(
                    f"job {job_id} is being offered to the running attempt of "
                    f"job {job.batch_of}; it cannot be cancelled now"
                )
            raise InvalidTransition(
                f"job {job_id} is {job.status.value}; only waiting and active jobs "
                "can be cancelled"
            )

    def _cancel_attempt(self, conn: sqlite3.Connection, lead: Job, now: float) -> Job:
        job = _change(
            conn,
            q.CANCEL_ACTIVE,
            {"job_id": lead.id, "attempt": lead.attempt, "now": now},
        )
        self._event(
            conn,
            job.id,
            now,
            Status.ACTIVE,
            Status.CANCELLED,
            job.attempt,
            "cancelled while running; its container is stopped",
        )
        self._settle_members(conn, job, now, Status.CANCELLED, None)
        logger.info(
            "job %d cancelled while running (attempt %d)",
            job.id,
            job.attempt,
            extra={
                "action": "cancel",
                "job": job.id,
                "group": job.group_id,
                "attempt": job.attempt,
            },
        )
        return job

    def retry(self, job_id: int) -> Job:
        """Send a failed or cancelled job back to waiting, with fresh retries."""
        with self.db.transaction() as conn:
            now = self.clock.now()
            before = self._get(conn, job_id).status
            revived = _changed(conn, q.RETRY_JOB, {"job_id": job_id, "now": now})
            if revived is None:
                raise InvalidTransition(
                    f"job {job_id} is {before.value}; "
                    "only failed or cancelled jobs can be retried"
                )
            job = revived
            self._event(conn, job_id, now, before, Status.WAITING, job.attempt, "retry")
            _join_lane(conn, job.group_id, job.priority, job_id, now)
        return job

    def prune(
        self,
        completed_older_than: float = DAY,
        failed_older_than: float = 7 * DAY,
        cancelled_older_than: float = 7 * DAY,
        *,
        batch: int = 2000,
    ) -> PruneResult:
        """Delete finished jobs, with their history, whose ``finished_at`` is
        older than the given ages (seconds).  Waiting and active jobs are never
        touched.  Deletes in batches so writers are not held up for long."""
        counts: dict[str, int] = {}
        ages = (
            (Status.COMPLETED, completed_older_than),
            (Status.FAILED, failed_older_than),
            (Status.CANCELLED, cancelled_older_than),
        )
        # Check every age before deleting anything: a rejected call changes nothing.
        for status, age in ages:
            validation.seconds(f"{status.value} age", age, allow_none=False)
        for status, age in ages:
            counts[status.value] = self._prune_status(status, age, batch)
        result = PruneResult(counts["completed"], counts["failed"], counts["cancelled"])
        if result.total:
            logger.info(
                "pruned %d jobs (%d completed, %d failed, %d cancelled)",
                result.total,
                result.completed,
                result.failed,
                result.cancelled,
                extra={"action": "prune"},
            )
        return result

    def _prune_status(self, status: Status, age: float, batch: int) -> int:
        deleted = 0
        after = 0
        cutoff = self.clock.now() - age
        while True:
            with self.db.transaction() as conn:
                ids = [
                    (row[0],)
                    for row in conn.execute(
                        q.PRUNABLE_IDS,
                        {
                            "status": status.value,
                            "cutoff": cutoff,
                            "limit": batch,
                            "after": after,
                        },
                    )
                ]
                if ids:
                    conn.execute(q.RAISE_JOB_ID_FLOOR)
                conn.executemany(q.DELETE_EVENTS, [{"job_id": i} for (i,) in ids])
                conn.executemany("DELETE FROM replies WHERE job_id = ?", ids)
                conn.executemany("DELETE FROM idempotency_keys WHERE job_id = ?", ids)
                conn.executemany("DELETE FROM jobs WHERE id = ?", ids)
            deleted += len(ids)
            if len(ids) < batch:
                return deleted
            after = ids[-1][0]

    # -- reads ---------------------------------------------------------------

    def get(self, job_id: int) -> Job:
        with self.db.reading() as conn:
            return self._get(conn, job_id)

    def job_for_key(self, idempotency_key: str) -> Job | None:
        """The job enqueued under an idempotency key, if any."""
        with self.db.reading() as conn:
            row = conn.execute(_SELECT_KEY, (idempotency_key,)).fetchone()
            return None if row is None else self._get(conn, row[0])

    def events(self, job_id: int) -> list[Event]:
        with self.db.reading() as conn:
            self._get(conn, job_id)
            rows = conn.execute(q.SELECT_EVENTS, {"job_id": job_id}).fetchall()
        return [
            Event(
                id=r[0],
                job_id=r[1],
                at=r[2],
                from_status=None if r[3] is None else Status(r[3]),
                to_status=Status(r[4]),
                attempt=r[5],
                detail=r[6],
            )
            for r in rows
        ]

    def jobs(
        self,
        *,
        status: str | Status | None = None,
        group_id: str | None = None,
        limit: int = 100,
        before_id: int | None = None,
    ) -> list[Job]:
        """Jobs newest first, optionally filtered; ``before_id`` pages on."""
        validation.positive_int("limit", limit)
        clauses: list[str] = []
        params: dict[str, object] = {}
        if status is not None:
            try:
                params["status"] = Status(status).value
            except ValueError as exc:
                raise InvalidInput(
                    f"status must be one of {', '.join(s.value for s in Status)}; got {status!r}"
                ) from exc
            clauses.append("status = :status")
            if params["status"] in (Status.FAILED, Status.CANCELLED):
                clauses.append("status IN ('failed', 'cancelled')")  # its index
        if group_id is not None:
            params["group_id"] = validation.group_id(group_id)
            clauses.append("group_id = :group_id")
        if before_id is not None:
            params["before_id"] = validation.job_id(before_id)
            clauses.append("id < :before_id")
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT {q.JOB_COLUMNS} FROM jobs {where} ORDER BY id DESC LIMIT :limit"
        params["limit"] = limit
        with self.db.reading() as conn:
            return [_job(r) for r in conn.execute(sql, params)]

    def active(self) -> list[Job]:
        with self.db.reading() as conn:
            return [_job(r) for r in conn.execute(q.SELECT_ACTIVE)]

    def status(self) -> QueueStatus:
        with self.db.reading() as conn:
            counts = {s.value: 0 for s in Status}
            total = 0
            for status, count in conn.execute(q.COUNT_BY_STATUS):
                if status == "all":
                    total = count
                else:
                    counts[status] += count
            counts[Status.COMPLETED.value] = total - sum(counts.values())
            groups = [GroupStatus(g, a, w) for g, a, w in conn.execute(q.SELECT_LANES)]
        return QueueStatus(counts=counts, groups=groups)

    def next_ready_at(self) -> float | None:
        """When a free group next has a due job (None: no waiting job)."""
        with self.db.reading() as conn:
            (value,) = conn.execute(q.NEXT_READY_AT).fetchone()
        return None if value is None else float(value)

    # -- internals -------------------------------------------------------------

    def _get(self, conn: sqlite3.Connection, job_id: int) -> Job:
        row = conn.execute(q.SELECT_JOB, {"job_id": job_id}).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        return _job(row)

    def _current(
        self, conn: sqlite3.Connection, job_id: int, attempt: int, verb: str
    ) -> Job:
        job = self._get(conn, job_id)
        if (
            job.status is not Status.ACTIVE
            or job.attempt != attempt
            or job.batch_of is not None
        ):
            self._stale(conn, job_id, attempt, verb)
        return job

    def _receive(
        self, conn: sqlite3.Connection, lead: Job, job_id: int, now: float
    ) -> Job | None:
        job = _changed(
            conn,
            q.RECEIVE_JOB,
            {
                "job_id": job_id,
                "lead": lead.id,
                "now": now,
                "container_id": lead.container_id,
            },
        )
        if job is None:  # not offered to this attempt, or received already
            return None
        self._event(
            conn,
            job.id,
            now,
            Status.WAITING,
            Status.ACTIVE,
            job.attempt,
            f"received by job {lead.id} attempt {lead.attempt}",
        )
        self._refresh_lane(conn, lead.group_id, now)
        return job

    def _settle_members(
        self,
        conn: sqlite3.Connection,
        lead: Job,
        now: float,
        status: Status,
        error: str | None,
    ) -> None:
        """Members share their lead's final outcome; offers not received go
        back in line."""
        self._end_riders(
            conn,
            lead,
            now,
            q.FINISH_MEMBER,
            {"status": _SQL[status], "now": now, "error": error},
            status,
            f"{status.value} with job {lead.id} attempt {lead.attempt}",
        )

    def _requeue_members(
        self,
        conn: sqlite3.Connection,
        lead: Job,
        now: float,
        error: str,
        *,
        spent: int,
    ) -> None:
        """Members go back to waiting with their lead, due when it is (a
        retry retries the whole batch)."""
        self._end_riders(
            conn,
            lead,
            now,
            q.REQUEUE_MEMBER,
            {"run_after": lead.run_after, "spent": spent, "error": error},
            Status.WAITING,
            f"back to waiting with job {lead.id} attempt {lead.attempt}",
        )

    def _end_riders(
        self,
        conn: sqlite3.Connection,
        lead: Job,
        now: float,
        update: str,
        params: dict[str, Any],
        after: Status,
        detail: str,
    ) -> None:
        """The lead's attempt ended: move each member with ``update`` (to
        ``after``), and put the offers it never received back in line."""
        members: list[tuple[int, int]] = []
        offers: list[tuple[int, int]] = []
        for job_id, job_attempt, status in conn.execute(
            q.LEAD_RIDERS, {"lead": lead.id}
        ):
            (members if status == "active" else offers).append((job_id, job_attempt))
        if members:
            conn.executemany(
                update, [dict(params, job_id=m, lead=lead.id) for m, _ in members]
            )
        for member, member_attempt in members:
            self._event(conn, member, now, Status.ACTIVE, after, member_attempt, detail)
        if offers:
            conn.executemany(
                q.WITHDRAW_OFFER, [{"job_id": o, "lead": lead.id} for o, _ in offers]
            )
        for job_id, job_attempt in offers:
            self._event(
                conn,
                job_id,
                now,
                Status.WAITING,
                Status.WAITING,
                job_attempt,
                f"not received by job {lead.id} attempt {lead.attempt}; back in line",
            )

    def _schedule_next(self, conn: sqlite3.Connection, job: Job, now: float) -> None:
        """Create a recurring task's next occurrence, in the transaction that
        finishes this one: a crash can neither skip it nor make it twice (and
        the unique indexes on ``follows`` and on the slot forbid a double)."""
        if job.repeat is None or job.series_id is None:
            return
        current_slot = job.scheduled_for if job.scheduled_for is not None else now
        later = {"series_id": job.series_id, "slot": current_slot}
        if conn.execute(q.LATER_OCCURRENCE, later).fetchone() is not None:
            # A revived occurrence whose series went on without it (its
            # successor may since have been pruned): do not fork the series.
            return
        try:
            slot = parse_repeat(job.repeat).next_slot(current_slot, now)
        except InvalidInput as exc:
            # Only a zone that the system's zone data no longer has: the
            # occurrence still finishes; the series cannot go on.
            logger.error(
                "series %d ends after job %d: its schedule %r cannot be read "
                "any more (%s)",
                job.series_id,
                job.id,
                job.repeat,
                exc,
                extra={"action": "schedule", "job": job.id, "group": job.group_id},
            )
            return
        successor = self._insert(
            conn,
            {
                "group_id": job.group_id,
                "kind": _SQL[job.kind],
                "priority": int(job.priority),
                "text": job.message_text,
                "chat_jid": job.chat_jid,
                "now": now,
                "run_after": slot,
                "max_retries": job.max_retries,
                "timeout": job.timeout,
                "repeat": job.repeat,
                "series_id": job.series_id,
                "scheduled_for": slot,
                "follows": job.id,
            },
        )
        logger.info(
            "scheduled job %d (next of series %d) for %.0f",
            successor.id,
            job.series_id,
            slot,
            extra={"action": "schedule", "job": successor.id, "group": job.group_id},
        )

    def _stale(
        self, conn: sqlite3.Connection, job_id: int, attempt: int, verb: str
    ) -> NoReturn:
        job = self._get(conn, job_id)
        if job.batch_of is not None and job.status is Status.ACTIVE:
            raise InvalidTransition(
                f"cannot {verb} job {job_id}: it runs in the attempt of job "
                f"{job.batch_of}, which decides its outcome; nothing changed"
            )
        raise StaleAttempt(
            f"cannot {verb} job {job_id} attempt {attempt}: the job is {job.status.value} "
            f"at attempt {job.attempt}; nothing changed"
        )

    def _finalize(
        self,
        conn: sqlite3.Connection,
        job_id: int,
        attempt: int,
        status: Status,
        error: str | None,
        now: float,
        verb: str,
    ) -> Job:
        job = _changed(
            conn,
            q.FINISH_JOB,
            {
                "job_id": job_id,
                "attempt": attempt,
                "status": _SQL[status],
                "now": now,
                "error": error,
            },
        )
        if job is None:
            self._stale(conn, job_id, attempt, verb)
        # Ending an attempt changes no waiting job, so the group's lane (if
        # it has one) is already right, and the group is free once this row
        # leaves jobs_one_active_per_group.
        return job

    @staticmethod
    def _event(
        conn: sqlite3.Connection,
        job_id: int,
        now: float,
        before: Status | None,
        after: Status,
        attempt: int,
        detail: str | None,
    ) -> None:
        conn.execute(
            q.INSERT_EVENT,
            {
                "job_id": job_id,
                "now": now,
                "from_status": None if before is None else _SQL[before],
                "to_status": _SQL[after],
                "attempt": attempt,
                "detail": detail,
            },
        )

    _KEEP: Any = object()

    def _refresh_lane(
        self,
        conn: sqlite3.Connection,
        group: str,
        now: float,
        *,
        hold: float | None = None,
        clear_hold: bool = False,
        recompute_hold: bool = False,
    ) -> None:
        """Recompute one group's lane after a change to its waiting jobs
        (indexed look-ups only; the group's queue is never read whole).
        ``hold`` starts a backoff hold, ``clear_hold`` ends it (a claim),
        ``recompute_hold`` shortens it to the jobs still in backoff (a
        cancel); otherwise the hold is kept."""
        if hold is not None:
            held_until = hold
        elif clear_hold:
            held_until = 0.0
        else:
            lane = conn.execute(q.LANE_HOLD, {"group_id": group}).fetchone()
            held_until = 0.0 if lane is None else lane[0]
            if recompute_hold and held_until > now:
                (held,) = conn.execute(
                    q.GROUP_HOLD, {"group_id": group, "now": now}
                ).fetchone()
                held_until = held or 0.0
        *heads, natural = conn.execute(q.GROUP_HEADS, {"group_id": group}).fetchone()
        rank = min(
            (
                (priority, job_id)
                for priority, job_id in zip(_HEAD_PRIORITIES, heads, strict=True)
                if job_id is not None
            ),
            default=None,
        )
        if rank is None:
            conn.execute(q.DELETE_LANE, {"group_id": group})
            return
        rank_priority, rank_job = rank
        conn.execute(
            q.UPSERT_LANE,
            {
                "group_id": group,
                "rank_priority": rank_priority,
                "rank_job": rank_job,
                "held_until": held_until,
                "ready_at": max(natural, held_until),
            },
        )


def _join_lane(
    conn: sqlite3.Connection,
    group: str,
    priority: Priority,
    job_id: int,
    ready_at: float,
) -> None:
    """Bring a newly waiting job into its group's lane (one statement,
    which writes nothing when the job changes neither rank nor due time)."""
    conn.execute(
        q.LANE_ADD_WAITING,
        {
            "group_id": group,
            "priority": int(priority),
            "job_id": job_id,
            "ready_at": ready_at,
        },
    )


#: One job per claim (the default batch).
_ONE_JOB = Batch()
#: The priority of each id GROUP_HEADS returns, in its order.
_HEAD_PRIORITIES = (0, 0, 1, 1, 2, 2)


def _changed(
    conn: sqlite3.Connection, update: str, params: dict[str, Any]
) -> Job | None:
    """Run an UPDATE of the one job ``params["job_id"]`` and read it back,
    or None when the UPDATE matched nothing (see store/queries.py for why
    this is not ``RETURNING``)."""
    if conn.execute(update, params).rowcount == 0:
        return None
    return _job(conn.execute(q.SELECT_JOB, params).fetchone())


def _change(conn: sqlite3.Connection, update: str, params: dict[str, Any]) -> Job:
    """:func:`_changed` for a job the transaction already found in the state
    the UPDATE expects."""
    job = _changed(conn, update, params)
    if job is None:
        raise InvalidTransition(
            f"job {params['job_id']} changed under its own write transaction"
        )
    return job


def _group_next(
    conn: sqlite3.Connection, group: str, now: float, limit: int
) -> tuple[int | None, list[tuple[int, int]]]:
    """A group's due task (None: no task is due), and its oldest ``limit``
    waiting messages not offered to an attempt, as (id, size in bytes)."""
    task = None
    messages: list[tuple[int, int]] = []
    rows = conn.execute(q.GROUP_NEXT, {"group_id": group, "now": now, "limit": limit})
    for kind, job_id, size in sorted(rows):
        if kind == 0:
            task = job_id
        elif len(messages) < limit:
            messages.append((job_id, size))
    return task, messages


def _kind(value: str | Kind) -> Kind:
    # A look-up in _KINDS, not Kind(value): it takes a member or its text
    # alike (a StrEnum member hashes as its value), at a tenth of the cost.
    kind = _KINDS.get(value) if isinstance(value, str) else None
    if kind is None:
        raise InvalidInput(f"kind must be message or task; got {value!r}")
    return kind
