"""The runtime contract: what the dispatcher needs from anything that runs
containers.

A runtime runs one *attempt* of a job as one container (or, for the process
runtime, one detached process that behaves like one).  Everything a later
moorage process needs to find and judge that container again lives with the
container itself: its labels, its deterministic name, its input document,
its output and its exit code.  Nothing about it lives only in the memory of
the process that started it.
"""

from __future__ import annotations

import builtins
import enum
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from moorage.errors import InvalidInput

#: Label keys every container of an install carries.
LABEL_INSTALL = "moorage.install"
LABEL_JOB = "moorage.job"
LABEL_ATTEMPT = "moorage.attempt"
LABEL_GROUP = "moorage.group"
#: Absolute epoch second after which the attempt is stopped ("" = none).
LABEL_DEADLINE = "moorage.deadline"

#: Where the input document is readable inside the container.
INPUT_PATH = "/moorage/input.json"
#: Folder inside the container that later input (follow-ups, close) lands in.
INBOX_PATH = "/moorage/in"

_INSTALL_RE = re.compile(r"^[0-9a-f]{32}$")
#: A name in the inbox: one plain file name, never hidden, never a path.
_INBOX_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


class ContainerState(enum.Enum):
    CREATED = "created"  # exists, never started (a crash between create and start)
    RUNNING = "running"  # started and not yet exited
    EXITED = "exited"  # finished; exit_code is known
    MISSING = "missing"  # no such container (removed, or never created)


@dataclass(frozen=True)
class Limits:
    """Resource limits for one container; ``None`` means the engine default."""

    memory_bytes: int | None = 512 * 1024 * 1024
    cpus: float | None = 1.0
    pids: int | None = 256


@dataclass(frozen=True)
class Mount:
    """A host path bound into the container; checked against an allowlist."""

    source: str
    target: str
    read_only: bool = True


@dataclass(frozen=True)
class AttemptSpec:
    """Everything needed to start one attempt of one job."""

    install: str  # install id, 32 lowercase hex characters
    job_id: int
    attempt: int
    group_id: str  # any printable text; never used in a name or a shell
    input: Mapping[str, Any]  # the JSON document placed at INPUT_PATH
    image: str | None = None  # container runtimes
    command: Sequence[str] | None = None  # argv; overrides the image's command
    env: Mapping[str, str] = field(default_factory=dict)
    timeout: float | None = None  # seconds from start; None = no limit
    limits: Limits = field(default_factory=Limits)
    network: str = "none"  # engine network mode
    user: str | None = None
    mounts: Sequence[Mount] = ()
    read_only_rootfs: bool = False


@dataclass(frozen=True)
class ContainerInfo:
    """One container of this install as the runtime sees it right now."""

    ref: str  # runtime's own id (docker: the full container id)
    name: str
    install: str
    job_id: int
    attempt: int
    group_id: str
    state: ContainerState
    exit_code: int | None = None  # set when state is EXITED
    started_at: float | None = None  # epoch seconds
    finished_at: float | None = None
    deadline: float | None = None  # epoch seconds; past it the attempt is stopped
    timed_out: bool = False  # stopped by moorage because its deadline passed


def container_name(install: str, job_id: int, attempt: int) -> str:
    """The deterministic name of an attempt's container.

    Built only from the install prefix and two integers, so it is valid and
    safe whatever the group id contains, and a crash between "create" and
    "record the id" can still be recovered by name.
    """
    check_install(install)
    if job_id < 1 or attempt < 1:
        raise ValueError("job id and attempt must be positive")
    return f"moorage-{install[:12]}-{job_id}-{attempt}"


def check_install(install: str) -> str:
    if not _INSTALL_RE.match(install):
        raise ValueError(f"not an install id: {install!r}")
    return install


def labels_for(spec: AttemptSpec, deadline: float | None) -> dict[str, str]:
    return {
        LABEL_INSTALL: spec.install,
        LABEL_JOB: str(spec.job_id),
        LABEL_ATTEMPT: str(spec.attempt),
        LABEL_GROUP: spec.group_id,
        LABEL_DEADLINE: "" if deadline is None else repr(deadline),
    }


