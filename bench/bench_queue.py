"""Benchmark: moorage's queue against raw sqlite3 on the same pragmas.

Prints durable enqueues/s and claim+finish cycles/s for moorage and for a
plain single-table queue in raw sqlite3 (WAL, synchronous=FULL for both, one
transaction per operation), their ratios, and the claim+finish rate at two
queue lengths to show that claim cost does not grow with the queue.  A last
line shows moorage's claim+finish throughput in jobs/s when each claim takes
a batch of up to 10 messages of its group (for information; the targets
compare one job per claim, as raw does).

    .venv/bin/python bench/bench_queue.py           # the full run (about 15 s)
    .venv/bin/python bench/bench_queue.py --quick   # a smoke run (a few seconds)
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from moorage.queue import Batch, Queue
from moorage.store import Database
from moorage.store.sqlite import DB_FILENAME

TARGETS = {"enqueue": 0.70, "cycle": 0.50}
#: The batch of the informational batched line.
BATCH = Batch(messages=10)

RAW_SCHEMA = """
CREATE TABLE jobs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    group_id     TEXT    NOT NULL,
    kind         TEXT    NOT NULL,
    status       TEXT    NOT NULL,
    priority     INTEGER NOT NULL,
    message_text TEXT    NOT NULL,
    chat_jid     TEXT,
    enqueued_at  REAL    NOT NULL,
    run_after    REAL    NOT NULL,
    started_at   REAL,
    finished_at  REAL,
    attempt      INTEGER NOT NULL DEFAULT 0,
    retry_count  INTEGER NOT NULL DEFAULT 0,
    max_retries  INTEGER NOT NULL
);
CREATE INDEX jobs_waiting ON jobs (priority, id) WHERE status = 'waiting';
"""
RAW_INSERT = (
    "INSERT INTO jobs (group_id, kind, status, priority, message_text, enqueued_at, "
    "run_after, max_retries) VALUES (?, 'message', 'waiting', 1, ?, ?, ?, 5)"
)
RAW_CLAIM = """
UPDATE jobs SET status = 'active', attempt = attempt + 1, started_at = ?
WHERE id = (SELECT id FROM jobs WHERE status = 'waiting' ORDER BY priority, id LIMIT 1)
RETURNING id, attempt
"""
RAW_FINISH = (
    "UPDATE jobs SET status = 'completed', finished_at = ? "
    "WHERE id = ? AND attempt = ? AND status = 'active'"
)


# -- setup -------------------------------------------------------------------------


class _BulkDatabase(Database):
    """A Database whose ``transaction()`` joins an outer batch, so setup can
    run thousands of real ``enqueue`` calls (the same SQL, the same lane
    upkeep) per commit instead of one.  Used only to fill queues quickly."""

    _outer: sqlite3.Connection | None = None

    @contextmanager
    def batch(self) -> Iterator[None]:
        with super().transaction() as conn:
            self._outer = conn
            try:
                yield
            finally:
                self._outer = None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        if self._outer is not None:
            yield self._outer
            return
        with super().transaction() as conn:
            yield conn


def fill_moorage(data_dir: Path, waiting: int, groups: int) -> None:
    """Put ``waiting`` messages in ``groups`` groups through Queue.enqueue."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    db = _BulkDatabase(data_dir / DB_FILENAME, synchronous="NORMAL")
    queue = Queue(db)
    done = 0
    while done < waiting:
        step = min(5000, waiting - done)
        with db.batch():
            for i in range(done, done + step):
                queue.enqueue(f"group-{i % groups}", f"message {i}")
        done += step
    check_lanes(db.path, waiting)
    queue.close()


def check_lanes(path: Path, waiting: int) -> None:
    """The lanes must agree with the jobs, or the figures mean nothing."""
    conn = sqlite3.connect(path)
    try:
        heads = dict(
            conn.execute(
                "SELECT group_id, min(id) FROM jobs WHERE status = 'waiting' "
                "GROUP BY group_id"
            ).fetchall()
        )
        lanes = dict(conn.execute("SELECT group_id, rank_job FROM lanes").fetchall())
        (count,) = conn.execute(
            "SELECT count(*) FROM jobs WHERE status = 'waiting'"
        ).fetchone()
    finally:
        conn.close()
    if lanes != heads or count < waiting:
        raise SystemExit("setup failed: the lanes table disagrees with the jobs")


