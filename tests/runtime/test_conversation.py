"""Conversations: follow-ups delivered to a running attempt are received,
answered and closed, on every runtime (docker and process)."""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from moorage.runtime import AttemptSpec, ContainerState, ProcessRuntime, Runtime

from .conftest import Harness, batch, eventually, reply, running

IDLE = '{"type":"idle"}'


def received(ident: int) -> str:
    return '{"type":"received","id":' + str(ident) + "}"


def message_name(ident: int) -> str:
    return f"message-{ident:012d}.json"


def send(runtime: Runtime, ref: str, ident: int, text: str) -> None:
    message = {"id": ident, "chat_jid": "chat@x", "kind": "message", "text": text}
    runtime.deliver(ref, message_name(ident), message)


def close(runtime: Runtime, ref: str, reason: str = "idle") -> None:
    runtime.deliver(ref, "close.json", {"type": "close", "reason": reason})


def output_until(runtime: Runtime, ref: str, count: int) -> list[str]:
    """The attempt's output once it has at least ``count`` lines."""
    return eventually(
        lambda: (lines := runtime.read_output(ref)) and len(lines) >= count and lines,
        timeout=20,
    )


def test_a_follow_up_is_received_answered_and_followed_by_idle(harness: Harness):
    runtime = harness.runtime()
    info = runtime.start(harness.spec("reply=one; converse=20"))
    assert output_until(runtime, info.ref, 2) == [reply("one"), IDLE]

    send(runtime, info.ref, 42, "reply=two")

    assert output_until(runtime, info.ref, 5) == [
        reply("one"),
        IDLE,
        received(42),
        reply("two"),
        IDLE,
    ]
    assert running(runtime.inspect(info.ref))
    close(runtime, info.ref)
    done = runtime.wait(info.ref, 20)
    assert (done.state, done.exit_code) == (ContainerState.EXITED, 0)
    assert len(runtime.read_output(info.ref)) == 5


def test_follow_ups_delivered_at_once_are_taken_in_name_order_before_close(
    harness: Harness,
):
    runtime = harness.runtime()
    # The agent reads its inbox only after the sleep: all three are there.
    info = runtime.start(harness.spec("sleep=2; converse=20"))

    send(runtime, info.ref, 43, "reply=three")
    send(runtime, info.ref, 42, "reply=two")
    close(runtime, info.ref)

    assert runtime.wait(info.ref, 20).exit_code == 0
    assert runtime.read_output(info.ref) == [
        IDLE,
        received(42),
        reply("two"),
        IDLE,
        received(43),
        reply("three"),
        IDLE,
    ]


def test_close_ignored_keeps_the_attempt_running_until_stopped(harness: Harness):
    runtime = harness.runtime()
    info = runtime.start(harness.spec("converse=20; close=ignore"))
    output_until(runtime, info.ref, 1)

    close(runtime, info.ref)
    time.sleep(1.0)
    assert running(runtime.inspect(info.ref))
    send(runtime, info.ref, 7, "reply=still here")
    assert output_until(runtime, info.ref, 4)[1:] == [
        received(7),
        reply("still here"),
        IDLE,
    ]

    runtime.stop(info.ref, grace=1)
    stopped = runtime.inspect(info.ref)
    assert stopped.state is ContainerState.EXITED
    assert stopped.exit_code != 0


def test_a_follow_up_can_end_the_attempt_with_its_exit_code(harness: Harness):
    runtime = harness.runtime()
    info = runtime.start(harness.spec("converse=20"))
    output_until(runtime, info.ref, 1)

    send(runtime, info.ref, 5, "reply=bye; exit=3; reply=never")

    assert runtime.wait(info.ref, 20).exit_code == 3
    assert runtime.read_output(info.ref) == [IDLE, received(5), reply("bye")]


def test_a_silent_conversation_ends_by_itself_at_its_limit(harness: Harness):
    runtime = harness.runtime()
    began = time.monotonic()
    info = runtime.start(harness.spec("reply=one; converse=1"))

    done = runtime.wait(info.ref, 20)

    assert (done.state, done.exit_code) == (ContainerState.EXITED, 0)
    assert time.monotonic() - began >= 1.0
    assert runtime.read_output(info.ref) == [reply("one"), IDLE]


def test_a_conversation_works_on_a_read_only_root_as_another_user(
    harness: Harness,
):
    runtime = harness.runtime()
    spec = harness.spec("converse=20", read_only_rootfs=True, user="65534:65534")
    info = runtime.start(spec)
    output_until(runtime, info.ref, 1)

    send(runtime, info.ref, 9, "reply=ro")
    close(runtime, info.ref)

    assert runtime.wait(info.ref, 20).exit_code == 0
    assert runtime.read_output(info.ref) == [IDLE, received(9), reply("ro"), IDLE]
    assert runtime.has_input(info.ref, message_name(9))


# -- the built-in echo agent (process runtime) -------------------------------


@pytest.fixture
def process_runtime(
    tmp_path: Path, session_installs: set[str]
) -> Iterator[ProcessRuntime]:
    install = uuid.uuid4().hex
    session_installs.add(install)
    runtime = ProcessRuntime(install, tmp_path / "data", stop_grace=1.0)
    yield runtime
    for info in runtime.list():
        runtime.remove(info.ref)


def echo_spec(runtime: ProcessRuntime, *texts: str, **env: str) -> AttemptSpec:
    return AttemptSpec(
        install=runtime.install,
        job_id=1,
        attempt=1,
        group_id="g",
        input=batch(*texts),
        command=[sys.executable, "-m", "moorage.agents.echo"],
        env=env,
    )


def test_the_echo_agent_answers_a_follow_up_and_closes(
    process_runtime: ProcessRuntime,
):
    runtime = process_runtime
    info = runtime.start(echo_spec(runtime, "hi"))
    output_until(runtime, info.ref, 2)

    send(runtime, info.ref, 2, "and caf\u00e9")
    lines = output_until(runtime, info.ref, 5)
    close(runtime, info.ref)

    assert runtime.wait(info.ref, 20).exit_code == 0
    assert [json.loads(line) for line in lines] == [
        {"type": "reply", "text": "echo: hi"},
        {"type": "idle"},
        {"type": "received", "id": 2},
        {"type": "reply", "text": "echo: and caf\u00e9"},
        {"type": "idle"},
    ]
    assert runtime.read_output(info.ref) == lines


def test_the_echo_agent_without_linger_exits_after_its_input(
    process_runtime: ProcessRuntime,
):
    runtime = process_runtime
    info = runtime.start(echo_spec(runtime, "hi", MOORAGE_ECHO_LINGER="0"))

    assert runtime.wait(info.ref, 20).exit_code == 0
    assert [json.loads(line) for line in runtime.read_output(info.ref)] == [
        {"type": "reply", "text": "echo: hi"}
    ]
