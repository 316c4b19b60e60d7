"""Random sequences of every queue operation against a plain in-memory model.

The model below is written from the rules in DESIGN.md and the queue's
docstrings, not from the queue's code: after each step the real SQLite store
must agree with it on every job's status, attempt, batch and series, on
exactly which jobs a claim returns (and which messages ride along), on the
lanes table, and on the conversation marks of running attempts.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from moorage.clock import FakeClock
from moorage.errors import InvalidTransition, JobNotFound
from moorage.queue import Batch, Queue, RetryPolicy, StaleAttempt
from moorage.store.sqlite import DB_FILENAME

GROUPS = ("a", "b", "c", "d")
PRIORITY = {"high": 0, "normal": 1, "low": 2}
BASE, CAP = 5.0, 3600.0
T = TypeVar("T")
MAX_CAP = 4  # the largest cap any claim uses
SIZES = (1, 20, 200)  # message sizes in bytes, so byte limits of batches bite
BATCHES = [
    None,
    Batch(messages=2),
    Batch(messages=3, bytes=50),
    Batch(messages=4, bytes=300),
    Batch(messages=10, bytes=250),
    Batch(messages=10, bytes=1),  # the head goes alone, whatever its size
]
#: Kinds of output line an agent writes in one read of its output.
LINES = ("receive",) * 3 + (
    "idle",
    "idle",
    "reply",
    "log",
    "stranger",
    "ghost",
    "bogus",
)


@dataclass
class ModelJob:
    id: int
    group: str
    kind: str
    priority: int
    run_after: float
    max_retries: int
    size: int = 1
    status: str = "waiting"
    attempt: int = 0
    retry_count: int = 0
    finished_at: float | None = None
    backoff_until: float | None = None  # set while waiting out a failure's backoff
    # Conversations: the lead whose attempt carries this job (a member when
    # active or finished, an offer not yet received when waiting), and the
    # marks of a lead's current attempt.
    batch_of: int | None = None
    idle_since: float | None = None
    closing_at: float | None = None
    output_lines: int = 0  # lines of the current attempt's output read so far
    offered_at: int = 0  # tick of the latest offer of this job
    revived_at: int = -1  # tick of the latest retry of this job
    # Recurring tasks.
    interval: float | None = None
    series: int | None = None
    scheduled_for: float | None = None
    follows: int | None = None
    # Ended without a live successor: the successor was pruned, or the slot
    # it would have had was already taken by another occurrence.
    successor_lost: bool = False


def received_line(job_id: int) -> str:
    return json.dumps({"type": "received", "id": job_id})


class QueueMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="moorage-stateful-"))
        self.clock = FakeClock()
        self.queue = Queue.open(
            self.dir / "data",
            clock=self.clock,
            retry_policy=RetryPolicy(jitter=0.0, base=BASE, cap=CAP),
            # No fsync per commit: the logic under test is the same and the
            # suite stays fast; durability is proven in test_processes.
            synchronous="NORMAL",
        )
        self.raw = sqlite3.connect(self.dir / "data" / DB_FILENAME)
        self.jobs: dict[int, ModelJob] = {}
        self.last_id = 0
        self.tick = 0  # orders offers and revivals
        self.replies: set[tuple[int, int, int]] = set()  # (job, attempt, position)

    def teardown(self) -> None:
        self.raw.close()
        self.queue.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- the model's rules --------------------------------------------------------

    def waiting_in(self, group: str) -> list[ModelJob]:
        return [
            j for j in self.jobs.values() if j.group == group and j.status == "waiting"
        ]

    def active_jobs(self) -> list[ModelJob]:
        """Active leads: one per running attempt (members ride along)."""
        return [
            j for j in self.jobs.values() if j.status == "active" and j.batch_of is None
        ]

    def riding(self, lead: ModelJob, status: str) -> list[ModelJob]:
        """Members (``active``) or offers (``waiting``) of a lead, in order."""
        return sorted(
            (
                j
                for j in self.jobs.values()
                if j.batch_of == lead.id and j.status == status
            ),
            key=lambda j: j.id,
        )

    def free_messages(self, group: str) -> list[ModelJob]:
        """A group's waiting messages not offered to anyone, oldest first."""
        return sorted(
            (
                j
                for j in self.waiting_in(group)
                if j.kind == "message" and j.batch_of is None
            ),
            key=lambda j: j.id,
        )

    def head(self, group: str, now: float) -> ModelJob | None:
        """The job a free group would start now, or None if it cannot start."""
        waiting = self.waiting_in(group)
        if any(j.backoff_until is not None and j.backoff_until > now for j in waiting):
            return None  # a failed job waits out its backoff and holds the group
        due_tasks = [j for j in waiting if j.kind == "task" and j.run_after <= now]
        if due_tasks:
            return min(due_tasks, key=lambda j: (j.run_after, j.id))
        messages = [j for j in waiting if j.kind == "message"]
        return min(messages, key=lambda j: j.id) if messages else None

    def expected_claim(self, cap: int, limit: int | None) -> list[ModelJob]:
        now = self.clock.now()
        slots = cap - len(self.active_jobs())
        if limit is not None:
            slots = min(slots, limit)
        busy = {j.group for j in self.active_jobs()}
        ranked = []
        for group in GROUPS:
            head = None if group in busy else self.head(group, now)
            if head is not None:
                rank = min((j.priority, j.id) for j in self.waiting_in(group))
                ranked.append((rank, head))
        ranked.sort(key=lambda pair: pair[0])
        return [head for _, head in ranked[: max(slots, 0)]]

    def expected_riders(self, head: ModelJob, batch: Batch | None) -> list[ModelJob]:
        """The messages that follow a head message into its attempt: the next
        ones of its group in order, while the count and the bytes allow (the
        head itself always goes); a task runs alone."""
        if head.kind != "message" or batch is None:
            return []
        line = self.free_messages(head.group)
        assert line[0] is head
        riders: list[ModelJob] = []
        total = head.size
        for job in line[1:]:
            total += job.size
            if len(riders) + 1 >= batch.messages or total > batch.bytes:
                break
            riders.append(job)
        return riders

    def live_series(self) -> set[int | None]:
        """Series with an occurrence waiting or running (a few at a time
        keep the groups' messages moving)."""
        return {
            j.series
            for j in self.jobs.values()
            if j.interval is not None and j.status in ("waiting", "active")
        }

    def due_task_in(self, group: str) -> bool:
        now = self.clock.now()
        return any(
            j.kind == "task" and j.run_after <= now for j in self.waiting_in(group)
        )

    def pick(self, index: int, *statuses: str) -> ModelJob:
        """A job by index: among those in ``statuses`` when there are any (so
        most steps do something), else among all jobs (so refusals are
        exercised too)."""
        everyone = sorted(self.jobs.values(), key=lambda j: j.id)
        pool = [j for j in everyone if j.status in statuses] or everyone
        return pool[index % len(pool)]

    def pick_lead(self, index: int, leads_below: int = 80) -> ModelJob:
        """For a fenced call: an active lead when ``index < leads_below``,
        else (and when there is none) an active job (members are refused),
        or for the highest indexes any job at all (stale attempts)."""
        leads = sorted(self.active_jobs(), key=lambda j: j.id)
        if leads and index < leads_below:
            return leads[index % len(leads)]
        return self.pick(index, "active") if index < 90 else self.pick(index)

    def rows(self) -> dict[int, tuple[object, ...]]:
        """Every stored job row, whole."""
        return {r[0]: r for r in self.raw.execute("SELECT * FROM jobs")}

    @staticmethod
    def is_member(job: ModelJob) -> bool:
        return job.status == "active" and job.batch_of is not None

    def check_started(self, started: list[ModelJob]) -> None:
        """Messages start in enqueue order: when one starts (as a lead or a
        member), no older message of its group is still waiting.  The one
        exception: an old message revived (``retry``) after this one had
        been offered; the offer was already in the agent's hands."""
        for job in started:
            if job.kind != "message":
                continue
            overtaken = [
                j.id
                for j in self.waiting_in(job.group)
                if j.kind == "message"
                and j.id < job.id
                and not (job.batch_of is not None and j.revived_at > job.offered_at)
            ]
            assert overtaken == [], f"job {job.id} started before {overtaken}"

    def end_batch(self, lead: ModelJob, status: str) -> None:
        """A lead's attempt ends for good: members share its outcome, offers
        not received go back in line, a recurring occurrence schedules the
        next one (unless it was cancelled: that ends its series)."""
        now = self.clock.now()
        for job in [lead, *self.riding(lead, "active")]:
            job.status = status
            job.finished_at = now
        for offer in self.riding(lead, "waiting"):
            offer.batch_of = None
        if lead.interval is not None and status != "cancelled":
            self.schedule_next(lead)

    def requeue_batch(self, lead: ModelJob, *, spent: int) -> None:
        """A lead goes back to waiting (already done to ``lead``); its members
        follow it, due when it is; offers not received go back in line."""
        for member in self.riding(lead, "active"):
            member.status = "waiting"
            member.batch_of = None
            member.run_after = lead.run_after
            member.retry_count += spent
            member.backoff_until = lead.backoff_until if spent else None
        for offer in self.riding(lead, "waiting"):
            offer.batch_of = None

    def schedule_next(self, job: ModelJob) -> None:
        """The next occurrence of a series, at the first slot after this
        one's that is not already past; none if the series already has an
        occurrence after this one's slot (its successor, or a later one
        whose chain went on after this one's successor was pruned)."""
        assert job.interval is not None and job.scheduled_for is not None
        had = [j.id for j in self.jobs.values() if j.follows == job.id]
        successors = self.raw.execute(
            "SELECT id FROM jobs WHERE follows = ?", (job.id,)
        ).fetchall()
        if had:
            assert [r[0] for r in successors] == had  # no second successor
            return
        scheduled_for = job.scheduled_for
        if any(
            j.series == job.series
            and j.scheduled_for is not None
            and j.scheduled_for > scheduled_for
            for j in self.jobs.values()
        ):
            assert successors == []
            job.successor_lost = True
            return
        now = self.clock.now()
        slot = job.scheduled_for + job.interval
        while slot < now:
            slot += job.interval
        assert [r[0] for r in successors] == [self.last_id + 1]
        job.successor_lost = False
        self.last_id += 1
        self.jobs[self.last_id] = ModelJob(
            id=self.last_id,
            group=job.group,
            kind="task",
            priority=job.priority,
            run_after=slot,
            max_retries=job.max_retries,
            size=job.size,
            interval=job.interval,
            series=job.series,
            scheduled_for=slot,
            follows=job.id,
        )

    def fenced(self, job: ModelJob, current: bool, call: Callable[[], T]) -> T | None:
        """Run a fenced call: a member is refused because its lead decides
        for it; any other non-current attempt is refused as stale."""
        try:
            result = call()
        except StaleAttempt:
            assert not current and not self.is_member(job)
            return None
        except InvalidTransition as exc:
            assert self.is_member(job), exc
            assert "runs in the attempt of job" in str(exc)
            return None
        assert current
        return result

    # -- rules ----------------------------------------------------------------------

    @initialize()
    def start_empty(self) -> None:
        assert self.queue.claim(3) == []

    @rule(
        group=st.sampled_from(GROUPS),
        kind=st.sampled_from(["message", "message", "message", "task"]),
        priority=st.sampled_from(list(PRIORITY)),
        delay=st.sampled_from([None, None, -5.0, 0.0, 7.0, 30.0, 100.0]),
        max_retries=st.sampled_from([None, 0, 1, 2]),
        size=st.sampled_from(SIZES),
    )
    def enqueue(
        self,
        group: str,
        kind: str,
        priority: str,
        delay: float | None,
        max_retries: int | None,
        size: int,
    ) -> None:
        now = self.clock.now()
        run_after = None if kind == "message" or delay is None else now + delay
        job = self.queue.enqueue(
            group,
            kind[0] * size,
            kind=kind,
            priority=priority,
            run_after=run_after,
            max_retries=max_retries,
        )
        assert job.id > self.last_id  # ids strictly increase, never reused
        self.last_id = job.id
        self.jobs[job.id] = ModelJob(
            id=job.id,
            group=group,
            kind=kind,
            priority=PRIORITY[priority],
            run_after=now if run_after is None else run_after,
            max_retries=5 if max_retries is None else max_retries,
            size=size,
        )

    @rule(
        group=st.sampled_from(GROUPS),
        sizes=st.lists(st.sampled_from(SIZES), min_size=2, max_size=4),
        max_retries=st.sampled_from([None, 0, 1]),
    )
    def enqueue_burst(
        self, group: str, sizes: list[int], max_retries: int | None
    ) -> None:
        """Someone writes several messages in a row (what batches are for)."""
        for size in sizes:
            self.enqueue(group, "message", "normal", None, max_retries, size)

    @precondition(lambda self: self.active_jobs())
    @rule(
        index=st.integers(0, 99),
        sizes=st.lists(st.sampled_from(SIZES), min_size=1, max_size=3),
        max_retries=st.sampled_from([None, 0, 1]),
    )
    def enqueue_follow_up(
        self, index: int, sizes: list[int], max_retries: int | None
    ) -> None:
        """Someone writes again in a chat whose agent is running."""
        leads = sorted(self.active_jobs(), key=lambda j: j.id)
        group = leads[index % len(leads)].group
        for size in sizes:
            self.enqueue(group, "message", "normal", None, max_retries, size)

    @precondition(lambda self: len(self.live_series()) < 2)
    @rule(
        group=st.sampled_from(GROUPS),
        priority=st.sampled_from(list(PRIORITY)),
        delay=st.sampled_from([None, -5.0, 30.0, 100.0]),
        interval=st.sampled_from([30, 60, 600]),
        max_retries=st.sampled_from([None, 0, 0, 1]),
    )
    def enqueue_recurring(
        self,
        group: str,
        priority: str,
        delay: float | None,
        interval: int,
        max_retries: int | None,
    ) -> None:
        now = self.clock.now()
        run_after = None if delay is None else now + delay
        job = self.queue.enqueue(
            group,
            "tick",
            kind="task",
            priority=priority,
            run_after=run_after,
            max_retries=max_retries,
            repeat=f"every {interval}",
        )
        assert job.id > self.last_id
        self.last_id = job.id
        due = now if run_after is None else run_after
        assert (job.series_id, job.scheduled_for, job.follows) == (job.id, due, None)
        self.jobs[job.id] = ModelJob(
            id=job.id,
            group=group,
            kind="task",
            priority=PRIORITY[priority],
            run_after=due,
            max_retries=5 if max_retries is None else max_retries,
            size=4,
            interval=float(interval),
            series=job.id,
            scheduled_for=due,
        )

    @rule(cap=st.integers(1, MAX_CAP), limit=st.sampled_from([None, None, 1, 2]))
    def claim(self, cap: int, limit: int | None) -> None:
        self.claim_batch(cap, limit, None)

    @rule(
        cap=st.integers(1, MAX_CAP),
        limit=st.sampled_from([None, None, 1, 2]),
        batch=st.sampled_from(BATCHES),
    )
    def claim_batch(self, cap: int, limit: int | None, batch: Batch | None) -> None:
        expected = self.expected_claim(cap, limit)
        riders = {m.id: self.expected_riders(m, batch) for m in expected}
        active_before = len(self.active_jobs())
        claimed = self.queue.claim(cap, limit, batch=batch)

        assert [(j.id, j.group_id) for j in claimed] == [
            (m.id, m.group) for m in expected
        ]
        assert len(claimed) <= max(0, cap - active_before)
        now = self.clock.now()
        for job, model in zip(claimed, expected, strict=True):
            for started in (model, *riders[model.id]):
                started.status = "active"
                started.attempt += 1
                started.backoff_until = None
                started.batch_of = None if started is model else model.id
            model.idle_since = model.closing_at = None
            model.output_lines = 0
            assert job.attempt == model.attempt
            assert job.started_at == now
            assert job.batch_of is None
            members = self.queue.members(job.id)
            assert [m.id for m in members] == [r.id for r in riders[model.id]]
            assert all(m.started_at == now for m in members)
            self.check_started([model, *riders[model.id]])
        if claimed:
            assert len(self.active_jobs()) <= cap

    def _fenced(self, index: int, skew: int) -> tuple[ModelJob, int, bool]:
        """A job and an attempt number for a fenced call; True if current."""
        # Ending attempts less often than starting them keeps conversations
        # going long enough to offer, receive and close.
        job = self.pick_lead(index, leads_below=50)
        attempt = job.attempt + skew
        current = job.status == "active" and job.batch_of is None and skew == 0
        return job, attempt, current

    @precondition(lambda self: self.jobs)
    @rule(index=st.integers(0, 99), skew=st.sampled_from([0, 0, 0, -1, 1]))
    def start(self, index: int, skew: int) -> None:
        job, attempt, current = self._fenced(index, skew)
        container = f"c{job.id}-{attempt}"
        started = self.fenced(
            job, current, lambda: self.queue.start(job.id, attempt, container)
        )
        if started is not None:
            assert started.container_id == container
            for member in self.queue.members(job.id):
                assert member.container_id == container

    @precondition(lambda self: self.jobs)
    @rule(index=st.integers(0, 99), skew=st.sampled_from([0, 0, 0, -1]))
    def finish(self, index: int, skew: int) -> None:
        job, attempt, current = self._fenced(index, skew)
        if self.fenced(job, current, lambda: self.queue.finish(job.id, attempt)):
            self.end_batch(job, "completed")

    @precondition(lambda self: self.jobs)
    @rule(
        index=st.integers(0, 99),
        skew=st.sampled_from([0, 0, 0, -1]),
        retryable=st.sampled_from([True, True, True, False]),
    )
    def fail(self, index: int, skew: int, retryable: bool) -> None:
        job, attempt, current = self._fenced(index, skew)
        result = self.fenced(
            job,
            current,
            lambda: self.queue.fail(job.id, attempt, "exit 1", retryable=retryable),
        )
        if result is None:
            return
        now = self.clock.now()
        if retryable and job.retry_count < job.max_retries:
            job.retry_count += 1
            delay = min(CAP, BASE * 2 ** (job.retry_count - 1))
            job.status = "waiting"
            job.run_after = job.backoff_until = now + delay
            assert result.run_after == now + delay
            self.requeue_batch(job, spent=1)
        else:
            self.end_batch(job, "failed")
        assert result.status == job.status

    @precondition(lambda self: self.jobs)
    @rule(index=st.integers(0, 99), skew=st.sampled_from([0, 0, -1, 1]))
    def release(self, index: int, skew: int) -> None:
        job, attempt, current = self._fenced(index, skew)
        result = self.fenced(
            job,
            current,
            lambda: self.queue.release(job.id, attempt, "engine unreachable"),
        )
        if result is None:
            return
        job.status = "waiting"
        job.run_after = self.clock.now()
        assert result.retry_count == job.retry_count
        self.requeue_batch(job, spent=0)

    @precondition(lambda self: self.jobs)
    @rule(index=st.integers(0, 99))
    def cancel(self, index: int) -> None:
        job = self.pick(index, "waiting", "active") if index < 80 else self.pick(index)
        try:
            result = self.queue.cancel(job.id)
        except StaleAttempt as exc:  # pragma: no cover - the wrong error
            raise AssertionError("cancel is not fenced") from exc
        except InvalidTransition:
            # Offers belong to the running attempt until it takes or drops
            # them; members share their lead's attempt.
            assert job.status not in ("waiting", "active") or job.batch_of is not None
            return
        assert job.status in ("waiting", "active") and job.batch_of is None
        assert result.status.value == "cancelled"
        if job.status == "active":
            self.end_batch(job, "cancelled")
            return
        job.status = "cancelled"
        job.finished_at = self.clock.now()
        job.backoff_until = None

    @precondition(lambda self: self.jobs)
    @rule(index=st.integers(0, 99))
    def retry(self, index: int) -> None:
        job = (
            self.pick(index, "failed", "cancelled") if index < 80 else self.pick(index)
        )
        try:
            self.queue.retry(job.id)
        except InvalidTransition:
            assert job.status not in ("failed", "cancelled")
            return
        assert job.status in ("failed", "cancelled")
        self.tick += 1
        job.status = "waiting"
        job.retry_count = 0
        job.run_after = self.clock.now()
        job.finished_at = None
        job.batch_of = None
        job.revived_at = self.tick

    @precondition(lambda self: self.jobs)
    @rule(
        index=st.integers(0, 99),
        skew=st.sampled_from([0, 0, 0, -1]),
        limit=st.integers(1, 3),
    )
    def offer(self, index: int, skew: int, limit: int) -> None:
        lead = self.pick_lead(index)
        current = lead.status == "active" and lead.batch_of is None and skew == 0
        offered = self.fenced(
            lead,
            current,
            lambda: self.queue.offer(lead.id, lead.attempt + skew, limit),
        )
        if offered is None:
            return
        expected: list[ModelJob] = []
        if (
            lead.kind == "message"
            and lead.closing_at is None
            and not self.due_task_in(lead.group)
        ):
            expected = self.free_messages(lead.group)[:limit]
        assert [j.id for j in offered] == [j.id for j in expected]
        self.tick += 1
        for job in expected:
            job.batch_of = lead.id
            job.offered_at = self.tick
        assert [j.id for j in self.queue.offered(lead.id)] == [
            j.id for j in self.riding(lead, "waiting")
        ]

    @precondition(lambda self: self.active_jobs())
    @rule(
        index=st.integers(0, 99),
        kinds=st.lists(st.sampled_from(LINES), max_size=5),
        other=st.integers(0, 99),
        again=st.sampled_from([False, False, False, True]),
    )
    def record_output(
        self, index: int, kinds: list[str], other: int, again: bool
    ) -> None:
        """The agent of a running attempt writes lines: it takes its offers
        in the order they reached its inbox, says when it is idle, replies,
        logs, and names jobs it was never offered (which changes nothing)."""
        lead = sorted(self.active_jobs(), key=lambda j: j.id)[
            index % len(self.active_jobs())
        ]
        inbox = self.riding(lead, "waiting")
        mine = {j.id for j in inbox}
        # Jobs offered to other attempts first: the likeliest to be mistaken.
        elsewhere = [
            j.id
            for j in self.jobs.values()
            if j.status == "waiting" and j.batch_of not in (None, lead.id)
        ]
        strangers = elsewhere if elsewhere and other < 50 else sorted(self.jobs)
        strangers = [j for j in strangers if j not in mine]
        lines = []
        for kind in kinds:
            if kind == "receive":  # the oldest offer left, else itself
                lines.append(received_line(inbox.pop(0).id if inbox else lead.id))
            elif kind == "idle":
                lines.append('{"type": "idle"}')
            elif kind == "reply":
                lines.append(json.dumps({"type": "reply", "text": "hello"}))
            elif kind == "log":
                lines.append("thinking...")
            elif kind == "stranger" and strangers:
                lines.append(received_line(strangers[other % len(strangers)]))
            elif kind == "ghost":
                lines.append(received_line(self.last_id + 50))
            else:  # an id that is not a number
                lines.append(json.dumps({"type": "received", "id": str(lead.id)}))
        start = 0 if again else lead.output_lines
        before = self.rows()

        out = self.queue.record_output(self.queue.get(lead.id), start, lines)

        # Only the lead and the offers it took change.
        after = self.rows()
        taken = {j.id for j in out.received}
        for job_id in mine - taken:
            assert after[job_id] == before[job_id]
        del before[lead.id], after[lead.id]
        assert {i: r for i, r in after.items() if i not in mine} == {
            i: r for i, r in before.items() if i not in mine
        }

        now = self.clock.now()
        received = []
        for position, line in enumerate(lines, start=start):
            document = json.loads(line) if line.startswith("{") else {}
            named = document.get("id")
            target = self.jobs.get(named) if isinstance(named, int) else None
            if document.get("type") == "idle":
                lead.idle_since = now
            elif document.get("type") == "reply":
                self.replies.add((lead.id, lead.attempt, position))
            elif (
                target is not None
                and target.batch_of == lead.id
                and target.status == "waiting"
            ):
                target.status = "active"
                target.attempt += 1
                lead.idle_since = None
                received.append(target)
        lead.output_lines = max(lead.output_lines, start + len(lines))
        assert [j.id for j in out.received] == [j.id for j in received]
        assert out.idle_since == lead.idle_since
        assert out.closing_at == lead.closing_at
        self.check_started(received)

    @precondition(lambda self: self.jobs)
    @rule(index=st.integers(0, 99), skew=st.sampled_from([0, 0, 0, -1]))
    def request_close(self, index: int, skew: int) -> None:
        lead = self.pick_lead(index)
        current = lead.status == "active" and lead.batch_of is None and skew == 0
        closed = self.fenced(
            lead,
            current,
            lambda: self.queue.request_close(lead.id, lead.attempt + skew, "idle"),
        )
        if closed is None:
            return
        if lead.closing_at is None:  # asked once per attempt
            lead.closing_at = self.clock.now()
        assert closed.closing_at == lead.closing_at

    @rule(
        completed=st.sampled_from([0.0, 10.0, 100.0, 86400.0]),
        failed=st.sampled_from([0.0, 50.0, 604800.0]),
        cancelled=st.sampled_from([0.0, 50.0, 604800.0]),
    )
    def prune(self, completed: float, failed: float, cancelled: float) -> None:
        now = self.clock.now()
        ages = {"completed": completed, "failed": failed, "cancelled": cancelled}
        doomed = {
            j.id
            for j in self.jobs.values()
            if j.status in ages
            and j.finished_at is not None
            and j.finished_at < now - ages[j.status]
        }
        result = self.queue.prune(completed, failed, cancelled)
        assert result.total == len(doomed)
        for job_id in doomed:
            del self.jobs[job_id]
            try:
                self.queue.get(job_id)
            except JobNotFound:
                pass
            else:  # pragma: no cover
                raise AssertionError(f"job {job_id} survived the prune")
        self.replies = {r for r in self.replies if r[0] not in doomed}
        followed = {j.follows for j in self.jobs.values()}
        for job in self.jobs.values():
            ended = job.status in ("completed", "failed")
            if job.interval is not None and ended and job.id not in followed:
                job.successor_lost = True  # pruned with its history

    @rule(seconds=st.sampled_from([0.5, 1.0, 3.0, 5.0, 10.0, 30.0, 90.0, 86400.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    # -- invariants, checked after every step -------------------------------------------

    @invariant()
    def statuses_match_the_model(self) -> None:
        rows = self.raw.execute(
            "SELECT id, status, attempt, retry_count, batch_of FROM jobs"
        ).fetchall()
        assert {r[0]: r[1:] for r in rows} == {
            j.id: (j.status, j.attempt, j.retry_count, j.batch_of)
            for j in self.jobs.values()
        }
        orphan_events = self.raw.execute(
            "SELECT count(*) FROM events WHERE job_id NOT IN (SELECT id FROM jobs)"
        ).fetchone()[0]
        assert orphan_events == 0

    @invariant()
    def one_active_per_group(self) -> None:
        busiest = self.raw.execute(
            "SELECT max(n) FROM (SELECT count(*) AS n FROM jobs "
            "WHERE status = 'active' AND batch_of IS NULL GROUP BY group_id)"
        ).fetchone()[0]
        assert busiest in (None, 1)
        (leads,) = self.raw.execute(
            "SELECT count(*) FROM jobs WHERE status = 'active' AND batch_of IS NULL"
        ).fetchone()
        assert leads == len(self.active_jobs()) <= MAX_CAP

    @invariant()
    def riders_belong_to_an_active_lead_of_their_group(self) -> None:
        # Active: a member of a running attempt.  Waiting: an offer to one.
        strays = self.raw.execute(
            "SELECT j.id, j.status FROM jobs AS j LEFT JOIN jobs AS lead "
            "ON lead.id = j.batch_of "
            "WHERE j.batch_of IS NOT NULL AND j.status IN ('active', 'waiting') "
            "AND (lead.id IS NULL OR lead.status != 'active' "
            "OR lead.batch_of IS NOT NULL OR lead.group_id != j.group_id)"
        ).fetchall()
        assert strays == []

    @invariant()
    def batches_match_the_model(self) -> None:
        for lead in self.active_jobs():
            assert [j.id for j in self.queue.members(lead.id)] == [
                j.id for j in self.riding(lead, "active")
            ]
            row = self.raw.execute(
                "SELECT idle_since, closing_at FROM jobs WHERE id = ?", (lead.id,)
            ).fetchone()
            assert row == (lead.idle_since, lead.closing_at)
        (replies,) = self.raw.execute(
            "SELECT count(*) FROM replies WHERE kind = 'reply'"
        ).fetchone()
        assert replies == len(self.replies)

    @invariant()
    def series_match_the_model(self) -> None:
        rows = self.raw.execute(
            "SELECT id, series_id, scheduled_for, follows, run_after FROM jobs "
            "WHERE repeat IS NOT NULL"
        ).fetchall()
        series = {j.id: j for j in self.jobs.values() if j.interval is not None}
        assert {r[0]: r[1:4] for r in rows} == {
            j.id: (j.series, j.scheduled_for, j.follows) for j in series.values()
        }
        doubled = self.raw.execute(
            "SELECT series_id, scheduled_for FROM jobs WHERE series_id IS NOT NULL "
            "GROUP BY series_id, scheduled_for HAVING count(*) > 1"
        ).fetchall()
        assert doubled == []
        successors: dict[int, int] = {}
        for job in series.values():
            if job.follows is not None:
                successors[job.follows] = successors.get(job.follows, 0) + 1
        for job in series.values():
            count = successors.get(job.id, 0)
            if job.status in ("completed", "failed") and not job.successor_lost:
                assert count == 1, f"occurrence {job.id} has {count} successors"
            else:
                assert count <= 1

    @invariant()
    def lanes_agree_with_the_jobs(self) -> None:
        # A lane exists exactly for a group with waiting jobs and ranks it by
        # its most urgent one; status shows active and waiting per group.
        lanes = {
            r[0]: r[1:]
            for r in self.raw.execute(
                "SELECT group_id, rank_priority, rank_job FROM lanes"
            )
        }
        expected_lanes = {}
        expected_groups = {}
        for group in GROUPS:
            waiting = self.waiting_in(group)
            active = [j.id for j in self.active_jobs() if j.group == group]
            if waiting:
                expected_lanes[group] = min((j.priority, j.id) for j in waiting)
            if waiting or active:
                expected_groups[group] = (active[0] if active else None, len(waiting))
        assert lanes == expected_lanes
        shown = {
            g.group_id: (g.active_job, g.waiting) for g in self.queue.status().groups
        }
        assert shown == expected_groups

    @invariant()
    def next_ready_at_agrees(self) -> None:
        # When the queue says nothing can start yet, the model agrees.
        now = self.clock.now()
        ready = self.queue.next_ready_at()
        if ready is None or ready > now:
            assert self.expected_claim(cap=99, limit=None) == []


QueueMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("MOORAGE_STATEFUL_EXAMPLES", "150")),
    stateful_step_count=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestQueueMachine = QueueMachine.TestCase
