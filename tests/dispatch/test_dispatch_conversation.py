"""Conversations driven one dispatcher step at a time, on an in-memory runtime
and a fake clock: batches, follow-ups, idle close, tasks first, and what a
restarted dispatcher does with offers and close requests in flight."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from moorage.clock import FakeClock
from moorage.dispatcher import CLOSE_NAME, Dispatcher, DispatchSettings, inbox_name
from moorage.metrics import Metrics
from moorage.models import Status
from moorage.outbox import Outbox
from moorage.queue import Queue, RetryPolicy
from moorage.runtime.memory import MemoryRuntime


def line(kind: str, **fields: Any) -> str:
    return json.dumps({"type": kind, **fields})


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def queue(tmp_path: Path, clock: FakeClock) -> Iterator[Queue]:
    q = Queue.open(tmp_path / "data", clock=clock, retry_policy=RetryPolicy(jitter=0.0))
    yield q
    q.close()


class CountingRuntime(MemoryRuntime):
    """Counts every inbox write, to prove nothing is written twice."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.writes: list[tuple[str, str]] = []

    def deliver(self, ref: str, name: str, document: Any) -> None:
        super().deliver(ref, name, document)
        self.writes.append((ref, name))


@pytest.fixture
def runtime(queue: Queue, clock: FakeClock) -> CountingRuntime:
    return CountingRuntime(queue.install_id, clock)


def make(queue: Queue, runtime: MemoryRuntime, **settings: Any) -> Dispatcher:
    options: dict[str, Any] = {
        "max_concurrent": 2,
        "timeout": 600.0,
        "idle_timeout": 30.0,
        "close_grace": 10.0,
    }
    return Dispatcher(queue, runtime, DispatchSettings(**(options | settings)))


def texts(runtime: MemoryRuntime, ref: str) -> list[str]:
    messages = runtime.containers[ref].spec.input["messages"]
    return [m["text"] for m in messages]


def test_messages_that_piled_up_run_in_one_container_in_order(queue, runtime):
    ids = [queue.enqueue("g", f"m{i}").id for i in range(5)]
    dispatcher = make(queue, runtime)

    dispatcher.step()

    assert len(runtime.containers) == 1
    ref = runtime.ref_of(ids[0])
    assert texts(runtime, ref) == ["m0", "m1", "m2", "m3", "m4"]
    runtime.exit(ref, 0)
    dispatcher.step()
    assert {queue.get(i).status for i in ids} == {Status.COMPLETED}


def test_a_follow_up_reaches_the_running_container_and_is_answered(queue, runtime):
    first = queue.enqueue("g", "hello", chat_jid="g@chat")
    dispatcher = make(queue, runtime)
    dispatcher.step()
    ref = runtime.ref_of(first.id)

    follow = queue.enqueue("g", "and then?", chat_jid="g@chat")
    dispatcher.step()

    assert runtime.containers[ref].inbox[inbox_name(follow.id)] == {
        "id": follow.id,
        "chat_jid": "g@chat",
        "kind": "message",
        "text": "and then?",
    }
    runtime.emit(ref, line("received", id=follow.id), line("reply", text="answer"))
    dispatcher.step()
    assert queue.get(follow.id).status is Status.ACTIVE
    assert queue.get(follow.id).batch_of == first.id
    runtime.exit(ref, 0)
    dispatcher.step()
    assert queue.get(follow.id).status is Status.COMPLETED
    assert [r.text for r in Outbox(queue.db).for_job(first.id)] == ["answer"]
    assert len(runtime.writes) == 1


def test_a_follow_up_the_container_never_took_runs_in_the_next_one(queue, runtime):
    first = queue.enqueue("g", "hello")
    dispatcher = make(queue, runtime)
    dispatcher.step()
    ref = runtime.ref_of(first.id)
    follow = queue.enqueue("g", "late")
    dispatcher.step()  # offered and delivered
    runtime.exit(ref, 0)  # but the agent exits without taking it

    dispatcher.step()  # settles the first and claims the follow-up

    assert queue.get(first.id).status is Status.COMPLETED
    nxt = runtime.ref_of(follow.id)
    assert texts(runtime, nxt) == ["late"]
    assert queue.get(follow.id).attempt == 1


