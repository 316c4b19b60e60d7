"""``moorage serve``: wire the store, a runtime, the outbox's sink and the
dispatcher together, and run until told to stop.

Start-up order follows DESIGN.md: take the data directory's lock, open the
store (migrating it), recover, and only then take new work.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from moorage.config import ServeConfig
from moorage.delivery import Deliverer, JsonlSink, Sink, WebhookSink
from moorage.dispatcher import Dispatcher, DispatchSettings
from moorage.errors import ConfigError, EngineUnavailable, InvalidInput
from moorage.lock import DataDirLock
from moorage.metrics import Metrics
from moorage.outbox import Outbox
from moorage.queue import Queue
from moorage.runtime.base import Limits, Mount, Runtime
from moorage.store import prepare_data_dir

logger = logging.getLogger(__name__)

REPLIES_FILENAME = "replies.jsonl"


def make_runtime(config: ServeConfig, install: str, data_dir: Path) -> Runtime:
    """The runtime the configuration asks for; ``auto`` takes the Docker
    Engine when it answers and an image is configured, else the process
    runtime, and says which in the log."""
    from moorage.runtime.docker import DockerRuntime
    from moorage.runtime.process import ProcessRuntime

    def docker() -> DockerRuntime:
        return DockerRuntime(
            install,
            data_dir,
            base_url=config.docker_host,
            mount_allowlist=config.mount_allowlist,
            stop_grace=config.stop_grace,
        )

    if config.runtime == "docker":
        if not config.image:
            raise ConfigError(
                "the docker runtime needs an image (--image or MOORAGE_IMAGE)"
            )
        return docker()
    if config.runtime == "auto" and config.image:
        runtime = docker()
        try:
            runtime.ping()
        except EngineUnavailable as exc:
            logger.warning(
                "runtime auto: Docker Engine not reachable (%s); using processes", exc
            )
            runtime.close()
        else:
            logger.info(
                "runtime auto: using the Docker Engine with image %s", config.image
            )
            return runtime
    elif config.runtime == "auto":
        logger.info(
            "runtime auto: no image configured; running agents as local processes"
        )
    return ProcessRuntime(install, data_dir)


def make_sink(config: ServeConfig, data_dir: Path) -> Sink:
    if config.webhook_url:
        return WebhookSink(config.webhook_url, token=config.webhook_token)
    path = (
        Path(config.replies_file)
        if config.replies_file
        else data_dir / REPLIES_FILENAME
    )
    return JsonlSink(path)


def parse_mount(text: str) -> Mount:
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise ConfigError(f"mount must be SOURCE:TARGET[:rw], not {text!r}")
    return Mount(
        source=parts[0],
        target=parts[1],
        read_only=not (len(parts) == 3 and parts[2] == "rw"),
    )


def dispatch_settings(config: ServeConfig) -> DispatchSettings:
    return DispatchSettings(
        max_concurrent=config.max_concurrent,
        image=config.image,
        command=config.command,
        timeout=config.timeout,
        poll_interval=config.poll_interval,
        reconcile_interval=config.reconcile_interval,
        prune_interval=config.prune_interval,
        completed_ttl=config.completed_ttl,
        failed_ttl=config.failed_ttl,
        cancelled_ttl=config.cancelled_ttl,
        stop_grace=config.stop_grace,
        limits=Limits(
            memory_bytes=config.memory_mb * 1024 * 1024,
            cpus=config.cpus,
            pids=config.pids,
        ),
        network=config.network,
        user=config.user,
        mounts=[parse_mount(m) for m in config.mounts],
        env=config.env,
        read_only_rootfs=config.read_only_rootfs,
        batch_messages=config.batch_messages,
        batch_bytes=config.batch_kib * 1024,
        follow_ups=config.follow_ups,
        idle_timeout=config.idle_timeout,
        close_grace=config.close_grace,
    )


def serve(
    data_dir: Path,
    config: ServeConfig,
    *,
    drain: bool = False,
    sink: Sink | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Run the dispatcher until ``stop`` is set or SIGTERM/SIGINT arrives."""
    prepare_data_dir(data_dir)
    stop = stop or threading.Event()
    with DataDirLock(data_dir):
        queue = Queue.open(data_dir, synchronous=config.synchronous)  # type: ignore[arg-type]
        runtime = make_runtime(config, queue.install_id, data_dir)
        settings = dispatch_settings(config)
        metrics = Metrics()
        deliverer = Deliverer(
            Outbox(queue.db),
            sink or make_sink(config, data_dir),
            queue.install_id,
            metrics=metrics,
        )
        dispatcher = Dispatcher(
            queue, runtime, settings, deliverer=deliverer, metrics=metrics
        )
        _handle_signals(stop)
        http = _start_http(config, queue, dispatcher, metrics)
        logger.info(
            "serving %s with the %s runtime, at most %d at once",
            data_dir,
            runtime.name,
            settings.max_concurrent,
            extra={"action": "serve"},
        )
        try:
            dispatcher.run(stop, drain=drain)
        finally:
            if http is not None:
                http()
            runtime.close()
            queue.close()


def recover(data_dir: Path, config: ServeConfig, *, dry_run: bool) -> Any:
    """Run recovery once (or only plan it); returns the RecoveryReport."""
    prepare_data_dir(data_dir)
    lock = DataDirLock(data_dir)
    if not dry_run:
        lock.acquire()
    try:
        queue = Queue.open(data_dir, synchronous=config.synchronous)  # type: ignore[arg-type]
        runtime = make_runtime(config, queue.install_id, data_dir)
        try:
            return Dispatcher(queue, runtime, dispatch_settings(config)).recover(
                dry_run=dry_run
            )
        finally:
            runtime.close()
            queue.close()
    finally:
        lock.release()


def _handle_signals(stop: threading.Event) -> None:
    if threading.current_thread() is not threading.main_thread():
        return

    def on_signal(signum: int, frame: FrameType | None) -> None:
        logger.info(
            "received %s; stopping",
            signal.Signals(signum).name,
            extra={"action": "stop"},
        )
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def _start_http(
    config: ServeConfig, queue: Queue, dispatcher: Dispatcher, metrics: Metrics
) -> Any:
    """Start the HTTP API if configured; returns a function that stops it."""
    if not config.http:
        return None
    try:
        from moorage import api
    except ImportError as exc:  # pragma: no cover - the api ships with moorage
        raise ConfigError(f"the HTTP API is not available: {exc}") from exc
    host, _, port_text = config.http.rpartition(":")
    try:
        port = int(port_text)
    except ValueError as exc:
        raise InvalidInput(f"--http must be HOST:PORT, not {config.http!r}") from exc
    host = host.strip("[]") or "127.0.0.1"
    api.check_bind(host, config.http_token)
    app = api.create_app(
        queue,
        dispatcher=dispatcher,
        token=config.http_token,
        metrics=metrics,
        wake=dispatcher.wake,
    )
    handle = api.serve_http(app, host, port)
    logger.info(
        "HTTP API on http://%s:%d/", host, handle.port, extra={"action": "http"}
    )
    return handle.stop
