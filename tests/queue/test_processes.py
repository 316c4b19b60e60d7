"""Real OS processes on one database file: concurrent claimers, and kill -9.

Children are small scripts run with the venv's interpreter; every child is
killed and reaped in ``finally`` whatever the outcome.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from moorage.models import Status
from moorage.queue import Queue
from moorage.store.sqlite import DB_FILENAME

CAP = 3
ROUNDS = 200
GROUPS = [f"g{i}" for i in range(8)]

CLAIMER = textwrap.dedent(
    """
    import random, sys, time
    from moorage.queue import Queue, RetryPolicy

    data_dir, seed, rounds, cap = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    rng = random.Random(seed)
    queue = Queue.open(
        data_dir,
        synchronous="NORMAL",
        retry_policy=RetryPolicy(base=0.002, cap=0.02),
        rng=random.Random(seed),
    )
    print("ready", flush=True)
    sys.stdin.readline()  # wait for "go" so both children start together
    held, claimed = [], 0
    for _ in range(rounds):
        got = queue.claim(cap)
        claimed += len(got)
        held.extend(got)
        rng.shuffle(held)
        keep = []
        for job in held:
            roll = rng.random()
            if roll < 0.5:
                queue.finish(job.id, job.attempt)
            elif roll < 0.7:
                queue.fail(job.id, job.attempt, "exit 1")
            else:
                keep.append(job)  # still running: holds its group and a slot
        held = keep
        time.sleep(rng.random() * 0.003)
    for job in held:
        queue.finish(job.id, job.attempt)
    queue.close()
    print("claimed", claimed, flush=True)
    """
)

ENQUEUER = textwrap.dedent(
    """
    import sys, time
    from moorage.queue import Queue

    queue = Queue.open(sys.argv[1])  # synchronous=FULL, the default
    for text in sys.argv[2:]:
        job = queue.enqueue("family", text)
        print(job.id, flush=True)
    time.sleep(600)  # the parent kills us long before this
    """
)


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    try:
        yield procs
    finally:
        for proc in procs:
            kill(proc)


def test_two_processes_claiming_at_once_keep_one_per_group_and_the_cap(
    tmp_path: Path, children: list[subprocess.Popen[str]]
) -> None:
    data = tmp_path / "data"
    setup = Queue.open(data, synchronous="NORMAL")
    for i in range(900):
        setup.enqueue(
            GROUPS[i % len(GROUPS)], f"m{i}", priority=("high", "normal", "low")[i % 3]
        )
    setup.close()

    for seed in (1, 2):
        children.append(spawn(CLAIMER, str(data), str(seed), str(ROUNDS), str(CAP)))
    for proc in children:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n", (
            proc.stderr.read() if proc.stderr else ""
        )
    for proc in children:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()

    raw = sqlite3.connect(data / DB_FILENAME)
    samples = busy_samples = 0
    try:
        while any(proc.poll() is None for proc in children):
            per_group = raw.execute(
                "SELECT group_id, count(*) FROM jobs WHERE status = 'active' "
                "GROUP BY group_id"
            ).fetchall()
            assert all(n == 1 for _, n in per_group), per_group
            assert len(per_group) <= CAP
            samples += 1
            busy_samples += len(per_group) > 1
    finally:
        raw.close()
    for proc in children:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert int(out.split()[-1]) > 0  # each child did claim work

    assert samples > 20 and busy_samples > 0  # the sampler saw real concurrency
    check_attempts_never_overlapped(data / DB_FILENAME)


def check_attempts_never_overlapped(path: Path) -> None:
    """From the event history: per group, each attempt ended before the next
    one began, both in commit order (event ids) and in time."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT e.id, e.at, e.job_id, e.attempt, e.from_status, e.to_status, "
            "j.group_id FROM events e JOIN jobs j ON j.id = e.job_id ORDER BY e.id"
        ).fetchall()
        (still_active,) = conn.execute(
            "SELECT count(*) FROM jobs WHERE status = 'active'"
        ).fetchone()
    finally:
        conn.close()
    assert still_active == 0

    spans: dict[tuple[int, int], list[float]] = {}
    group_of: dict[tuple[int, int], str] = {}
    for event_id, at, job_id, attempt, before, after, group in rows:
        key = (job_id, attempt)
        if before == "waiting" and after == "active":
            spans[key] = [event_id, at]
            group_of[key] = group
        elif before == "active" and after != "active":
            spans[key] += [event_id, at]
    assert spans and all(len(span) == 4 for span in spans.values())

    by_group: dict[str, list[list[float]]] = defaultdict(list)
    for key, span in spans.items():
        by_group[group_of[key]].append(span)
    overlaps = []
    for group, group_spans in by_group.items():
        group_spans.sort()
        for earlier, later in zip(group_spans, group_spans[1:], strict=False):
            if later[0] < earlier[2] or later[1] < earlier[3]:
                overlaps.append((group, earlier, later))
    assert overlaps == []
    assert len(spans) > 100  # enough attempts for the check to mean something


