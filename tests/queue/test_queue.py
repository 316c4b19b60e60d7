"""The queue's state machine on a real SQLite file, one behaviour per test.

Every check reads the rows twice: through the API and raw, from the database
file, through a second connection.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from moorage.clock import FakeClock
from moorage.errors import (
    InvalidInput,
    InvalidTransition,
    JobNotFound,
    MoorageError,
    StoreError,
)
from moorage.models import Kind, Priority, Status
from moorage.queue import DAY, Queue, RetryPolicy, StaleAttempt
from moorage.store.schema import MIGRATIONS
from moorage.store.sqlite import DB_FILENAME

HOUR = 3600.0


def job_row(raw: sqlite3.Connection, job_id: int) -> dict[str, Any]:
    row = raw.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
    assert row is not None, f"job {job_id} has no row"
    return dict(row)


def event_rows(raw: sqlite3.Connection, job_id: int) -> list[tuple[Any, ...]]:
    return [
        tuple(r)
        for r in raw.execute(
            "SELECT from_status, to_status, attempt, detail FROM events "
            "WHERE job_id = ? ORDER BY id",
            (job_id,),
        )
    ]


def lane_row(raw: sqlite3.Connection, group: str) -> dict[str, Any] | None:
    row = raw.execute("SELECT * FROM lanes WHERE group_id = ?", (group,)).fetchone()
    return None if row is None else dict(row)


def snapshot(raw: sqlite3.Connection) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, for 'nothing changed' checks."""
    tables = ("jobs", "events", "lanes", "replies", "meta")
    return {
        t: sorted(tuple(r) for r in raw.execute(f"SELECT * FROM {t}")) for t in tables
    }


def ids_of(raw: sqlite3.Connection, where: str = "1") -> set[int]:
    return {r[0] for r in raw.execute(f"SELECT id FROM jobs WHERE {where}")}


def claim_one(queue: Queue, cap: int = 10) -> Any:
    jobs = queue.claim(cap, limit=1)
    assert len(jobs) == 1
    return jobs[0]


# -- the rows after each operation ---------------------------------------------


def test_enqueue_writes_a_waiting_row_and_one_event(
    queue: Queue, raw: sqlite3.Connection, clock: FakeClock
) -> None:
    job = queue.enqueue(
        "family", "what's for dinner?", chat_jid="123@g.us", priority="high"
    )

    row = job_row(raw, job.id)
    assert row["group_id"] == "family"
    assert row["kind"] == "message"
    assert row["status"] == "waiting"
    assert row["priority"] == Priority.HIGH == 0
    assert row["message_text"] == "what's for dinner?"
    assert row["chat_jid"] == "123@g.us"
    assert row["enqueued_at"] == row["run_after"] == clock.now()
    assert row["attempt"] == row["retry_count"] == 0
    assert row["max_retries"] == 5
    assert row["started_at"] is None
    assert row["finished_at"] is None
    assert row["container_id"] is None
    assert row["last_error"] is None
    assert queue.get(job.id) == job
    assert event_rows(raw, job.id) == [(None, "waiting", 0, None)]
    assert lane_row(raw, "family") == {
        "group_id": "family",
        "rank_priority": 0,
        "rank_job": job.id,
        "held_until": 0.0,
        "ready_at": clock.now(),
    }


def test_claim_start_finish_rows(
    queue: Queue, raw: sqlite3.Connection, clock: FakeClock
) -> None:
    job = queue.enqueue("g", "hi")
    clock.advance(2)

    claimed = claim_one(queue)
    row = job_row(raw, job.id)
    assert (claimed.id, claimed.status, claimed.attempt) == (job.id, Status.ACTIVE, 1)
    assert row["status"] == "active"
    assert row["attempt"] == 1
    assert row["started_at"] == clock.now()
    assert row["finished_at"] is None
    # nothing else waits: the lane is gone; the active row alone holds the group
    assert lane_row(raw, "g") is None

    clock.advance(1)
    started = queue.start(job.id, 1, "c0ffee")
    assert started.container_id == job_row(raw, job.id)["container_id"] == "c0ffee"
    assert job_row(raw, job.id)["status"] == "active"

    clock.advance(3)
    done = queue.finish(job.id, 1)
    row = job_row(raw, job.id)
    assert done.status is Status.COMPLETED
    assert row["status"] == "completed"
    assert row["finished_at"] == clock.now()
    assert row["attempt"] == 1
    assert row["retry_count"] == 0
    assert row["container_id"] == "c0ffee"
    assert row["last_error"] is None
    assert queue.get(job.id) == done
    assert lane_row(raw, "g") is None

    assert event_rows(raw, job.id) == [
        (None, "waiting", 0, None),
        ("waiting", "active", 1, "claimed"),
        ("active", "active", 1, "started c0ffee"),
        ("active", "completed", 1, "exit 0"),
    ]
    events = queue.events(job.id)
    assert [(e.from_status, e.to_status, e.attempt) for e in events] == [
        (None, Status.WAITING, 0),
        (Status.WAITING, Status.ACTIVE, 1),
        (Status.ACTIVE, Status.ACTIVE, 1),
        (Status.ACTIVE, Status.COMPLETED, 1),
    ]
    assert [e.at for e in events] == [
        clock.now() - 6,
        clock.now() - 4,
        clock.now() - 3,
        clock.now(),
    ]


