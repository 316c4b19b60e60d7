"""An in-memory runtime for tests: containers are records that a test moves
by hand (emit output, exit, vanish), and the engine can be "taken down".

It keeps the contract's promises that the dispatcher relies on (labels, one
list call, output positions, deadlines) so dispatcher tests need no engine.
"""

from __future__ import annotations

import builtins
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from moorage.clock import Clock, SystemClock
from moorage.errors import ContainerNotFound, EngineUnavailable
from moorage.runtime.base import (
    AttemptSpec,
    ContainerInfo,
    ContainerState,
    Runtime,
    check_inbox_name,
    container_name,
)


@dataclass
class FakeContainer:
    info: ContainerInfo
    spec: AttemptSpec
    output: list[str] = field(default_factory=list)
    inbox: dict[str, Mapping[str, Any]] = field(default_factory=dict)


class MemoryRuntime(Runtime):
    name = "memory"

    def __init__(self, install: str, clock: Clock | None = None) -> None:
        self.install = install
        self.clock = clock or SystemClock()
        self.containers: dict[str, FakeContainer] = {}
        self.down = False
        self.list_calls = 0
        self.started: list[AttemptSpec] = []
        self._ids = itertools.count(1)

    # -- what a test does --------------------------------------------------------

    def emit(self, ref: str, *lines: str) -> None:
        self.containers[ref].output.extend(lines)

    def exit(self, ref: str, code: int) -> None:
        c = self.containers[ref]
        c.info = replace(
            c.info,
            state=ContainerState.EXITED,
            exit_code=code,
            finished_at=self.clock.now(),
        )

    def vanish(self, ref: str) -> None:
        del self.containers[ref]

    def ref_of(self, job_id: int, attempt: int | None = None) -> str:
        for ref, c in self.containers.items():
            if c.info.job_id == job_id and (
                attempt is None or c.info.attempt == attempt
            ):
                return ref
        raise KeyError(job_id)

    def add_foreign(self, spec: AttemptSpec, state: ContainerState) -> str:
        """A container as another process (or install) left it."""
        ref = self._create(spec)
        c = self.containers[ref]
        c.info = replace(c.info, state=state)
        return ref

    # -- the contract --------------------------------------------------------------

    def _check(self) -> None:
        if self.down:
            raise EngineUnavailable("memory engine is down")

    def ping(self) -> None:
        self._check()

    def _create(self, spec: AttemptSpec) -> str:
        ref = f"{next(self._ids):064x}"
        now = self.clock.now()
        deadline = None if spec.timeout is None else now + spec.timeout
        self.containers[ref] = FakeContainer(
            ContainerInfo(
                ref=ref,
                name=container_name(spec.install, spec.job_id, spec.attempt),
                install=spec.install,
                job_id=spec.job_id,
                attempt=spec.attempt,
                group_id=spec.group_id,
                state=ContainerState.RUNNING,
                started_at=now,
                deadline=deadline,
            ),
            spec,
        )
        return ref

    def start(self, spec: AttemptSpec) -> ContainerInfo:
        self._check()
        name = container_name(spec.install, spec.job_id, spec.attempt)
        for c in self.containers.values():
            if c.info.name == name:
                return c.info
        self.started.append(spec)
        return self.containers[self._create(spec)].info

    def list(self) -> list[ContainerInfo]:
        self._check()
        self.list_calls += 1
        return [
            c.info for c in self.containers.values() if c.info.install == self.install
        ]

    def inspect(self, ref: str) -> ContainerInfo:
        self._check()
        c = self.containers.get(ref)
        if c is None:
            return ContainerInfo(
                ref, "", self.install, 0, 0, "", ContainerState.MISSING
            )
        return c.info

    def read_output(self, ref: str, position: int = 0) -> builtins.list[str]:
        self._check()
        if ref not in self.containers:
            raise ContainerNotFound(ref)
        return list(self.containers[ref].output[position:])

    def wait(self, ref: str, timeout: float) -> ContainerInfo:
        return self.inspect(ref)

    def stop(self, ref: str, grace: float = 10.0) -> None:
        self._check()
        c = self.containers.get(ref)
        if c is not None and c.info.state is ContainerState.RUNNING:
            self.exit(ref, 143)

    def remove(self, ref: str) -> None:
        self._check()
        self.containers.pop(ref, None)

    def deliver(self, ref: str, name: str, document: Mapping[str, Any]) -> None:
        check_inbox_name(name)
        self._check()
        if ref not in self.containers:
            raise ContainerNotFound(ref)
        self.containers[ref].inbox[name] = document

    def has_input(self, ref: str, name: str) -> bool:
        check_inbox_name(name)
        self._check()
        if ref not in self.containers:
            raise ContainerNotFound(ref)
        return name in self.containers[ref].inbox
