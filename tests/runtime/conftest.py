"""One harness for the runtime contract tests, parametrized over runtimes."""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from moorage.runtime import AttemptSpec, ContainerState, Runtime

AGENT_PY = Path(__file__).resolve().parent.parent / "agent" / "agent.py"
#: A Podman API socket (path or ``unix://`` URL) to run the docker-runtime
#: cases against as well; without it those cases are skipped.
PODMAN_SOCKET_ENV = "MOORAGE_TEST_PODMAN_SOCKET"
PODMAN_TEST_IMAGE = "moorage-test-agent:latest"


def batch(*texts: str, job: int = 1, attempt: int = 1, group: str = "g") -> dict:
    """An input document in moorage's shape: a batch of messages."""
    return {
        "job": job,
        "attempt": attempt,
        "group": group,
        "messages": [
            {"id": i, "chat_jid": "chat@x", "kind": "message", "text": text}
            for i, text in enumerate(texts, start=1)
        ],
    }


def reply(text: str) -> str:
    return '{"type":"reply","text":"' + text + '"}'


@dataclass
class Harness:
    """Makes runtimes and attempt specs for one kind of runtime, and cleans
    up every container (or process) made through it."""

    kind: str
    install: str
    data_dir: Path
    image: str | None
    installs: set[str]
    made: list[Runtime] = field(default_factory=list)

    def runtime(self, install: str | None = None, **options: Any) -> Runtime:
        install = install or self.install
        self.installs.add(install)
        runtime: Runtime
        if self.kind == "docker":
            from moorage.runtime import DockerRuntime

            options.setdefault("stop_grace", 1.0)
            runtime = DockerRuntime(install, self.data_dir, **options)
        else:
            from moorage.runtime import ProcessRuntime

            options.setdefault("stop_grace", 1.0)
            runtime = ProcessRuntime(install, self.data_dir, **options)
        self.made.append(runtime)
        return runtime

    def spec(
        self,
        *texts: str,
        job: int = 1,
        attempt: int = 1,
        install: str | None = None,
        group: str = "g",
        **fields: Any,
    ) -> AttemptSpec:
        install = install or self.install
        agent: dict[str, Any]
        if self.kind == "docker":
            agent = {"image": self.image}
        else:
            agent = {"command": [sys.executable, str(AGENT_PY)]}
        return AttemptSpec(
            install=install,
            job_id=job,
            attempt=attempt,
            group_id=group,
            input=batch(*texts, job=job, attempt=attempt, group=group),
            **{**agent, **fields},
        )

    def cleanup(self) -> None:
        for runtime in self.made:
            for info in runtime.list():
                runtime.remove(info.ref)
            runtime.close()


def eventually(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll ``check`` until it returns something truthy."""
    give_up = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > give_up:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)
    return result


@pytest.fixture(scope="session")
def podman_url() -> str:
    """The URL of the Podman API named by MOORAGE_TEST_PODMAN_SOCKET, checked
    to answer and to hold the test image; skips when the variable is unset
    (Podman is not part of CI), fails when it is set but unusable."""
    value = os.environ.get(PODMAN_SOCKET_ENV, "")
    if not value:
        pytest.skip(
            f"Podman not configured: set {PODMAN_SOCKET_ENV} to a Podman API "
            "socket to run these cases on Podman (docs/runtimes.md, Podman)"
        )
    url = value if "://" in value else "unix://" + value
    import docker

    try:
        api = docker.APIClient(base_url=url, version="auto")
        api.inspect_image(PODMAN_TEST_IMAGE)
        api.close()
    except docker.errors.DockerException as exc:
        pytest.fail(
            f"{PODMAN_SOCKET_ENV}={value}: Podman API or {PODMAN_TEST_IMAGE} "
            f"not usable: {exc}"
        )
    return url


#: Podman is not part of CI: its cases exist only where a socket is given.
_KINDS = [pytest.param("docker", marks=pytest.mark.docker), "process"]
if os.environ.get(PODMAN_SOCKET_ENV):
    _KINDS.append("podman")


@pytest.fixture(params=_KINDS)
def harness(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    session_installs: set[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Harness]:
    kind, image = request.param, None
    if kind == "docker":
        image = request.getfixturevalue("test_image")
    elif kind == "podman":
        # The docker runtime on Podman's Docker-compatible API.  DOCKER_HOST
        # also reaches runtimes a test makes in a fresh process.
        monkeypatch.setenv("DOCKER_HOST", request.getfixturevalue("podman_url"))
        kind, image = "docker", PODMAN_TEST_IMAGE
    install = uuid.uuid4().hex
    session_installs.add(install)
    h = Harness(kind, install, tmp_path / "data", image, session_installs)
    yield h
    h.cleanup()


def running(info: Any) -> bool:
    return info.state is ContainerState.RUNNING
