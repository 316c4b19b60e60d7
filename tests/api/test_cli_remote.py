"""The ``moorage`` commands given ``--url``, against a live server on
loopback: the same output as the local commands, and a one-line reason with
its own exit status for every way a server can fail them."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from moorage import cli
from moorage.cli import main
from moorage.errors import StoreError
from moorage.models import Kind, Priority, Status
from moorage.queue import Queue

TOKEN = "t0ken-for-the-cli-tests-0123456"
#: The environment of every run: nothing inherited decides where a command goes.
CLEAN_ENV = {"MOORAGE_URL": None, "MOORAGE_HTTP_TOKEN": None}


def run(
    *args: str,
    env: dict[str, str | None] | None = None,
    input: str | None = None,
) -> Result:
    return CliRunner().invoke(
        main, list(args), env={**CLEAN_ENV, **(env or {})}, input=input
    )


def local(queue: Queue, *args: str) -> Result:
    return run("--data-dir", str(queue.db.path.parent), *args)


def remote(url: str, *args: str, **kwargs: object) -> Result:
    return run(*args, "--url", url, **kwargs)  # type: ignore[arg-type]


def reason(result: Result) -> str:
    """The one line that says why a command failed."""
    lines = [
        line
        for line in result.stderr.splitlines()
        if line.startswith(("moorage: error:", "Error:"))
    ]
    assert len(lines) == 1, result.stderr
    return lines[0]


def free_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def busy(queue: Queue) -> Queue:
    """A queue with an active job and waiting jobs in two groups."""
    queue.enqueue("family", "@bot what's for dinner?", chat_jid="1@g.us")
    queue.enqueue("family", "and dessert?")
    queue.enqueue("work", "standup notes", priority="high")
    (claimed,) = queue.claim(1)
    queue.start(claimed.id, claimed.attempt, f"c-{claimed.id}")
    return queue


# -- the same output as the local commands ----------------------------------------


def test_status_prints_the_local_tables_and_the_servers_state(
    serve: Callable[..., str], busy: Queue
) -> None:
    url = serve()
    here, there = local(busy, "status"), remote(url, "status")

    assert there.exit_code == 0, there.stderr
    assert there.stdout.startswith(here.stdout)
    extra = there.stdout[len(here.stdout) :]
    assert "runtime" in extra and "undelivered replies  0" in extra


def test_status_json_has_the_local_keys_and_more(
    serve: Callable[..., str], busy: Queue
) -> None:
    here = json.loads(local(busy, "status", "--json").stdout)
    there = json.loads(remote(serve(), "status", "--json").stdout)

    assert there["counts"] == here["counts"]
    assert [
        {k: g[k] for k in ("group_id", "active_job", "waiting")}
        for g in there["groups"]
    ] == here["groups"]
    assert {"runtime", "replies", "recent_failures"} <= set(there)


def test_jobs_and_show_print_what_the_local_commands_print(
    serve: Callable[..., str], busy: Queue
) -> None:
    url = serve()
    for args in (
        ("jobs",),
        ("jobs", "--group", "family", "--limit", "1"),
        ("jobs", "--status", "waiting"),
        ("show", "1"),
    ):
        there = remote(url, *args)
        assert there.exit_code == 0, there.stderr
        assert there.stdout == local(busy, *args).stdout, args


def test_jobs_pages_through_the_server_when_the_limit_is_larger_than_a_page(
    serve: Callable[..., str], queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(7):
        queue.enqueue(f"g{n}", "hi")
    monkeypatch.setattr(cli, "REMOTE_PAGE", 2)

    there = remote(serve(), "jobs", "--limit", "5", "--json")

    assert [job["id"] for job in json.loads(there.stdout)] == [7, 6, 5, 4, 3]


def test_show_json_adds_the_replies(serve: Callable[..., str], busy: Queue) -> None:
    document = json.loads(remote(serve(), "show", "2", "--json").stdout)

    assert document["job"]["id"] == 2
    assert [e["to_status"] for e in document["events"]] == ["waiting"]
    assert document["replies"] == []


def test_enqueue_sends_every_option_and_touches_no_data_dir(
    serve: Callable[..., str], queue: Queue, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "not-created"
    result = run(
        "--data-dir",
        str(elsewhere),
        "enqueue",
        "ops",
        "-",
        "--kind",
        "task",
        "--priority",
        "HIGH",
        "--chat-jid",
        "12345@g.us",
        "--run-after",
        "1900000000",
        "--timeout",
        "15m",
        "--max-retries",
        "2",
        "--url",
        serve(),
        input="nightly report\n",
    )

    assert result.exit_code == 0, result.stderr
    job = queue.get(int(result.stdout))
    assert (job.group_id, job.message_text, job.kind, job.priority) == (
        "ops",
        "nightly report\n",
        Kind.TASK,
        Priority.HIGH,
    )
    assert (job.chat_jid, job.run_after, job.timeout) == ("12345@g.us", 1.9e9, 900.0)
    assert job.max_retries == 2
    assert not elsewhere.exists()


def test_enqueue_json_prints_the_servers_job(
    serve: Callable[..., str], queue: Queue
) -> None:
    result = remote(serve(), "enqueue", "family", "hi", "--json")

    printed = json.loads(result.stdout)
    stored = queue.get(1).as_dict()
    assert printed["id"] == 1
    assert printed == {key: stored[key] for key in printed}


def test_enqueue_with_an_idempotency_key_makes_one_job(
    serve: Callable[..., str], queue: Queue
) -> None:
    url = serve()
    first = remote(url, "enqueue", "family", "hi", "--idempotency-key", "msg-77")
    again = remote(url, "enqueue", "family", "hi", "--idempotency-key", "msg-77")

    assert first.exit_code == again.exit_code == 0
    assert first.stdout == again.stdout == "1\n"
    assert sum(queue.status().counts.values()) == 1


def test_retry_and_cancel_change_the_servers_queue(
    serve: Callable[..., str], queue: Queue
) -> None:
    url = serve()
    job = queue.enqueue("family", "hi")

    assert remote(url, "cancel", str(job.id)).stdout == f"job {job.id} cancelled\n"
    assert queue.get(job.id).status == Status.CANCELLED
    assert (
        remote(url, "retry", str(job.id)).stdout == f"job {job.id} is waiting again\n"
    )
    assert queue.get(job.id).status == Status.WAITING

    (running,) = queue.claim(1)
    assert remote(url, "cancel", str(running.id)).stdout == (
        f"job {running.id} cancelled; its attempt has ended and serve stops its "
        "container\n"
    )
    assert queue.get(running.id).status == Status.CANCELLED


# -- refusals keep the local exit statuses ------------------------------------------


def test_unknown_job_exits_3_and_a_refused_change_exits_4(
    serve: Callable[..., str], queue: Queue
) -> None:
    url = serve()
    job = queue.enqueue("family", "hi")

    missing = remote(url, "show", "999")
    assert missing.exit_code == 3
    assert reason(missing) == "moorage: error: no job with id 999"

    refused = remote(url, "retry", str(job.id))
    assert refused.exit_code == 4
    assert "waiting" in reason(refused)


def test_a_url_that_is_not_http_is_a_usage_error() -> None:
    bad_url = run("status", "--url", "ftp://example.com")
    assert bad_url.exit_code == 2
    assert "http://" in reason(bad_url)


# -- a server that cannot or will not answer -----------------------------------------


def test_missing_token_exits_9_and_says_how_to_give_one(
    serve: Callable[..., str],
) -> None:
    result = remote(serve(token=TOKEN), "status")

    assert result.exit_code == 9
    assert "--token or set MOORAGE_HTTP_TOKEN" in reason(result)
    assert result.stdout == ""


def test_wrong_token_exits_9_and_says_it_was_refused(
    serve: Callable[..., str],
) -> None:
    result = remote(serve(token=TOKEN), "jobs", "--token", "wrong-token-wrong-token")

    assert result.exit_code == 9
    assert "refused the token" in reason(result)


def test_url_and_token_come_from_the_environment(
    serve: Callable[..., str], queue: Queue
) -> None:
    url = serve(token=TOKEN)
    env = {"MOORAGE_URL": url, "MOORAGE_HTTP_TOKEN": TOKEN}

    result = run("enqueue", "family", "hi", env=env)
    assert result.exit_code == 0, result.stderr
    assert queue.get(int(result.stdout)).message_text == "hi"
    assert run("--data-dir", "/nonexistent", "status", env=env).exit_code == 0


def test_connection_refused_exits_10_with_one_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = run("--data-dir", str(tmp_path / "d"), "status", "--url", url)

    assert result.exit_code == 10
    assert reason(result) == f"moorage: error: cannot reach a moorage server at {url}"
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "d").exists()


def test_server_error_exits_9_with_the_servers_message(
    serve: Callable[..., str], queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> None:
        raise StoreError("disk full")

    monkeypatch.setattr(queue, "status", broken)
    result = remote(serve(), "status")

    assert result.exit_code == 9
    assert reason(result).endswith("failed GET /v1/status: 503 disk full")


def test_a_url_with_a_wrong_path_is_a_remote_error(
    serve: Callable[..., str],
) -> None:
    result = remote(serve() + "/static", "status")

    assert result.exit_code == 9
    assert "/static" in reason(result)