def test_fail_with_retries_left_waits_out_a_backoff(
    no_jitter_queue: Queue, raw: sqlite3.Connection, clock: FakeClock
) -> None:
    queue = no_jitter_queue
    job = queue.enqueue("g", "hi")
    claim_one(queue)
    queue.start(job.id, 1, "c1")

    failed = queue.fail(job.id, 1, "exit 3")
    row = job_row(raw, job.id)
    assert failed.status is Status.WAITING
    assert row["status"] == "waiting"
    assert row["retry_count"] == 1
    assert row["attempt"] == 1
    assert row["run_after"] == clock.now() + 5.0
    assert row["last_error"] == "exit 3"
    assert row["finished_at"] is None
    assert event_rows(raw, job.id)[-1] == (
        "active",
        "waiting",
        1,
        "exit 3; retry 1/5 in 5.0s",
    )
    lane = lane_row(raw, "g")
    assert lane is not None
    assert lane["rank_job"] == job.id
    assert lane["held_until"] == lane["ready_at"] == clock.now() + 5.0

    clock.advance(5)
    again = claim_one(queue)
    assert (again.id, again.attempt, again.retry_count) == (job.id, 2, 1)
    assert job_row(raw, job.id)["container_id"] is None  # cleared for the new attempt


def test_fail_not_retryable_fails_for_good(
    queue: Queue, raw: sqlite3.Connection, clock: FakeClock
) -> None:
    job = queue.enqueue("g", "hi")
    claim_one(queue)
    clock.advance(1)

    failed = queue.fail(job.id, 1, "bad image", retryable=False)
    row = job_row(raw, job.id)
    assert failed.status is Status.FAILED
    assert row["status"] == "failed"
    assert row["finished_at"] == clock.now()
    assert row["last_error"] == "bad image"
    assert row["retry_count"] == 0
    assert event_rows(raw, job.id)[-1] == ("active", "failed", 1, "bad image")
    assert lane_row(raw, "g") is None


def test_long_errors_are_cut_to_2000_characters(
    queue: Queue, raw: sqlite3.Connection
) -> None:
    job = queue.enqueue("g", "hi")
    claim_one(queue)
    queue.fail(job.id, 1, "x" * 5000)
    assert job_row(raw, job.id)["last_error"] == "x" * 2000


def test_every_transition_writes_exactly_one_event(
    queue: Queue, raw: sqlite3.Connection, clock: FakeClock
) -> None:
    def count() -> int:
        return int(raw.execute("SELECT count(*) FROM events").fetchone()[0])

    steps: list[Callable[[], object]] = []
    job = queue.enqueue("g", "a")
    assert count() == 1
    steps = [
        lambda: queue.claim(5),
        lambda: queue.start(job.id, 1, "c1"),
        lambda: queue.reclaim(job.id, 1, "reclaimed after restart"),
        lambda: queue.release(job.id, 1, "engine down"),
        lambda: queue.claim(5),
        lambda: queue.fail(job.id, 2, "exit 1"),
        lambda: clock.advance(60) or queue.claim(5),
        lambda: queue.fail(job.id, 3, "exit 1", retryable=False),
        lambda: queue.retry(job.id),
        lambda: queue.cancel(job.id),
        lambda: queue.retry(job.id),
        lambda: queue.claim(5),
        lambda: queue.finish(job.id, 4),
    ]
    for expected, step in enumerate(steps, start=2):
        step()
        assert count() == expected
    assert [e[1] for e in event_rows(raw, job.id)] == [
        "waiting",
        "active",
        "active",
        "active",
        "waiting",
        "active",
        "waiting",
        "active",
        "failed",
        "waiting",
        "cancelled",
        "waiting",
        "active",
        "completed",
    ]


# -- ids -------------------------------------------------------------------------


def test_ids_strictly_increase_and_are_never_reused_after_pruning(
    queue: Queue, raw: sqlite3.Connection, clock: FakeClock
) -> None:
    first = [queue.enqueue(f"g{i}", "x").id for i in range(3)]
    assert first == sorted(first) and len(set(first)) == 3
    for job in queue.claim(10):
        queue.finish(job.id, job.attempt)
    clock.advance(2 * DAY)

    assert queue.prune().completed == 3
    assert ids_of(raw) == set()

    later = [queue.enqueue("g0", "y").id for _ in range(2)]
    assert later[0] > first[-1]
    assert later[1] > later[0]


def test_ids_are_never_reused_after_reopening(
    make_queue: Callable[..., Queue], clock: FakeClock
) -> None:
    queue = make_queue()
    last = queue.enqueue("g", "x").id
    job = claim_one(queue)
    queue.finish(job.id, job.attempt)
    clock.advance(2 * DAY)
    queue.prune()
    queue.close()

    assert make_queue().enqueue("g", "y").id == last + 1


# -- prune -------------------------------------------------------------------------


def _finished(queue: Queue, clock: FakeClock, group: str, how: str) -> int:
    """A job that reaches a final status (``how``) now."""
    job = queue.enqueue(group, how)
    if how == "cancelled":
        queue.cancel(job.id)
        return job.id
    claimed = queue.claim(100)
    assert [j.id for j in claimed] == [job.id]
    if how == "completed":
        queue.finish(job.id, 1)
    else:
        queue.fail(job.id, 1, "boom", retryable=False)
    return job.id


