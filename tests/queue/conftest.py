"""Fixtures for the queue suite: a fake clock, a queue on a fresh data
directory, and raw read access to its SQLite file."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from moorage.clock import FakeClock
from moorage.queue import Queue, RetryPolicy
from moorage.store.sqlite import DB_FILENAME


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def make_queue(data_dir: Path, clock: FakeClock) -> Iterator[Callable[..., Queue]]:
    """Open queues on the test's data directory; all are closed afterwards."""
    opened: list[Queue] = []

    def factory(**kwargs: Any) -> Queue:
        kwargs.setdefault("clock", clock)
        kwargs.setdefault("rng", random.Random(0))
        queue = Queue.open(data_dir, **kwargs)
        opened.append(queue)
        return queue

    yield factory
    for queue in opened:
        queue.close()


@pytest.fixture
def queue(make_queue: Callable[..., Queue]) -> Queue:
    return make_queue()


@pytest.fixture
def no_jitter_queue(make_queue: Callable[..., Queue]) -> Queue:
    return make_queue(retry_policy=RetryPolicy(jitter=0.0))


@pytest.fixture
def raw(queue: Queue, data_dir: Path) -> Iterator[sqlite3.Connection]:
    """A second, independent connection to the queue's database file."""
    conn = sqlite3.connect(data_dir / DB_FILENAME, isolation_level=None)
    conn.row_factory = sqlite3.Row
    yield conn
    conn.close()