def test_an_idle_agent_is_asked_to_close_and_its_attempt_completes(
    queue, runtime, clock
):
    job = queue.enqueue("g", "hello")
    dispatcher = make(queue, runtime)
    dispatcher.step()
    ref = runtime.ref_of(job.id)
    runtime.emit(ref, line("reply", text="hi"), line("idle"))
    dispatcher.step()
    clock.advance(29)
    dispatcher.step()
    assert CLOSE_NAME not in runtime.containers[ref].inbox

    clock.advance(2)
    dispatcher.step()

    assert runtime.containers[ref].inbox[CLOSE_NAME] == {
        "type": "close",
        "reason": "idle",
    }
    runtime.exit(ref, 0)
    dispatcher.step()
    done = queue.get(job.id)
    assert done.status is Status.COMPLETED
    assert queue.events(job.id)[-1].detail.startswith("closed (exit 0)")


def test_an_agent_that_ignores_close_is_stopped_after_the_grace_and_completes(
    queue, runtime, clock
):
    job = queue.enqueue("g", "hello")
    dispatcher = make(queue, runtime)
    dispatcher.step()
    ref = runtime.ref_of(job.id)
    runtime.emit(ref, line("idle"))
    dispatcher.step()
    clock.advance(31)
    dispatcher.step()  # asked to close
    clock.advance(9)
    dispatcher.step()
    assert runtime.containers[ref].info.state.value == "running"

    clock.advance(2)
    dispatcher.step()  # grace over: stopped (exit 143)
    dispatcher.step()  # settled

    assert queue.get(job.id).status is Status.COMPLETED
    assert queue.events(job.id)[-1].detail.startswith("closed (exit 143)")


def test_a_due_task_makes_an_idle_message_container_close_early(queue, runtime):
    job = queue.enqueue("g", "hello")
    dispatcher = make(queue, runtime)
    dispatcher.step()
    ref = runtime.ref_of(job.id)
    runtime.emit(ref, line("idle"))
    dispatcher.step()
    task = queue.enqueue("g", "digest", kind="task")
    later = queue.enqueue("g", "after the task")

    dispatcher.step()

    assert runtime.containers[ref].inbox == {
        CLOSE_NAME: {"type": "close", "reason": "task"}
    }
    runtime.exit(ref, 0)
    dispatcher.step()
    assert texts(runtime, runtime.ref_of(task.id)) == ["digest"]
    assert queue.get(later.id).status is Status.WAITING


def test_a_busy_agent_is_not_closed_for_a_task(queue, runtime, clock):
    job = queue.enqueue("g", "hello")
    dispatcher = make(queue, runtime)
    dispatcher.step()
    ref = runtime.ref_of(job.id)
    queue.enqueue("g", "digest", kind="task")
    clock.advance(100)
    dispatcher.step()
    assert runtime.containers[ref].inbox == {}  # no idle line: still working


def test_a_task_that_says_it_is_idle_is_closed_at_once(queue, runtime):
    task = queue.enqueue("g", "digest", kind="task")
    dispatcher = make(queue, runtime)
    dispatcher.step()
    ref = runtime.ref_of(task.id)
    queue.enqueue("g", "a message")
    runtime.emit(ref, line("idle"))

    dispatcher.step()

    assert set(runtime.containers[ref].inbox) == {CLOSE_NAME}


def test_follow_ups_can_be_turned_off(queue, runtime):
    job = queue.enqueue("g", "hello")
    dispatcher = make(queue, runtime, follow_ups=False)
    dispatcher.step()
    queue.enqueue("g", "more")
    dispatcher.step()
    assert runtime.containers[runtime.ref_of(job.id)].inbox == {}


def test_a_restarted_dispatcher_delivers_an_offer_made_but_never_written(
    queue, runtime
):
    job = queue.enqueue("g", "hello")
    first = make(queue, runtime)
    first.step()
    ref = runtime.ref_of(job.id)
    follow = queue.enqueue("g", "more")
    # The offer is committed, then the process dies before writing the file.
    queue.offer(job.id, job.attempt + 1, 10)
    assert runtime.writes == []

    second = make(queue, runtime)
    second.recover()
    second.step()

    assert runtime.writes == [(ref, inbox_name(follow.id))]


