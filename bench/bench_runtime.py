"""Benchmark of the Docker runtime (a script, not a test).

Prints, as medians over several repetitions:

* the time from "start attempt" to "container running" with
  ``DockerRuntime.start`` next to a bare docker SDK
  ``client.containers.run(image, detach=True)`` of the same image, and their
  ratio (target: at most 1.10); also next to ``containers.run`` given the
  same hardening options as moorage (network ``none``, limits, init,
  no-new-privileges), the like-for-like comparison.  The three run in turn,
  in a rotating order, within each repetition;
* for each of them, the median time of every engine call it made;
* the time of the one ``list()`` call with 1, 50 and 200 containers present;
* the time of a poll of a running container's output that finds nothing
  new (the dispatcher's usual poll), with 1,000, 20,000 and 100,000 lines
  already printed: ``read_output`` going on from its last place next to a
  whole read of the log (what every poll cost before read places were
  kept), and their ratio.

Usage: ``python bench/bench_runtime.py [--reps N]``.  Needs the test image
(``scripts/build-test-image``).  Removes everything it created.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import docker

from moorage.runtime import AttemptSpec, DockerRuntime, Limits

IMAGE = "moorage-test-agent:latest"
ROOT = Path(__file__).resolve().parent.parent
BENCH_LABEL = "moorage.bench"
ID_RE = re.compile(r"[0-9a-f]{64}")
VERSION_RE = re.compile(r"^/v[0-9.]+")


def spec(install: str, job: int, text: str = "sleep=60") -> AttemptSpec:
    return AttemptSpec(
        install=install,
        job_id=job,
        attempt=1,
        group_id="bench",
        input={
            "job": job,
            "attempt": 1,
            "group": "bench",
            "messages": [{"text": text}],
        },
        image=IMAGE,
    )


class CallTimer:
    """Times every HTTP request a docker client sends, by kind of call
    (``POST /containers/{id}/start``); adds a clock read per request."""

    def __init__(self, api: Any) -> None:
        self.calls: dict[str, list[float]] = {}
        self._send = api.send
        api.send = self._timed

    def _timed(self, request: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return self._send(request, **kwargs)
        finally:
            path = ID_RE.sub("{id}", request.path_url.split("?", 1)[0])
            key = f"{request.method} {VERSION_RE.sub('', path)}"
            self.calls.setdefault(key, []).append(time.perf_counter() - began)

    def take(self) -> dict[str, list[float]]:
        calls, self.calls = self.calls, {}
        return calls


def hardened(limits: Limits) -> dict[str, Any]:
    """``containers.run`` options equal to what DockerRuntime.start sets."""
    return {
        "network_mode": "none",
        "privileged": False,
        "security_opt": ["no-new-privileges"],
        "mem_limit": limits.memory_bytes,
        "memswap_limit": limits.memory_bytes,
        "nano_cpus": int((limits.cpus or 0) * 1e9) or None,
        "pids_limit": limits.pids,
        "init": True,
    }


def bench_start(client: docker.DockerClient, runtime: DockerRuntime, reps: int) -> None:
    ours_calls = CallTimer(runtime.api)
    bare_calls = CallTimer(client.api)
    options = hardened(spec(runtime.install, 0).limits)
    labels = {BENCH_LABEL: runtime.install}

    def ours(job: int) -> None:
        runtime.start(spec(runtime.install, job))

    def bare(job: int) -> None:
        client.containers.run(IMAGE, ["sleep", "60"], detach=True, labels=labels)

    def alike(job: int) -> None:
        client.containers.run(
            IMAGE, ["sleep", "60"], detach=True, labels=labels, **options
        )

    contenders = {
        "DockerRuntime.start": ours,
        "containers.run(detach)": bare,
        "containers.run(detach, same hardening)": alike,
    }
    times: dict[str, list[float]] = {name: [] for name in contenders}
    calls: dict[str, dict[str, list[float]]] = {name: {} for name in contenders}
    order = list(contenders)
    for job in range(1, reps + 1):
        # Rotate the order so no contender always goes first (or last).
        turn = order[job % len(order) :] + order[: job % len(order)]
        for name in turn:
            ours_calls.take()
            bare_calls.take()
            began = time.perf_counter()
            contenders[name](job)
            times[name].append(time.perf_counter() - began)
            timer = ours_calls if name == "DockerRuntime.start" else bare_calls
            for key, spent in timer.take().items():
                calls[name].setdefault(key, []).extend(spent)
    medians = {name: statistics.median(t) * 1000 for name, t in times.items()}
    print(f"start → running, median of {reps}:")
    for name, ms in medians.items():
        print(f"  {name:40s} {ms:7.1f} ms")
        for key, spent in calls[name].items():
            print(
                f"      {key:36s} {statistics.median(spent) * 1000:7.1f} ms"
                f"  (×{len(spent) // reps})"
            )
    ours_ms = medians["DockerRuntime.start"]
    for name in order[1:]:
        print(f"  ratio to {name:31s} {ours_ms / medians[name]:7.2f}  (target ≤ 1.10)")


def bench_list(runtime: DockerRuntime, counts: list[int], reps: int) -> None:
    print(f"list() with N containers present, median of {reps}:")
    present = 0
    for count in counts:
        while present < count:
            present += 1
            runtime.start(spec(runtime.install, 10_000 + present, "exit=0"))
        times = []
        for _ in range(reps):
            began = time.perf_counter()
            found = runtime.list()
            times.append(time.perf_counter() - began)
        if len(found) < count:
            raise SystemExit(f"list() found {len(found)} of {count}")
        print(
            f"  N={count:4d} (listed {len(found):4d})  {statistics.median(times) * 1000:7.1f} ms"
        )


def bench_read(runtime: DockerRuntime, counts: list[int], reps: int) -> None:
    print(f"a poll that finds no new output, N lines printed, median of {reps}:")
    for count in counts:
        info = runtime.start(
            spec(runtime.install, 20_000 + count, f"lines={count}; sleep=600")
        )
        give_up = time.monotonic() + 120
        while len(runtime.read_output(info.ref, 0)) < count:
            if time.monotonic() > give_up:
                raise SystemExit(f"the agent did not print {count} lines")
            time.sleep(0.2)
        whole, going_on = [], []
        for _ in range(reps):
            runtime._forget(info.ref)  # no read place: the log is read whole
            began = time.perf_counter()
            if runtime.read_output(info.ref, count) != []:
                raise SystemExit("unexpected output")
            whole.append(time.perf_counter() - began)
            began = time.perf_counter()
            if runtime.read_output(info.ref, count) != []:
                raise SystemExit("unexpected output")
            going_on.append(time.perf_counter() - began)
        w, g = statistics.median(whole), statistics.median(going_on)
        print(
            f"  N={count:7,d}  whole {w * 1000:8.1f} ms  going on {g * 1000:6.1f} ms"
            f"  ratio {g / w:5.2f}"
        )
        runtime.remove(info.ref)


def cleanup(client: docker.DockerClient, install: str) -> None:
    for label in (f"moorage.install={install}", f"{BENCH_LABEL}={install}"):
        for c in client.containers.list(
            all=True, sparse=True, filters={"label": label}
        ):
            c.remove(force=True, v=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--list-counts", default="1,50,200")
    parser.add_argument("--read-counts", default="1000,20000,100000")
    args = parser.parse_args()
    subprocess.run([str(ROOT / "scripts" / "build-test-image")], check=True)
    client = docker.from_env()
    install = uuid.uuid4().hex
    with tempfile.TemporaryDirectory() as data_dir:
        runtime = DockerRuntime(install, Path(data_dir))
        runtime.ping()
        try:
            # One warm-up of each path so neither pays for a cold cache.
            runtime.start(spec(install, 99_999, "exit=0"))
            client.containers.run(
                IMAGE, ["true"], detach=True, labels={BENCH_LABEL: install}
            )
            bench_start(client, runtime, args.reps)
            cleanup(client, install)
            counts = [int(n) for n in args.list_counts.split(",")]
            bench_list(runtime, counts, args.reps)
            cleanup(client, install)
            reads = [int(n) for n in args.read_counts.split(",")]
            bench_read(runtime, reads, args.reps)
        finally:
            cleanup(client, install)
            runtime.close()
            client.close()


if __name__ == "__main__":
    main()
