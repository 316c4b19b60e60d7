"""``moorage_replies_delivered_total`` counts the replies a sink accepted:
fed by the Deliverer, and wired through by ``serve`` to its live ``/metrics``."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from moorage.clock import FakeClock
from moorage.config import ServeConfig
from moorage.delivery import CallbackSink, Deliverer
from moorage.metrics import Metrics
from moorage.outbox import Outbox, Reply
from moorage.queue import Queue
from moorage.serve import serve as run_serve


def delivered_total(base_url: str) -> float:
    response = httpx.get(f"{base_url}/metrics", timeout=10)
    assert response.status_code == 200
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == "moorage_replies_delivered_total":
                return sample.value
    raise AssertionError("moorage_replies_delivered_total is not exported")


def test_deliverer_counts_accepted_replies_only(tmp_path: Path) -> None:
    clock = FakeClock()
    queue = Queue.open(tmp_path / "data", clock=clock)
    queue.enqueue("family", "hi")
    (job,) = queue.claim(1)
    outbox = Outbox(queue.db, clock)
    queue.record_output(job, 0, ['{"type": "reply", "text": "one"}'] * 2)
    offered: list[int] = []

    def accept_all_but_the_first(reply: Reply) -> None:
        offered.append(reply.id)
        if len(offered) == 1:
            raise ConnectionError("receiver down")

    metrics = Metrics()
    deliverer = Deliverer(
        outbox,
        CallbackSink(accept_all_but_the_first),
        queue.install_id,
        metrics=metrics,
    )
    try:
        assert deliverer.deliver_due() == 0
        assert counted(metrics) == 0  # refused: nothing counted
        clock.advance(2.0)  # past the first backoff
        assert deliverer.deliver_due() == 2
        assert counted(metrics) == 2
    finally:
        queue.close()


def counted(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value("moorage_replies_delivered_total")
    return 0.0 if value is None else value


def test_serve_wires_its_metrics_into_the_deliverer(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data_dir = tmp_path / "data"
    queue = Queue.open(data_dir)
    queue.enqueue("family", "hello", chat_jid="1@g.us")
    queue.close()
    replies: list[Reply] = []
    stop = threading.Event()
    config = ServeConfig(
        runtime="process", http=f"127.0.0.1:{port}", poll_interval=0.05
    )
    thread = threading.Thread(
        target=run_serve,
        args=(data_dir, config),
        kwargs={"sink": CallbackSink(replies.append), "stop": stop},
        daemon=True,
    )
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not replies and time.monotonic() < deadline:
            time.sleep(0.05)
        assert replies, "the echo agent's reply was not delivered"
        base = f"http://127.0.0.1:{port}"
        while delivered_total(base) < len(replies) and time.monotonic() < deadline:
            time.sleep(0.05)  # the count follows the commit that marks delivery
        assert delivered_total(base) == len(replies)
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
