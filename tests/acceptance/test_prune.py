"""The periodic prune of a running ``moorage serve``: completed rows older
than 24 h and failed rows older than 7 d go, and nothing else."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from moorage.queue import Queue

from .conftest import Moorage, eventually

pytestmark = pytest.mark.slow

HOUR = 3600.0


def test_serve_prunes_old_completed_and_failed_rows_and_nothing_else(
    tmp_path: Path, session_installs: set[str]
) -> None:
    moorage = Moorage(tmp_path / "data", "process", None)
    session_installs.add(moorage.install)
    queue = Queue.open(moorage.data_dir)
    now = time.time()
    ages = {  # job -> (final status, hours since it finished)
        "old-done": ("completed", 25),
        "new-done": ("completed", 23),
        "old-failed": ("failed", 7 * 24 + 1),
        "new-failed": ("failed", 6 * 24),
        "old-cancelled": ("cancelled", 24),  # kept: cancelled rows age 7 d
    }
    ids = {}
    for name, (status, hours) in ages.items():
        job = queue.enqueue(name, "x")
        if status == "cancelled":
            queue.cancel(job.id)
        else:
            (claimed,) = queue.claim(1)
            if status == "completed":
                queue.finish(claimed.id, claimed.attempt)
            else:
                queue.fail(claimed.id, claimed.attempt, "boom", retryable=False)
        with queue.db.transaction() as conn:
            conn.execute(
                "UPDATE jobs SET finished_at = ? WHERE id = ?",
                (now - hours * HOUR, job.id),
            )
        ids[name] = job.id
    waiting = queue.enqueue("still-waiting", "sleep=30").id
    queue.close()
    try:
        moorage.start(env={"MOORAGE_PRUNE_INTERVAL": "1s"})
        eventually(lambda: "pruned 2 jobs" in moorage.log.read_text(), timeout=30)
        left = {row[0] for row in moorage.rows("SELECT id FROM jobs")}
        assert left == {
            ids["new-done"],
            ids["new-failed"],
            ids["old-cancelled"],
            waiting,
        }
        gone = (ids["old-done"], ids["old-failed"])
        assert moorage.rows(f"SELECT count(*) FROM events WHERE job_id IN {gone}") == [
            (0,)
        ]
    finally:
        moorage.cleanup()