def test_prune_deletes_exactly_the_old_finished_jobs_and_their_history(
    queue: Queue, raw: sqlite3.Connection, clock: FakeClock
) -> None:
    # finished at: age (at the time of the prune) in hours
    ages = {
        "completed": [200, 25, 23],
        "failed": [200, 169, 167, 25],
        "cancelled": [200, 169, 167],
    }
    plan = sorted(
        ((age, how) for how, hours in ages.items() for age in hours), reverse=True
    )
    made: dict[tuple[str, int], int] = {}
    elapsed = 0.0
    for age, how in plan:
        target = plan[0][0] - age
        clock.advance((target - elapsed) * HOUR)
        elapsed = target
        made[how, age] = _finished(queue, clock, f"{how}-{age}", how)
    waiting_old = queue.enqueue("w", "old waiting").id
    active = queue.enqueue("a", "active")
    assert [j.id for j in queue.claim(100)] == [waiting_old, active.id]
    queue.release(waiting_old, 1, "put back")
    waiting_new = queue.enqueue("w", "new waiting").id
    clock.advance((plan[0][0] - elapsed) * HOUR)

    before_events = {r[0] for r in raw.execute("SELECT DISTINCT job_id FROM events")}
    result = queue.prune()

    pruned = {
        made["completed", 200],
        made["completed", 25],
        made["failed", 200],
        made["failed", 169],
        made["cancelled", 200],
        made["cancelled", 169],
    }
    kept = {
        made["completed", 23],
        made["failed", 167],
        made["failed", 25],
        made["cancelled", 167],
        waiting_old,
        waiting_new,
        active.id,
    }
    assert (result.completed, result.failed, result.cancelled) == (2, 2, 2)
    assert result.total == 6
    assert ids_of(raw) == kept
    after_events = {r[0] for r in raw.execute("SELECT DISTINCT job_id FROM events")}
    assert after_events == before_events - pruned == kept
    assert job_row(raw, active.id)["status"] == "active"
    assert job_row(raw, waiting_old)["status"] == "waiting"
    assert queue.prune().total == 0  # nothing more to do


def test_prune_ages_are_configurable(
    queue: Queue, raw: sqlite3.Connection, clock: FakeClock
) -> None:
    completed = _finished(queue, clock, "a", "completed")
    failed = _finished(queue, clock, "b", "failed")
    cancelled = _finished(queue, clock, "c", "cancelled")
    clock.advance(2 * HOUR)

    assert queue.prune(completed_older_than=3 * HOUR).total == 0
    result = queue.prune(
        completed_older_than=HOUR, failed_older_than=3 * HOUR, cancelled_older_than=HOUR
    )
    assert (result.completed, result.failed, result.cancelled) == (1, 0, 1)
    assert ids_of(raw) == {failed}
    assert completed not in ids_of(raw) and cancelled not in ids_of(raw)
    with pytest.raises(InvalidInput):
        queue.prune(completed_older_than=-1)


def test_prune_works_in_batches(
    queue: Queue, raw: sqlite3.Connection, clock: FakeClock
) -> None:
    for i in range(7):
        _finished(queue, clock, f"g{i}", "completed")
    clock.advance(2 * DAY)
    assert queue.prune(batch=3).completed == 7
    assert raw.execute("SELECT count(*) FROM events").fetchone()[0] == 0


# -- fencing --------------------------------------------------------------------


def test_stale_attempts_change_nothing(
    queue: Queue, raw: sqlite3.Connection, clock: FakeClock
) -> None:
    job = queue.enqueue("g", "hi")
    claim_one(queue)
    queue.release(job.id, 1, "engine down")
    claim_one(queue)  # attempt 2 is current now
    queue.start(job.id, 2, "c2")
    clock.advance(1)
    before = snapshot(raw)

    stale_calls: list[Callable[[], object]] = [
        lambda: queue.finish(job.id, 1),
        lambda: queue.fail(job.id, 1, "late"),
        lambda: queue.fail(job.id, 1, "late", retryable=False),
        lambda: queue.start(job.id, 1, "c1"),
        lambda: queue.release(job.id, 1, "late"),
        lambda: queue.reclaim(job.id, 1, "late"),
        lambda: queue.finish(job.id, 3),  # a future attempt is no better
    ]
    for call in stale_calls:
        with pytest.raises(StaleAttempt, match="nothing changed"):
            call()
        assert snapshot(raw) == before

    queue.finish(job.id, 2)
    before = snapshot(raw)
    for call in [
        lambda: queue.finish(job.id, 2),
        lambda: queue.fail(job.id, 2, "late"),
        lambda: queue.start(job.id, 2, "c3"),
        lambda: queue.release(job.id, 2, "late"),
    ]:
        with pytest.raises(StaleAttempt):
            call()
        assert snapshot(raw) == before


def test_stale_attempt_is_an_invalid_transition_and_a_moorage_error() -> None:
    assert issubclass(StaleAttempt, InvalidTransition)
    assert issubclass(StaleAttempt, MoorageError)


def test_unknown_job_is_reported(queue: Queue) -> None:
    for call in [
        lambda: queue.get(999),
        lambda: queue.finish(999, 1),
        lambda: queue.cancel(999),
        lambda: queue.retry(999),
        lambda: queue.events(999),
    ]:
        with pytest.raises(JobNotFound):
            call()


# -- cancel and retry -----------------------------------------------------------


def test_cancel_waiting_jobs_only_once(
    queue: Queue, raw: sqlite3.Connection, clock: FakeClock
) -> None:
    active = queue.enqueue("g", "first")
    waiting = queue.enqueue("g", "second")
    claim_one(queue)

    clock.advance(1)
    cancelled = queue.cancel(waiting.id)
    row = job_row(raw, waiting.id)
    assert cancelled.status is Status.CANCELLED
    assert row["status"] == "cancelled"
    assert row["finished_at"] == clock.now()
    assert event_rows(raw, waiting.id)[-1] == ("waiting", "cancelled", 0, "cancelled")
    assert lane_row(raw, "g") is None  # nothing waits any more

    queue.finish(active.id, 1)
    before = snapshot(raw)
    for job_id in (active.id, waiting.id):
        with pytest.raises(InvalidTransition):
            queue.cancel(job_id)
    assert snapshot(raw) == before


