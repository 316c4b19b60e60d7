"""Fixtures shared by the whole suite.  Each section belongs to one layer;
keep sections small and put layer-only fixtures in that layer's folder."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# --- runtime: Docker Engine, test image, install ids, cleanup ---------------

ROOT = Path(__file__).resolve().parent.parent
TEST_IMAGE = "moorage-test-agent:latest"
#: Install ids this session made; swept of containers when the session ends.
SESSION_INSTALLS: set[str] = set()


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def remove_install_containers(client: Any, install: str) -> int:
    """Force-remove every container labelled with ``install``."""
    containers = client.containers.list(
        all=True, sparse=True, filters={"label": f"moorage.install={install}"}
    )
    for container in containers:
        container.remove(force=True, v=True)
    return len(containers)


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """A docker SDK client; tests that need the engine are skipped without
    one locally, and fail in CI (CI=true): they must never silently skip."""
    import docker
    import requests

    try:
        client = docker.from_env()
        client.ping()
    except (docker.errors.DockerException, requests.RequestException) as exc:
        reason = f"Docker Engine not reachable: {exc}"
        if in_ci():
            pytest.fail(f"{reason} (tests that need the engine must run in CI)")
        pytest.skip(reason)
    yield client
    for install in sorted(SESSION_INSTALLS):
        remove_install_containers(client, install)
    client.close()


@pytest.fixture(autouse=True)
def _docker_marker(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("docker") is not None:
        request.getfixturevalue("docker_client")


@pytest.fixture(scope="session")
def test_image(docker_client: Any) -> str:
    """The offline-built agent image, (re)built when missing or outdated."""
    subprocess.run([str(ROOT / "scripts" / "build-test-image")], check=True)
    return TEST_IMAGE


@pytest.fixture
def session_installs() -> set[str]:
    """Add every install id a test makes here: swept at session end."""
    return SESSION_INSTALLS


@pytest.fixture
def install_id() -> str:
    """A fresh install id, remembered for the end-of-session sweep."""
    install = uuid.uuid4().hex
    SESSION_INSTALLS.add(install)
    return install
