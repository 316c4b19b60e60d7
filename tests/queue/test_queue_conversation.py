"""Batches, follow-ups, idle/close marks and recurring tasks in the queue,
on a real SQLite file.  Rows are checked raw, through a second connection."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import pytest

from moorage.clock import FakeClock
from moorage.errors import InvalidInput, InvalidTransition
from moorage.models import Kind, Status
from moorage.queue import Batch, Queue, RetryPolicy, StaleAttempt

BATCH = Batch(messages=10)


def row(raw: sqlite3.Connection, job_id: int) -> dict[str, Any]:
    found = raw.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
    assert found is not None
    return dict(found)


def statuses(raw: sqlite3.Connection) -> dict[int, tuple[str, int | None]]:
    return {
        r["id"]: (r["status"], r["batch_of"])
        for r in raw.execute("SELECT id, status, batch_of FROM jobs ORDER BY id")
    }


def lane(queue: Queue, group: str) -> tuple[int | None, int] | None:
    """The group as status shows it: (active job, waiting count), or None."""
    for found in queue.status().groups:
        if found.group_id == group:
            return (found.active_job, found.waiting)
    return None


def received(job_id: int) -> str:
    return json.dumps({"type": "received", "id": job_id})


def pile(queue: Queue, group: str, count: int) -> list[int]:
    return [queue.enqueue(group, f"m{i}").id for i in range(count)]


# -- batches -------------------------------------------------------------------


def test_waiting_messages_of_a_group_go_to_one_attempt_in_order(
    queue: Queue, raw: sqlite3.Connection
) -> None:
    ids = pile(queue, "g", 5)

    (lead,) = queue.claim(4, batch=BATCH)

    assert lead.id == ids[0]
    assert [m.id for m in queue.members(lead.id)] == ids[1:]
    assert statuses(raw) == {
        ids[0]: ("active", None),
        **{i: ("active", ids[0]) for i in ids[1:]},
    }
    assert lane(queue, "g") == (ids[0], 0)
    assert [j.id for j in queue.active()] == [ids[0]]
    assert queue.status().counts["active"] == 5


def test_a_batch_counts_once_against_the_cap(queue: Queue) -> None:
    pile(queue, "a", 3)
    pile(queue, "b", 3)

    claimed = queue.claim(2, batch=BATCH)

    assert len(claimed) == 2
    assert queue.claim(2, batch=BATCH) == []


def test_a_batch_stops_at_its_count_and_size(queue: Queue) -> None:
    queue.enqueue("g", "x" * 100)
    queue.enqueue("g", "y" * 100)
    queue.enqueue("g", "z" * 100)
    queue.enqueue("g", "w")

    (lead,) = queue.claim(4, batch=Batch(messages=10, bytes=250))
    assert len(queue.members(lead.id)) == 1  # the third would pass 250 bytes
    queue.finish(lead.id, lead.attempt)

    (lead,) = queue.claim(4, batch=Batch(messages=2))
    assert [m.message_text for m in queue.members(lead.id)] == ["w"]


def test_tasks_run_alone_and_before_the_groups_messages(queue: Queue) -> None:
    pile(queue, "g", 2)
    task = queue.enqueue("g", "digest", kind="task")

    (first,) = queue.claim(4, batch=BATCH)

    assert first.id == task.id
    assert queue.members(task.id) == []


def test_members_share_their_leads_success(
    queue: Queue, raw: sqlite3.Connection
) -> None:
    ids = pile(queue, "g", 3)
    (lead,) = queue.claim(4, batch=BATCH)

    queue.start(lead.id, lead.attempt, "c" * 64)
    queue.finish(lead.id, lead.attempt)

    assert all(row(raw, i)["status"] == "completed" for i in ids)
    assert row(raw, ids[2])["container_id"] == "c" * 64
    assert queue.events(ids[2])[-1].detail == f"completed with job {ids[0]} attempt 1"
    assert lane(queue, "g") is None


def test_a_retry_retries_the_whole_batch(
    clock: FakeClock, make_queue: Any, raw: sqlite3.Connection
) -> None:
    queue = make_queue(retry_policy=RetryPolicy(jitter=0.0))
    ids = pile(queue, "g", 3)
    (lead,) = queue.claim(4, batch=BATCH)

    queue.fail(lead.id, lead.attempt, "exit code 1")

    rows = [row(raw, i) for i in ids]
    assert [r["status"] for r in rows] == ["waiting"] * 3
    assert {r["run_after"] for r in rows} == {clock.now() + 5.0}
    assert [r["retry_count"] for r in rows] == [1, 1, 1]
    assert all(r["batch_of"] is None for r in rows)
    assert queue.claim(4, batch=BATCH) == []  # the backoff holds the group

    clock.advance(5.0)
    later = queue.enqueue("g", "late").id
    (again,) = queue.claim(4, batch=BATCH)
    assert again.id == ids[0] and again.attempt == 2
    assert [m.id for m in queue.members(again.id)] == [*ids[1:], later]


def test_a_batch_that_fails_for_good_fails_every_member_with_one_notice(
    make_queue: Any, raw: sqlite3.Connection
) -> None:
    queue = make_queue(retry_policy=RetryPolicy(max_retries=0))
    ids = pile(queue, "g", 3)
    (lead,) = queue.claim(4, batch=BATCH)

    queue.fail(lead.id, lead.attempt, "exit code 2")

    assert [row(raw, i)["status"] for i in ids] == ["failed"] * 3
    notices = raw.execute("SELECT job_id, kind FROM replies").fetchall()
    assert [tuple(n) for n in notices] == [(ids[0], "failed")]


def test_a_released_batch_spends_no_retry(
    queue: Queue, raw: sqlite3.Connection
) -> None:
    ids = pile(queue, "g", 3)
    (lead,) = queue.claim(4, batch=BATCH)

    queue.release(lead.id, lead.attempt, "engine unreachable")

    assert [(row(raw, i)["status"], row(raw, i)["retry_count"]) for i in ids] == [
        ("waiting", 0)
    ] * 3
    assert lane(queue, "g") == (None, 3)


def test_a_member_cannot_be_settled_on_its_own(queue: Queue) -> None:
    ids = pile(queue, "g", 2)
    queue.claim(4, batch=BATCH)

    with pytest.raises(InvalidTransition, match="runs in the attempt of job"):
        queue.finish(ids[1], 1)
    with pytest.raises(InvalidTransition, match="runs in the attempt of job"):
        queue.fail(ids[1], 1, "no")


def test_the_database_refuses_a_member_without_an_active_lead(
    queue: Queue, raw: sqlite3.Connection
) -> None:
    a = queue.enqueue("g", "a").id
    b = queue.enqueue("g", "b").id
    other = queue.enqueue("h", "c").id

    with pytest.raises(sqlite3.IntegrityError, match="active lead"):
        raw.execute(
            "UPDATE jobs SET status = 'active', batch_of = ? WHERE id = ?", (a, b)
        )
    raw.execute("UPDATE jobs SET status = 'active' WHERE id = ?", (a,))
    with pytest.raises(sqlite3.IntegrityError, match="active lead"):
        raw.execute(
            "UPDATE jobs SET status = 'active', batch_of = ? WHERE id = ?", (a, other)
        )
    with pytest.raises(sqlite3.IntegrityError):
        raw.execute("UPDATE jobs SET status = 'active' WHERE id = ?", (b,))


# -- follow-ups ------------------------------------------------------------------


def _running(queue: Queue, group: str = "g") -> Any:
    queue.enqueue(group, "first")
    (lead,) = queue.claim(4, batch=BATCH)
    return queue.start(lead.id, lead.attempt, "c" * 64)


def test_a_follow_up_is_offered_then_joins_the_attempt_when_received(
    queue: Queue, raw: sqlite3.Connection
) -> None:
    lead = _running(queue)
    follow = queue.enqueue("g", "second").id

    offered = queue.offer(lead.id, lead.attempt, 10)

    assert [j.id for j in offered] == [follow]
    assert statuses(raw)[follow] == ("waiting", lead.id)
    assert queue.offer(lead.id, lead.attempt, 10) == []  # offered once
    with pytest.raises(InvalidTransition, match="being offered"):
        queue.cancel(follow)

    out = queue.record_output(
        lead,
        0,
        [received(follow), '{"type":"reply","text":"hi"}'],
    )

    assert [j.id for j in out.received] == [follow]
    assert statuses(raw)[follow] == ("active", lead.id)
    assert row(raw, follow)["container_id"] == "c" * 64
    assert lane(queue, "g") == (lead.id, 0)
    assert out.replies == 1

    queue.finish(lead.id, lead.attempt)
    assert row(raw, follow)["status"] == "completed"


def test_reading_the_same_output_twice_receives_and_replies_once(
    queue: Queue, raw: sqlite3.Connection
) -> None:
    lead = _running(queue)
    follow = queue.enqueue("g", "second").id
    queue.offer(lead.id, lead.attempt, 10)
    lines = [received(follow), '{"type":"reply","text":"a"}']

    first = queue.record_output(lead, 0, lines)
    second = queue.record_output(lead, 0, lines)

    assert len(first.received) == 1 and second.received == []
    assert raw.execute("SELECT count(*) FROM replies").fetchone()[0] == 1
    assert row(raw, follow)["attempt"] == 1


def test_a_follow_up_never_received_goes_back_in_line_and_runs_next(
    queue: Queue, raw: sqlite3.Connection
) -> None:
    lead = _running(queue)
    follow = queue.enqueue("g", "second").id
    queue.offer(lead.id, lead.attempt, 10)
    later = queue.enqueue("g", "third").id

    queue.finish(lead.id, lead.attempt)

    assert statuses(raw)[follow] == ("waiting", None)
    assert "back in line" in (queue.events(follow)[-1].detail or "")
    (nxt,) = queue.claim(4, batch=BATCH)
    assert nxt.id == follow
    assert [m.id for m in queue.members(nxt.id)] == [later]


def test_a_signal_for_a_job_not_offered_changes_nothing(
    queue: Queue, raw: sqlite3.Connection
) -> None:
    lead = _running(queue)
    stranger = queue.enqueue("other", "x").id
    unoffered = queue.enqueue("g", "y").id

    out = queue.record_output(
        lead,
        0,
        [
            received(stranger),
            received(unoffered),
            '{"type":"received","id":"7"}',
        ],
    )

    assert out.received == []
    assert statuses(raw)[stranger] == ("waiting", None)
    assert statuses(raw)[unoffered] == ("waiting", None)


def test_nothing_is_offered_to_a_task_a_closing_attempt_or_before_a_due_task(
    queue: Queue, clock: FakeClock
) -> None:
    task = queue.enqueue("t", "job", kind="task")
    (claimed,) = queue.claim(4, batch=BATCH)
    queue.enqueue("t", "msg")
    assert queue.offer(claimed.id, claimed.attempt, 10) == []
    assert claimed.id == task.id

    lead = _running(queue, "g")
    queue.enqueue("g", "msg")
    queue.request_close(lead.id, lead.attempt, "idle")
    assert queue.offer(lead.id, lead.attempt, 10) == []

    lead2 = _running(queue, "h")
    queue.enqueue("h", "digest", kind="task", run_after=clock.now() + 60)
    queue.enqueue("h", "msg")
    assert len(queue.offer(lead2.id, lead2.attempt, 1)) == 1  # task not due yet
    clock.advance(61)
    assert queue.due_task("h")
    queue.enqueue("h", "msg2")
    assert queue.offer(lead2.id, lead2.attempt, 10) == []


def test_idle_marks_follow_the_agents_signals(queue: Queue) -> None:
    lead = _running(queue)
    follow = queue.enqueue("g", "second").id
    queue.offer(lead.id, lead.attempt, 10)

    out = queue.record_output(lead, 0, ['{"type":"idle"}'])
    assert out.idle_since is not None
    out = queue.record_output(lead, 1, [received(follow)])
    assert out.idle_since is None
    out = queue.record_output(lead, 2, ["log line", '{"type":"idle"}'])
    assert out.idle_since is not None


def test_asking_to_close_is_recorded_once_and_fenced(queue: Queue) -> None:
    lead = _running(queue)

    first = queue.request_close(lead.id, lead.attempt, "idle")
    again = queue.request_close(lead.id, lead.attempt, "task")

    assert first.closing_at is not None and again.closing_at == first.closing_at
    details = [e.detail for e in queue.events(lead.id)]
    assert details.count("asked to close (idle)") == 1
    assert not any("task" in (d or "") for d in details)
    queue.finish(lead.id, lead.attempt)
    with pytest.raises(InvalidTransition):
        queue.request_close(lead.id, lead.attempt, "idle")


# -- recurring tasks -------------------------------------------------------------


def test_finishing_an_occurrence_creates_the_next_in_the_same_transaction(
    queue: Queue, clock: FakeClock, raw: sqlite3.Connection
) -> None:
    start = clock.now()
    first = queue.enqueue("g", "digest", kind="task", repeat="every 10m")
    assert first.repeat == "every 600" and first.series_id == first.id
    assert first.run_after == start

    (claimed,) = queue.claim(4)
    clock.advance(30)
    queue.finish(claimed.id, claimed.attempt)

    nxt = [r for r in statuses(raw) if r != first.id]
    assert len(nxt) == 1
    successor = row(raw, nxt[0])
    assert successor["follows"] == first.id
    assert successor["series_id"] == first.id
    assert successor["scheduled_for"] == successor["run_after"] == start + 600
    assert successor["status"] == "waiting" and successor["kind"] == "task"


def test_an_occurrence_that_fails_for_good_still_schedules_the_next(
    make_queue: Any, clock: FakeClock, raw: sqlite3.Connection
) -> None:
    queue = make_queue(retry_policy=RetryPolicy(max_retries=0))
    first = queue.enqueue("g", "digest", kind="task", repeat="every 60")
    (claimed,) = queue.claim(4)

    queue.fail(claimed.id, claimed.attempt, "exit code 1")

    assert (
        raw.execute(
            "SELECT count(*) FROM jobs WHERE follows = ?", (first.id,)
        ).fetchone()[0]
        == 1
    )
    # Reviving the failed occurrence and finishing it makes no second successor.
    queue.retry(first.id)
    (again,) = queue.claim(4)
    assert again.id == first.id
    queue.finish(again.id, again.attempt)
    assert (
        raw.execute(
            "SELECT count(*) FROM jobs WHERE series_id = ?", (first.id,)
        ).fetchone()[0]
        == 2
    )


def test_a_revived_occurrence_does_not_fork_a_series_whose_successor_was_pruned(
    make_queue: Any, clock: FakeClock, raw: sqlite3.Connection
) -> None:
    queue = make_queue(retry_policy=RetryPolicy(max_retries=0))
    first = queue.enqueue("g", "tick", kind="task", repeat="every 60")
    (a,) = queue.claim(4)
    queue.fail(a.id, a.attempt, "exit 1")  # A fails; B follows it
    clock.advance(60)
    (b,) = queue.claim(4)
    queue.finish(b.id, b.attempt)  # B completes; C follows it
    clock.advance(1)
    queue.prune(completed_older_than=0)  # B is gone, A (failed) is kept

    queue.retry(first.id)
    (again,) = queue.claim(4)
    clock.advance(100)  # it finishes past C's slot: its own next slot is free
    queue.finish(again.id, again.attempt)

    waiting = raw.execute(
        "SELECT count(*) FROM jobs WHERE series_id = ? AND status = 'waiting'",
        (first.id,),
    ).fetchone()[0]
    assert waiting == 1


def test_slots_missed_while_late_are_run_once(
    queue: Queue, clock: FakeClock, raw: sqlite3.Connection
) -> None:
    start = clock.now()
    queue.enqueue("g", "tick", kind="task", repeat="every 60")
    (claimed,) = queue.claim(4)
    clock.advance(605)  # ten slots pass while it runs

    queue.finish(claimed.id, claimed.attempt)

    (slot,) = raw.execute(
        "SELECT scheduled_for FROM jobs WHERE status = 'waiting'"
    ).fetchone()
    assert slot == start + 660


def test_cron_recurrence_follows_the_cron_slots(
    queue: Queue, clock: FakeClock, raw: sqlite3.Connection
) -> None:
    assert clock.now() == 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
    first = queue.enqueue("g", "hourly", kind="task", repeat="0 * * * *")
    assert first.run_after == 1_700_002_800.0  # 23:00 UTC
    clock.advance(first.run_after - clock.now())
    (claimed,) = queue.claim(4)
    queue.finish(claimed.id, claimed.attempt)
    (slot,) = raw.execute(
        "SELECT scheduled_for FROM jobs WHERE status = 'waiting'"
    ).fetchone()
    assert slot == 1_700_006_400.0


def test_cancelling_a_waiting_occurrence_ends_the_series(
    queue: Queue, raw: sqlite3.Connection
) -> None:
    first = queue.enqueue("g", "tick", kind="task", repeat="every 60")
    queue.cancel(first.id)
    assert raw.execute("SELECT count(*) FROM jobs").fetchone()[0] == 1


def test_cancelling_a_running_occurrence_ends_the_series(
    queue: Queue, raw: sqlite3.Connection
) -> None:
    first = queue.enqueue("g", "tick", kind="task", repeat="every 60")
    (lead,) = queue.claim(4)
    cancelled = queue.cancel(lead.id)
    assert cancelled.status is Status.CANCELLED
    assert raw.execute("SELECT count(*) FROM jobs").fetchone()[0] == 1
    assert row(raw, first.id)["status"] == "cancelled"


# -- cancelling a running attempt ------------------------------------------------


def test_cancelling_a_running_lead_ends_its_attempt_at_once(
    queue: Queue, raw: sqlite3.Connection, clock: FakeClock
) -> None:
    lead_id, member, *_ = pile(queue, "g", 2)
    (lead,) = queue.claim(4, batch=BATCH)
    lead = queue.start(lead.id, lead.attempt, "c" * 64)
    offered = queue.enqueue("g", "follow-up").id
    queue.offer(lead.id, lead.attempt, 10)
    later = queue.enqueue("g", "later").id
    clock.advance(5)

    cancelled = queue.cancel(lead_id)

    assert cancelled.status is Status.CANCELLED
    assert cancelled.finished_at == clock.now()
    assert statuses(raw) == {
        lead_id: ("cancelled", None),
        member: ("cancelled", lead_id),
        offered: ("waiting", None),  # never received: back in line
        later: ("waiting", None),
    }
    assert [(e.from_status, e.to_status, e.detail) for e in queue.events(lead_id)][
        -1
    ] == ("active", "cancelled", "cancelled while running; its container is stopped")
    assert queue.events(member)[-1].detail == f"cancelled with job {lead_id} attempt 1"
    assert "back in line" in (queue.events(offered)[-1].detail or "")
    # The group is free at once: its next message starts a new attempt.
    assert [j.id for j in queue.claim(4)] == [offered]


def test_a_cancelled_attempt_is_fenced_off(
    queue: Queue, raw: sqlite3.Connection
) -> None:
    lead = _running(queue)
    queue.cancel(lead.id)
    before = statuses(raw)

    for verb in (queue.finish, queue.release):
        with pytest.raises(StaleAttempt):
            verb(lead.id, lead.attempt, "late")
    with pytest.raises(StaleAttempt):
        queue.fail(lead.id, lead.attempt, "exit 1")
    out = queue.record_output(lead, 0, ['{"type":"reply","text":"too late"}'])

    assert not out.current and out.replies == 0
    assert raw.execute("SELECT count(*) FROM replies").fetchone()[0] == 0
    assert statuses(raw) == before
    with pytest.raises(InvalidTransition, match="cancelled"):
        queue.cancel(lead.id)


def test_a_member_cannot_be_cancelled_on_its_own(
    queue: Queue, raw: sqlite3.Connection
) -> None:
    lead_id, member = pile(queue, "g", 2)
    queue.claim(4, batch=BATCH)
    before = statuses(raw)
    with pytest.raises(InvalidTransition, match=f"cancel job {lead_id}"):
        queue.cancel(member)
    assert statuses(raw) == before


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"repeat": "every 60"}, "only tasks can repeat"),
        ({"kind": Kind.TASK, "repeat": "61 * * * *"}, "cron"),
        ({"kind": Kind.TASK, "repeat": "soon"}, "neither an interval"),
        ({"kind": Kind.TASK, "repeat": "0s"}, "at least"),
    ],
)
def test_a_bad_recurrence_is_refused_and_nothing_stored(
    queue: Queue, raw: sqlite3.Connection, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        queue.enqueue("g", "x", **kwargs)
    assert raw.execute("SELECT count(*) FROM jobs").fetchone()[0] == 0


def test_the_status_enum_is_unchanged_by_batches(queue: Queue) -> None:
    pile(queue, "g", 2)
    (lead,) = queue.claim(4, batch=BATCH)
    assert {j.status for j in queue.jobs()} == {Status.ACTIVE}
    assert lead.batch_of is None
