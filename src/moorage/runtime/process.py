"""The process runtime: each attempt is a detached local process.

For machines with no container engine.  It gives the same contract as the
Docker runtime (labels, deterministic name, input document, inbox, JSON lines
on stdout, exit code, deadline) but **no isolation**: the agent runs as the
user moorage runs as, sees the host's files and network, and ignores
``image``, ``network``, ``user``, ``mounts`` and ``read_only_rootfs``.
Only ``limits.memory_bytes`` is applied (as RLIMIT_AS, address space rather
than resident memory); CPU and pids limits are not enforced.

Each attempt lives in ``<data_dir>/process/<name>/`` (the ref is the name):

=============== ===========================================================
``record.json`` labels, name, deadline — written before anything runs
``launch.json`` argv, environment, deadline, grace, memory limit
``input.json``  the input document (``MOORAGE_INPUT``)
``in/``         the inbox (``MOORAGE_INBOX``); documents arrive atomically
``shim.json``   the supervisor's pid, start time and boot id (+ the agent's)
``stdout``      the agent's standard output; ``stderr`` beside it
``exit.json``   exit code, finish time, timed_out — written atomically last
=============== ===========================================================

The folder is prepared under a temporary name and renamed into place, so it
either exists whole or not at all.  The agent is run by a small supervisor
(:mod:`moorage.runtime.shim`) that outlives moorage, enforces the deadline and
records the exit code, which a detached child would otherwise lose.

State rule: ``exit.json`` present → EXITED with its code.  No ``shim.json``
→ CREATED (nothing ran yet).  Otherwise RUNNING while the supervisor — or,
if only the supervisor was killed, the agent — is alive (pid, start time and
boot id all match).  If both are gone without ``exit.json`` (killed, host
rebooted), the exit code is lost: EXITED with :data:`LOST_EXIT_CODE`.
"""

from __future__ import annotations

import builtins
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from moorage.errors import ContainerNotFound, InvalidInput, RuntimeFailure
from moorage.runtime.base import (
    LABEL_ATTEMPT,
    LABEL_DEADLINE,
    LABEL_GROUP,
    LABEL_INSTALL,
    LABEL_JOB,
    AttemptSpec,
    ContainerInfo,
    ContainerState,
    Runtime,
    check_inbox_name,
    check_install,
    container_name,
    encode_document,
    labels_for,
)
from moorage.runtime.shim import boot_id, process_start_time, write_json

logger = logging.getLogger(__name__)

#: Exit code reported when the supervisor vanished without recording one.
LOST_EXIT_CODE = 255
#: Environment variables passed from moorage to the agent, besides spec.env.
PASSED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "PYTHONPATH")

_REF_RE = re.compile(r"^moorage-[0-9a-f]{12}-[1-9][0-9]*-[1-9][0-9]*$")
_LAUNCH_TIMEOUT = 10.0
_POLL_MIN = 0.02
_POLL_MAX = 0.25


def check_ref(ref: str) -> str:
    """Refuse anything but an attempt name (it becomes a folder name)."""
    if not isinstance(ref, str) or not _REF_RE.match(ref):
        raise InvalidInput(f"not a process attempt name: {ref!r}")
    return ref


