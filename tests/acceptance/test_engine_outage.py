"""An engine that stops answering mid-run costs no attempts, and the queue
resumes when it answers again.  The outage is made by cutting a socket proxy
between moorage and the Docker Engine, so the engine's containers live on."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Moorage, eventually

pytestmark = [pytest.mark.slow, pytest.mark.docker]

ENGINE_SOCKET = "/var/run/docker.sock"


class SocketProxy:
    """Forwards a unix socket to the engine's until cut."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._listener: socket.socket | None = None
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        self.path.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.path))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            if self._listener is not None:
                self._listener.close()
                self._listener = None
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()
        self.path.unlink(missing_ok=True)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(ENGINE_SOCKET)
            with self._lock:
                self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                target.shutdown(socket.SHUT_WR)


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[SocketProxy]:
    p = SocketProxy(tmp_path / "engine.sock")
    p.start()
    yield p
    p.cut()


def test_engine_outage_costs_no_attempt_and_the_queue_resumes(
    tmp_path: Path, test_image: str, session_installs: set[str], proxy: SocketProxy
) -> None:
    moorage = Moorage(tmp_path / "data", "docker", test_image)
    session_installs.add(moorage.install)
    try:
        running = moorage.enqueue("a", "sleep=5;reply=a")
        moorage.start(env={"MOORAGE_DOCKER_HOST": f"unix://{proxy.path}"})
        eventually(lambda: moorage.job(running)["container_id"])

        proxy.cut()
        waiting = moorage.enqueue("b", "reply=b")
        eventually(lambda: "engine unreachable" in moorage.log.read_text(), timeout=30)
        eventually(
            lambda: moorage.log.read_text().count("engine unreachable") >= 2, timeout=30
        )
        assert moorage.status(waiting) == "waiting"
        assert moorage.job(running)["status"] == "active"

        proxy.start()
        eventually(
            lambda: "engine reachable again" in moorage.log.read_text(), timeout=60
        )
        for job in (running, waiting):
            eventually(lambda job=job: moorage.status(job) == "completed", timeout=60)
            row = moorage.job(job)
            assert (row["attempt"], row["retry_count"]) == (1, 0)
        eventually(lambda: sorted(r["text"] for r in moorage.delivered()) == ["a", "b"])
    finally:
        moorage.cleanup()
        print(moorage.log.read_text()[-4000:])
