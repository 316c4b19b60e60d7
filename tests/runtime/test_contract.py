"""The runtime contract, proven against every runtime (docker and process)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pytest

from moorage.errors import ContainerNotFound, InvalidInput
from moorage.runtime import ContainerState, container_name

from .conftest import Harness, eventually, reply, running


def test_start_runs_the_agent_and_reports_replies_and_exit_zero(harness: Harness):
    runtime = harness.runtime()
    info = runtime.start(harness.spec("reply=hello world; lines=2", group="fam"))

    assert info.name == container_name(harness.install, 1, 1)
    assert (info.install, info.job_id, info.attempt, info.group_id) == (
        harness.install,
        1,
        1,
        "fam",
    )
    done = runtime.wait(info.ref, 20)
    assert done.state is ContainerState.EXITED
    assert done.exit_code == 0
    assert not done.timed_out
    assert done.started_at is not None and done.finished_at is not None
    assert runtime.read_output(info.ref) == [
        reply("hello world"),
        reply("line 1"),
        reply("line 2"),
    ]


def test_directives_of_every_message_run_in_order(harness: Harness):
    runtime = harness.runtime()
    info = runtime.start(harness.spec("reply=a; log=plain", "reply=b", "exit=4"))

    done = runtime.wait(info.ref, 20)

    assert done.exit_code == 4
    assert runtime.read_output(info.ref) == [reply("a"), "plain", reply("b")]


def test_a_non_zero_exit_code_is_reported(harness: Harness):
    runtime = harness.runtime()
    info = runtime.start(harness.spec("reply=x; stderr=oops; exit=3; reply=never"))

    done = runtime.wait(info.ref, 20)

    assert (done.state, done.exit_code, done.timed_out) == (
        ContainerState.EXITED,
        3,
        False,
    )
    assert runtime.read_output(info.ref) == [reply("x")]  # stderr is not output


def test_a_timeout_stops_the_container_and_says_so(harness: Harness):
    runtime = harness.runtime()
    began = time.monotonic()
    info = runtime.start(harness.spec("reply=begun; sleep=30", timeout=0.5))

    done = runtime.wait(info.ref, 20)

    assert time.monotonic() - began < 10
    assert done.state is ContainerState.EXITED
    assert done.timed_out
    assert done.exit_code != 0
    assert done.deadline is not None and done.finished_at >= done.deadline
    assert runtime.read_output(info.ref) == [reply("begun")]
    # A fresh reader (a restarted moorage) still sees it timed out.
    fresh = harness.runtime()
    assert fresh.inspect(info.ref).timed_out
    assert [c.timed_out for c in fresh.list()] == [True]


def test_wait_returns_running_when_nothing_happened_in_time(harness: Harness):
    runtime = harness.runtime()
    info = runtime.start(harness.spec("sleep=30"))

    assert runtime.wait(info.ref, 0.3).state is ContainerState.RUNNING
    runtime.stop(info.ref, grace=1)
    stopped = runtime.inspect(info.ref)
    assert stopped.state is ContainerState.EXITED
    assert stopped.exit_code != 0 and not stopped.timed_out
    runtime.stop(info.ref, grace=1)  # stopping an exited container is fine


def test_list_sees_exactly_this_install_and_never_touches_another(harness: Harness):
    ours = harness.runtime()
    theirs = harness.runtime(install=uuid.uuid4().hex)
    mine = [ours.start(harness.spec("sleep=30", job=j)) for j in (1, 2)]
    other = theirs.start(harness.spec("sleep=30", install=theirs.install))

    listed = {c.ref: c for c in ours.list()}
    assert set(listed) == {m.ref for m in mine}
    assert {c.name for c in listed.values()} == {m.name for m in mine}
    assert all(c.install == harness.install for c in listed.values())
    assert [c.ref for c in theirs.list()] == [other.ref]

    for info in mine:
        ours.stop(info.ref, grace=0)
        ours.remove(info.ref)
    with pytest.raises(InvalidInput):
        ours.stop(other.ref, grace=0)
    with pytest.raises(InvalidInput):
        ours.remove(other.ref)

    assert ours.list() == []
    assert theirs.inspect(other.ref).state is ContainerState.RUNNING


def test_output_resumes_at_a_position_exactly_once_after_a_restart(
    harness: Harness,
):
    runtime = harness.runtime()
    info = runtime.start(harness.spec("reply=one; partial=half; await=go"))
    eventually(lambda: runtime.read_output(info.ref))

    # The unterminated line is not handed out while the agent runs.
    assert runtime.read_output(info.ref) == [reply("one")]
    runtime.deliver(info.ref, "go", {"n": 1})
    assert runtime.wait(info.ref, 20).exit_code == 0

    fresh = harness.runtime()  # a new reader, as after a moorage restart
    later = fresh.read_output(info.ref, 1)
    assert later == ['half{"type":"inbox","name":"go","document":{"n":1}}']
    assert fresh.read_output(info.ref, 2) == []
    assert fresh.read_output(info.ref, 0) == [reply("one"), *later]


def test_read_output_from_a_position_returns_later_lines_only(harness: Harness):
    runtime = harness.runtime()
    info = runtime.start(harness.spec("lines=5"))
    runtime.wait(info.ref, 20)

    fresh = harness.runtime()
    assert fresh.read_output(info.ref, 3) == [reply("line 4"), reply("line 5")]
    assert fresh.read_output(info.ref, 5) == []


_LIST_IN_FRESH_PROCESS = """
import json, sys
from pathlib import Path
from moorage.runtime import DockerRuntime, ProcessRuntime
kind, install, data_dir = sys.argv[1:4]
cls = DockerRuntime if kind == "docker" else ProcessRuntime
runtime = cls(install, Path(data_dir))
print(json.dumps([
    {"ref": c.ref, "name": c.name, "job": c.job_id, "attempt": c.attempt,
     "group": c.group_id, "state": c.state.value}
    for c in runtime.list()
]))
"""


def test_a_forgotten_container_is_found_again_from_a_fresh_process(
    harness: Harness,
):
    runtime = harness.runtime()
    info = runtime.start(harness.spec("await=never", job=7, attempt=2, group="g 1"))
    del runtime  # forgotten: nothing of it is kept in this process

    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _LIST_IN_FRESH_PROCESS,
            harness.kind,
            harness.install,
            str(harness.data_dir),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )

    assert json.loads(result.stdout) == [
        {
            "ref": info.ref,
            "name": container_name(harness.install, 7, 2),
            "job": 7,
            "attempt": 2,
            "group": "g 1",
            "state": "running",
        }
    ]


def test_starting_an_attempt_again_never_runs_it_twice(harness: Harness):
    runtime = harness.runtime()
    spec = harness.spec("reply=once; sleep=0.2")
    first = runtime.start(spec)

    again = harness.runtime().start(spec)
    runtime.wait(first.ref, 20)

    assert again.ref == first.ref
    assert len(runtime.list()) == 1
    assert runtime.read_output(first.ref) == [reply("once")]


def test_remove_cleans_everything_and_missing_is_fine(harness: Harness):
    runtime = harness.runtime()
    done = runtime.start(harness.spec("reply=x"))
    busy = runtime.start(harness.spec("sleep=30", job=2))
    runtime.wait(done.ref, 20)

    runtime.remove(done.ref)
    runtime.remove(busy.ref)  # a running one is stopped first
    runtime.remove(done.ref)  # already gone: not an error

    assert runtime.list() == []
    assert runtime.inspect(done.ref).state is ContainerState.MISSING
    assert runtime.wait(done.ref, 1).state is ContainerState.MISSING
    runtime.stop(done.ref)
    with pytest.raises(ContainerNotFound):
        runtime.read_output(done.ref)
    with pytest.raises(ContainerNotFound):
        runtime.deliver(done.ref, "x", {})
    if harness.kind == "process":
        assert list((harness.data_dir / "process").iterdir()) == []


def test_deliver_places_a_document_the_agent_reads(harness: Harness):
    runtime = harness.runtime()
    info = runtime.start(harness.spec("await=note.json; reply=done"))

    runtime.deliver(info.ref, "note.json", {"text": 'caf\u00e9 "q"', "n": [1, 2]})

    assert runtime.wait(info.ref, 20).exit_code == 0
    line, done = runtime.read_output(info.ref)
    assert json.loads(line) == {
        "type": "inbox",
        "name": "note.json",
        "document": {"text": 'caf\u00e9 "q"', "n": [1, 2]},
    }
    assert done == reply("done")


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "../x", "x" * 200, "a b"])
def test_deliver_refuses_names_that_are_not_plain_files(harness: Harness, name):
    runtime = harness.runtime()
    info = runtime.start(harness.spec("sleep=30"))

    with pytest.raises(InvalidInput):
        runtime.deliver(info.ref, name, {})
    assert running(runtime.inspect(info.ref))


def test_has_input_says_whether_a_name_was_delivered(harness: Harness):
    runtime = harness.runtime()
    info = runtime.start(harness.spec("await=go"))

    assert runtime.has_input(info.ref, "note.json") is False
    runtime.deliver(info.ref, "note.json", {"n": 1})
    assert runtime.has_input(info.ref, "note.json") is True
    assert runtime.has_input(info.ref, "other.json") is False

    runtime.deliver(info.ref, "go", {})
    assert runtime.wait(info.ref, 20).exit_code == 0
    fresh = harness.runtime()  # after the exit, and from a new reader
    assert fresh.has_input(info.ref, "note.json") is True
    assert fresh.has_input(info.ref, "other.json") is False


def test_has_input_of_a_removed_container_raises_not_found(harness: Harness):
    runtime = harness.runtime()
    info = runtime.start(harness.spec("reply=x"))
    runtime.deliver(info.ref, "note.json", {})
    runtime.wait(info.ref, 20)

    runtime.remove(info.ref)

    with pytest.raises(ContainerNotFound):
        runtime.has_input(info.ref, "note.json")


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "../x", "x" * 200, "a b"])
def test_has_input_refuses_names_that_are_not_plain_files(harness: Harness, name):
    runtime = harness.runtime()
    info = runtime.start(harness.spec("sleep=30"))

    with pytest.raises(InvalidInput):
        runtime.has_input(info.ref, name)
    assert running(runtime.inspect(info.ref))


def test_has_input_refuses_a_container_of_another_install(harness: Harness):
    ours = harness.runtime()
    theirs = harness.runtime(install=uuid.uuid4().hex)
    other = theirs.start(harness.spec("sleep=30", install=theirs.install))
    theirs.deliver(other.ref, "note.json", {})

    with pytest.raises(InvalidInput):
        ours.has_input(other.ref, "note.json")
    assert theirs.has_input(other.ref, "note.json") is True
