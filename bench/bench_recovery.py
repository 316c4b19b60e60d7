"""Benchmark: recovery time and added start latency of ``moorage serve``.

1. Recovery with 100,000 waiting jobs and 50 active containers (real ones on
   the Docker Engine, or processes with --runtime process): the time of one
   ``Dispatcher.recover()``, split into the engine's list call and moorage's
   own time (target: under 1 s), and the number of list calls (target: 1).
2. Added latency from ``enqueue`` to "container running", through a running
   dispatcher, next to starting the same container directly with the docker
   SDK in the same run.

Run: .venv/bin/python bench/bench_recovery.py [--waiting N] [--active N]
     [--runtime docker|process] [--rounds N]
Everything it creates is removed at the end.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from moorage.dispatcher import Dispatcher, DispatchSettings
from moorage.queue import Queue
from moorage.runtime.base import ContainerState, Runtime

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "moorage-test-agent:latest"
AGENT = (sys.executable, str(ROOT / "tests" / "agent" / "agent.py"))


def make_runtime(kind: str, install: str, data_dir: Path) -> Runtime:
    if kind == "docker":
        from moorage.runtime.docker import DockerRuntime

        return DockerRuntime(install, data_dir)
    from moorage.runtime.process import ProcessRuntime

    return ProcessRuntime(install, data_dir)


def settings(kind: str, **extra: Any) -> DispatchSettings:
    agent = {"image": IMAGE} if kind == "docker" else {"command": AGENT}
    return DispatchSettings(timeout=600.0, **agent, **extra)


class CountingRuntime:
    """Wraps a runtime to count and time its list calls."""

    def __init__(self, inner: Runtime) -> None:
        self.inner = inner
        self.list_calls = 0
        self.list_seconds = 0.0

    def list(self) -> Any:
        began = time.perf_counter()
        try:
            return self.inner.list()
        finally:
            self.list_calls += 1
            self.list_seconds += time.perf_counter() - began

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def bench_recovery(kind: str, waiting: int, active: int, data_dir: Path) -> None:
    queue = Queue.open(data_dir, synchronous="NORMAL")
    runtime = make_runtime(kind, queue.install_id, data_dir)
    print(
        f"setting up: {waiting:,} waiting jobs, {active} active containers ({kind}) ..."
    )
    began = time.perf_counter()
    for n in range(active):
        queue.enqueue(f"active-{n}", "sleep=300")
    starter = Dispatcher(queue, runtime, settings(kind, max_concurrent=active))
    for job in queue.claim(active):
        info = runtime.start(starter.spec_for(job))
        queue.start(job.id, job.attempt, info.ref)
    for n in range(waiting):
        queue.enqueue(f"group-{n % 100}", "reply=hi")
    print(f"  set up in {time.perf_counter() - began:.1f} s")
    queue.close()

    # A fresh process's view: new queue, new runtime, new dispatcher.
    queue = Queue.open(data_dir)
    counting = CountingRuntime(make_runtime(kind, queue.install_id, data_dir))
    dispatcher = Dispatcher(queue, counting, settings(kind, max_concurrent=active))  # type: ignore[arg-type]
    began = time.perf_counter()
    report = dispatcher.recover()
    total = time.perf_counter() - began
    own = total - counting.list_seconds
    print()
    print("recovery")
    print(f"  {report.summary()}")
    print(f"  total                 {total * 1000:8.1f} ms")
    print(f"  engine list call      {counting.list_seconds * 1000:8.1f} ms")
    print(
        f"  moorage's own time    {own * 1000:8.1f} ms   (target < 1000 ms: {'met' if own < 1 else 'MISSED'})"
    )
    print(
        f"  list calls            {counting.list_calls:8d}      (target 1: {'met' if counting.list_calls == 1 else 'MISSED'})"
    )
    for container in runtime.list():
        runtime.stop(container.ref, 0)
        runtime.remove(container.ref)
    runtime.close()
    queue.close()


def bench_latency(kind: str, rounds: int, data_dir: Path) -> None:
    queue = Queue.open(data_dir)
    runtime = make_runtime(kind, queue.install_id, data_dir)
    dispatcher = Dispatcher(queue, runtime, settings(kind, poll_interval=0.05))
    stop = threading.Event()
    thread = threading.Thread(target=dispatcher.run, args=(stop,), daemon=True)
    thread.start()
    through: list[float] = []
    try:
        for n in range(rounds):
            began = time.time()
            job = queue.enqueue(f"latency-{n}", "sleep=1")
            while True:
                ref = queue.get(job.id).container_id
                if ref and runtime.inspect(ref).state is not ContainerState.CREATED:
                    break
                time.sleep(0.005)
            started = runtime.inspect(ref).started_at or time.time()
            through.append(started - began)
    finally:
        stop.set()
        thread.join(10)
        for container in runtime.list():
            runtime.stop(container.ref, 0)
            runtime.remove(container.ref)
        runtime.close()
        queue.close()

    direct: list[float] = []
    if kind == "docker":
        import docker

        client = docker.from_env()
        for _ in range(rounds):
            began = time.time()
            container = client.containers.run(IMAGE, detach=True, network_mode="none")
            container.reload()
            started = container.attrs["State"]["StartedAt"]
            from datetime import datetime

            at = datetime.fromisoformat(started[:26] + "+00:00").timestamp()
            direct.append(at - began)
            container.remove(force=True)
        client.close()

    print()
    print(f"enqueue -> container running (median of {rounds})")
    print(f"  through moorage        {statistics.median(through) * 1000:8.1f} ms")
    if direct:
        added = statistics.median(through) - statistics.median(direct)
        print(f"  docker SDK run direct  {statistics.median(direct) * 1000:8.1f} ms")
        print(
            f"  moorage adds           {added * 1000:8.1f} ms "
            f"(ratio {statistics.median(through) / statistics.median(direct):.2f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", choices=["docker", "process"], default="docker")
    parser.add_argument("--waiting", type=int, default=100_000)
    parser.add_argument("--active", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bench_recovery(args.runtime, args.waiting, args.active, Path(tmp) / "recovery")
        bench_latency(args.runtime, args.rounds, Path(tmp) / "latency")


if __name__ == "__main__":
    main()
