"""The README's first command, as a person runs it: from a fresh working
directory, with the default (relative) data directory and the built-in echo
agent on the process runtime."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from moorage.queue import Queue
from moorage.runtime.process import ProcessRuntime

from .conftest import eventually

MOORAGE = [sys.executable, "-m", "moorage"]


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    data = tmp_path / "moorage-data"
    if (data / "moorage.db").exists():
        queue = Queue.open(data)
        runtime = ProcessRuntime(queue.install_id, data)
        queue.close()
        for container in runtime.list():
            runtime.stop(container.ref, 0)
            runtime.remove(container.ref)


def replies(workdir: Path) -> list[str]:
    path = workdir / "moorage-data" / "replies.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["text"] for line in path.read_text().splitlines()]


def test_enqueue_then_serve_answers_in_the_default_data_directory(
    workdir: Path,
) -> None:
    env = dict(os.environ, MOORAGE_IDLE_TIMEOUT="2", MOORAGE_POLL_INTERVAL="0.1")
    env.pop("MOORAGE_DATA_DIR", None)
    enqueued = subprocess.run(
        [*MOORAGE, "enqueue", "family", "hello"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert enqueued.stdout == "1\n"

    serve = subprocess.Popen(
        [*MOORAGE, "serve"],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        eventually(lambda: replies(workdir) == ["echo: hello"])
        subprocess.run(
            [*MOORAGE, "enqueue", "family", "and you?"],
            cwd=workdir,
            env=env,
            check=True,
        )
        eventually(lambda: replies(workdir) == ["echo: hello", "echo: and you?"])
    finally:
        serve.send_signal(signal.SIGINT)
        output, _ = serve.communicate(timeout=30)
    assert serve.returncode == 0, output

    status = subprocess.run(
        [*MOORAGE, "status", "--json"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    counts = json.loads(status.stdout)["counts"]
    assert counts["completed"] + counts["active"] == 2
    assert counts["failed"] == 0
