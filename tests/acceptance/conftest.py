"""Acceptance harness: ``moorage serve`` as a real process, killed with
``kill -9``, on the real Docker Engine and on the process runtime."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from moorage.queue import Queue
from moorage.runtime.base import ContainerState, Runtime

ROOT = Path(__file__).resolve().parents[2]
AGENT = ROOT / "tests" / "agent" / "agent.py"


def eventually(
    check: Callable[[], Any], timeout: float = 30.0, every: float = 0.05
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {check}")
        time.sleep(every)


class Moorage:
    """One data directory, and ``moorage serve`` processes started on it."""

    def __init__(self, data_dir: Path, kind: str, image: str | None) -> None:
        self.data_dir = data_dir
        self.kind = kind
        self.image = image
        self.procs: list[subprocess.Popen[bytes]] = []
        self.log = data_dir.parent / "serve.log"
        queue = Queue.open(data_dir)
        self.install = queue.install_id
        queue.close()

    # -- processes -------------------------------------------------------------

    def serve_args(self, max_concurrent: int = 4, *extra: str) -> list[str]:
        args = [
            sys.executable,
            "-m",
            "moorage",
            "--data-dir",
            str(self.data_dir),
            "--log-level",
            "info",
            "serve",
            "--runtime",
            self.kind,
            "--max-concurrent",
            str(max_concurrent),
        ]
        if self.kind == "docker":
            args += ["--image", str(self.image)]
        else:
            args += ["--command", f"{sys.executable} {AGENT}"]
        return args + list(extra)

    def start(
        self, max_concurrent: int = 4, *extra: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        environment = dict(os.environ, MOORAGE_POLL_INTERVAL="0.1", **(env or {}))
        with self.log.open("ab") as log:
            proc = subprocess.Popen(
                self.serve_args(max_concurrent, *extra),
                stdout=log,
                stderr=log,
                env=environment,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def kill9(self, proc: subprocess.Popen[bytes] | None = None) -> None:
        proc = proc or self.procs[-1]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def terminate(self, proc: subprocess.Popen[bytes] | None = None) -> int:
        proc = proc or self.procs[-1]
        proc.send_signal(signal.SIGTERM)
        return proc.wait(20)

    # -- the queue, read from outside ------------------------------------------

    def enqueue(self, group: str, text: str, **options: Any) -> int:
        queue = Queue.open(self.data_dir)
        try:
            return queue.enqueue(group, text, **options).id
        finally:
            queue.close()

    def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.data_dir / "moorage.db", timeout=30)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def status(self, job_id: int) -> str:
        return str(self.rows("SELECT status FROM jobs WHERE id = ?", job_id)[0][0])

    def job(self, job_id: int) -> dict[str, Any]:
        conn = sqlite3.connect(self.data_dir / "moorage.db", timeout=30)
        conn.row_factory = sqlite3.Row
        try:
            return dict(
                conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            )
        finally:
            conn.close()

    def events(self, job_id: int) -> list[str]:
        return [
            f"{a}:{b}:{d}"
            for a, b, d in self.rows(
                "SELECT from_status, to_status, detail FROM events WHERE job_id = ? ORDER BY id",
                job_id,
            )
        ]

    def delivered(self) -> list[dict[str, Any]]:
        path = self.data_dir / "replies.jsonl"
        if not path.exists():
            return []
        return [
            json.loads(line) for line in path.read_text().splitlines() if line.strip()
        ]

    def runtime(self, install: str | None = None) -> Runtime:
        from moorage.runtime.docker import DockerRuntime
        from moorage.runtime.process import ProcessRuntime

        if self.kind == "docker":
            return DockerRuntime(install or self.install, self.data_dir)
        return ProcessRuntime(install or self.install, self.data_dir)

    def containers(self) -> list[Any]:
        runtime = self.runtime()
        try:
            return runtime.list()
        finally:
            runtime.close()

    def running(self) -> list[Any]:
        return [c for c in self.containers() if c.state is ContainerState.RUNNING]

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
        runtime = self.runtime()
        try:
            for container in runtime.list():
                runtime.stop(container.ref, 0)
                runtime.remove(container.ref)
        finally:
            runtime.close()


@pytest.fixture(params=["process", pytest.param("docker", marks=pytest.mark.docker)])
def moorage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Moorage]:
    image = request.getfixturevalue("test_image") if request.param == "docker" else None
    m = Moorage(tmp_path / "data", request.param, image)
    request.getfixturevalue("session_installs").add(m.install)
    try:
        yield m
    finally:
        m.cleanup()
        if m.log.exists():  # shown by pytest only when the test failed
            print(m.log.read_text()[-6000:])
