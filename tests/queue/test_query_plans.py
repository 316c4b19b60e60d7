"""The statements behind enqueue, claim and finish stay cheap.

Every statement the queue runs for those verbs is captured as it runs (with
its values), then compiled again with ``EXPLAIN``: none may open a temporary
b-tree (the ``OpenEphemeral`` opcode: a sort the index does not give, an
``IN`` list or subquery, a multi-row ``UPDATE`` through an index it changes)
and none may scan a whole table of jobs or events.  A change that makes one
of these statements slower in that way fails here rather than only showing
up as a worse benchmark figure.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from moorage.clock import FakeClock
from moorage.queue import Batch, Queue


@contextmanager
def captured(queue: Queue) -> Iterator[list[str]]:
    """The SQL text (values expanded) of each statement run in the block."""
    statements: list[str] = []
    conn = queue.db._conn
    conn.set_trace_callback(statements.append)
    try:
        yield statements
    finally:
        conn.set_trace_callback(None)


def plan_problems(conn: sqlite3.Connection, sql: str) -> list[str]:
    """What makes ``sql`` costly: temporary b-trees and full table scans."""
    problems = []
    opcodes = [row[1] for row in conn.execute("EXPLAIN " + sql)]
    if {"OpenEphemeral", "OpenAutoindex", "SorterOpen"} & set(opcodes):
        problems.append("opens a temporary b-tree")
    for row in conn.execute("EXPLAIN QUERY PLAN " + sql):
        detail = row[3]
        scanned = detail.removeprefix("SCAN ").split(" ")[0]
        if (
            detail.startswith("SCAN ")
            and scanned.isidentifier()
            and scanned != "CONSTANT"
            and "USING" not in detail
        ):
            problems.append(detail)
        if "TEMP B-TREE" in detail:
            problems.append(detail)
    return problems


def _hot_path(queue: Queue, clock: FakeClock) -> None:
    """Every branch of enqueue, claim, start, finish and fail a busy queue
    takes: a new group, an enqueue behind older jobs, a more urgent one, a
    task, claims alone and in a batch, a retry with backoff and a last
    failure."""
    queue.enqueue("g1", "first")
    queue.enqueue("g1", "second")
    queue.enqueue("g1", "third", priority="low")
    queue.enqueue("g1", "urgent", priority="high")
    queue.enqueue("g2", "other group")
    queue.enqueue("g3", "a task", kind="task")
    queue.enqueue("g3", "later task", kind="task", run_after=clock.now() + 60)
    for job in queue.claim(10):
        queue.start(job.id, job.attempt, f"c-{job.id}")
        queue.finish(job.id, job.attempt)
    for job in queue.claim(10, batch=Batch(messages=10)):
        queue.fail(job.id, job.attempt, "exit 1")
    clock.advance(3600)
    for job in queue.claim(10):
        queue.fail(job.id, job.attempt, "exit 1", retryable=False)


@pytest.fixture
def busy_queue(make_queue: Callable[..., Queue]) -> Queue:
    """A queue whose tables hold enough rows that SQLite's planner uses
    its indexes as it would in service."""
    queue = make_queue()
    for n in range(200):
        queue.enqueue(f"filler-{n % 20}", f"waiting {n}")
    return queue


def test_the_hot_statements_open_no_temporary_btree_and_scan_no_table(
    busy_queue: Queue, clock: FakeClock
) -> None:
    with captured(busy_queue) as statements:
        _hot_path(busy_queue, clock)
    queries = sorted(
        {
            s
            for s in statements
            if s.split(None, 1)[0].upper() not in {"BEGIN", "COMMIT"}
        }
    )
    assert len(queries) >= 8  # the capture saw the verbs' statements
    conn = busy_queue.db._conn
    problems = {sql: found for sql in queries if (found := plan_problems(conn, sql))}
    assert problems == {}


def test_the_check_finds_a_temporary_btree_and_a_scan(busy_queue: Queue) -> None:
    """The check above can fail: it sees a sort without an index, an IN list
    and a full scan."""
    conn = busy_queue.db._conn
    assert plan_problems(conn, "SELECT id FROM jobs ORDER BY message_text") == [
        "opens a temporary b-tree",
        "SCAN jobs",
        "USE TEMP B-TREE FOR ORDER BY",
    ]
    assert "opens a temporary b-tree" in plan_problems(
        conn, "SELECT id FROM jobs WHERE id IN (1, 2, 3)"
    )
    assert plan_problems(conn, "SELECT id FROM jobs WHERE id = 1") == []