class ProcessRuntime(Runtime):
    """Runs attempts as detached local processes under ``data_dir/process``.

    ``stop_grace`` is the time between SIGTERM and SIGKILL when an attempt is
    stopped at its deadline.
    """

    name = "process"

    def __init__(self, install: str, data_dir: Path, *, stop_grace: float = 10.0):
        self.install = check_install(install)
        # Absolute: the agent runs in its own folder, and the paths handed to
        # it (input, inbox) must not depend on moorage's working directory.
        self.root = Path(data_dir).absolute() / "process"
        self.stop_grace = stop_grace

    def ping(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    # -- start ---------------------------------------------------------------

    def start(self, spec: AttemptSpec) -> ContainerInfo:
        if spec.install != self.install:
            raise InvalidInput("attempt belongs to another install")
        if not spec.command:
            raise InvalidInput("the process runtime needs a command (argv list)")
        name = container_name(spec.install, spec.job_id, spec.attempt)
        folder = self.root / name
        if (folder / "record.json").exists():
            info = self.inspect(name)
            if info.state is not ContainerState.CREATED:
                logger.info("attempt already started; not starting it again")
                return info
        else:
            self._prepare(spec, folder)
        began = time.monotonic()
        self._launch(folder)
        logger.info(
            "started %s in %.3f s",
            name,
            time.monotonic() - began,
            extra={"action": "start", "container": name, "job": spec.job_id},
        )
        return self.inspect(name)

    def _prepare(self, spec: AttemptSpec, folder: Path) -> None:
        """Write the attempt's folder under a temporary name, then rename it
        into place: it exists whole or not at all."""
        deadline = None if spec.timeout is None else time.time() + spec.timeout
        env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
        for key in spec.env:
            if not key or "=" in key or "\0" in key:
                raise InvalidInput(f"not an environment variable name: {key!r}")
        env.update(spec.env)
        env["MOORAGE_INPUT"] = str(folder / "input.json")
        env["MOORAGE_INBOX"] = str(folder / "in")
        payload = encode_document(spec.input)

        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f".new-{folder.name}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        (staging / "in").mkdir()
        (staging / ".spool").mkdir()
        (staging / "input.json").write_bytes(payload)
        launch = {
            "command": [str(arg) for arg in spec.command or ()],
            "env": env,
            "deadline": deadline,
            "grace": self.stop_grace,
            "memory_bytes": spec.limits.memory_bytes,
        }
        write_json(staging / "launch.json", launch)
        record = {"name": folder.name, "labels": labels_for(spec, deadline)}
        write_json(staging / "record.json", record)
        try:
            staging.rename(folder)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise RuntimeFailure(f"cannot create attempt folder {folder}") from exc

    def _launch(self, folder: Path) -> None:
        with open(folder / "shim.log", "ab") as log:
            first = subprocess.run(
                [sys.executable, "-m", "moorage.runtime.shim", str(folder)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
                check=False,
                timeout=_LAUNCH_TIMEOUT,
            )
        if first.returncode != 0:
            raise RuntimeFailure(f"process supervisor failed: {self._shim_log(folder)}")
        give_up = time.monotonic() + _LAUNCH_TIMEOUT
        while not (folder / "shim.json").exists():
            if time.monotonic() > give_up:
                raise RuntimeFailure(
                    f"process supervisor did not start: {self._shim_log(folder)}"
                )
            time.sleep(0.005)

    @staticmethod
    def _shim_log(folder: Path) -> str:
        try:
            return (folder / "shim.log").read_text()[-500:].strip() or "no output"
        except OSError:
            return "no log"

    # -- reading -------------------------------------------------------------

    def list(self) -> list[ContainerInfo]:
        found: builtins.list[ContainerInfo] = []
        if not self.root.is_dir():
            return found
        for folder in sorted(self.root.iterdir()):
            if not _REF_RE.match(folder.name):
                continue
            try:
                info = self._info(folder)
            except (OSError, ValueError, KeyError) as exc:
                logger.warning("ignoring unreadable attempt %s: %s", folder.name, exc)
                continue
            if info is not None:
                found.append(info)
        return found

    def inspect(self, ref: str) -> ContainerInfo:
        check_ref(ref)
        try:
            info = self._info(self.root / ref)
        except FileNotFoundError:
            info = None
        if info is None:
            return ContainerInfo(
                ref=ref,
                name=ref,
                install=self.install,
                job_id=0,
                attempt=0,
                group_id="",
                state=ContainerState.MISSING,
            )
        return info

    def _info(self, folder: Path) -> ContainerInfo | None:
        """The attempt's info; None if the folder belongs to another install."""
        record = json.loads((folder / "record.json").read_text())
        labels = record["labels"]
        if labels[LABEL_INSTALL] != self.install:
            return None
        deadline = float(labels[LABEL_DEADLINE]) if labels[LABEL_DEADLINE] else None
        state, shim, result = _state(folder)
        started_at = shim.get("started_at") if shim else None
        return ContainerInfo(
            ref=folder.name,
            name=folder.name,
            install=labels[LABEL_INSTALL],
            job_id=int(labels[LABEL_JOB]),
            attempt=int(labels[LABEL_ATTEMPT]),
            group_id=labels[LABEL_GROUP],
            state=state,
            exit_code=result.get("exit_code") if result is not None else None,
            started_at=started_at,
            finished_at=result.get("finished_at") if result is not None else None,
            deadline=deadline,
            timed_out=bool(result.get("timed_out")) if result is not None else False,
        )

    def _owned(self, ref: str) -> Path:
        """The attempt's folder; ContainerNotFound if gone, InvalidInput if it
        belongs to another install."""
        check_ref(ref)
        folder = self.root / ref
        try:
            info = self._info(folder)
        except FileNotFoundError as exc:
            raise ContainerNotFound(f"no process attempt {ref}") from exc
        if info is None:
            raise InvalidInput(f"attempt {ref} does not belong to this install")
        return folder

    def read_output(self, ref: str, position: int = 0) -> builtins.list[str]:
        if position < 0:
            raise InvalidInput("position must not be negative")
        folder = self._owned(ref)
        exited = _state(folder)[0] is ContainerState.EXITED
        try:
            data = (folder / "stdout").read_bytes()
        except FileNotFoundError:
            data = b""
        parts = data.split(b"\n")
        tail = parts.pop()
        if exited and tail:
            parts.append(tail)
        return [
            p.removesuffix(b"\r").decode("utf-8", errors="replace")
            for p in parts[position:]
        ]

    # -- waiting and stopping ----------------------------------------------

    def wait(self, ref: str, timeout: float) -> ContainerInfo:
        check_ref(ref)
        give_up = time.monotonic() + max(timeout, 0.0)
        pause = _POLL_MIN
        while True:
            info = self.inspect(ref)
            if info.state in (ContainerState.EXITED, ContainerState.MISSING):
                return info
            # The supervisor enforces the deadline; this is the safety net for
            # an attempt whose supervisor was killed.
            late = info.deadline is not None and time.time() >= (
                info.deadline + self.stop_grace + 1.0
            )
            if info.state is ContainerState.RUNNING and late:
                self.stop(ref, self.stop_grace)
                return self.inspect(ref)
            left = give_up - time.monotonic()
            if left <= 0:
                return info
            time.sleep(min(pause, left))
            pause = min(pause * 1.5, _POLL_MAX)

    def stop(self, ref: str, grace: float = 10.0) -> None:
        try:
            folder = self._owned(ref)
        except ContainerNotFound:
            return
        state, shim, _ = _state(folder)
        if state is not ContainerState.RUNNING or shim is None:
            return
        give_up = time.monotonic() + max(grace, 0.0) + 5.0
        if _alive(shim, "pid", "starttime"):
            write_json(folder / "stop.json", {"grace": grace})
            _kill(shim["pid"], signal.SIGTERM)
            while time.monotonic() < give_up and _state(folder)[0] is not (
                ContainerState.EXITED
            ):
                time.sleep(_POLL_MIN)
        else:
            _stop_orphan_agent(shim, grace)
        logger.info("stopped %s", ref, extra={"action": "stop", "container": ref})

    def remove(self, ref: str) -> None:
        try:
            folder = self._owned(ref)
        except ContainerNotFound:
            return
        self.stop(ref, grace=0.0)
        shutil.rmtree(folder, ignore_errors=False)
        logger.info("removed %s", ref, extra={"action": "remove", "container": ref})

    def deliver(self, ref: str, name: str, document: Mapping[str, Any]) -> None:
        check_inbox_name(name)
        payload = encode_document(document)
        folder = self._owned(ref)
        spooled = folder / ".spool" / f"{name}.{uuid.uuid4().hex}"
        spooled.write_bytes(payload)
        os.replace(spooled, folder / "in" / name)

    def has_input(self, ref: str, name: str) -> bool:
        check_inbox_name(name)
        folder = self._owned(ref)
        # Only os.replace puts names into in/, so a name present is complete.
        return (folder / "in" / name).is_file()


# -- helpers -----------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        document: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    return document


def _state(
    folder: Path,
) -> tuple[ContainerState, dict[str, Any] | None, dict[str, Any] | None]:
    """(state, shim.json, exit.json) by the rule in the module docstring."""
    result = _read_json(folder / "exit.json")
    shim = _read_json(folder / "shim.json")
    if result is not None:
        return ContainerState.EXITED, shim, result
    if shim is None:
        if not (folder / "record.json").exists():
            raise FileNotFoundError(folder)
        return ContainerState.CREATED, None, None
    if _alive(shim, "pid", "starttime") or _alive(shim, "agent_pid", "agent_starttime"):
        # exit.json may have landed between the first read and the check.
        result = _read_json(folder / "exit.json")
        if result is not None:
            return ContainerState.EXITED, shim, result
        return ContainerState.RUNNING, shim, None
    result = _read_json(folder / "exit.json")
    if result is None:
        result = {"exit_code": LOST_EXIT_CODE, "timed_out": False}
    return ContainerState.EXITED, shim, result


def _alive(shim: Mapping[str, Any], pid_key: str, start_key: str) -> bool:
    """Whether the process recorded under ``pid_key`` is still the same one."""
    pid = shim.get(pid_key)
    if not isinstance(pid, int) or shim.get("boot_id") != boot_id():
        return False
    started = process_start_time(pid)
    return started is not None and started == shim.get(start_key)


def _kill(pid: int, signum: int, group: bool = False) -> None:
    try:
        if group:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)
    except ProcessLookupError:
        pass  # already gone: the goal of the signal is met


def _stop_orphan_agent(shim: Mapping[str, Any], grace: float) -> None:
    """Stop an agent whose supervisor is gone: TERM its group, KILL later."""
    if not _alive(shim, "agent_pid", "agent_starttime"):
        return
    _kill(shim["agent_pid"], signal.SIGTERM, group=True)
    give_up = time.monotonic() + grace
    while time.monotonic() < give_up and _alive(shim, "agent_pid", "agent_starttime"):
        time.sleep(_POLL_MIN)
    _kill(shim["agent_pid"], signal.SIGKILL, group=True)
