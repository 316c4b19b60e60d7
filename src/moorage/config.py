"""Configuration of ``moorage serve``: defaults < TOML file < ``MOORAGE_*``
environment variables < command-line flags.

The file is ``--config PATH``, else ``<data dir>/moorage.toml`` if it exists.
Keys are the field names of :class:`ServeConfig`; in the environment they are
upper-cased with a ``MOORAGE_`` prefix (``MOORAGE_MAX_CONCURRENT=8``).
Durations may be written as numbers of seconds or as ``90s``, ``15m``,
``24h``, ``7d``.  Lists in the environment are comma-separated; the
command is split like a shell would, but never run through one.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from moorage import validation
from moorage.errors import ConfigError, InvalidInput

ENV_PREFIX = "MOORAGE_"
CONFIG_FILENAME = "moorage.toml"

_DURATIONS = {
    "timeout",
    "poll_interval",
    "reconcile_interval",
    "prune_interval",
    "completed_ttl",
    "failed_ttl",
    "cancelled_ttl",
    "stop_grace",
    "idle_timeout",
    "close_grace",
}


@dataclass(frozen=True)
class ServeConfig:
    runtime: str = "auto"  # auto | docker | process
    image: str | None = None
    command: list[str] | None = None
    docker_host: str | None = None  # e.g. unix:///run/podman/podman.sock
    max_concurrent: int = 4
    timeout: float = 600.0
    poll_interval: float = 0.25
    reconcile_interval: float = 30.0
    prune_interval: float = 3600.0
    completed_ttl: float = 86400.0
    failed_ttl: float = 7 * 86400.0
    cancelled_ttl: float = 7 * 86400.0
    stop_grace: float = 10.0
    network: str = "none"
    memory_mb: int = 512
    cpus: float = 1.0
    pids: int = 256
    user: str | None = None
    read_only_rootfs: bool = False
    mount_allowlist: list[str] = field(default_factory=list)
    mounts: list[str] = field(default_factory=list)  # "SOURCE:TARGET[:rw]"
    env: dict[str, str] = field(default_factory=dict)
    replies_file: str | None = None  # default: <data dir>/replies.jsonl
    webhook_url: str | None = None
    webhook_token: str | None = None
    http: str | None = None  # HOST:PORT to serve the HTTP API on
    http_token: str | None = None
    synchronous: str = "FULL"
    batch_messages: int = 10  # waiting messages one attempt takes at its start
    batch_kib: int = 1024  # and their total size
    follow_ups: bool = True  # offer new messages to a running attempt
    idle_timeout: float = 60.0  # ask an idle agent to close after this
    close_grace: float = 15.0  # stop it this long after asking

    def __post_init__(self) -> None:
        if self.runtime not in ("auto", "docker", "process"):
            raise ConfigError(
                f"runtime must be auto, docker or process, not {self.runtime!r}"
            )
        if self.max_concurrent < 1:
            raise ConfigError("max_concurrent must be at least 1")
        if self.batch_messages < 1 or self.batch_kib < 1:
            raise ConfigError("batch_messages and batch_kib must be at least 1")
        if self.synchronous not in ("FULL", "NORMAL", "EXTRA"):
            raise ConfigError("synchronous must be FULL, NORMAL or EXTRA")
        for name in _DURATIONS:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be more than 0 seconds")


def _coerce(name: str, value: Any, kind: Any) -> Any:
    text_kind = str(kind)
    if value is None:
        return None
    try:
        if name in _DURATIONS:
            if isinstance(value, str):
                return validation.duration(value)
            return float(value)
        if name == "synchronous":
            mode = str(value).upper()
            if mode not in ("FULL", "NORMAL", "EXTRA"):
                raise ValueError(value)
            return mode
        if name == "command":
            if isinstance(value, str):
                return shlex.split(value)
            return [str(v) for v in value]
        if name == "env":
            if isinstance(value, str):
                pairs = (item.split("=", 1) for item in value.split(",") if item)
                return {k: v for k, v in pairs}
            return {str(k): str(v) for k, v in dict(value).items()}
        if text_kind.startswith("list"):
            if isinstance(value, str):
                return [item for item in value.split(",") if item]
            return [str(v) for v in value]
        if text_kind.startswith("bool"):
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if text_kind.startswith("int"):
            return int(value)
        if text_kind.startswith("float"):
            return float(value)
        return str(value)
    except (ValueError, TypeError, InvalidInput) as exc:
        raise ConfigError(f"bad value for {name}: {value!r}") from exc


def load(
    data_dir: Path,
    *,
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ServeConfig:
    """Merge the sources; unknown keys in the file are an error, not ignored."""
    known = {f.name: f.type for f in fields(ServeConfig)}
    values: dict[str, Any] = {}

    path = config_file or data_dir / CONFIG_FILENAME
    if config_file is not None or path.exists():
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
        unknown = sorted(set(document) - set(known))
        if unknown:
            raise ConfigError(f"unknown keys in {path}: {', '.join(unknown)}")
        values.update(document)

    env = os.environ if environ is None else environ
    for name in known:
        key = ENV_PREFIX + name.upper()
        if key in env:
            values[name] = env[key]

    for name, value in (overrides or {}).items():
        if name not in known:
            raise ConfigError(f"unknown setting {name!r}")
        if value is not None:
            values[name] = value

    coerced = {
        name: _coerce(name, value, known[name]) for name, value in values.items()
    }
    return dataclasses.replace(ServeConfig(), **coerced)