def open_raw(path: Path, synchronous: str) -> sqlite3.Connection:
    fresh = not path.exists()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("PRAGMA busy_timeout = 30000")
    if fresh:
        conn.executescript(RAW_SCHEMA)
    return conn


def fill_raw(path: Path, waiting: int, groups: int) -> None:
    conn = open_raw(path, "OFF")
    now = time.time()
    with conn:
        conn.execute("BEGIN")
        conn.executemany(
            RAW_INSERT,
            ((f"group-{i % groups}", f"message {i}", now, now) for i in range(waiting)),
        )
    conn.close()


# -- measurements ------------------------------------------------------------------


def paired_rates(
    count: int,
    ours: Callable[[int], None],
    theirs: Callable[[int], None],
    rounds: int,
) -> tuple[float, float, float]:
    """Median ops/s of each side and median per-round ratio.

    The two sides take turns in short rounds (alternating which goes first),
    so both see the same disk: fsync latency on shared machines drifts by a
    factor of several within a minute, which would swamp a side-by-side run.
    """
    mine, raw, ratios = [], [], []
    for n in range(rounds):
        pair = {}
        for name, run in (("ours", ours), ("raw", theirs))[:: 1 if n % 2 else -1]:
            start = time.perf_counter()
            run(count)
            pair[name] = count / (time.perf_counter() - start)
        mine.append(pair["ours"])
        raw.append(pair["raw"])
        ratios.append(pair["ours"] / pair["raw"])
    return statistics.median(mine), statistics.median(raw), statistics.median(ratios)


def moorage_enqueue(queue: Queue, groups: int) -> Callable[[int], None]:
    def run(count: int) -> None:
        for i in range(count):
            queue.enqueue(f"group-{i % groups}", f"new message {i}")

    return run


def moorage_cycle(queue: Queue) -> Callable[[int], None]:
    def run(count: int) -> None:
        for _ in range(count):
            (job,) = queue.claim(1)
            queue.finish(job.id, job.attempt)

    return run


def moorage_batched_cycle(queue: Queue) -> Callable[[int], None]:
    def run(count: int) -> None:
        for _ in range(count):
            (job,) = queue.claim(1, batch=BATCH)
            queue.finish(job.id, job.attempt)

    return run


def raw_enqueue(conn: sqlite3.Connection, groups: int) -> Callable[[int], None]:
    def run(count: int) -> None:
        for i in range(count):
            now = time.time()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                RAW_INSERT, (f"group-{i % groups}", f"new message {i}", now, now)
            )
            conn.execute("COMMIT")

    return run


def raw_cycle(conn: sqlite3.Connection) -> Callable[[int], None]:
    def run(count: int) -> None:
        for _ in range(count):
            conn.execute("BEGIN IMMEDIATE")
            job_id, attempt = conn.execute(RAW_CLAIM, (time.time(),)).fetchone()
            conn.execute("COMMIT")
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(RAW_FINISH, (time.time(), job_id, attempt))
            conn.execute("COMMIT")

    return run


