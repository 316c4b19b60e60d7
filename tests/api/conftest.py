"""Fixtures for the HTTP suite: a queue on a fresh data directory and a live
uvicorn server on a free loopback port, stopped (and the queue closed) after
each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from moorage.api import HttpServer, create_app, serve_http
from moorage.queue import Queue


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[Queue]:
    q = Queue.open(tmp_path / "data")
    yield q
    q.close()


@pytest.fixture
def serve(queue: Queue) -> Iterator[Callable[..., str]]:
    """Start a live server over ``queue`` with create_app(**kwargs); returns
    its base URL.  Every server started is stopped at teardown."""
    servers: list[HttpServer] = []

    def start(**kwargs: Any) -> str:
        app = create_app(queue, **kwargs)
        handle = serve_http(app, "127.0.0.1", 0)
        servers.append(handle)
        return f"http://127.0.0.1:{handle.port}"

    yield start
    for handle in servers:
        handle.stop()
        assert not handle.thread.is_alive()


@pytest.fixture
def client(serve: Callable[..., str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=serve(), timeout=10) as c:
        yield c
