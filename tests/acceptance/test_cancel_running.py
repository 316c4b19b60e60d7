"""Cancelling a running job with ``moorage cancel``, against a live
``moorage serve`` and after a ``kill -9``: the container is stopped and
removed, nothing it prints afterwards is delivered, and the group goes on."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import Moorage, eventually

pytestmark = pytest.mark.slow


def cancel(moorage: Moorage, job: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "moorage",
            "--data-dir",
            str(moorage.data_dir),
            "cancel",
            str(job),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cancelling_a_running_job_stops_its_container(moorage: Moorage) -> None:
    stuck = moorage.enqueue("fam", "reply=started;sleep=60;reply=never")
    moorage.start()
    eventually(lambda: [r["text"] for r in moorage.delivered()] == ["started"])
    assert len(moorage.running()) == 1
    after = moorage.enqueue("fam", "reply=next")

    done = cancel(moorage, stuck)

    assert (done.returncode, done.stdout) == (
        0,
        f"job {stuck} cancelled; its attempt has ended and serve stops its container\n",
    )
    assert moorage.status(stuck) == "cancelled"
    eventually(lambda: moorage.status(after) == "completed", timeout=60)
    eventually(lambda: moorage.containers() == [], timeout=30)
    eventually(lambda: [r["text"] for r in moorage.delivered()] == ["started", "next"])
    assert "active:cancelled:cancelled while running; its container is stopped" in (
        " ".join(moorage.events(stuck))
    )


def test_a_job_cancelled_while_serve_is_down_has_its_container_removed(
    moorage: Moorage,
) -> None:
    stuck = moorage.enqueue("fam", "reply=started;sleep=60;reply=never")
    moorage.start()
    eventually(lambda: [r["text"] for r in moorage.delivered()] == ["started"])
    moorage.kill9()
    assert len(moorage.running()) == 1

    done = cancel(moorage, stuck)
    assert done.returncode == 0, done.stderr
    moorage.start()

    eventually(lambda: moorage.containers() == [], timeout=30)
    assert moorage.status(stuck) == "cancelled"
    assert moorage.job(stuck)["attempt"] == 1  # not run again
    assert [r["text"] for r in moorage.delivered()] == ["started"]