class Bench:
    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.args = args
        self.root = root
        self.made = 0

    def moorage(self, waiting: int) -> Queue:
        self.made += 1
        data = self.root / f"moorage-{self.made}"
        fill_moorage(data, waiting, self.args.groups)
        return Queue.open(data, synchronous=self.args.synchronous)

    def raw(self, waiting: int) -> sqlite3.Connection:
        self.made += 1
        path = self.root / f"raw-{self.made}.db"
        fill_raw(path, waiting, self.args.groups)
        return open_raw(path, self.args.synchronous)

    def compare(self) -> dict[str, tuple[float, float, float]]:
        a = self.args
        spare = a.rounds * a.cycles  # so the queue stays at `waiting` throughout
        queue = self.moorage(a.waiting + spare)
        conn = self.raw(a.waiting + spare)
        try:
            return {
                "enqueue": paired_rates(
                    a.enqueues,
                    moorage_enqueue(queue, a.groups),
                    raw_enqueue(conn, a.groups),
                    a.rounds,
                ),
                "cycle": paired_rates(
                    a.cycles, moorage_cycle(queue), raw_cycle(conn), a.rounds
                ),
            }
        finally:
            queue.close()
            conn.close()

    def scale(self) -> list[tuple[float, float]]:
        """Cycle rates at the small and the large queue length, in turns."""
        a = self.args
        spare = a.rounds * a.cycles
        small = self.moorage(a.waiting + spare)
        large = self.moorage(a.large + spare)
        small_raw = self.raw(a.waiting + spare)
        large_raw = self.raw(a.large + spare)
        try:
            ours = paired_rates(
                a.cycles, moorage_cycle(small), moorage_cycle(large), a.rounds
            )
            raw = paired_rates(
                a.cycles, raw_cycle(small_raw), raw_cycle(large_raw), a.rounds
            )
        finally:
            for queue in (small, large):
                queue.close()
            for conn in (small_raw, large_raw):
                conn.close()
        return [(ours[0], raw[0]), (ours[1], raw[1])]

    def batched(self) -> tuple[float, float]:
        """Median jobs/s and attempts/s of claim+finish with BATCH."""
        a = self.args
        spare = a.rounds * a.cycles * BATCH.messages
        queue = self.moorage(a.waiting + spare)
        run = moorage_batched_cycle(queue)
        jobs, attempts = [], []
        try:
            for _ in range(a.rounds):
                before = queue.status().counts["completed"]
                start = time.perf_counter()
                run(a.cycles)
                elapsed = time.perf_counter() - start
                done = queue.status().counts["completed"] - before
                jobs.append(done / elapsed)
                attempts.append(a.cycles / elapsed)
        finally:
            queue.close()
        return statistics.median(jobs), statistics.median(attempts)

    def profile(self) -> None:
        a = self.args
        queue = self.moorage(a.waiting + a.cycles)
        try:
            profiler = cProfile.Profile()
            profiler.enable()
            moorage_enqueue(queue, a.groups)(a.enqueues)
            moorage_cycle(queue)(a.cycles)
            profiler.disable()
        finally:
            queue.close()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


# -- report ------------------------------------------------------------------------


def report(args: argparse.Namespace, bench: Bench) -> int:
    print(
        f"moorage vs raw sqlite3: WAL, synchronous={args.synchronous}, "
        f"{args.groups} groups, {args.waiting:,} waiting jobs; medians of "
        f"{args.rounds} alternating rounds ({args.enqueues} enqueues or "
        f"{args.cycles} cycles per round per side)"
    )
    print()
    results = bench.compare()
    missed = 0
    print(f"{'operation':<22}{'moorage/s':>11}{'raw/s':>11}{'ratio':>8}{'target':>9}")
    for key, label in (("enqueue", "durable enqueue"), ("cycle", "claim+finish cycle")):
        ours, raw, ratio = results[key]
        ok = ratio >= TARGETS[key]
        missed += not ok
        print(
            f"{label:<22}{ours:>11,.0f}{raw:>11,.0f}{ratio:>7.0%} "
            f"{'≥ ' + format(TARGETS[key], '.0%'):>8} {'ok' if ok else 'MISSED'}"
        )

    print()
    print("claim+finish cycles/s by queue length (does claim cost grow with it?)")
    started = time.perf_counter()
    rows = bench.scale()
    print(f"{'waiting':>10}{'moorage/s':>11}{'raw/s':>11}")
    for n, (ours, raw) in zip((args.waiting, args.large), rows, strict=True):
        print(f"{n:>10,}{ours:>11,.0f}{raw:>11,.0f}")
    change = rows[1][0] / rows[0][0] - 1
    print(
        f"moorage at {args.large:,} vs {args.waiting:,} waiting: {change:+.0%} "
        f"(setup and run took {time.perf_counter() - started:.0f} s)"
    )
    print()
    jobs, attempts = bench.batched()
    print(
        f"claim+finish with Batch(messages={BATCH.messages}), moorage only, "
        f"not a target: {jobs:,.0f} jobs/s ({attempts:,.0f} attempts/s)"
    )
    if args.profile:
        print()
        bench.profile()
    return 1 if missed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fast, rough run")
    parser.add_argument("--groups", type=int, default=100)
    parser.add_argument("--waiting", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=200_000)
    parser.add_argument("--enqueues", type=int, default=200)
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument(
        "--synchronous", choices=("FULL", "NORMAL", "EXTRA"), default="FULL"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile moorage")
    parser.add_argument("--dir", type=Path, help="where to put the databases")
    args = parser.parse_args()
    if args.quick:
        args.enqueues, args.cycles, args.rounds, args.large = 100, 50, 7, 50_000
    with tempfile.TemporaryDirectory(prefix="moorage-bench-", dir=args.dir) as root:
        return report(args, Bench(args, Path(root)))


if __name__ == "__main__":
    raise SystemExit(main())
