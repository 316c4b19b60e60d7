"""The Docker Engine runtime (also Podman, through its Docker-compatible API).

Every call goes through the engine's HTTP API with the docker SDK's low-level
client; no command line and no shell is involved.  Engine errors are
translated at this boundary: a missing container becomes ContainerNotFound,
an unreachable engine EngineUnavailable, any other refusal RuntimeFailure.

Files inside the container:

* ``/moorage/input.json`` is placed with one put-archive call after "create"
  and before "start", so it survives any restart of moorage.
* ``/moorage/in/`` is the inbox.  :meth:`DockerRuntime.deliver` sends one
  archive holding the document under ``/moorage/.spool/`` plus a *hard link*
  to it under ``/moorage/in/``; the engine writes the file completely before
  it makes the link, so the name appears in the inbox atomically, with no
  ``exec`` and no tool needed in the image.
* With a read-only root filesystem, ``/moorage`` is an anonymous volume (the
  engine accepts archives into volumes of read-only containers) and ``/tmp``
  a small tmpfs; the volume is removed with the container.

Timeouts: the deadline (absolute epoch seconds) is a label.  :meth:`wait`
stops a container that is still running past it.  A container counts as
*timed out* when it exited with a non-zero code and finished at or after its
deadline (:meth:`inspect`, exact).  The one list call carries no finish time,
so :meth:`list` approximates: exited by SIGTERM/SIGKILL (code 143/137) and the
deadline has passed by the time of listing.
"""

from __future__ import annotations

import builtins
import io
import logging
import math
import re
import stat
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import docker  # type: ignore[import-untyped]
import docker.errors  # type: ignore[import-untyped]
import docker.types  # type: ignore[import-untyped]
import requests.exceptions
from docker.transport import UnixHTTPAdapter  # type: ignore[import-untyped]

from moorage.errors import (
    ContainerNotFound,
    EngineUnavailable,
    InvalidInput,
    RuntimeFailure,
)
from moorage.runtime.base import (
    INBOX_PATH,
    INPUT_PATH,
    LABEL_ATTEMPT,
    LABEL_DEADLINE,
    LABEL_GROUP,
    LABEL_INSTALL,
    LABEL_JOB,
    AttemptSpec,
    ContainerInfo,
    ContainerState,
    Mount,
    Runtime,
    check_inbox_name,
    check_install,
    container_name,
    encode_document,
    labels_for,
)

logger = logging.getLogger(__name__)