def read_ids(proc: subprocess.Popen[str], count: int) -> list[int]:
    ids = []
    assert proc.stdout is not None
    for _ in range(count):
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(proc.stderr.read() if proc.stderr else "no output")
        ids.append(int(line))
    return ids


def test_an_enqueue_that_returned_survives_kill_9(
    tmp_path: Path, children: list[subprocess.Popen[str]]
) -> None:
    data = tmp_path / "data"
    proc = spawn(ENQUEUER, str(data), "remember me")
    children.append(proc)

    (job_id,) = read_ids(proc, 1)
    os.kill(proc.pid, signal.SIGKILL)  # at once: no chance to close anything
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL

    queue = Queue.open(data)
    try:
        job = queue.get(job_id)
        assert (job.status, job.message_text) == (Status.WAITING, "remember me")
        assert [e.to_status for e in queue.events(job_id)] == [Status.WAITING]
    finally:
        queue.close()


def test_three_messages_survive_kill_9_waiting_and_in_order(
    tmp_path: Path, children: list[subprocess.Popen[str]]
) -> None:
    data = tmp_path / "data"
    proc = spawn(ENQUEUER, str(data), "first", "second", "third")
    children.append(proc)
    ids = read_ids(proc, 3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)

    queue = Queue.open(data)
    try:
        waiting = sorted(queue.jobs(status="waiting"), key=lambda j: j.id)
        assert [(j.id, j.message_text) for j in waiting] == list(
            zip(ids, ["first", "second", "third"], strict=True)
        )
        assert [(g.group_id, g.waiting) for g in queue.status().groups] == [
            ("family", 3)
        ]
        order = []
        for _ in range(3):
            (job,) = queue.claim(5)
            assert queue.claim(5) == []  # one at a time in the group
            order.append(job.message_text)
            queue.finish(job.id, job.attempt)
        assert order == ["first", "second", "third"]
    finally:
        queue.close()


def test_kill_9_in_the_middle_of_busy_writes_leaves_a_consistent_database(
    tmp_path: Path, children: list[subprocess.Popen[str]]
) -> None:
    data = tmp_path / "data"
    setup = Queue.open(data, synchronous="NORMAL")
    for i in range(300):
        setup.enqueue(GROUPS[i % 4], f"m{i}")
    setup.close()
    proc = spawn(CLAIMER, str(data), "7", "100000", str(CAP))
    children.append(proc)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    assert proc.stdin is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)

    queue = Queue.open(data)
    try:
        active = queue.active()
        assert len(active) <= CAP
        assert len({j.group_id for j in active}) == len(active)
        counts = queue.status().counts
        assert sum(counts.values()) == 300  # nothing lost, nothing invented
        lanes = {g.group_id: (g.active_job, g.waiting) for g in queue.status().groups}
        for group in GROUPS[:4]:
            waiting = len(queue.jobs(status="waiting", group_id=group, limit=1000))
            mine = [j.id for j in active if j.group_id == group]
            if waiting or mine:
                assert lanes[group] == (mine[0] if mine else None, waiting)
            else:
                assert group not in lanes
        # The killed process's attempts are still active; failing them over
        # (what recovery does for a lost container) frees their groups.
        for job in active:
            queue.fail(job.id, job.attempt, "container lost")
        assert queue.active() == []
    finally:
        queue.close()
