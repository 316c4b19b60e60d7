"""The exceptions moorage raises.

Every error that moorage means a caller to handle derives from
:class:`MoorageError`.  Driver and engine errors are translated into these at
the adapter boundary (store, runtime) with ``raise ... from exc`` so the cause
is kept.  Each class carries the process exit status the CLI uses for it.
"""

from __future__ import annotations


class MoorageError(Exception):
    """Root of every error moorage raises on purpose."""

    exit_code = 1


class InvalidInput(MoorageError, ValueError):
    """A value given to moorage was rejected; nothing was stored."""

    exit_code = 2


class JobNotFound(MoorageError, LookupError):
    """No job has the given id."""

    exit_code = 3

    def __init__(self, job_id: int) -> None:
        super().__init__(f"no job with id {job_id}")
        self.job_id = job_id


class InvalidTransition(MoorageError):
    """The job is not in a state that allows the requested change."""

    exit_code = 4


class StoreError(MoorageError):
    """The database could not be opened, migrated or written."""

    exit_code = 5


class AlreadyRunning(MoorageError):
    """Another moorage process holds the data directory's lock."""

    exit_code = 6


class ConfigError(MoorageError):
    """The configuration (file, environment or flags) is not usable."""

    exit_code = 2


class RuntimeFailure(MoorageError):
    """The container runtime refused or failed an operation."""

    exit_code = 7


class EngineUnavailable(RuntimeFailure):
    """The container engine cannot be reached at all.

    Distinct from a failed job: while the engine is unreachable no attempt is
    spent, jobs stay waiting and moorage retries the engine with backoff.
    """

    exit_code = 8


class ContainerNotFound(RuntimeFailure, LookupError):
    """The runtime has no container with the given reference."""


class RemoteError(MoorageError):
    """A moorage HTTP server refused or failed a request (401, 4xx, 5xx).

    ``status`` is the HTTP status and ``code`` the server's stable error code
    (``unauthorized``, ``invalid_input``, ...) when it sent one.
    """

    exit_code = 9

    def __init__(
        self, message: str, *, status: int | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class ServerUnavailable(RemoteError):
    """No moorage HTTP server answered at the URL: refused, timed out, or the
    connection broke before an answer came."""

    exit_code = 10
