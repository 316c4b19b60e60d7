"""The status page in a real headless Chromium against a live server: it
shows what the API holds and follows changes made through the Python API."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from moorage.queue import Queue

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
TOKEN = "page-token-0123456789abcdef"


@pytest.fixture
def chromium(tmp_path: Path) -> Callable[..., str]:
    """Run headless Chromium on a URL; returns the DOM after the page's
    script ran (2.5 s of virtual time: the first fetch and one refresh)."""
    binary = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"chromium not found at {CHROMIUM} and CI=true")
        pytest.skip("chromium is not installed")

    def run(url: str, *extra: str) -> str:
        profile = tmp_path / "profile"
        argv = [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=2500",
            *extra,
            url,
        ]
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    return run


def test_page_shows_a_job_and_follows_its_completion(
    serve: Callable[..., str], queue: Queue, chromium: Callable[..., str]
) -> None:
    base = serve(token=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    made = httpx.post(
        f"{base}/v1/jobs", json={"group_id": "page-group", "text": "hi"}, headers=auth
    )
    assert made.status_code == 201
    page = f"{base}/#token={TOKEN}"

    before = chromium(page, "--dump-dom")
    assert "<td>page-group</td>" in before
    assert 'data-status="waiting">waiting: 1<' in before
    assert "cannot load status" not in before

    (job,) = queue.claim(1)
    queue.finish(job.id, job.attempt)
    after = chromium(page, "--dump-dom")
    assert "<td>page-group</td>" not in after
    assert "no group has work" in after
    assert 'data-status="completed">completed: 1<' in after

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "status-page.png"
    shot.unlink(missing_ok=True)
    chromium(page, f"--screenshot={shot}", "--window-size=1000,700")
    assert shot.stat().st_size > 1000


def test_page_without_the_token_says_it_cannot_load(
    serve: Callable[..., str], chromium: Callable[..., str]
) -> None:
    dom = chromium(f"{serve(token=TOKEN)}/", "--dump-dom")
    assert "cannot load status: HTTP 401" in dom
