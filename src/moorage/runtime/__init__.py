"""Runtimes: what runs one attempt of a job as a container.

:class:`DockerRuntime` (Docker Engine, or Podman through its Docker-compatible
API) and :class:`ProcessRuntime` (a detached local process) both implement
:class:`Runtime`.  They are imported on first use, so importing this package
(as the process runtime's supervisor does) does not load the docker SDK.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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
    Limits,
    Mount,
    Runtime,
    check_inbox_name,
    check_install,
    container_name,
    encode_document,
    labels_for,
)

if TYPE_CHECKING:
    from moorage.runtime.docker import DockerRuntime
    from moorage.runtime.process import ProcessRuntime

__all__ = [
    "INBOX_PATH",
    "INPUT_PATH",
    "LABEL_ATTEMPT",
    "LABEL_DEADLINE",
    "LABEL_GROUP",
    "LABEL_INSTALL",
    "LABEL_JOB",
    "AttemptSpec",
    "ContainerInfo",
    "ContainerState",
    "DockerRuntime",
    "Limits",
    "Mount",
    "ProcessRuntime",
    "Runtime",
    "check_inbox_name",
    "check_install",
    "container_name",
    "encode_document",
    "labels_for",
]


def __getattr__(name: str) -> Any:
    if name == "DockerRuntime":
        from moorage.runtime.docker import DockerRuntime

        return DockerRuntime
    if name == "ProcessRuntime":
        from moorage.runtime.process import ProcessRuntime

        return ProcessRuntime
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