def test_retry_revives_failed_and_cancelled_jobs_with_a_fresh_budget(
    queue: Queue, raw: sqlite3.Connection, clock: FakeClock
) -> None:
    job = queue.enqueue("g", "x", max_retries=1)
    claim_one(queue)
    queue.fail(job.id, 1, "e1")
    clock.advance(DAY)
    claim_one(queue)
    assert queue.fail(job.id, 2, "e2").status is Status.FAILED

    clock.advance(10)
    revived = queue.retry(job.id)
    row = job_row(raw, job.id)
    assert revived.status is Status.WAITING
    assert row["status"] == "waiting"
    assert row["retry_count"] == 0
    assert row["run_after"] == clock.now()
    assert row["finished_at"] is None
    assert row["attempt"] == 2  # attempts keep counting: the fencing token
    assert event_rows(raw, job.id)[-1] == ("failed", "waiting", 2, "retry")
    assert claim_one(queue).attempt == 3

    cancelled = queue.enqueue("h", "y")
    queue.cancel(cancelled.id)
    assert queue.retry(cancelled.id).status is Status.WAITING
    assert event_rows(raw, cancelled.id)[-1] == ("cancelled", "waiting", 0, "retry")


def test_retry_refuses_waiting_active_and_completed_jobs(
    queue: Queue, raw: sqlite3.Connection
) -> None:
    done = queue.enqueue("a", "x")
    claim_one(queue)
    queue.finish(done.id, 1)
    active = queue.enqueue("a", "y")
    claim_one(queue)
    waiting = queue.enqueue("a", "z")
    before = snapshot(raw)
    for job_id in (done.id, active.id, waiting.id):
        with pytest.raises(InvalidTransition, match="only failed or cancelled"):
            queue.retry(job_id)
    assert snapshot(raw) == before


# -- retry policy ---------------------------------------------------------------


def test_backoff_doubles_within_jitter_bounds_and_the_sixth_failure_is_final(
    queue: Queue, raw: sqlite3.Connection, clock: FakeClock
) -> None:
    job = queue.enqueue("g", "x")
    delays = []
    for attempt in range(1, 6):
        claimed = claim_one(queue)
        assert claimed.attempt == attempt
        failed = queue.fail(job.id, attempt, "exit 1")
        assert failed.status is Status.WAITING
        assert failed.retry_count == attempt
        delays.append(failed.run_after - clock.now())
        clock.advance(delays[-1])

    for n, delay in enumerate(delays, start=1):
        nominal = 5.0 * 2 ** (n - 1)
        assert 0.8 * nominal <= delay <= 1.2 * nominal, (n, delay)
    claim_one(queue)
    final = queue.fail(job.id, 6, "exit 1")
    assert final.status is Status.FAILED
    assert job_row(raw, job.id)["status"] == "failed"
    assert job_row(raw, job.id)["retry_count"] == 5
    to_statuses = [e[1] for e in event_rows(raw, job.id)]
    assert to_statuses.count("active") == 6
    assert to_statuses[-1] == "failed"


def test_backoff_without_jitter_is_exactly_5_10_20_40_80(
    no_jitter_queue: Queue, clock: FakeClock
) -> None:
    job = no_jitter_queue.enqueue("g", "x")
    delays = []
    for attempt in range(1, 6):
        claim_one(no_jitter_queue)
        failed = no_jitter_queue.fail(job.id, attempt, "e")
        delays.append(failed.run_after - clock.now())
        clock.advance(delays[-1])
    assert delays == [5.0, 10.0, 20.0, 40.0, 80.0]


def test_jitter_spreads_delays_over_the_whole_band() -> None:
    import random

    policy = RetryPolicy()
    rng = random.Random(1)
    for n in range(1, 6):
        samples = [policy.delay(n, rng) for _ in range(500)]
        nominal = 5.0 * 2 ** (n - 1)
        assert min(samples) >= 0.8 * nominal and max(samples) <= 1.2 * nominal
        assert min(samples) < 0.85 * nominal and max(samples) > 1.15 * nominal
    assert RetryPolicy(cap=30.0, jitter=0.0).delay(10, rng) == 30.0


def test_max_retries_per_job(queue: Queue) -> None:
    job = queue.enqueue("g", "x", max_retries=0)
    claim_one(queue)
    assert queue.fail(job.id, 1, "e").status is Status.FAILED


def test_release_does_not_spend_a_retry(
    no_jitter_queue: Queue, raw: sqlite3.Connection, clock: FakeClock
) -> None:
    queue = no_jitter_queue
    job = queue.enqueue("g", "x", max_retries=1)
    for attempt in range(1, 4):
        claim_one(queue)
        released = queue.release(job.id, attempt, "engine unreachable")
        assert released.status is Status.WAITING
        assert released.retry_count == 0
        assert released.run_after == clock.now()  # no backoff either
    assert event_rows(raw, job.id)[-1] == (
        "active",
        "waiting",
        3,
        "released: engine unreachable",
    )
    claim_one(queue)
    assert queue.fail(job.id, 4, "e").status is Status.WAITING  # the one retry
    clock.advance(5)
    claim_one(queue)
    assert queue.fail(job.id, 5, "e").status is Status.FAILED


# -- claim rules --------------------------------------------------------------------


