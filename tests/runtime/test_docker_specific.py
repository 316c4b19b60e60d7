"""What only the Docker runtime promises: hardening, one-request listing,
error translation at the engine boundary."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import docker.errors  # type: ignore[import-untyped]
import pytest
import requests

import moorage.runtime.docker as docker_runtime_module
from moorage.errors import ContainerNotFound, EngineUnavailable, RuntimeFailure
from moorage.runtime import AttemptSpec, ContainerState, DockerRuntime, Limits
from moorage.runtime.base import labels_for

from .conftest import batch, eventually, reply

pytestmark = pytest.mark.docker


@pytest.fixture
def runtime(
    install_id: str, tmp_path: Path, test_image: str
) -> Iterator[DockerRuntime]:
    rt = DockerRuntime(install_id, tmp_path / "data", stop_grace=1)
    yield rt
    for info in rt.list():
        rt.remove(info.ref)
    rt.close()


def spec(install: str, *texts: str, **fields: Any) -> AttemptSpec:
    return AttemptSpec(
        install=install,
        job_id=fields.pop("job", 1),
        attempt=1,
        group_id="g",
        input=batch(*texts),
        image=fields.pop("image", "moorage-test-agent:latest"),
        **fields,
    )


def test_hardening_defaults_are_applied(runtime: DockerRuntime, docker_client):
    limits = Limits(memory_bytes=64 * 1024 * 1024, cpus=0.5, pids=32)
    info = runtime.start(spec(runtime.install, "reply=x", limits=limits, user="65534"))

    raw = docker_client.api.inspect_container(info.ref)
    host = raw["HostConfig"]
    assert host["Privileged"] is False
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["Memory"] == 64 * 1024 * 1024
    assert host["NanoCpus"] == 500_000_000
    assert host["PidsLimit"] == 32
    assert host["NetworkMode"] == "none"
    assert host["AutoRemove"] is False
    assert raw["Config"]["User"] == "65534"
    assert "MOORAGE_INPUT=/moorage/input.json" in raw["Config"]["Env"]
    assert "MOORAGE_INBOX=/moorage/in" in raw["Config"]["Env"]
    assert raw["Config"]["Labels"] == {
        **labels_for(spec(runtime.install), None),
        **{
            k: v
            for k, v in raw["Config"]["Labels"].items()
            if k.startswith("moorage.test")
        },
    }
    assert runtime.wait(info.ref, 20).exit_code == 0
    assert runtime.read_output(info.ref) == [reply("x")]


def test_read_only_rootfs_still_reads_input_and_inbox(
    runtime: DockerRuntime, docker_client
):
    info = runtime.start(
        spec(
            runtime.install,
            "reply=ro; await=n.json",
            read_only_rootfs=True,
            user="65534",
        )
    )
    runtime.deliver(info.ref, "n.json", {"k": 1})

    assert runtime.wait(info.ref, 20).exit_code == 0
    assert runtime.read_output(info.ref) == [
        reply("ro"),
        '{"type":"inbox","name":"n.json","document":{"k":1}}',
    ]
    assert docker_client.api.inspect_container(info.ref)["HostConfig"]["ReadonlyRootfs"]
    volumes = [
        m["Name"] for m in docker_client.api.inspect_container(info.ref)["Mounts"]
    ]
    runtime.remove(info.ref)
    leftover = docker_client.api.volumes()["Volumes"] or []
    assert not set(volumes) & {v["Name"] for v in leftover}


def test_list_is_one_request_to_the_engine(runtime: DockerRuntime, monkeypatch):
    for job in (1, 2, 3):
        runtime.start(spec(runtime.install, "sleep=30", job=job))
    calls: list[str] = []
    send = runtime.api.send

    def counting(request: Any, **kwargs: Any) -> Any:
        calls.append(f"{request.method} {request.path_url}")
        return send(request, **kwargs)

    monkeypatch.setattr(runtime.api, "send", counting)
    listed = runtime.list()

    assert len(listed) == 3
    assert all(c.state is ContainerState.RUNNING for c in listed)
    assert len(calls) == 1 and "/containers/json" in calls[0]


def test_list_reports_exit_codes_without_inspecting(runtime: DockerRuntime):
    info = runtime.start(spec(runtime.install, "exit=5"))
    runtime.wait(info.ref, 20)

    [listed] = runtime.list()

    assert (listed.state, listed.exit_code, listed.timed_out) == (
        ContainerState.EXITED,
        5,
        False,
    )


def test_a_created_but_never_started_container_is_started_by_name(
    runtime: DockerRuntime,
):
    attempt = spec(runtime.install, "reply=late")
    # A crash right after "create": the container exists, unstarted.
    ref = runtime._create(
        attempt, "moorage-" + runtime.install[:12] + "-1-1", [], {}, None
    )
    assert runtime.inspect(ref).state is ContainerState.CREATED

    info = runtime.start(attempt)

    assert info.ref == ref
    assert runtime.wait(ref, 20).exit_code == 0
    assert runtime.read_output(ref) == [reply("late")]


def test_a_missing_image_is_a_clear_failure_never_a_pull(runtime: DockerRuntime):
    with pytest.raises(RuntimeFailure, match="never pulls") as caught:
        runtime.start(spec(runtime.install, image="moorage-no-such-image:never"))
    assert not isinstance(caught.value, ContainerNotFound)
    assert runtime.list() == []


def test_an_unreachable_engine_is_engine_unavailable(tmp_path: Path, install_id: str):
    runtime = DockerRuntime(
        install_id, tmp_path, base_url=f"unix://{tmp_path}/no-engine.sock"
    )
    for call in (runtime.ping, runtime.list, lambda: runtime.inspect("a" * 64)):
        with pytest.raises(EngineUnavailable) as caught:
            call()
        assert caught.value.__cause__ is not None
    with pytest.raises(EngineUnavailable):
        runtime.start(spec(install_id, "reply=x"))


def test_start_is_create_put_archive_start_and_nothing_more(
    runtime: DockerRuntime, monkeypatch
):
    runtime.ping()
    calls: list[str] = []
    send = runtime.api.send

    def counting(request: Any, **kwargs: Any) -> Any:
        calls.append(f"{request.method} {request.path_url.split('?')[0]}")
        return send(request, **kwargs)

    monkeypatch.setattr(runtime.api, "send", counting)
    info = runtime.start(spec(runtime.install, "sleep=30", timeout=60))
    monkeypatch.undo()

    assert [c.split("/")[-1] for c in calls] == ["create", "archive", "start"]
    # What start() returns without inspecting agrees with inspect().
    seen = runtime.inspect(info.ref)
    assert (info.state, seen.state) == (ContainerState.RUNNING,) * 2
    assert info == replace(
        seen, started_at=info.started_at, finished_at=None, timed_out=False
    )
    assert info.started_at is not None and seen.started_at is not None
    assert abs(info.started_at - seen.started_at) < 5


def test_a_restarted_unstarted_container_keeps_its_first_deadline(
    runtime: DockerRuntime,
):
    attempt = spec(runtime.install, "sleep=30", timeout=60)
    name = "moorage-" + runtime.install[:12] + "-1-1"
    ref = runtime._create(attempt, name, [], {}, 1_000.5)

    info = runtime.start(attempt)

    assert (info.ref, info.deadline) == (ref, 1_000.5)
    assert runtime.inspect(ref).deadline == 1_000.5


def test_calls_share_one_connection_to_the_engine(runtime: DockerRuntime, monkeypatch):
    import docker.transport.unixconn as unixconn

    runtime.ping()
    if runtime.api.base_url != "http+docker://localhost":
        pytest.skip("the engine is not reached over a unix socket")
    connects: list[int] = []
    connect = unixconn.UnixHTTPConnection.connect

    def counting(self: Any) -> None:
        connects.append(1)
        connect(self)

    monkeypatch.setattr(unixconn.UnixHTTPConnection, "connect", counting)
    for job in (1, 2):
        info = runtime.start(spec(runtime.install, "sleep=30", job=job))
        runtime.inspect(info.ref)
        runtime.read_output(info.ref)
    runtime.list()

    assert connects == []


def _conflict(explanation: str) -> docker.errors.APIError:
    """The error the docker SDK raises for an engine's 409 answer."""
    response = requests.Response()
    response.status_code = 409
    response.reason = "Conflict"
    response.url = "http+docker://localhost/containers/x"
    return docker.errors.APIError("409 Conflict", response, explanation)


