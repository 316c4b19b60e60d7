"""Benchmark of the Docker runtime (a script, not a test).

Prints, as medians over several repetitions:

* the time from "start attempt" to "container running" with
  ``DockerRuntime.start`` next to a bare docker SDK
  ``client.containers.run(image, detach=True)`` of the same image, and their
  ratio (target: at most 1.10);
* the time of the one ``list()`` call with 1, 50 and 200 containers present.

Usage: ``python bench/bench_runtime.py [--reps N]``.  Needs the test image
(``scripts/build-test-image``).  Removes everything it created.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import docker

from moorage.runtime import AttemptSpec, DockerRuntime

IMAGE = "moorage-test-agent:latest"
ROOT = Path(__file__).resolve().parent.parent
BENCH_LABEL = "moorage.bench"


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


def bench_start(client: docker.DockerClient, runtime: DockerRuntime, reps: int) -> None:
    ours, bare = [], []
    for job in range(1, reps + 1):
        began = time.perf_counter()
        runtime.start(spec(runtime.install, job))
        ours.append(time.perf_counter() - began)

        began = time.perf_counter()
        client.containers.run(
            IMAGE, ["sleep", "60"], detach=True, labels={BENCH_LABEL: runtime.install}
        )
        bare.append(time.perf_counter() - began)
    ours_ms = statistics.median(ours) * 1000
    bare_ms = statistics.median(bare) * 1000
    print(f"start → running, median of {reps}:")
    print(f"  DockerRuntime.start        {ours_ms:7.1f} ms")
    print(f"  containers.run(detach)     {bare_ms:7.1f} ms")
    print(f"  ratio                      {ours_ms / bare_ms:7.2f}  (target ≤ 1.10)")


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
        finally:
            cleanup(client, install)
            runtime.close()
            client.close()


if __name__ == "__main__":
    main()