def encode_document(document: Mapping[str, Any]) -> bytes:
    """The bytes moorage writes for an input or inbox document.

    Compact, on one line, ASCII only (every other character ``\\u``-escaped),
    so that even a line-oriented agent written in ``sh`` can read it safely.
    Raises InvalidInput when the document is not plain JSON.
    """
    try:
        text = json.dumps(
            document, ensure_ascii=True, separators=(",", ":"), allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"document is not plain JSON: {exc}") from exc
    return text.encode("ascii")


def check_inbox_name(name: str) -> str:
    """Refuse inbox names that are hidden, contain a path or are too long."""
    if not _INBOX_NAME_RE.match(name):
        raise InvalidInput(f"not a valid inbox file name: {name!r}")
    return name


class Runtime(ABC):
    """What runs attempts.  One instance serves one install.

    Every method may raise :class:`~moorage.errors.EngineUnavailable` when the
    engine cannot be reached at all, and
    :class:`~moorage.errors.RuntimeFailure` for other engine errors; no engine
    or driver exception escapes untranslated.
    """

    #: Short name used in logs and configuration: "docker", "process".
    name: str

    @abstractmethod
    def ping(self) -> None:
        """Return if the engine answers; raise EngineUnavailable otherwise."""

    @abstractmethod
    def start(self, spec: AttemptSpec) -> ContainerInfo:
        """Create the attempt's container, place its input, start it.

        The container is named :func:`container_name` and labelled with
        :func:`labels_for`; it is never removed automatically.  If a container
        of that name already exists (an earlier process crashed right after
        creating it) it is reused when not yet started, and returned as it is
        otherwise: ``start`` never runs one attempt twice.
        """

    @abstractmethod
    def list(self) -> list[ContainerInfo]:
        """Every container of this install, running or not, in one call to the
        engine.  Containers of other installs are never returned."""

    @abstractmethod
    def inspect(self, ref: str) -> ContainerInfo:
        """The container's current state; ``MISSING`` state if it is gone."""

    @abstractmethod
    def read_output(self, ref: str, position: int = 0) -> builtins.list[str]:
        """Complete stdout lines of the container from line ``position`` on
        (0-based), without their line ends.

        A final line without a line end is returned only once the container
        has exited.  Calling again with ``position + len(result)`` returns
        only later lines, in this process or a new one.
        Raises ContainerNotFound if the container is gone.
        """

    @abstractmethod
    def wait(self, ref: str, timeout: float) -> ContainerInfo:
        """Wait up to ``timeout`` seconds for the container to exit.

        If its deadline passes meanwhile, stop it and return it with
        ``timed_out`` set.  Returns the state at return time, which is still
        ``RUNNING`` if it neither exited nor reached its deadline.
        """

    @abstractmethod
    def stop(self, ref: str, grace: float = 10.0) -> None:
        """Ask the container to stop; kill it after ``grace`` seconds.

        Stopping a container that has already exited or is missing is not an
        error.
        """

    @abstractmethod
    def remove(self, ref: str) -> None:
        """Remove a stopped container and everything kept for it.

        Removing a missing container is not an error.  The dispatcher calls
        this only after the attempt's outcome is committed.
        """

    def deliver(self, ref: str, name: str, document: Mapping[str, Any]) -> None:
        """Place a JSON document in the running container's inbox
        (:data:`INBOX_PATH`) under ``name``, atomically: the agent never sees
        a partial file.  Raises ContainerNotFound if it is gone."""
        raise NotImplementedError(f"{self.name} runtime cannot deliver input")

    def has_input(self, ref: str, name: str) -> bool:
        """Whether a file called ``name`` is in the container's inbox.

        The question a restarted moorage asks before :meth:`deliver`: a
        document is delivered once, so one found here is not sent again.
        Only presence is reported (a delivered name appears whole, so
        present means complete); the container may be running or exited.
        ``name`` is checked with :func:`check_inbox_name` (InvalidInput)
        before the engine is asked.  Raises ContainerNotFound if the
        container is gone.
        """
        raise NotImplementedError(f"{self.name} runtime cannot read its inbox")

    def close(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Release client resources (connections); containers are untouched."""