def test_removing_a_container_someone_else_is_removing_succeeds(
    runtime: DockerRuntime, docker_client, monkeypatch: pytest.MonkeyPatch
):
    """The engine answers 409 "removal already in progress" when another
    caller (a second moorage process, an operator) is removing the same
    container: remove waits for that removal and succeeds."""
    info = runtime.start(spec(runtime.install, "sleep=30", job=31))
    real_remove = runtime.api.remove_container

    def raced(ref: str, **kwargs: Any) -> None:
        docker_client.api.remove_container(ref, force=True, v=True)
        raise _conflict(f"removal of container {ref} is already in progress")

    monkeypatch.setattr(runtime.api, "remove_container", raced)
    runtime.remove(info.ref)
    assert runtime.inspect(info.ref).state is ContainerState.MISSING

    # Any other conflict is still an error, and a removal that never ends
    # is reported rather than waited on for ever.
    other = runtime.start(spec(runtime.install, "sleep=30", job=32))

    def refused(ref: str, **kwargs: Any) -> None:
        raise _conflict("container is paused")

    monkeypatch.setattr(runtime.api, "remove_container", refused)
    with pytest.raises(RuntimeFailure, match="paused"):
        runtime.remove(other.ref)
    with pytest.raises(RuntimeFailure, match="has not finished"):
        runtime._await_removal(other.ref, timeout=0.3)
    monkeypatch.setattr(runtime.api, "remove_container", real_remove)
    runtime.remove(other.ref)
    assert runtime.inspect(other.ref).state is ContainerState.MISSING