_REF_RE = re.compile(r"^[0-9a-f]{64}$")
_EXITED_RE = re.compile(r"^Exited \((-?\d+)\)")
_STATES = {
    "created": ContainerState.CREATED,
    "running": ContainerState.RUNNING,
    "paused": ContainerState.RUNNING,
    "restarting": ContainerState.RUNNING,
    "exited": ContainerState.EXITED,
    "dead": ContainerState.EXITED,
    "removing": ContainerState.EXITED,
    "stopped": ContainerState.EXITED,  # podman
    "configured": ContainerState.CREATED,  # podman
}
#: Exit codes of a process ended by SIGKILL / SIGTERM (128 + signal).
_SIGNAL_EXIT_CODES = frozenset({137, 143})
#: Paths whose mount would hand the engine itself to the agent.
_ENGINE_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock")
_MOORAGE_DIR = str(Path(INPUT_PATH).parent)
_POLL_MIN = 0.05
_POLL_MAX = 0.5
#: How many of a container's last log messages a read that goes on from the
#: previous one fetches; more new output than this means a whole read.
_TAIL_WINDOW = 256
#: Containers whose read position is remembered (more are read whole once).
_CURSORS_KEPT = 1024
#: The timestamp the engine puts before each log message (RFC 3339).
_STAMP_RE = re.compile(rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def check_ref(ref: str) -> str:
    """Refuse anything but a full docker container id (64 lowercase hex)."""
    if not isinstance(ref, str) or not _REF_RE.match(ref):
        raise InvalidInput(f"not a container id: {ref!r}")
    return ref


class DockerRuntime(Runtime):
    """Runs attempts as containers of a Docker Engine (or Podman) API.

    ``base_url`` is the engine's address (``unix:///run/podman/podman.sock``,
    ``tcp://…``); ``None`` takes ``DOCKER_HOST`` or the default socket.  The
    client is made on first use, so constructing a runtime never fails because
    the engine is down.  Host paths may be mounted only from under
    ``mount_allowlist``; the engine's socket and ``data_dir`` never.
    ``stop_grace`` is how long a container stopped at its deadline gets
    between SIGTERM and SIGKILL.  ``init`` runs the engine's tiny init as PID 1
    so signals reach the agent and zombies are reaped.
    """

    name = "docker"

    def __init__(
        self,
        install: str,
        data_dir: Path,
        *,
        base_url: str | None = None,
        mount_allowlist: Sequence[str] = (),
        stop_grace: float = 10.0,
        init: bool = True,
    ) -> None:
        self.install = check_install(install)
        self.data_dir = Path(data_dir).absolute()
        self.base_url = base_url
        self.stop_grace = stop_grace
        self.init = init
        self._allowlist = tuple(_real(p) for p in mount_allowlist)
        self._client: docker.APIClient | None = None
        self._docker_engine: bool | None = None
        # Where read_output stopped, per container, most recent last.
        self._cursors: dict[str, _LogCursor] = {}
        self._cursors_lock = threading.Lock()

    # -- the client and the error boundary ---------------------------------

    @property
    def api(self) -> docker.APIClient:
        """The low-level client, created (and the API version agreed) once."""
        if self._client is None:
            with self._engine("connect"):
                if self.base_url is None:
                    client = docker.from_env().api
                else:
                    client = docker.APIClient(base_url=self.base_url, version="auto")
                _share_one_pool(client)
                self._client = client
        return self._client

    @contextmanager
    def _engine(self, action: str, ref: str = "") -> Iterator[None]:
        try:
            yield
        except docker.errors.ImageNotFound as exc:
            raise RuntimeFailure(
                f"{action}: image not present in the engine ({exc.explanation}); "
                "moorage never pulls images: build or load it first"
            ) from exc
        except docker.errors.NotFound as exc:
            raise ContainerNotFound(f"{action}: no container {ref}") from exc
        except docker.errors.APIError as exc:
            if _no_such_container(exc):
                raise ContainerNotFound(f"{action}: no container {ref}") from exc
            raise RuntimeFailure(f"{action}: engine refused: {exc}") from exc
        except (
            requests.exceptions.RequestException,
            docker.errors.DockerException,
            OSError,
        ) as exc:
            where = self.base_url or "the default engine socket"
            raise EngineUnavailable(
                f"{action}: cannot reach the container engine at {where}: {exc}"
            ) from exc

    def ping(self) -> None:
        with self._engine("ping"):
            self.api.ping()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- start ---------------------------------------------------------------

    def start(self, spec: AttemptSpec) -> ContainerInfo:
        if spec.install != self.install:
            raise InvalidInput("attempt belongs to another install")
        if not spec.image:
            raise InvalidInput("the docker runtime needs an image")
        name = container_name(spec.install, spec.job_id, spec.attempt)
        mounts = [self._check_mount(m) for m in spec.mounts]
        payload = encode_document(spec.input)
        deadline = None if spec.timeout is None else time.time() + spec.timeout
        environment = _environment(spec.env)

        began = time.monotonic()
        ref = self._create(spec, name, mounts, environment, deadline)
        if ref is None:
            found = self._inspect_raw(name)
            info = self._info(found)
            if info.state is not ContainerState.CREATED:
                logger.info(
                    "attempt already started; not starting it again",
                    extra={"action": "start", "container": name},
                )
                return info
            ref = str(found["Id"])
            deadline = info.deadline  # the label the earlier create wrote
        self._place_input(ref, payload, spec.read_only_rootfs)
        try:
            with self._engine("start", ref):
                self.api.start(ref)
        except RuntimeFailure as exc:
            if not isinstance(exc, EngineUnavailable):
                self._discard(ref)
            raise
        # Everything the caller needs is known here; no inspect after start.
        # ``started_at`` is moorage's clock as the engine confirmed the
        # start (inspect() reports the engine's own StartedAt).
        info = ContainerInfo(
            ref=ref,
            name=name,
            install=spec.install,
            job_id=spec.job_id,
            attempt=spec.attempt,
            group_id=spec.group_id,
            state=ContainerState.RUNNING,
            started_at=time.time(),
            deadline=deadline,
        )
        logger.info(
            "started %s in %.3f s",
            name,
            time.monotonic() - began,
            extra={"action": "start", "container": ref, "job": spec.job_id},
        )
        return info

    def _create(
        self,
        spec: AttemptSpec,
        name: str,
        mounts: list[docker.types.Mount],
        environment: dict[str, str],
        deadline: float | None,
    ) -> str | None:
        """Create the container; ``None`` if one of that name already exists."""
        limits = spec.limits
        tmpfs: dict[str, str] = {}
        if spec.read_only_rootfs:
            # The input lives in a volume: archives may be put into volumes
            # of a read-only container, never into its root filesystem.
            mounts = [*mounts, docker.types.Mount(_MOORAGE_DIR, None, type="volume")]
            tmpfs = {"/tmp": "rw,nosuid,nodev,size=64m"}
        with self._engine("create", name):
            host_config = self.api.create_host_config(
                privileged=False,
                security_opt=["no-new-privileges"],
                mem_limit=limits.memory_bytes,
                memswap_limit=limits.memory_bytes,
                nano_cpus=None if limits.cpus is None else int(limits.cpus * 1e9),
                pids_limit=limits.pids,
                network_mode=spec.network,
                read_only=spec.read_only_rootfs,
                mounts=mounts or None,
                tmpfs=tmpfs or None,
                init=self.init or None,
                auto_remove=False,
            )
            try:
                created = self.api.create_container(
                    spec.image,
                    command=list(spec.command) if spec.command is not None else None,
                    name=name,
                    labels=labels_for(spec, deadline),
                    environment=environment,
                    user=spec.user or "",
                    host_config=host_config,
                    detach=True,
                )
            except docker.errors.APIError as exc:
                if exc.status_code == 409 or _name_in_use(exc):
                    return None
                raise
        return str(created["Id"])

    def _place_input(self, ref: str, payload: bytes, read_only: bool) -> None:
        root = "moorage/" if not read_only else ""
        archive = _tar(
            [
                (root.rstrip("/"), "dir", b""),
                (root + "in", "dir", b""),
                (root + ".spool", "dir", b""),
                (root + "input.json", "file", payload),
            ]
        )
        with self._engine("place input", ref):
            self.api.put_archive(ref, "/" if not read_only else _MOORAGE_DIR, archive)

    def _discard(self, ref: str) -> None:
        try:
            with self._engine("remove after failed start", ref):
                self.api.remove_container(ref, force=True, v=True)
        except RuntimeFailure as exc:
            logger.warning("could not remove %s after a failed start: %s", ref, exc)

    # -- reading -------------------------------------------------------------

    def list(self) -> list[ContainerInfo]:
        with self._engine("list"):
            rows = self.api.containers(
                all=True, filters={"label": f"{LABEL_INSTALL}={self.install}"}
            )
        now = time.time()
        found: builtins.list[ContainerInfo] = []
        for row in rows:
            try:
                found.append(self._listed(row, now))
            except (KeyError, ValueError) as exc:
                logger.warning("ignoring container with bad labels: %s", exc)
        return found

    def _listed(self, row: Mapping[str, Any], now: float) -> ContainerInfo:
        labels = row.get("Labels") or {}
        names = row.get("Names") or [""]
        state = _STATES.get(str(row.get("State", "")).lower(), ContainerState.EXITED)
        exit_code = None
        if state is ContainerState.EXITED:
            match = _EXITED_RE.match(str(row.get("Status", "")))
            exit_code = int(match.group(1)) if match else None
        deadline = _deadline(labels)
        timed_out = (
            state is ContainerState.EXITED
            and deadline is not None
            and exit_code in _SIGNAL_EXIT_CODES
            and now >= deadline
        )
        created = row.get("Created")
        return ContainerInfo(
            ref=str(row["Id"]),
            name=str(names[0]).lstrip("/"),
            install=str(labels[LABEL_INSTALL]),
            job_id=int(labels[LABEL_JOB]),
            attempt=int(labels[LABEL_ATTEMPT]),
            group_id=str(labels[LABEL_GROUP]),
            state=state,
            exit_code=exit_code,
            started_at=float(created) if isinstance(created, int | float) else None,
            deadline=deadline,
            timed_out=timed_out,
        )

    def inspect(self, ref: str) -> ContainerInfo:
        check_ref(ref)
        try:
            return self._info(self._inspect_raw(ref))
        except ContainerNotFound:
            return ContainerInfo(
                ref=ref,
                name="",
                install=self.install,
                job_id=0,
                attempt=0,
                group_id="",
                state=ContainerState.MISSING,
            )

    def _inspect_raw(self, ref: str) -> dict[str, Any]:
        with self._engine("inspect", ref):
            raw: dict[str, Any] = self.api.inspect_container(ref)
        labels = (raw.get("Config") or {}).get("Labels") or {}
        if labels.get(LABEL_INSTALL) != self.install:
            raise InvalidInput(f"container {ref} does not belong to this install")
        return raw

    def _info(self, raw: Mapping[str, Any]) -> ContainerInfo:
        labels = raw["Config"]["Labels"]
        status = raw.get("State") or {}
        state = _STATES.get(str(status.get("Status", "")).lower())
        if state is None:
            state = (
                ContainerState.RUNNING
                if status.get("Running")
                else ContainerState.EXITED
            )
        exit_code = int(status["ExitCode"]) if state is ContainerState.EXITED else None
        finished = _parse_time(status.get("FinishedAt"))
        deadline = _deadline(labels)
        timed_out = (
            state is ContainerState.EXITED
            and deadline is not None
            and finished is not None
            and finished >= deadline
            and exit_code != 0
        )
        return ContainerInfo(
            ref=str(raw["Id"]),
            name=str(raw.get("Name", "")).lstrip("/"),
            install=str(labels[LABEL_INSTALL]),
            job_id=int(labels[LABEL_JOB]),
            attempt=int(labels[LABEL_ATTEMPT]),
            group_id=str(labels[LABEL_GROUP]),
            state=state,
            exit_code=exit_code,
            started_at=_parse_time(status.get("StartedAt")),
            finished_at=finished if state is ContainerState.EXITED else None,
            deadline=deadline,
            timed_out=timed_out,
        )

    def read_output(self, ref: str, position: int = 0) -> builtins.list[str]:
        """See :meth:`Runtime.read_output`.  A call that goes on where the
        previous one for this container stopped asks the engine only for
        the end of the log (see :class:`_LogCursor`); any other call, and
        any doubt about where the previous call stopped, reads it whole."""
        check_ref(ref)
        if position < 0:
            raise InvalidInput("position must not be negative")
        # The state is read before the logs: if it says exited, the logs
        # fetched afterwards are final and a last unterminated line is whole.
        exited = self._info(self._inspect_raw(ref)).state is ContainerState.EXITED
        if not self._timestamped_logs():
            return self._read_whole(ref, position, final=exited)
        with self._cursors_lock:
            cursor = self._cursors.get(ref)
        messages: builtins.list[_LogMessage] | None = None
        start = 0  # index in messages of the first message after `skip` lines
        skip = position
        if cursor is not None and cursor.position == position:
            tail = self._log_messages(ref, _TAIL_WINDOW)
            if tail is not None and len(tail) < _TAIL_WINDOW:
                messages = tail  # the whole log
            elif tail is not None and (found := cursor.find(tail)) is not None:
                messages, start, skip = tail, found, 0
        if messages is None:
            messages = self._log_messages(ref, None)
        if messages is None:  # not in the expected format: read it plainly
            return self._read_whole(ref, position, final=exited)
        lines, ends = _assemble(messages, start, final=exited)
        chosen = lines[skip:]
        if lines and skip <= len(lines):
            # Every line of `lines` is now behind the reader (skipped or
            # returned); the place is kept only where a message ends exactly
            # at a line's end.
            last = ends[-1]
            if messages[last].payload.endswith(b"\n"):
                self._remember(
                    ref,
                    _LogCursor(
                        position + len(chosen),
                        messages[last].identity,
                        messages[last - 1].identity if last > 0 else None,
                    ),
                )
            else:
                self._forget(ref)
        return [
            line.removesuffix(b"\r").decode("utf-8", errors="replace")
            for line in chosen
        ]

    def _read_whole(
        self, ref: str, position: int, *, final: bool
    ) -> builtins.list[str]:
        """The plain read: the whole stdout log, split into lines."""
        with self._engine("read output", ref):
            data: bytes = self.api.logs(ref, stdout=True, stderr=False, stream=False)
        return split_lines(data, position, final=final)

    def _timestamped_logs(self) -> bool:
        """Whether the engine's log stream can be read incrementally: Docker
        Engine's can (one frame per log message, each with its timestamp);
        anything else (Podman's compatible API) is read whole every time."""
        if self._docker_engine is None:
            with self._engine("version"):
                components = self.api.version().get("Components") or []
            self._docker_engine = not any(
                "podman" in str(c.get("Name", "")).lower() for c in components
            )
        return self._docker_engine

    def _log_messages(
        self, ref: str, tail: int | None
    ) -> builtins.list[_LogMessage] | None:
        """The container's stdout log messages (the last ``tail``, or all),
        each as (timestamp, payload); None if the answer is not in that form.

        The request is made directly (the SDK's ``logs`` inspects the
        container first, and its streaming form would hold a connection):
        the engine answers one multiplexed frame per log message, an 8-byte
        header (stream number, size) and the message with its timestamp."""
        params = {
            "stdout": 1,
            "stderr": 0,
            "timestamps": 1,
            "follow": 0,
            "tail": "all" if tail is None else str(tail),
        }
        with self._engine("read output", ref):
            response = self.api._get(
                self.api._url("/containers/{0}/logs", ref), params=params
            )
            self.api._raise_for_status(response)
            data: bytes = response.content
        messages = []
        offset = 0
        while offset < len(data):
            header = data[offset : offset + 8]
            size = int.from_bytes(header[4:8], "big")
            frame = data[offset + 8 : offset + 8 + size]
            if len(header) < 8 or header[0] != 1 or len(frame) < size:
                return None
            stamp, space, payload = frame.partition(b" ")
            if not space or not _STAMP_RE.match(stamp):
                return None
            messages.append(_LogMessage(stamp, payload))
            offset += 8 + size
        return messages

    def _forget(self, ref: str) -> None:
        with self._cursors_lock:
            self._cursors.pop(ref, None)

    def _remember(self, ref: str, cursor: _LogCursor) -> None:
        with self._cursors_lock:
            self._cursors.pop(ref, None)
            self._cursors[ref] = cursor
            while len(self._cursors) > _CURSORS_KEPT:
                del self._cursors[next(iter(self._cursors))]

    # -- waiting and stopping ----------------------------------------------

    def wait(self, ref: str, timeout: float) -> ContainerInfo:
        check_ref(ref)
        give_up = time.monotonic() + max(timeout, 0.0)
        pause = _POLL_MIN
        while True:
            info = self.inspect(ref)
            if info.state in (ContainerState.EXITED, ContainerState.MISSING):
                return info
            now = time.time()
            if (
                info.state is ContainerState.RUNNING
                and info.deadline is not None
                and now >= info.deadline
            ):
                return self._stop_timed_out(info)
            left = give_up - time.monotonic()
            if left <= 0:
                return info
            until_deadline = (
                math.inf if info.deadline is None else max(info.deadline - now, 0.0)
            )
            time.sleep(min(pause, left, until_deadline + 0.01))
            pause = min(pause * 1.5, _POLL_MAX)

    def _stop_timed_out(self, info: ContainerInfo) -> ContainerInfo:
        logger.info(
            "deadline passed; stopping %s",
            info.name,
            extra={"action": "timeout", "container": info.ref, "job": info.job_id},
        )
        self._stop(info.ref, self.stop_grace)
        after = self.inspect(info.ref)
        if after.state is ContainerState.EXITED:
            return replace(after, timed_out=True)
        return after

    def stop(self, ref: str, grace: float = 10.0) -> None:
        check_ref(ref)
        try:
            self._inspect_raw(ref)
        except ContainerNotFound:
            return
        self._stop(ref, grace)

    def _stop(self, ref: str, grace: float) -> None:
        try:
            with self._engine("stop", ref):
                self.api.stop(ref, timeout=max(math.ceil(grace), 0))
        except ContainerNotFound:
            return

    def remove(self, ref: str) -> None:
        check_ref(ref)
        self._forget(ref)
        try:
            self._inspect_raw(ref)
            with self._engine("remove", ref):
                try:
                    self.api.remove_container(ref, force=True, v=True)
                except docker.errors.APIError as exc:
                    if not _removal_in_progress(exc):
                        raise
                    # Someone else (another moorage process, an operator) is
                    # removing it: done once the engine has finished.
                    self._await_removal(ref)
                    return
        except ContainerNotFound:
            return
        logger.info("removed %s", ref, extra={"action": "remove", "container": ref})

    def _await_removal(self, ref: str, timeout: float = 30.0) -> None:
        """Wait for a removal already under way in the engine to finish."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self._inspect_raw(ref)
            except ContainerNotFound:
                return
            time.sleep(0.1)
        raise RuntimeFailure(
            f"remove: the engine was already removing {ref} and has not "
            f"finished after {timeout:.0f} s"
        )

    def deliver(self, ref: str, name: str, document: Mapping[str, Any]) -> None:
        check_ref(ref)
        check_inbox_name(name)
        payload = encode_document(document)
        self._inspect_raw(ref)
        spooled = f".spool/{name}.{uuid.uuid4().hex}"
        inbox = Path(INBOX_PATH).name
        archive = _tar(
            [
                (spooled, "file", payload),
                (f"{inbox}/{name}", "link", spooled.encode()),
            ]
        )
        with self._engine("deliver", ref):
            self.api.put_archive(ref, _MOORAGE_DIR, archive)

    def has_input(self, ref: str, name: str) -> bool:
        check_ref(ref)
        check_inbox_name(name)
        self._inspect_raw(ref)
        try:
            with self._engine("read inbox", ref):
                stream, _ = self.api.get_archive(ref, f"{INBOX_PATH}/{name}")
                # A one-file archive; reading it to the end frees the
                # connection for the next call.
                for _chunk in stream:
                    pass
        except ContainerNotFound:
            # The engine answers 404 both for a missing path and for a
            # container removed since the inspect above; only the second
            # is an error.
            self._inspect_raw(ref)
            return False
        return True

    # -- mounts --------------------------------------------------------------

    def _check_mount(self, mount: Mount) -> docker.types.Mount:
        """Allow a bind mount only from under the allowlist, and never one
        that exposes the engine's socket or moorage's own data."""
        if not mount.source.startswith("/") or not mount.target.startswith("/"):
            raise InvalidInput("mount source and target must be absolute paths")
        target = Path(mount.target)
        if _overlaps(target, Path(_MOORAGE_DIR)):
            raise InvalidInput(f"mount target {mount.target!r} overlaps /moorage")
        source = _real(mount.source)
        for forbidden in self._forbidden():
            if _overlaps(source, forbidden):
                raise InvalidInput(
                    f"mount of {mount.source!r} refused: it exposes {forbidden}"
                )
        if _is_socket(source):
            raise InvalidInput(f"mount of {mount.source!r} refused: it is a socket")
        if not any(_within(source, allowed) for allowed in self._allowlist):
            raise InvalidInput(
                f"mount of {mount.source!r} refused: not under the mount allowlist"
            )
        return docker.types.Mount(
            mount.target, str(source), type="bind", read_only=mount.read_only
        )

    def _forbidden(self) -> builtins.list[Path]:
        paths = [_real(p) for p in _ENGINE_SOCKETS]
        if self.base_url and self.base_url.startswith(("unix://", "http+unix://")):
            paths.append(_real("/" + self.base_url.split("://", 1)[1].lstrip("/")))
        paths.append(_real(str(self.data_dir)))
        return paths


# -- helpers -----------------------------------------------------------------


class _OnePoolUnixAdapter(UnixHTTPAdapter):  # type: ignore[misc]
    """The SDK's unix-socket adapter keys its connection pools by the whole
    request URL, so every new container id (and every new query string)
    opens a fresh connection to the engine and leaves it idle afterwards.
    The socket is the same for every URL: one pool serves them all and
    keeps its connections alive between calls."""

    def get_connection(self, url: str, proxies: object = None) -> Any:
        return super().get_connection("http+docker://localhost", proxies)


def _share_one_pool(client: docker.APIClient) -> None:
    """Route all of ``client``'s unix-socket requests through one pool."""
    old = client.adapters.get("http+docker://")
    if type(old) is not UnixHTTPAdapter:
        return  # tcp, ssh, or an adapter someone else chose: left alone
    shared = _OnePoolUnixAdapter(
        "http+unix://" + old.socket_path,
        timeout=old.timeout,
        max_pool_size=old.max_pool_size,
    )
    client.mount("http+docker://", shared)
    client._custom_adapter = shared
    old.close()


class _LogMessage(NamedTuple):
    """One message of a container's log as the engine returns it with
    timestamps: a line with its ``\\n``, or a piece of a long line without."""

    stamp: bytes
    payload: bytes

    @property
    def identity(self) -> tuple[bytes, bytes]:
        return (self.stamp, self.payload)


@dataclass(frozen=True)
class _LogCursor:
    """Where read_output stopped in a container's log: the number of lines
    returned up to there, and the last two log messages those lines used
    (timestamp to the nanosecond and content).

    The next read fetches only the log's last messages and looks for that
    pair in them.  It trusts the place only if the last message appears
    exactly once there and is preceded by the other; otherwise (too much
    new output, a log that does not contain them, an ambiguity) the log is
    read whole and lines are counted from its start.  So the cursor can
    only save work; it never decides which lines are new on a guess.
    """

    position: int
    last: tuple[bytes, bytes]
    before: tuple[bytes, bytes] | None

    def find(self, messages: list[_LogMessage]) -> int | None:
        """The index just after this cursor's place in ``messages`` (a
        suffix of the log), or None if the place cannot be proven there."""
        if self.before is None:
            return None
        found = [i for i, m in enumerate(messages) if m.identity == self.last]
        if len(found) != 1 or found[0] == 0:
            return None
        (index,) = found
        if messages[index - 1].identity != self.before:
            return None
        return index + 1


def _assemble(
    messages: list[_LogMessage], start: int, *, final: bool
) -> tuple[list[bytes], list[int]]:
    """The complete lines of ``messages[start:]`` (without their ``\\n``)
    and, for each, the index of the message that ends it.  A last line
    with no line end counts only when ``final``."""
    lines: list[bytes] = []
    ends: list[int] = []
    pending = b""
    for index in range(start, len(messages)):
        *whole, pending = (pending + messages[index].payload).split(b"\n")
        lines.extend(whole)
        ends.extend([index] * len(whole))
    if final and pending:
        lines.append(pending)
        ends.append(len(messages) - 1)
    return lines, ends


def split_lines(data: bytes, position: int, *, final: bool) -> list[str]:
    """Lines of ``data`` from ``position`` on, without their ends; a last
    line with no ``\\n`` counts only when ``final``."""
    parts = data.split(b"\n")
    tail = parts.pop()  # b"" when data ends with a newline
    if final and tail:
        parts.append(tail)
    return [
        p.removesuffix(b"\r").decode("utf-8", errors="replace")
        for p in parts[position:]
    ]


def _no_such_container(exc: docker.errors.APIError) -> bool:
    """A container gone, reported as a server error: Podman 4.3 answers 500
    "no such container" for one removed while the request ran."""
    return exc.status_code == 500 and "no such container" in str(exc.explanation or "")


def _removal_in_progress(exc: docker.errors.APIError) -> bool:
    """The engine is already removing the container (for another caller)."""
    return exc.status_code == 409 and "already in progress" in str(
        exc.explanation or ""
    )


def _name_in_use(exc: docker.errors.APIError) -> bool:
    """A name conflict reported as a server error: Podman 4.3's compatible
    API answers 500 (not 409) when the container name is taken."""
    explanation = str(exc.explanation or "")
    return (
        exc.status_code == 500
        and "name" in explanation
        and "already in use" in explanation
    )


def _environment(env: Mapping[str, str]) -> dict[str, str]:
    for key in env:
        if not key or "=" in key or "\0" in key:
            raise InvalidInput(f"not an environment variable name: {key!r}")
    return {
        **env,
        "MOORAGE_INPUT": INPUT_PATH,
        "MOORAGE_INBOX": INBOX_PATH,
    }


def _tar(entries: Sequence[tuple[str, str, bytes]]) -> bytes:
    """An uncompressed tar of (path, "dir" | "file" | "link", data) entries;
    for a link, data is the path it points to."""
    buffer = io.BytesIO()
    now = time.time()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, kind, data in entries:
            if not path:
                continue
            info = tarfile.TarInfo(path)
            info.mtime = int(now)
            content = None
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                # The inbox is writable by any user so an agent running as
                # a non-root user can remove what it has handled.
                info.mode = 0o777 if path.endswith("in") else 0o755
            elif kind == "link":
                info.type = tarfile.LNKTYPE
                info.linkname = data.decode()
            else:
                info.mode = 0o644
                info.size = len(data)
                content = io.BytesIO(data)
            tar.addfile(info, content)
    return buffer.getvalue()


def _deadline(labels: Mapping[str, str]) -> float | None:
    raw = labels.get(LABEL_DEADLINE, "")
    return float(raw) if raw else None


def _parse_time(value: object) -> float | None:
    """Epoch seconds from the engine's RFC 3339 time; None for its zero time."""
    if not isinstance(value, str) or not value or value.startswith("0001-"):
        return None
    text = value.replace("Z", "+00:00")
    # Python reads at most microseconds; the engine writes nanoseconds.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def _real(path: str) -> Path:
    return Path(path).resolve(strict=False)


def _within(path: Path, parent: Path) -> bool:
    return path == parent or path.is_relative_to(parent)


def _overlaps(a: Path, b: Path) -> bool:
    return _within(a, b) or _within(b, a)


def _is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(path.stat().st_mode) or path.suffix == ".sock"
    except OSError:
        return path.suffix == ".sock"
