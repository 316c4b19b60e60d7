"""One harness for the runtime contract tests, parametrized over runtimes."""

from __future__ import annotations

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


@pytest.fixture(
    params=[pytest.param("docker", marks=pytest.mark.docker), "process"],
)
def harness(
    request: pytest.FixtureRequest, tmp_path: Path, session_installs: set[str]
) -> Iterator[Harness]:
    image = request.getfixturevalue("test_image") if request.param == "docker" else None
    install = uuid.uuid4().hex
    session_installs.add(install)
    h = Harness(request.param, install, tmp_path / "data", image, session_installs)
    yield h
    h.cleanup()


def running(info: Any) -> bool:
    return info.state is ContainerState.RUNNING