def test_concurrent_removals_of_one_container_all_succeed(runtime: DockerRuntime):
    info = runtime.start(spec(runtime.install, "sleep=30", job=33))
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda _: runtime.remove(info.ref), range(6)))
    assert results == [None] * 6
    assert runtime.inspect(info.ref).state is ContainerState.MISSING


class _Reader:
    """Reads a container's output as the dispatcher does: each call goes on
    from where the previous one stopped.  Records the log fetches made."""

    def __init__(self, runtime: DockerRuntime, ref: str, monkeypatch) -> None:
        self.runtime, self.ref = runtime, ref
        self.lines: list[str] = []
        self.fetches: list[int | None] = []
        fetch = runtime._log_messages

        def recording(ref: str, tail: int | None) -> Any:
            self.fetches.append(tail)
            return fetch(ref, tail)

        monkeypatch.setattr(runtime, "_log_messages", recording)

    def read(self) -> list[str]:
        new = self.runtime.read_output(self.ref, len(self.lines))
        self.lines += new
        return new

    def until(self, count: int) -> None:
        eventually(lambda: self.read() is not None and len(self.lines) >= count, 20)
        assert len(self.lines) == count


def _burst(first: int, count: int) -> list[str]:
    return [reply(f"line {i}") for i in range(1, count + 1)][first:]


def test_reading_on_fetches_only_the_end_of_the_log(
    runtime: DockerRuntime, monkeypatch
):
    """After the first read, a read that goes on from the last place asks
    the engine for the log's last messages only; bursts bigger than that
    window are read whole.  Either way the lines are exactly those a whole
    read gives, though every burst prints the same texts."""
    info = runtime.start(
        spec(
            runtime.install,
            "lines=300; await=a.json; lines=40; await=b.json; lines=400",
        )
    )
    reader = _Reader(runtime, info.ref, monkeypatch)
    reader.until(300)

    reader.fetches.clear()
    runtime.deliver(info.ref, "a.json", {"n": 1})
    reader.until(300 + 1 + 40)
    if runtime._timestamped_logs():
        window = docker_runtime_module._TAIL_WINDOW
        assert reader.fetches and set(reader.fetches) == {window}  # no whole read
    else:  # Podman: every read is a whole plain read
        assert reader.fetches == []

    reader.fetches.clear()
    runtime.deliver(info.ref, "b.json", {"n": 2})
    reader.until(300 + 1 + 40 + 1 + 400)
    assert runtime.wait(info.ref, 20).exit_code == 0
    assert reader.read() == []
    assert reader.lines == runtime.read_output(info.ref, 0)
    assert reader.lines[:300] == _burst(0, 300)
    assert reader.lines[301:341] == _burst(0, 40)
    assert reader.lines[342:] == _burst(0, 400)


def test_long_lines_come_whole_from_pieces_of_the_log(
    runtime: DockerRuntime, monkeypatch
):
    """The engine keeps a line over 16 KiB as several log messages; the
    pieces are joined, and an unfinished last line waits for the exit."""
    long = "y" * 40_000
    info = runtime.start(
        spec(
            runtime.install, f"lines=2; log={long}; await=go.json; partial=end; sleep=3"
        )
    )
    reader = _Reader(runtime, info.ref, monkeypatch)
    reader.until(3)
    assert reader.lines[2] == long
    messages = runtime._log_messages(info.ref, None)
    assert messages is not None and len(messages) > 3  # it was cut into pieces

    runtime.deliver(info.ref, "go.json", {"n": 1})
    reader.until(4)  # the inbox line; "end" has no line end yet
    assert runtime.wait(info.ref, 20).exit_code == 0
    assert reader.read() == ["end"]
    assert reader.lines == runtime.read_output(info.ref, 0)
    assert reader.lines[:3] == [*_burst(0, 2), long]


def test_a_read_place_is_trusted_only_where_it_is_certain() -> None:
    from moorage.runtime.docker import _assemble, _LogCursor, _LogMessage

    a, b, c = (_LogMessage(b"t%d" % i, b"x\n") for i in range(3))
    same_as_b = _LogMessage(b"t1", b"x\n")
    cursor = _LogCursor(5, b.identity, a.identity)
    assert cursor.find([a, b, c]) == 2
    assert cursor.find([a, b]) == 2  # nothing new
    assert cursor.find([b, c]) is None  # its predecessor is not there
    assert cursor.find([c, b, c]) is None  # not preceded by it
    assert cursor.find([a, b, same_as_b, c]) is None  # ambiguous
    assert cursor.find([c]) is None  # the window is all new output
    assert _LogCursor(1, b.identity, None).find([a, b, c]) is None

    pieces = [
        _LogMessage(b"t0", b"one\n"),
        _LogMessage(b"t1", b"lo"),
        _LogMessage(b"t1", b"ng\n"),
        _LogMessage(b"t2", b"tail"),
    ]
    assert _assemble(pieces, 0, final=False) == ([b"one", b"long"], [0, 2])
    assert _assemble(pieces, 0, final=True) == ([b"one", b"long", b"tail"], [0, 2, 3])
    assert _assemble(pieces, 1, final=False) == ([b"long"], [2])
