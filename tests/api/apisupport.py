"""Helpers shared by the HTTP suite."""

from __future__ import annotations

from moorage.queue import Queue
from moorage.runtime.base import AttemptSpec, ContainerInfo, Runtime


class StillRuntime(Runtime):
    """A runtime with no containers, for a dispatcher that only recovers."""

    name = "still"

    def __init__(self) -> None:
        self.reachable = True

    def ping(self) -> None:
        return None

    def start(self, spec: AttemptSpec) -> ContainerInfo:
        raise NotImplementedError

    def list(self) -> list[ContainerInfo]:
        return []

    def inspect(self, ref: str) -> ContainerInfo:
        raise NotImplementedError

    def read_output(self, ref: str, position: int = 0) -> list[str]:
        return []

    def wait(self, ref: str, timeout: float) -> ContainerInfo:
        raise NotImplementedError

    def stop(self, ref: str, grace: float = 10.0) -> None:
        return None

    def remove(self, ref: str) -> None:
        return None


def job_count(queue: Queue) -> int:
    return sum(queue.status().counts.values())
