"""The webhook sink against a real HTTP server on loopback: an idempotency
key per reply, retries with backoff after a refusal, nothing lost."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from moorage.clock import FakeClock
from moorage.delivery import Deliverer, WebhookSink
from moorage.outbox import Outbox
from moorage.queue import Queue


class Receiver(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.received: list[tuple[str, dict[str, object]]] = []
        self.refuse = 1  # answer 503 to this many requests first


class Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.server.refuse > 0:
            self.server.refuse -= 1
            self.send_response(503)
        else:
            self.server.received.append((self.headers["Idempotency-Key"], body))
            self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_webhook_retries_with_backoff_and_sends_an_idempotency_key(
    tmp_path: Path, receiver: Receiver
) -> None:
    clock = FakeClock()
    queue = Queue.open(tmp_path / "data", clock=clock)
    job = queue.enqueue("fam", "hi", chat_jid="1@g.us")
    (claimed,) = queue.claim(1)
    outbox = Outbox(queue.db, clock)
    queue.record_output(claimed, 0, ['{"type": "reply", "text": "hello"}'])
    url = f"http://127.0.0.1:{receiver.server_address[1]}/replies"
    deliverer = Deliverer(outbox, WebhookSink(url), queue.install_id)
    try:
        assert deliverer.deliver_due() == 0  # refused once
        assert outbox.undelivered() == 1
        assert deliverer.deliver_due() == 0  # backing off: not offered yet
        clock.advance(1.5)
        assert deliverer.deliver_due() == 1
        assert outbox.undelivered() == 0
        ((key, body),) = receiver.received
        assert key == f"{queue.install_id[:12]}-{job.id}-1-0"
        assert (body["text"], body["chat_jid"], body["idempotency_key"]) == (
            "hello",
            "1@g.us",
            key,
        )
    finally:
        deliverer.sink.close()
        queue.close()