def test_a_restarted_dispatcher_never_writes_a_delivered_follow_up_again(
    queue, runtime
):
    job = queue.enqueue("g", "hello")
    first = make(queue, runtime)
    first.step()
    ref = runtime.ref_of(job.id)
    follow = queue.enqueue("g", "more")
    first.step()
    assert runtime.writes == [(ref, inbox_name(follow.id))]

    second = make(queue, runtime)  # the first one is gone (kill -9)
    second.recover()
    second.step()
    second.step()

    assert runtime.writes == [(ref, inbox_name(follow.id))]
    runtime.emit(ref, line("received", id=follow.id))
    second.step()
    assert queue.get(follow.id).status is Status.ACTIVE


def test_a_close_request_survives_a_restart(queue, runtime, clock):
    job = queue.enqueue("g", "hello")
    first = make(queue, runtime)
    first.step()
    ref = runtime.ref_of(job.id)
    claimed = queue.get(job.id)
    queue.request_close(job.id, claimed.attempt, "task")  # then the process dies

    second = make(queue, runtime)
    second.recover()
    second.step()
    assert runtime.writes == [(ref, CLOSE_NAME)]
    assert runtime.containers[ref].inbox[CLOSE_NAME]["reason"] == "task"
    second.step()
    assert runtime.writes == [(ref, CLOSE_NAME)]

    clock.advance(11)
    second.step()  # past the close grace: stopped
    second.step()
    assert queue.get(job.id).status is Status.COMPLETED


def test_draining_closes_idle_agents(queue, runtime):
    job = queue.enqueue("g", "hello")
    dispatcher = make(queue, runtime)
    dispatcher.step()
    ref = runtime.ref_of(job.id)
    runtime.emit(ref, line("idle"))
    dispatcher.step()
    assert CLOSE_NAME not in runtime.containers[ref].inbox

    dispatcher.draining = True
    dispatcher.step()

    assert runtime.containers[ref].inbox[CLOSE_NAME]["reason"] == "shutdown"


def test_an_agent_that_never_takes_its_offers_is_closed_and_they_run_next(
    queue, runtime, clock
):
    job = queue.enqueue("g", "hello")
    dispatcher = make(queue, runtime)
    dispatcher.step()
    ref = runtime.ref_of(job.id)
    runtime.emit(ref, line("idle"))
    follow = queue.enqueue("g", "more")
    dispatcher.step()
    clock.advance(31)
    dispatcher.step()
    assert CLOSE_NAME in runtime.containers[ref].inbox

    runtime.exit(ref, 0)
    dispatcher.step()
    assert texts(runtime, runtime.ref_of(follow.id)) == ["more"]


def test_an_idle_conversation_gives_its_slot_to_a_waiting_group(queue, runtime):
    a = queue.enqueue("a", "hello")
    b = queue.enqueue("b", "hello")
    dispatcher = make(queue, runtime, max_concurrent=2)
    dispatcher.step()
    ref_a, ref_b = runtime.ref_of(a.id), runtime.ref_of(b.id)
    runtime.emit(ref_a, line("idle"))
    runtime.emit(ref_b, line("idle"))
    dispatcher.step()
    assert runtime.containers[ref_a].inbox == runtime.containers[ref_b].inbox == {}

    c = queue.enqueue("c", "me too")
    dispatcher.step()
    dispatcher.step()

    closing = [r for r in (ref_a, ref_b) if CLOSE_NAME in runtime.containers[r].inbox]
    assert len(closing) == 1  # one slot is wanted: one conversation closes
    assert runtime.containers[closing[0]].inbox[CLOSE_NAME]["reason"] == "slot"
    runtime.exit(closing[0], 0)
    dispatcher.step()
    assert queue.get(c.id).status is Status.ACTIVE


def test_follow_ups_and_close_requests_are_counted(queue, runtime, clock):
    metrics = Metrics()
    job = queue.enqueue("g", "hello")
    dispatcher = Dispatcher(
        queue,
        runtime,
        DispatchSettings(max_concurrent=2, idle_timeout=30.0),
        metrics=metrics,
    )
    dispatcher.step()
    ref = runtime.ref_of(job.id)
    follow = queue.enqueue("g", "more")
    dispatcher.step()
    runtime.emit(ref, line("received", id=follow.id), line("idle"))
    dispatcher.step()
    clock.advance(31)
    dispatcher.step()

    def value(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    assert value("moorage_follow_ups_total", step="offered") == 1
    assert value("moorage_follow_ups_total", step="received") == 1
    assert value("moorage_close_requests_total", reason="idle") == 1
    assert value("moorage_close_requests_total", reason="task") == 0
