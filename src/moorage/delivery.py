"""Delivery of recorded replies to where the chat bot picks them up.

Sinks: a Python callback, a JSON-lines file, an HTTP webhook.  The
:class:`Deliverer` takes due replies from the outbox in order, hands each to
the sink and marks it delivered only once the sink accepted it; a failed
delivery is retried with backoff, and anything undelivered survives a restart.

Exactly once, per sink: the file sink skips replies it already wrote (it
remembers the last reply id in the file), the webhook sends an
``Idempotency-Key`` header so the receiver drops repeats, and a callback is
called again after a crash only if the crash came between the call and the
commit that marks the reply delivered.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import httpx

from moorage.errors import MoorageError
from moorage.outbox import Outbox, Reply

if TYPE_CHECKING:
    from moorage.metrics import Metrics

logger = logging.getLogger(__name__)


class DeliveryError(MoorageError):
    """The sink did not accept a reply; it will be offered again later."""


class Sink(Protocol):
    def deliver(self, reply: Reply, key: str) -> None:
        """Hand one reply over; raise DeliveryError if it was not accepted."""
        ...

    def close(self) -> None: ...


def reply_document(reply: Reply, key: str) -> dict[str, object]:
    document = reply.as_dict()
    document.pop("delivered_at", None)
    document["idempotency_key"] = key
    return document


class CallbackSink:
    """Calls ``callback(reply)``; an exception from it is a failed delivery."""

    def __init__(self, callback: Callable[[Reply], object]) -> None:
        self._callback = callback

    def deliver(self, reply: Reply, key: str) -> None:
        try:
            self._callback(reply)
        except Exception as exc:  # the callback is user code: any error is a retry
            raise DeliveryError(f"callback raised {exc!r}") from exc

    def close(self) -> None:
        return None


class JsonlSink:
    """Appends one JSON object per reply to a file, fsynced before the reply
    is marked delivered.  Replies are written in id order, so the id on the
    file's last line tells which replies a crash already wrote."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._last_id = _last_reply_id(path)

    def deliver(self, reply: Reply, key: str) -> None:
        if reply.id <= self._last_id:
            return  # written before a crash, not yet marked delivered
        line = json.dumps(reply_document(reply, key), ensure_ascii=False) + "\n"
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line.encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise DeliveryError(f"cannot write {self.path}: {exc}") from exc
        self._last_id = reply.id

    def close(self) -> None:
        return None


def _last_reply_id(path: Path) -> int:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 65536))
            tail = handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return 0
    for line in reversed(tail.splitlines()):
        try:
            return int(json.loads(line)["id"])
        except (ValueError, KeyError, TypeError):
            continue  # a torn last line from a crash mid-write
    return 0


class WebhookSink:
    """POSTs each reply as JSON with an ``Idempotency-Key`` header.

    Any 2xx answer is acceptance; anything else (or no answer) is retried.
    """

    def __init__(
        self, url: str, *, token: str | None = None, timeout: float = 10.0
    ) -> None:
        headers = {"User-Agent": "moorage"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.url = url
        self._client = httpx.Client(timeout=timeout, headers=headers)

    def deliver(self, reply: Reply, key: str) -> None:
        try:
            response = self._client.post(
                self.url,
                json=reply_document(reply, key),
                headers={"Idempotency-Key": key},
            )
        except httpx.HTTPError as exc:
            raise DeliveryError(f"webhook {self.url} unreachable: {exc}") from exc
        if not response.is_success:
            raise DeliveryError(f"webhook {self.url} answered {response.status_code}")

    def close(self) -> None:
        self._client.close()


class Deliverer:
    """Moves due replies from the outbox to a sink, in a thread of its own."""

    def __init__(
        self,
        outbox: Outbox,
        sink: Sink,
        install: str,
        *,
        interval: float = 0.2,
        max_backoff: float = 300.0,
        metrics: Metrics | None = None,
    ) -> None:
        """``metrics``, when given, counts every reply the sink accepted."""
        self.outbox = outbox
        self.sink = sink
        self.install = install
        self.interval = interval
        self.max_backoff = max_backoff
        self.metrics = metrics
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def deliver_due(self) -> int:
        """Offer every due reply once, in order; returns how many were accepted.

        Stops at the first failure so that replies of one chat are never
        delivered out of order.
        """
        delivered = 0
        for reply in self.outbox.due():
            try:
                self.sink.deliver(reply, reply.idempotency_key(self.install))
            except DeliveryError as exc:
                backoff = min(self.max_backoff, 2.0 ** min(reply.tries, 16))
                self.outbox.mark_undelivered(reply, str(exc), backoff)
                logger.warning(
                    "reply %d of job %d not delivered (%s); next try in %.0f s",
                    reply.id,
                    reply.job_id,
                    exc,
                    backoff,
                    extra={"action": "deliver", "job": reply.job_id},
                )
                break
            self.outbox.mark_delivered(reply)
            delivered += 1
            if self.metrics is not None:
                self.metrics.reply_delivered()
        return delivered

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name="moorage-delivery", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.sink.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.deliver_due()
            except MoorageError:
                logger.exception("delivery pass failed; trying again shortly")
            self._wake.wait(self.interval)
            self._wake.clear()
        self.deliver_due()