def test_one_active_job_per_group_and_the_global_cap(
    queue: Queue, raw: sqlite3.Connection
) -> None:
    for i in range(3):
        queue.enqueue("solo", f"m{i}")
    assert len(queue.claim(10)) == 1
    assert queue.claim(10) == []  # the group is busy

    for g in "abcde":
        queue.enqueue(g, "x")
    claimed = queue.claim(3)
    assert len(claimed) == 2  # one slot already taken by "solo"
    assert queue.claim(3) == []
    (active,) = raw.execute(
        "SELECT count(*) FROM jobs WHERE status='active'"
    ).fetchone()
    assert active == 3
    assert len(queue.claim(4, limit=5)) == 1
    assert len(queue.claim(100, limit=1)) == 1
    with pytest.raises(InvalidInput):
        queue.claim(0)


def test_priority_decides_which_group_gets_a_free_slot(queue: Queue) -> None:
    low = queue.enqueue("low", "x", priority="low")
    normal_old = queue.enqueue("normal-old", "x")
    normal_new = queue.enqueue("normal-new", "x", priority=Priority.NORMAL)
    high = queue.enqueue("high", "x", priority="HIGH")

    order = [claim_one(queue, cap=100).id for _ in range(4)]
    assert order == [high.id, normal_old.id, normal_new.id, low.id]


def test_a_group_ranks_by_its_most_urgent_waiting_job_but_keeps_its_order(
    queue: Queue,
) -> None:
    other = queue.enqueue("other", "normal, older", priority="normal")
    first = queue.enqueue("mixed", "low, first", priority="low")
    urgent = queue.enqueue("mixed", "high, second", priority="high")

    claimed = queue.claim(1)
    # "mixed" ranks high because of its second job, yet starts its first.
    assert [j.id for j in claimed] == [first.id]
    queue.finish(first.id, 1)
    assert [j.id for j in queue.claim(1)] == [urgent.id]
    queue.finish(urgent.id, 1)
    assert [j.id for j in queue.claim(1)] == [other.id]


def test_claim_returns_groups_in_rank_order_in_one_call(queue: Queue) -> None:
    jobs = [
        queue.enqueue("a", "x", priority="low"),
        queue.enqueue("b", "x", priority="normal"),
        queue.enqueue("c", "x", priority="high"),
        queue.enqueue("d", "x", priority="normal"),
    ]
    assert [j.id for j in queue.claim(3)] == [jobs[2].id, jobs[1].id, jobs[3].id]


def test_messages_start_in_enqueue_order_and_tasks_go_first(queue: Queue) -> None:
    m1 = queue.enqueue("g", "m1")
    m2 = queue.enqueue("g", "m2", priority="high")
    t1 = queue.enqueue("g", "t1", kind="task", priority="low")
    t2 = queue.enqueue("g", "t2", kind=Kind.TASK)

    order = []
    for _ in range(4):
        job = claim_one(queue)
        order.append(job.id)
        queue.finish(job.id, job.attempt)
    assert order == [t1.id, t2.id, m1.id, m2.id]
    assert queue.claim(10) == []


def test_scheduled_tasks_do_not_block_the_groups_messages(
    queue: Queue, clock: FakeClock
) -> None:
    task = queue.enqueue("g", "later", kind="task", run_after=clock.now() + 100)
    message = queue.enqueue("g", "now")

    assert [j.id for j in queue.claim(10)] == [message.id]
    queue.finish(message.id, 1)
    assert queue.claim(10) == []
    assert queue.next_ready_at() == clock.now() + 100

    clock.advance(100)
    assert [j.id for j in queue.claim(10)] == [task.id]


def test_a_task_due_in_the_past_runs_at_once(queue: Queue, clock: FakeClock) -> None:
    task = queue.enqueue("g", "t", kind="task", run_after=clock.now() - 50)
    assert [j.id for j in queue.claim(10)] == [task.id]


def test_backoff_holds_the_group(
    no_jitter_queue: Queue, raw: sqlite3.Connection, clock: FakeClock
) -> None:
    queue = no_jitter_queue
    first = queue.enqueue("g", "first")
    second = queue.enqueue("g", "second")
    elsewhere = queue.enqueue("h", "other group")
    claimed = queue.claim(10)
    assert [j.id for j in claimed] == [first.id, elsewhere.id]
    queue.fail(first.id, 1, "exit 1")  # backoff 5 s
    task = queue.enqueue("g", "a task", kind="task")

    for _ in range(4):
        assert queue.claim(10) == []  # neither the message nor the task overtakes
        clock.advance(1)
    assert queue.next_ready_at() == clock.now() + 1
    clock.advance(1)
    # The hold is over: the due task may go first, then the failed message,
    # which is still ahead of the later one.
    order = []
    for _ in range(3):
        job = claim_one(queue)
        order.append(job.id)
        queue.finish(job.id, job.attempt)
    assert order == [task.id, first.id, second.id]


def test_cancelling_the_held_job_frees_its_group(
    no_jitter_queue: Queue, clock: FakeClock
) -> None:
    queue = no_jitter_queue
    first = queue.enqueue("g", "first")
    second = queue.enqueue("g", "second")
    claim_one(queue)
    queue.fail(first.id, 1, "exit 1")
    assert queue.claim(10) == []

    queue.cancel(first.id)
    assert [j.id for j in queue.claim(10)] == [second.id]


def test_a_revived_job_ranks_its_group_by_age(queue: Queue, clock: FakeClock) -> None:
    old = queue.enqueue("a", "old")
    queue.cancel(old.id)
    other = queue.enqueue("b", "b's message")
    newer = queue.enqueue("a", "a's new message")

    queue.retry(old.id)  # "a" now holds the oldest normal job
    claimed = queue.claim(1)
    assert [j.id for j in claimed] == [old.id]
    assert other.id < newer.id


