"""Load script (not a test): enqueue throughput over HTTP and in-process.

Starts ``moorage``'s HTTP app under uvicorn in a subprocess on loopback,
drives N enqueues from a second process (httpx, a few concurrent threads),
then does the same N enqueues through the Python API in this process, and
prints requests/s and p50/p99 latency for both.

    .venv/bin/python bench/load_http.py --count 2000 --concurrency 8

Bounded: at most --count requests and --max-seconds per phase; loopback only.
Every data directory is a fresh temporary one, removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SERVER = """
import sys
from moorage.api import create_app, serve_http
from moorage.queue import Queue
queue = Queue.open(sys.argv[1], synchronous=sys.argv[2])
handle = serve_http(create_app(queue), "127.0.0.1", 0)
print(handle.port, flush=True)
sys.stdin.read()  # run until the parent closes our stdin
handle.stop()
queue.close()
"""

CLIENT = """
import json, sys, threading, time
import httpx
url, count, concurrency, budget = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
latencies, lock, next_i = [], threading.Lock(), [0]
deadline = time.monotonic() + budget
def worker():
    with httpx.Client(base_url=url, timeout=30) as client:
        while time.monotonic() < deadline:
            with lock:
                i = next_i[0]; next_i[0] += 1
            if i >= count:
                return
            began = time.perf_counter()
            r = client.post("/v1/jobs", json={"group_id": f"g{i % 50}", "text": f"m{i}"})
            took = time.perf_counter() - began
            if r.status_code != 201:
                raise SystemExit(f"unexpected {r.status_code}: {r.text}")
            with lock:
                latencies.append(took)
began = time.perf_counter()
threads = [threading.Thread(target=worker) for _ in range(concurrency)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps({"seconds": time.perf_counter() - began, "latencies": latencies}))
"""


def summary(name: str, seconds: float, latencies: list[float]) -> str:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (
        f"{name:<10} {len(ordered):6d} enqueues in {seconds:6.2f} s = "
        f"{len(ordered) / seconds:8.1f}/s   p50 {statistics.median(ordered) * 1000:7.2f} ms"
        f"   p99 {p99 * 1000:7.2f} ms"
    )


def http_phase(data: Path, args: argparse.Namespace) -> str:
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(data), args.synchronous],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdin is not None
        port = int(server.stdout.readline())
        client = subprocess.run(
            [
                sys.executable,
                "-c",
                CLIENT,
                f"http://127.0.0.1:{port}",
                str(args.count),
                str(args.concurrency),
                str(args.max_seconds),
            ],
            capture_output=True,
            text=True,
            timeout=args.max_seconds + 60,
            check=True,
        )
        result = json.loads(client.stdout)
        server.stdin.close()
        server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    return summary("http", result["seconds"], result["latencies"])


def python_phase(data: Path, args: argparse.Namespace) -> str:
    from moorage.queue import Queue

    queue = Queue.open(data, synchronous=args.synchronous)
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(args.count))
    deadline = time.monotonic() + args.max_seconds

    def worker() -> None:
        while time.monotonic() < deadline:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            began = time.perf_counter()
            queue.enqueue(f"g{i % 50}", f"m{i}")
            with lock:
                latencies.append(time.perf_counter() - began)

    began = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - began
    queue.close()
    return summary("python", seconds, latencies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-seconds", type=float, default=60.0)
    parser.add_argument("--synchronous", choices=["FULL", "NORMAL"], default="FULL")
    args = parser.parse_args()
    if not 0 < args.count <= 100_000 or not 0 < args.concurrency <= 64:
        parser.error("count must be 1..100000 and concurrency 1..64")
    print(
        f"{args.count} enqueues, {args.concurrency} concurrent, "
        f"synchronous={args.synchronous}, {os.cpu_count()} CPUs"
    )
    with tempfile.TemporaryDirectory() as tmp:
        print(http_phase(Path(tmp) / "http", args))
        print(python_phase(Path(tmp) / "python", args))


if __name__ == "__main__":
    main()
