"""Random sequences of every queue operation against a plain in-memory model.

The model below is written from the rules in DESIGN.md, not from the queue's
code: after each step the real SQLite store must agree with it on every job's
status, on exactly which jobs a claim returns, and on the lanes table.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path

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
from moorage.queue import Queue, RetryPolicy, StaleAttempt
from moorage.store.sqlite import DB_FILENAME

GROUPS = ("a", "b", "c", "d")
PRIORITY = {"high": 0, "normal": 1, "low": 2}
BASE, CAP = 5.0, 3600.0


@dataclass
class ModelJob:
    id: int
    group: str
    kind: str
    priority: int
    run_after: float
    max_retries: int
    status: str = "waiting"
    attempt: int = 0
    retry_count: int = 0
    finished_at: float | None = None
    backoff_until: float | None = None  # set while waiting out a failure's backoff


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
        return [j for j in self.jobs.values() if j.status == "active"]

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

    def pick(self, index: int, *statuses: str) -> ModelJob:
        """A job by index: among those in ``statuses`` when there are any (so
        most steps do something), else among all jobs (so refusals are
        exercised too)."""
        everyone = sorted(self.jobs.values(), key=lambda j: j.id)
        pool = [j for j in everyone if j.status in statuses] or everyone
        return pool[index % len(pool)]

    # -- rules ----------------------------------------------------------------------

    @initialize()
    def start_empty(self) -> None:
        assert self.queue.claim(3) == []

    @rule(
        group=st.sampled_from(GROUPS),
        kind=st.sampled_from(["message", "message", "task"]),
        priority=st.sampled_from(list(PRIORITY)),
        delay=st.sampled_from([None, None, -5.0, 0.0, 7.0, 30.0, 100.0]),
        max_retries=st.sampled_from([None, 0, 1, 2]),
    )
    def enqueue(
        self,
        group: str,
        kind: str,
        priority: str,
        delay: float | None,
        max_retries: int | None,
    ) -> None:
        now = self.clock.now()
        run_after = None if kind == "message" or delay is None else now + delay
        job = self.queue.enqueue(
            group,
            f"{kind} for {group}",
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
        )

    @rule(cap=st.integers(1, 4), limit=st.sampled_from([None, None, 1, 2]))
    def claim(self, cap: int, limit: int | None) -> None:
        expected = self.expected_claim(cap, limit)
        active_before = len(self.active_jobs())
        claimed = self.queue.claim(cap, limit)

        assert [(j.id, j.group_id) for j in claimed] == [
            (m.id, m.group) for m in expected
        ]
        assert len(claimed) <= max(0, cap - active_before)
        now = self.clock.now()
        for job, model in zip(claimed, expected, strict=True):
            model.status = "active"
            model.attempt += 1
            model.backoff_until = None
            assert job.attempt == model.attempt
            assert job.started_at == now
        if claimed:
            assert len(self.active_jobs()) <= cap

    def _fenced(self, index: int, skew: int) -> tuple[ModelJob, int, bool]:
        """A job and an attempt number for a fenced call; True if current."""
        job = self.pick(index, "active") if index < 80 else self.pick(index)
        attempt = job.attempt + skew
        return job, attempt, job.status == "active" and skew == 0

    @precondition(lambda self: self.jobs)
    @rule(index=st.integers(0, 99), skew=st.sampled_from([0, 0, 0, -1, 1]))
    def start(self, index: int, skew: int) -> None:
        job, attempt, current = self._fenced(index, skew)
        try:
            started = self.queue.start(job.id, attempt, f"c{job.id}-{attempt}")
        except StaleAttempt:
            assert not current
        else:
            assert current and started.container_id == f"c{job.id}-{attempt}"

    @precondition(lambda self: self.jobs)
    @rule(index=st.integers(0, 99), skew=st.sampled_from([0, 0, 0, -1]))
    def finish(self, index: int, skew: int) -> None:
        job, attempt, current = self._fenced(index, skew)
        try:
            self.queue.finish(job.id, attempt)
        except StaleAttempt:
            assert not current
            return
        assert current
        job.status = "completed"
        job.finished_at = self.clock.now()

    @precondition(lambda self: self.jobs)
    @rule(
        index=st.integers(0, 99),
        skew=st.sampled_from([0, 0, 0, -1]),
        retryable=st.sampled_from([True, True, True, False]),
    )
    def fail(self, index: int, skew: int, retryable: bool) -> None:
        job, attempt, current = self._fenced(index, skew)
        try:
            result = self.queue.fail(job.id, attempt, "exit 1", retryable=retryable)
        except StaleAttempt:
            assert not current
            return
        assert current
        now = self.clock.now()
        if retryable and job.retry_count < job.max_retries:
            job.retry_count += 1
            delay = min(CAP, BASE * 2 ** (job.retry_count - 1))
            job.status = "waiting"
            job.run_after = job.backoff_until = now + delay
            assert result.run_after == now + delay
        else:
            job.status = "failed"
            job.finished_at = now
        assert result.status == job.status

    @precondition(lambda self: self.jobs)
    @rule(index=st.integers(0, 99), skew=st.sampled_from([0, 0, -1, 1]))
    def release(self, index: int, skew: int) -> None:
        job, attempt, current = self._fenced(index, skew)
        try:
            result = self.queue.release(job.id, attempt, "engine unreachable")
        except StaleAttempt:
            assert not current
            return
        assert current
        job.status = "waiting"
        job.run_after = self.clock.now()
        assert result.retry_count == job.retry_count  # no retry spent

    @precondition(lambda self: self.jobs)
    @rule(index=st.integers(0, 99))
    def cancel(self, index: int) -> None:
        job = self.pick(index, "waiting") if index < 80 else self.pick(index)
        try:
            self.queue.cancel(job.id)
        except StaleAttempt as exc:  # pragma: no cover - the wrong error
            raise AssertionError("cancel is not fenced") from exc
        except InvalidTransition:
            assert job.status != "waiting"
            return
        assert job.status == "waiting"
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
        job.status = "waiting"
        job.retry_count = 0
        job.run_after = self.clock.now()
        job.finished_at = None

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

    @rule(seconds=st.sampled_from([0.5, 1.0, 3.0, 5.0, 10.0, 30.0, 90.0, 86400.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    # -- invariants, checked after every step -------------------------------------------

    @invariant()
    def statuses_match_the_model(self) -> None:
        rows = self.raw.execute(
            "SELECT id, status, attempt, retry_count FROM jobs"
        ).fetchall()
        assert {r[0]: r[1:] for r in rows} == {
            j.id: (j.status, j.attempt, j.retry_count) for j in self.jobs.values()
        }
        orphan_events = self.raw.execute(
            "SELECT count(*) FROM events WHERE job_id NOT IN (SELECT id FROM jobs)"
        ).fetchone()[0]
        assert orphan_events == 0

    @invariant()
    def one_active_per_group(self) -> None:
        busiest = self.raw.execute(
            "SELECT max(n) FROM (SELECT count(*) AS n FROM jobs "
            "WHERE status = 'active' GROUP BY group_id)"
        ).fetchone()[0]
        assert busiest in (None, 1)
        assert len(self.active_jobs()) <= 4  # the largest cap ever used

    @invariant()
    def lanes_agree_with_the_jobs(self) -> None:
        lanes = {
            r[0]: r[1:]
            for r in self.raw.execute(
                "SELECT group_id, active_job, waiting, rank_priority, rank_job FROM lanes"
            )
        }
        expected = {}
        for group in GROUPS:
            waiting = self.waiting_in(group)
            active = [j.id for j in self.active_jobs() if j.group == group]
            if not waiting and not active:
                continue
            rank = min(((j.priority, j.id) for j in waiting), default=(None, None))
            expected[group] = (active[0] if active else None, len(waiting), *rank)
        assert lanes == expected

    @invariant()
    def next_ready_at_agrees(self) -> None:
        # When the queue says nothing can start yet, the model agrees.
        now = self.clock.now()
        ready = self.queue.next_ready_at()
        if ready is None or ready > now:
            assert self.expected_claim(cap=99, limit=None) == []


QueueMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestQueueMachine = QueueMachine.TestCase