# -- input checks -------------------------------------------------------------------


BAD_ENQUEUES: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    ("empty group", ("", "x"), {}),
    ("blank group", ("   ", "x"), {}),
    ("long group", ("g" * 129, "x"), {}),
    ("group with newline", ("a\nb", "x"), {}),
    ("group with NUL", ("a\x00b", "x"), {}),
    ("group with escape", ("a\x1b[31m", "x"), {}),
    ("group with zero-width space", ("a\u200bb", "x"), {}),
    ("group with line separator", ("a\u2028b", "x"), {}),
    ("group with surrounding space", (" g", "x"), {}),
    ("group not text", (42, "x"), {}),
    ("group None", (None, "x"), {}),
    ("message too big", ("g", "x" * (256 * 1024 + 1)), {}),
    ("message too big in bytes", ("g", "é" * (128 * 1024 + 1)), {}),
    ("message with NUL", ("g", "a\x00b"), {}),
    ("message lone surrogate", ("g", "a\ud800b"), {}),
    ("message not text", ("g", b"bytes"), {}),
    ("chat_jid with space", ("g", "x"), {"chat_jid": "123 @g.us"}),
    ("chat_jid with shell", ("g", "x"), {"chat_jid": "a;rm -rf /"}),
    ("chat_jid too long", ("g", "x"), {"chat_jid": "1" * 257}),
    ("chat_jid not text", ("g", "x"), {"chat_jid": 123}),
    ("unknown priority", ("g", "x"), {"priority": "urgent"}),
    ("empty priority", ("g", "x"), {"priority": ""}),
    ("priority None", ("g", "x"), {"priority": None}),
    ("unknown kind", ("g", "x"), {"kind": "job"}),
    ("kind None", ("g", "x"), {"kind": None}),
    ("scheduled message", ("g", "x"), {"run_after": 1_700_000_100.0}),
    ("negative run_after", ("g", "x"), {"kind": "task", "run_after": -1}),
    ("NaN run_after", ("g", "x"), {"kind": "task", "run_after": float("nan")}),
    ("text run_after", ("g", "x"), {"kind": "task", "run_after": "soon"}),
    ("zero timeout", ("g", "x"), {"timeout": 0}),
    ("infinite timeout", ("g", "x"), {"timeout": float("inf")}),
    ("negative max_retries", ("g", "x"), {"max_retries": -1}),
    ("bool max_retries", ("g", "x"), {"max_retries": True}),
    ("float max_retries", ("g", "x"), {"max_retries": 1.5}),
]


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [pytest.param(a, k, id=name) for name, a, k in BAD_ENQUEUES],
)
def test_bad_input_is_rejected_with_nothing_stored(
    queue: Queue, raw: sqlite3.Connection, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    queue.enqueue("existing", "so the tables are not empty")
    before = snapshot(raw)
    with pytest.raises(InvalidInput) as info:
        queue.enqueue(*args, **kwargs)
    assert isinstance(info.value, MoorageError)
    assert str(info.value)  # a message a person can read
    assert info.value.exit_code == 2
    assert snapshot(raw) == before


def test_input_limits_are_inclusive(queue: Queue, raw: sqlite3.Connection) -> None:
    longest = queue.enqueue("g" * 128, "x" * (256 * 1024))
    assert len(job_row(raw, longest.id)["message_text"]) == 256 * 1024
    assert queue.enqueue("家族 chat #1", "ok", chat_jid="+1-555@s.whatsapp.net").id


def test_message_size_limit_is_configurable(
    make_queue: Callable[..., Queue], raw: sqlite3.Connection
) -> None:
    small = make_queue(max_message_bytes=10)
    small.enqueue("g", "x" * 10)
    with pytest.raises(InvalidInput, match="limit is 10"):
        small.enqueue("g", "x" * 11)
    assert raw.execute("SELECT count(*) FROM jobs").fetchone()[0] == 1


def test_bad_arguments_to_reads_are_rejected(queue: Queue) -> None:
    with pytest.raises(InvalidInput):
        queue.jobs(status="running")
    with pytest.raises(InvalidInput):
        queue.jobs(limit=0)
    with pytest.raises(InvalidInput):
        queue.jobs(group_id="bad\ngroup")


# -- reads ----------------------------------------------------------------------------


def test_reads_agree_with_the_rows(queue: Queue, raw: sqlite3.Connection) -> None:
    a1 = queue.enqueue("a", "1")
    a2 = queue.enqueue("a", "2")
    b1 = queue.enqueue("b", "1")
    claim_one(queue)

    assert [j.id for j in queue.jobs()] == [b1.id, a2.id, a1.id]
    assert [j.id for j in queue.jobs(status="waiting")] == [b1.id, a2.id]
    assert [j.id for j in queue.jobs(group_id="a")] == [a2.id, a1.id]
    assert [j.id for j in queue.jobs(before_id=b1.id, limit=1)] == [a2.id]
    assert [j.id for j in queue.active()] == [a1.id]
    status = queue.status()
    assert status.counts == {
        "waiting": 2,
        "active": 1,
        "completed": 0,
        "failed": 0,
        "cancelled": 0,
    }
    assert [(g.group_id, g.active_job, g.waiting) for g in status.groups] == [
        ("a", a1.id, 1),
        ("b", None, 1),
    ]


# -- the database file -------------------------------------------------------------


def test_database_file_is_owner_only(queue: Queue, data_dir: Path) -> None:
    queue.enqueue("g", "x")
    assert stat.S_IMODE(os.stat(data_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(data_dir / DB_FILENAME).st_mode) == 0o600
    for suffix in ("-wal", "-shm"):
        side = data_dir / (DB_FILENAME + suffix)
        if side.exists():
            assert stat.S_IMODE(os.stat(side).st_mode) & 0o077 == 0


def test_schema_version_and_reopening_does_not_migrate_again(
    make_queue: Callable[..., Queue], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="moorage.store.sqlite"):
        first = make_queue()
    assert first.db.schema_version == len(MIGRATIONS)
    assert sum("migrated" in r.getMessage() for r in caplog.records) == len(MIGRATIONS)
    job = first.enqueue("g", "kept")
    install = first.install_id
    first.close()

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="moorage.store.sqlite"):
        second = make_queue()
    assert not [r for r in caplog.records if "migrated" in r.getMessage()]
    assert second.db.schema_version == len(MIGRATIONS)
    assert second.install_id == install
    assert second.get(job.id).message_text == "kept"


def test_a_database_error_inside_a_verb_is_a_store_error_and_changes_nothing(
    queue: Queue, raw: sqlite3.Connection
) -> None:
    queue.enqueue("g", "kept")
    before = snapshot(raw)
    raw.execute(
        "CREATE TRIGGER refuse_events BEFORE INSERT ON events "
        "BEGIN SELECT RAISE(ABORT, 'the disk said no'); END"
    )

    with pytest.raises(StoreError, match="database error: the disk said no"):
        queue.enqueue("g", "lost")
    with pytest.raises(StoreError):
        queue.claim(1)

    raw.execute("DROP TRIGGER refuse_events")
    assert snapshot(raw) == before  # both rolled back whole
    assert [j.message_text for j in queue.claim(1)] == ["kept"]


def test_the_database_itself_rejects_a_second_active_job_in_a_group(
    queue: Queue, raw: sqlite3.Connection
) -> None:
    first = queue.enqueue("g", "1")
    second = queue.enqueue("g", "2")
    other = queue.enqueue("h", "1")
    claim_one(queue)
    before = snapshot(raw)

    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
        raw.execute(
            "UPDATE jobs SET status = 'active', attempt = 1 WHERE id = ?",
            (second.id,),
        )
    with pytest.raises(sqlite3.IntegrityError):
        raw.execute(
            "INSERT INTO jobs (group_id, kind, status, priority, message_text, "
            "enqueued_at, run_after, max_retries) "
            "VALUES ('g', 'message', 'active', 1, 'x', 0, 0, 5)"
        )
    assert snapshot(raw) == before
    assert job_row(raw, first.id)["status"] == "active"
    # Another group is a different key: the index is per group, not global.
    raw.execute("UPDATE jobs SET status = 'active' WHERE id = ?", (other.id,))


def test_cancelling_another_job_keeps_the_hold(
    no_jitter_queue: Queue, clock: FakeClock
) -> None:
    queue = no_jitter_queue
    task = queue.enqueue("g", "a task", kind="task")
    message = queue.enqueue("g", "a message")
    doomed = queue.enqueue("g", "withdrawn")
    claim_one(queue)
    queue.fail(task.id, 1, "exit 1")  # holds "g" for 5 s

    queue.cancel(doomed.id)
    assert queue.claim(10) == []  # the message may not overtake the held task
    clock.advance(5)
    assert [j.id for j in queue.claim(10)] == [task.id]
    queue.finish(task.id, 2)
    assert [j.id for j in queue.claim(10)] == [message.id]


def test_an_older_database_is_migrated_with_every_jobs_history_kept_in_order(
    data_dir: Path, make_queue: Callable[..., Queue]
) -> None:
    from moorage.store.sqlite import _split_statements

    data_dir.mkdir(parents=True)
    old = sqlite3.connect(data_dir / DB_FILENAME, isolation_level=None)
    for number, migration in enumerate(MIGRATIONS[:3], start=1):
        for statement in _split_statements(migration):
            old.execute(statement)
        old.execute(f"PRAGMA user_version = {number}")
    old.execute("INSERT INTO meta (key, value) VALUES ('install_id', ?)", ("a" * 32,))
    for group in ("g", "h"):
        old.execute(
            "INSERT INTO jobs (group_id, kind, status, priority, message_text, "
            "enqueued_at, run_after, max_retries) "
            "VALUES (?, 'message', 'waiting', 1, 'x', 0, 0, 5)",
            (group,),
        )
    # Histories interleaved, as two jobs' transitions would be.
    for job_id, to_status, detail in [
        (1, "waiting", None),
        (2, "waiting", None),
        (1, "active", "claimed"),
        (2, "cancelled", "cancelled"),
        (1, "waiting", "released: engine"),
    ]:
        old.execute(
            "INSERT INTO events (job_id, at, from_status, to_status, attempt, detail) "
            "VALUES (?, 0, NULL, ?, 0, ?)",
            (job_id, to_status, detail),
        )
    old.close()

    queue = make_queue()

    assert queue.db.schema_version == len(MIGRATIONS)
    assert [(e.to_status.value, e.detail) for e in queue.events(1)] == [
        ("waiting", None),
        ("active", "claimed"),
        ("waiting", "released: engine"),
    ]
    assert [e.to_status.value for e in queue.events(2)] == ["waiting", "cancelled"]
    queue.cancel(1)
    assert [e.to_status.value for e in queue.events(1)][-1] == "cancelled"
    assert [e.id for e in queue.events(1)] == [(1 << 20) + n for n in range(4)]


def test_a_schema_4_database_keeps_its_ids_and_lanes_when_migrated(
    data_dir: Path, make_queue: Callable[..., Queue]
) -> None:
    from moorage.store.sqlite import _split_statements

    data_dir.mkdir(parents=True)
    old = sqlite3.connect(data_dir / DB_FILENAME, isolation_level=None)
    for number, migration in enumerate(MIGRATIONS[:4], start=1):
        for statement in _split_statements(migration):
            old.execute(statement)
        old.execute(f"PRAGMA user_version = {number}")
    old.execute("INSERT INTO meta (key, value) VALUES ('install_id', ?)", ("a" * 32,))
    # g: two waiting (the newer one high); h: one running; job 5 was pruned,
    # so AUTOINCREMENT's counter (5) is above the newest id (4).
    for group, status, priority in [
        ("g", "waiting", 1),
        ("g", "waiting", 0),
        ("h", "active", 1),
        ("h", "completed", 1),
        ("h", "completed", 1),
    ]:
        old.execute(
            "INSERT INTO jobs (group_id, kind, status, priority, message_text, "
            "enqueued_at, run_after, max_retries, attempt) "
            "VALUES (?, 'message', ?, ?, 'x', 0, 0, 5, 1)",
            (group, status, priority),
        )
    old.execute("DELETE FROM jobs WHERE id = 5")
    old.execute(
        "INSERT INTO lanes (group_id, active_job, waiting, rank_priority, rank_job, "
        "held_until, ready_at) VALUES ('g', NULL, 2, 0, 2, 0, 0), "
        "('h', 3, 0, NULL, NULL, 0, NULL)"
    )
    old.close()

    queue = make_queue()

    assert queue.db.schema_version == len(MIGRATIONS)
    assert queue.db.meta("job_id_floor") == "5"
    assert sorted((j.id, j.group_id, j.status) for j in queue.jobs()) == [
        (1, "g", Status.WAITING),
        (2, "g", Status.WAITING),
        (3, "h", Status.ACTIVE),
        (4, "h", Status.COMPLETED),
    ]
    assert [(g.group_id, g.active_job, g.waiting) for g in queue.status().groups] == [
        ("g", None, 2),
        ("h", 3, 0),
    ]
    assert queue.enqueue("h", "new").id == 6  # 5 is never given again
    assert [j.id for j in queue.claim(10)] == [1]  # h is still busy with 3


def test_job_ids_are_never_reused_after_the_newest_jobs_are_pruned(
    queue: Queue, make_queue: Callable[..., Queue], clock: FakeClock
) -> None:
    for text in ("a", "b", "c"):
        queue.enqueue("g", text)
    job = claim_one(queue)
    queue.finish(job.id, job.attempt)
    queue.cancel(2)
    queue.cancel(3)
    clock.advance(8 * DAY)

    assert queue.prune().total == 3
    assert queue.jobs() == []
    assert queue.enqueue("g", "d").id == 4
    queue.close()

    reopened = make_queue()
    assert reopened.enqueue("g", "e").id == 5


@pytest.mark.parametrize(
    "options",
    [
        {},
        {
            "kind": "task",
            "chat_jid": "123@g.us",
            "priority": "high",
            "max_retries": 2,
            "timeout": 30.0,
        },
        {"kind": "task", "run_after": 10_000.0, "priority": "low"},
        {"kind": "task", "repeat": "15m"},
    ],
)
def test_the_job_enqueue_returns_is_the_job_as_stored(
    queue: Queue, options: dict[str, Any]
) -> None:
    queue.enqueue("g", "older")
    job = queue.enqueue("g", "hi", **options)
    assert queue.get(job.id) == job


def test_job_fields_follow_the_column_order_of_reads() -> None:
    import dataclasses

    from moorage.models import Job
    from moorage.store import queries

    columns = [c.strip() for c in queries.JOB_COLUMNS.split(",")]
    assert columns == [f.name for f in dataclasses.fields(Job)]


def test_an_enqueue_behind_an_older_job_and_the_end_of_an_attempt_write_no_lane(
    queue: Queue, raw: sqlite3.Connection
) -> None:
    raw.executescript(
        """
        CREATE TABLE lane_writes (op TEXT, group_id TEXT);
        CREATE TRIGGER lane_inserted AFTER INSERT ON lanes
        BEGIN INSERT INTO lane_writes VALUES ('insert', NEW.group_id); END;
        CREATE TRIGGER lane_updated AFTER UPDATE ON lanes
        BEGIN INSERT INTO lane_writes VALUES ('update', NEW.group_id); END;
        CREATE TRIGGER lane_deleted AFTER DELETE ON lanes
        BEGIN INSERT INTO lane_writes VALUES ('delete', OLD.group_id); END;
        """
    )

    def writes() -> list[tuple[str, str]]:
        found = [tuple(r) for r in raw.execute("SELECT op, group_id FROM lane_writes")]
        raw.execute("DELETE FROM lane_writes")
        return found

    first = queue.enqueue("g", "one")
    assert writes() == [("insert", "g")]
    queue.enqueue("g", "two")
    queue.enqueue("g", "three", priority="low")
    assert writes() == []
    urgent = queue.enqueue("g", "four", priority="high")
    assert writes() == [("update", "g")]
    lane = lane_row(raw, "g")
    assert lane is not None and lane["rank_job"] == urgent.id

    job = claim_one(queue)
    assert job.id == first.id
    writes()
    queue.finish(job.id, job.attempt)
    assert writes() == []
    assert [j.id for j in queue.claim(1)] == [first.id + 1]
