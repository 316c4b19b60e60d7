"""The dispatcher driven one step at a time, on an in-memory runtime and a
fake clock: claims, outcomes, retries, replies, recovery and engine outages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moorage.clock import FakeClock
from moorage.delivery import CallbackSink, Deliverer, JsonlSink
from moorage.dispatcher import Dispatcher, DispatchSettings, input_document
from moorage.models import Status
from moorage.outbox import Outbox, Reply
from moorage.queue import Queue, RetryPolicy
from moorage.recovery import ActionKind
from moorage.runtime.base import AttemptSpec, ContainerState
from moorage.runtime.memory import MemoryRuntime


def reply(text: str) -> str:
    return json.dumps({"type": "reply", "text": text})


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def queue(tmp_path: Path, clock: FakeClock) -> Queue:
    q = Queue.open(tmp_path / "data", clock=clock, retry_policy=RetryPolicy(jitter=0.0))
    yield q
    q.close()


@pytest.fixture
def runtime(queue: Queue, clock: FakeClock) -> MemoryRuntime:
    return MemoryRuntime(queue.install_id, clock)


def make(queue: Queue, runtime: MemoryRuntime, **settings: object) -> Dispatcher:
    options = {"max_concurrent": 2, "timeout": 60.0} | settings
    return Dispatcher(queue, runtime, DispatchSettings(**options))  # type: ignore[arg-type]


def test_claims_within_the_cap_and_one_per_group(queue, runtime):
    for group in ("a", "a", "b", "c"):
        queue.enqueue(group, "hi")
    dispatcher = make(queue, runtime)
    dispatcher.recover()
    dispatcher.step()
    running = runtime.list()
    assert len(running) == 2
    assert sorted(c.group_id for c in running) == ["a", "b"]
    assert all(queue.get(c.job_id).container_id == c.ref for c in running)


def test_exit_zero_completes_records_replies_and_removes_the_container(queue, runtime):
    job = queue.enqueue("a", "hi", chat_jid="1@g.us")
    dispatcher = make(queue, runtime)
    dispatcher.step()
    ref = runtime.ref_of(job.id)
    runtime.emit(ref, reply("one"), "a log line")
    dispatcher.step()
    runtime.emit(ref, reply("two"))
    runtime.exit(ref, 0)
    dispatcher.step()
    assert queue.get(job.id).status is Status.COMPLETED
    assert [
        (r.position, r.text, r.chat_jid) for r in Outbox(queue.db).for_job(job.id)
    ] == [
        (0, "one", "1@g.us"),
        (2, "two", "1@g.us"),
    ]
    assert runtime.containers == {}


def test_nonzero_exit_retries_after_backoff_then_fails_with_a_notice(
    queue, runtime, clock
):
    job = queue.enqueue("a", "hi", max_retries=1)
    dispatcher = make(queue, runtime)
    dispatcher.step()
    runtime.exit(runtime.ref_of(job.id, 1), 3)
    dispatcher.step()
    assert queue.get(job.id).status is Status.WAITING
    dispatcher.step()
    assert runtime.containers == {}  # still backing off: nothing started
    clock.advance(5.0)
    dispatcher.step()
    runtime.exit(runtime.ref_of(job.id, 2), 4)
    dispatcher.step()
    failed = queue.get(job.id)
    assert failed.status is Status.FAILED
    assert failed.last_error == "exit code 4"
    notices = [r for r in Outbox(queue.db).for_job(job.id) if r.kind == "failed"]
    assert [(n.attempt, n.text) for n in notices] == [(2, "exit code 4")]


def test_deadline_stops_the_container_and_fails_the_attempt(queue, runtime, clock):
    job = queue.enqueue("a", "slow", timeout=10, max_retries=0)
    dispatcher = make(queue, runtime)
    dispatcher.step()
    clock.advance(11)
    dispatcher.step()  # past the deadline: stopped
    dispatcher.step()  # exited: settled
    assert queue.get(job.id).status is Status.FAILED
    assert queue.get(job.id).last_error == "timed out after 10 s"


def test_recovery_reclaims_collects_requeues_releases_and_removes_orphans(
    queue, runtime, clock
):
    jobs = [queue.enqueue(g, "hi") for g in ("a", "b", "c", "d")]
    claimed = {j.id: j for j in queue.claim(4)}

    def spec(job_id: int, attempt: int, install: str | None = None) -> AttemptSpec:
        job = claimed.get(job_id) or jobs[0]
        return AttemptSpec(
            install=install or queue.install_id,
            job_id=job_id,
            attempt=attempt,
            group_id=job.group_id,
            input=input_document(job),
        )

    running = runtime.add_foreign(spec(jobs[0].id, 1), ContainerState.RUNNING)
    exited = runtime.add_foreign(spec(jobs[1].id, 1), ContainerState.RUNNING)
    runtime.emit(exited, reply("done while down"))
    runtime.exit(exited, 0)
    # jobs[2]: no container at all (lost); jobs[3]: created, never started
    runtime.add_foreign(spec(jobs[3].id, 1), ContainerState.CREATED)
    orphan = runtime.add_foreign(spec(jobs[0].id, 99), ContainerState.RUNNING)
    other_install = runtime.add_foreign(
        spec(jobs[0].id, 1, "f" * 32), ContainerState.RUNNING
    )

    dry = make(queue, runtime).recover(dry_run=True)
    assert dry.counts() == {
        "reclaim": 1,
        "collect": 1,
        "requeue": 1,
        "release": 1,
        "orphan": 1,
    }
    assert {j.status for j in queue.active()} == {Status.ACTIVE}
    assert len(queue.active()) == 4  # the dry run changed nothing

    calls = runtime.list_calls
    dispatcher = make(queue, runtime)
    report = dispatcher.recover()
    assert runtime.list_calls == calls + 1  # exactly one list call
    assert report.count(ActionKind.ORPHAN) == 1
    assert queue.get(jobs[0].id).status is Status.ACTIVE
    assert queue.get(jobs[0].id).container_id == running
    assert jobs[0].id in dispatcher.watched
    assert queue.get(jobs[1].id).status is Status.COMPLETED
    assert [r.text for r in Outbox(queue.db).for_job(jobs[1].id)] == ["done while down"]
    lost = queue.get(jobs[2].id)
    assert (lost.status, lost.last_error, lost.retry_count) == (
        Status.WAITING,
        "container lost",
        1,
    )
    released = queue.get(jobs[3].id)
    assert (released.status, released.retry_count) == (Status.WAITING, 0)
    assert orphan not in runtime.containers and exited not in runtime.containers
    assert other_install in runtime.containers  # never another install's


def test_reading_a_reclaimed_containers_output_again_records_nothing_twice(
    queue, runtime
):
    job = queue.enqueue("a", "hi")
    first = make(queue, runtime)
    first.step()
    ref = runtime.ref_of(job.id)
    runtime.emit(ref, reply("one"), reply("two"))
    first.step()
    # a new dispatcher (a restart) reclaims and reads on; then the output is
    # also offered again from the start: still two replies.
    second = make(queue, runtime)
    second.recover()
    runtime.emit(ref, reply("three"))
    second.step()
    queue.record_output(queue.get(job.id), 0, runtime.read_output(ref, 0))
    runtime.exit(ref, 0)
    second.step()
    assert [r.text for r in Outbox(queue.db).for_job(job.id)] == ["one", "two", "three"]


def test_engine_outage_spends_no_attempt_and_work_resumes(queue, runtime, clock):
    job = queue.enqueue("a", "hi")
    dispatcher = make(queue, runtime)
    runtime.down = True
    for _ in range(3):
        dispatcher.step()
        clock.advance(1)
    assert not dispatcher.engine_ok
    waiting = queue.get(job.id)
    assert (waiting.status, waiting.retry_count) == (Status.WAITING, 0)
    runtime.down = False
    clock.advance(60)
    dispatcher.step()
    assert dispatcher.engine_ok
    assert queue.get(job.id).status is Status.ACTIVE


def test_attempt_that_ends_during_an_outage_is_released_not_failed(
    queue, runtime, clock
):
    job = queue.enqueue("a", "hi")
    dispatcher = make(queue, runtime)
    dispatcher.step()
    ref = runtime.ref_of(job.id)
    runtime.down = True
    dispatcher.step()
    clock.advance(2)
    runtime.down = False
    runtime.exit(ref, 137)  # the engine went away and took the container with it
    runtime.down = True
    clock.advance(2)
    dispatcher.step()
    runtime.down = False
    clock.advance(60)
    dispatcher.step()
    again = queue.get(job.id)
    assert again.retry_count == 0
    assert again.attempt == 2  # started again at once, no retry spent


def test_drain_and_delivery_to_a_callback_and_a_file(queue, runtime, tmp_path):
    seen: list[Reply] = []
    job = queue.enqueue("a", "hi")
    dispatcher = make(queue, runtime)
    dispatcher.step()
    ref = runtime.ref_of(job.id)
    runtime.emit(ref, reply("hello"))
    runtime.exit(ref, 0)
    dispatcher.step()
    outbox = Outbox(queue.db)
    assert (
        Deliverer(outbox, CallbackSink(seen.append), queue.install_id).deliver_due()
        == 1
    )
    assert [r.text for r in seen] == ["hello"]
    assert outbox.undelivered() == 0

    # the file sink skips a reply it wrote before a crash that came before
    # the reply was marked delivered
    path = tmp_path / "replies.jsonl"
    again = queue.enqueue("b", "hi")
    dispatcher.step()
    ref = runtime.ref_of(again.id)
    runtime.emit(ref, reply("once"))
    runtime.exit(ref, 0)
    dispatcher.step()
    pending = outbox.due()
    JsonlSink(path).deliver(pending[0], "k")  # written, then "crash"
    assert Deliverer(outbox, JsonlSink(path), queue.install_id).deliver_due() == 1
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["text"] for line in lines] == ["once"]


def test_a_running_job_cancelled_has_its_container_stopped_and_output_dropped(
    queue, runtime
):
    job = queue.enqueue("a", "hi")
    dispatcher = make(queue, runtime)
    dispatcher.step()
    nxt = queue.enqueue("a", "next")  # not in the cancelled attempt's batch
    ref = runtime.ref_of(job.id)
    runtime.emit(ref, reply("before"))
    dispatcher.step()
    runtime.emit(ref, reply("after the cancel"))

    cancelled = queue.cancel(job.id)
    dispatcher.step()

    assert cancelled.status is Status.CANCELLED
    assert queue.get(job.id).status is Status.CANCELLED
    assert [r.text for r in Outbox(queue.db).for_job(job.id)] == ["before"]
    assert ref not in runtime.containers  # stopped and removed
    assert job.id not in dispatcher.watched
    # The group was free again: the same step started its next message.
    assert queue.get(nxt.id).status is Status.ACTIVE
    assert [c.job_id for c in runtime.list()] == [nxt.id]


def test_a_container_of_a_job_cancelled_while_stopped_is_removed_at_start_up(
    queue, runtime
):
    job = queue.enqueue("a", "hi")
    first = make(queue, runtime)
    first.step()
    ref = runtime.ref_of(job.id)
    queue.cancel(job.id)  # while no dispatcher runs

    report = make(queue, runtime).recover()

    assert [a.kind for a in report.actions] == [ActionKind.ORPHAN]
    assert ref not in runtime.containers
    assert queue.get(job.id).status is Status.CANCELLED


def test_a_refusing_engine_or_a_database_error_stops_the_loop(
    queue, runtime, monkeypatch
):
    """Faults other than an unreachable engine are not retried in place: the
    step raises (serve exits, and its next start recovers)."""
    from moorage.errors import RuntimeFailure, StoreError

    queue.enqueue("a", "hi")
    dispatcher = make(queue, runtime)

    def refuse() -> list:
        raise RuntimeFailure("list: engine refused: 500")

    monkeypatch.setattr(runtime, "list", refuse)
    with pytest.raises(RuntimeFailure):
        dispatcher.step()
    monkeypatch.undo()

    def broken(*args: object, **kwargs: object) -> list:
        raise StoreError("database error: disk I/O error")

    monkeypatch.setattr(queue, "claim", broken)
    with pytest.raises(StoreError):
        dispatcher.step()


def test_the_periodic_prune_uses_each_age(queue, runtime, clock):
    cancelled = queue.enqueue("a", "withdrawn")
    queue.cancel(cancelled.id)
    failed = queue.enqueue("b", "broken", max_retries=0)
    dispatcher = make(
        queue,
        runtime,
        prune_interval=60.0,
        cancelled_ttl=30.0,
        failed_ttl=3600.0,
    )
    dispatcher.step()
    runtime.exit(runtime.ref_of(failed.id), 1)
    dispatcher.step()
    assert queue.get(failed.id).status is Status.FAILED

    clock.advance(61)
    dispatcher.step()

    assert [j.id for j in queue.jobs(limit=10)] == [failed.id]  # cancelled pruned
