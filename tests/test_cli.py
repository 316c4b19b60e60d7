"""The ``moorage`` command line, driven with click's CliRunner (and once as
the installed console script)."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from moorage import cli
from moorage.cli import format_table, main
from moorage.models import Status
from moorage.queue import Queue

MOORAGE = Path(sys.executable).parent / "moorage"
TIME_RE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


def run(data: Path, *args: str, input: str | bytes | None = None) -> Result:
    return CliRunner().invoke(main, ["--data-dir", str(data), *args], input=input)


@pytest.fixture
def queue(data: Path) -> Iterator[Queue]:
    """The same data directory through the Python API."""
    q = Queue.open(data)
    yield q
    q.close()


def enqueue(data: Path, *args: str) -> int:
    result = run(data, "enqueue", *args)
    assert result.exit_code == 0, result.stderr
    return int(result.stdout)


def reason(result: Result) -> str:
    """The one line that says why a command was rejected."""
    lines = [
        line
        for line in result.stderr.splitlines()
        if line.startswith(("moorage: error:", "Error:"))
    ]
    assert len(lines) == 1, result.stderr
    return lines[0]


def assert_aligned(table: str, right: frozenset[str] | set[str] = frozenset()) -> None:
    """Every cell starts (left-aligned) or ends (right-aligned) where its
    column's header does."""
    header, *rows = table.splitlines()
    assert rows
    matches = list(re.finditer(r"\S+", header))
    for match in matches:
        for row in rows:
            if match is matches[-1] and len(row) <= match.start():
                continue  # an empty last cell
            if match.group() in right:
                end = match.end()
                assert row[end - 1] != " " and row[end : end + 1] in ("", " "), row
            else:
                start = match.start()
                assert row[start] != " " and row[start - 1 : start] in ("", " "), row


# -- enqueue ----------------------------------------------------------------------


def test_enqueue_prints_only_the_new_id_and_stores_the_job(
    data: Path, queue: Queue
) -> None:
    result = run(data, "enqueue", "family", "what's for dinner?")

    assert result.exit_code == 0
    assert result.stdout == "1\n"
    job = queue.get(1)
    assert (job.group_id, job.message_text, job.status) == (
        "family",
        "what's for dinner?",
        Status.WAITING,
    )


def test_enqueue_json_holds_every_option(data: Path) -> None:
    result = run(
        data,
        "enqueue",
        "ops",
        "nightly report",
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
        "--json",
    )

    assert result.exit_code == 0, result.stderr
    job = json.loads(result.stdout)
    assert job["id"] == 1
    assert job["group_id"] == "ops"
    assert job["kind"] == "task"
    assert job["priority"] == "high"
    assert job["chat_jid"] == "12345@g.us"
    assert job["run_after"] == 1900000000.0
    assert job["timeout"] == 900.0
    assert job["max_retries"] == 2
    assert job["status"] == "waiting"


def test_enqueue_run_after_takes_iso_8601(data: Path, queue: Queue) -> None:
    enqueue(data, "ops", "t", "--kind", "task", "--run-after", "2030-01-02T03:04:05Z")
    local = "2030-01-02T03:04:05"
    enqueue(data, "ops", "t", "--kind", "task", "--run-after", local)

    assert queue.get(1).run_after == 1893553445.0
    assert queue.get(2).run_after == datetime.fromisoformat(local).timestamp()


def test_enqueue_repeat_makes_a_recurring_task(data: Path, queue: Queue) -> None:
    job_id = enqueue(data, "ops", "digest", "--kind", "task", "--repeat", "1h")
    job = queue.get(job_id)
    assert (job.repeat, job.series_id) == ("every 3600", job_id)
    shown = run(data, "show", str(job_id))
    assert "repeat      every 3600" in shown.stdout


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (("--repeat", "1h"), "only tasks can repeat"),
        (("--kind", "task", "--repeat", "7 7 7"), "cron"),
    ],
)
def test_enqueue_bad_repeat_is_refused_and_stores_nothing(
    data: Path, args: tuple[str, ...], why: str
) -> None:
    result = run(data, "enqueue", "ops", "x", *args)
    assert result.exit_code == 2
    assert why in reason(result)
    assert not (data / "moorage.db").exists()


def test_enqueue_with_an_idempotency_key_makes_one_job(
    data: Path, queue: Queue
) -> None:
    first = enqueue(data, "family", "hi", "--idempotency-key", "msg-77")
    again = enqueue(data, "family", "hi", "--idempotency-key", "msg-77")
    other = enqueue(data, "family", "hi", "--idempotency-key", "msg-78")

    assert first == again != other
    assert len(queue.jobs()) == 2
    bad = run(data, "enqueue", "family", "hi", "--idempotency-key", "has space")
    assert bad.exit_code != 0 and "idempotency key" in reason(bad)
    assert len(queue.jobs()) == 2


def test_enqueue_dash_reads_the_text_from_stdin(data: Path, queue: Queue) -> None:
    job_id = enqueue(data, "family", "-")  # no input: empty text is allowed
    result = run(data, "enqueue", "family", "-", input="line one\nline two ü\n")

    assert result.exit_code == 0, result.stderr
    assert queue.get(job_id).message_text == ""
    assert queue.get(int(result.stdout)).message_text == "line one\nline two ü\n"


TOO_BIG = "x" * (256 * 1024 + 1)


@pytest.mark.parametrize(
    ("args", "stdin", "expected"),
    [
        (["", "hi"], None, "group id must not be empty"),
        (["  ", "hi"], None, "group id must not be empty"),
        (["fam\x1bily", "hi"], None, "no control characters"),
        (["family", "hi", "--priority", "urgent"], None, "'urgent' is not one of"),
        (["family", "hi", "--kind", "chore"], None, "'chore' is not one of"),
        (["family", TOO_BIG], None, "the limit is 262144"),
        (["family", "-"], TOO_BIG, "over the limit of 262144 bytes"),
        (["family", "-"], b"\xff\xfe", "not UTF-8"),
        (["family", "nul\x00"], None, "NUL"),
        (["family", "hi", "--chat-jid", "a b"], None, "chat_jid may hold only"),
        (["family", "hi", "--timeout", "0"], None, "more than 0 seconds"),
        (["family", "hi", "--timeout", "soon"], None, "not a duration"),
        (["family", "hi", "--max-retries", "-1"], None, "--max-retries"),
        (["family", "hi", "--run-after", "1900000000"], None, "only tasks"),
        (["family", "hi", "--kind", "task", "--run-after", "tomorrow"], None, "ISO"),
    ],
)
def test_rejected_enqueue_gives_a_reason_and_stores_nothing(
    data: Path, args: list[str], stdin: str | bytes | None, expected: str
) -> None:
    result = run(data, "enqueue", *args, input=stdin)

    assert result.exit_code == 2
    assert expected in reason(result)
    assert result.stdout == ""
    assert not data.exists()  # not even an empty database was created


def test_rejected_enqueue_leaves_an_existing_queue_unchanged(
    data: Path, queue: Queue
) -> None:
    enqueue(data, "family", "first")

    result = run(data, "enqueue", "family", TOO_BIG)

    assert result.exit_code == 2
    assert [job.id for job in queue.jobs()] == [1]
    assert queue.status().counts["waiting"] == 1


# -- status and jobs --------------------------------------------------------------


def test_status_counts_by_status_and_shows_each_group(data: Path, queue: Queue) -> None:
    for group in ("a", "a", "a", "family-chat"):
        enqueue(data, group, "hi")
    [claimed] = queue.claim(1)

    human = run(data, "status")
    as_json = run(data, "status", "--json")

    assert human.exit_code == 0 and as_json.exit_code == 0
    counts, groups = human.stdout.strip().split("\n\n")
    assert_aligned(counts, right={"JOBS"})
    assert_aligned(groups, right={"ACTIVE", "WAITING"})
    assert re.search(rf"^a\s+{claimed.id}\s+2$", groups, re.M)
    assert re.search(r"^family-chat\s+-\s+1$", groups, re.M)
    snapshot = json.loads(as_json.stdout)
    assert snapshot["counts"] == {
        "waiting": 3,
        "active": 1,
        "completed": 0,
        "failed": 0,
        "cancelled": 0,
    }
    assert snapshot["groups"] == [
        {"group_id": "a", "active_job": claimed.id, "waiting": 2},
        {"group_id": "family-chat", "active_job": None, "waiting": 1},
    ]


def test_jobs_lists_newest_first_in_an_aligned_table(data: Path) -> None:
    enqueue(data, "a", "short")
    enqueue(data, "family-chat", "a much longer text\nwith a second line " * 3)
    enqueue(data, "b", "日本語のテキスト", "--priority", "low")

    result = run(data, "jobs")

    assert result.exit_code == 0
    assert_aligned(result.stdout, right={"ID", "ATTEMPT"})
    ids = [line.split()[0] for line in result.stdout.splitlines()[1:]]
    assert ids == ["3", "2", "1"]
    assert TIME_RE.search(result.stdout)
    assert "\nwith" not in result.stdout  # texts are one-line previews
    assert "…" in result.stdout


def test_jobs_filters_and_pages(data: Path, queue: Queue) -> None:
    for group in ("a", "b", "a", "a"):
        enqueue(data, group, "hi")
    queue.cancel(3)

    def ids(*args: str) -> list[int]:
        result = run(data, "jobs", "--json", *args)
        assert result.exit_code == 0, result.stderr
        return [job["id"] for job in json.loads(result.stdout)]

    assert ids() == [4, 3, 2, 1]
    assert ids("--group", "a") == [4, 3, 1]
    assert ids("--status", "cancelled") == [3]
    assert ids("--limit", "2") == [4, 3]
    assert ids("--limit", "2", "--before", "3") == [2, 1]
    assert "--before 3" in run(data, "jobs", "--limit", "2").stdout
    assert run(data, "jobs", "--status", "done").exit_code == 2
    assert run(data, "jobs", "--group", "b", "--status", "failed").stdout == "no jobs\n"


def test_jobs_json_uses_the_job_dict(data: Path, queue: Queue) -> None:
    enqueue(data, "a", "hi")

    [listed] = json.loads(run(data, "jobs", "--json").stdout)

    assert listed == queue.get(1).as_dict()


# -- show, retry, cancel ----------------------------------------------------------


def test_show_prints_the_job_and_its_history(data: Path, queue: Queue) -> None:
    enqueue(data, "family", "hello\n\x1b[31mred\x1b[0m")
    [job] = queue.claim(1)
    queue.fail(job.id, job.attempt, "exit 3", retryable=False)

    human = run(data, "show", "1")
    as_json = run(data, "show", "1", "--json")

    assert human.exit_code == 0
    assert re.search(r"^status\s+failed$", human.stdout, re.M)
    assert re.search(rf"^enqueued\s+{TIME_RE.pattern}$", human.stdout, re.M)
    assert "\x1b" not in human.stdout  # control characters are shown escaped
    assert "\\x1b[31mred" in human.stdout
    table = human.stdout.split("events:\n")[1]
    assert_aligned(table, right={"ATTEMPT"})
    assert [line.split()[3] for line in table.splitlines()[1:]] == [
        "waiting",
        "active",
        "failed",
    ]
    shown = json.loads(as_json.stdout)
    assert shown["job"] == queue.get(1).as_dict()
    assert shown["events"] == [event.as_dict() for event in queue.events(1)]


def test_retry_revives_a_failed_job(data: Path, queue: Queue) -> None:
    enqueue(data, "family", "hi")
    [job] = queue.claim(1)
    queue.fail(job.id, job.attempt, "boom", retryable=False)

    result = run(data, "retry", "1")

    assert result.exit_code == 0
    assert result.stdout == "job 1 is waiting again\n"
    assert queue.get(1).status is Status.WAITING


def test_cancel_withdraws_a_waiting_job(data: Path, queue: Queue) -> None:
    enqueue(data, "family", "hi")

    result = run(data, "cancel", "1", "--json")

    assert result.exit_code == 0
    assert json.loads(result.stdout)["status"] == "cancelled"
    assert queue.get(1).status is Status.CANCELLED


def test_cancel_stops_a_running_job(data: Path, queue: Queue) -> None:
    enqueue(data, "family", "hi")
    queue.claim(1)

    result = run(data, "cancel", "1")

    assert result.exit_code == 0
    assert result.stdout == (
        "job 1 cancelled; its attempt has ended and serve stops its container\n"
    )
    assert queue.get(1).status is Status.CANCELLED
    assert queue.events(1)[-1].detail == (
        "cancelled while running; its container is stopped"
    )


@pytest.mark.parametrize(
    ("command", "claim", "code", "expected"),
    [
        ("cancel", True, 4, "job 1 is completed; only waiting and active jobs"),
        ("retry", False, 4, "job 1 is waiting; only failed or cancelled jobs"),
        ("show", False, 3, "no job with id 99"),
        ("retry", False, 3, "no job with id 99"),
        ("cancel", False, 3, "no job with id 99"),
    ],
)
def test_refused_transitions_change_nothing(
    data: Path, queue: Queue, command: str, claim: bool, code: int, expected: str
) -> None:
    enqueue(data, "family", "hi")
    if claim:
        [claimed] = queue.claim(1)
        queue.finish(claimed.id, claimed.attempt)
    before = (queue.get(1), queue.events(1))
    job = "99" if "99" in expected else "1"

    result = run(data, command, job)

    assert result.exit_code == code
    assert reason(result).startswith(f"moorage: error: {expected}")
    assert result.stdout == ""
    assert (queue.get(1), queue.events(1)) == before


@pytest.mark.parametrize("job", ["abc", "0", "-1", "99999999999999999999"])
def test_malformed_job_ids_are_usage_errors(data: Path, job: str) -> None:
    result = run(data, "show", "--", job)

    assert result.exit_code == 2
    assert "Invalid value for 'JOB'" in reason(result)


# -- prune ------------------------------------------------------------------------


def test_prune_deletes_finished_jobs_past_their_age(data: Path, queue: Queue) -> None:
    for _ in range(3):
        enqueue(data, "family", "hi")
    for _ in range(2):
        [job] = queue.claim(1)
        queue.finish(job.id, job.attempt)
    queue.cancel(3)

    kept = run(data, "prune", "--json")
    pruned = run(data, "prune", "--completed-older-than", "0", "--json")

    assert json.loads(kept.stdout) == {
        "completed": 0,
        "failed": 0,
        "cancelled": 0,
        "total": 0,
    }
    assert json.loads(pruned.stdout)["completed"] == 2
    assert [j.id for j in queue.jobs()] == [3]
    human = run(data, "prune", "--cancelled-older-than", "0s")
    assert human.stdout == "pruned 1 jobs (0 completed, 0 failed, 1 cancelled)\n"


@pytest.mark.parametrize("age", ["-1h", "7x", "", "9" * 400])
def test_prune_rejects_bad_ages_and_deletes_nothing(
    data: Path, queue: Queue, age: str
) -> None:
    enqueue(data, "family", "hi")
    [job] = queue.claim(1)
    queue.finish(job.id, job.attempt)

    result = run(
        data, "prune", "--completed-older-than", "0", "--failed-older-than", age
    )

    assert result.exit_code == 2
    assert "--failed-older-than" in reason(result)
    assert queue.get(1).status is Status.COMPLETED


# -- global options and errors ----------------------------------------------------


@pytest.mark.parametrize(
    "args", [["status"], ["jobs"], ["show", "1"], ["cancel", "1"], ["prune"]]
)
def test_commands_other_than_enqueue_never_create_a_data_dir(
    data: Path, args: list[str]
) -> None:
    result = run(data, *args)

    assert result.exit_code == 5
    assert "no moorage database in" in reason(result)
    assert not data.exists()


def test_data_dir_comes_from_the_environment(tmp_path: Path) -> None:
    data = tmp_path / "from-env"

    result = CliRunner().invoke(
        main, ["enqueue", "family", "hi"], env={"MOORAGE_DATA_DIR": str(data)}
    )

    assert result.exit_code == 0, result.stderr
    queue = Queue.open(data)
    try:
        assert queue.get(1).message_text == "hi"
    finally:
        queue.close()


def test_data_dir_is_owner_only(tmp_path: Path) -> None:
    data = tmp_path / "nested" / "data"

    enqueue(data, "family", "hi")

    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE((data / "moorage.db").stat().st_mode) == 0o600


def test_synchronous_mode_is_checked(data: Path) -> None:
    assert run(data, "--synchronous", "normal", "enqueue", "a", "hi").exit_code == 0
    result = CliRunner().invoke(
        main,
        ["--data-dir", str(data), "status"],
        env={"MOORAGE_SYNCHRONOUS": "OFF"},
    )
    assert result.exit_code == 2
    assert "'OFF' is not one of" in reason(result)


def test_an_error_with_a_cause_prints_the_cause_on_one_more_line(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")

    result = run(blocker / "data", "enqueue", "family", "hi")

    assert result.exit_code == 5
    lines = result.stderr.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("moorage: error: cannot create data directory")
    assert lines[1].startswith("moorage: caused by: NotADirectoryError:")


def test_tracebacks_only_with_debug(data: Path) -> None:
    enqueue(data, "family", "hi")

    quiet = run(data, "show", "99")
    loud = CliRunner().invoke(main, ["--data-dir", str(data), "--debug", "show", "99"])

    assert "Traceback" not in quiet.stderr
    assert "Traceback" in loud.stderr and "JobNotFound" in loud.stderr
    assert loud.exit_code == 3
    assert loud.stderr.splitlines()[-1] == "moorage: error: no job with id 99"


def test_ctrl_c_exits_130_quietly(
    data: Path, queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(self: Queue) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(Queue, "status", interrupted)

    result = run(data, "status")

    assert result.exit_code == 130
    assert "Traceback" not in result.stderr and "Aborted" not in result.stderr


def test_main_returns_the_exit_code_when_not_standalone(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ok = main(["--data-dir", str(data), "enqueue", "a", "hi"], standalone_mode=False)
    missing = main(["--data-dir", str(data), "show", "9"], standalone_mode=False)
    usage = main(["--data-dir", str(data), "nosuch"], standalone_mode=False)
    helped = main(["--help"], standalone_mode=False)

    assert (ok, missing, usage, helped) == (0, 3, 2, 0)
    assert "moorage: error: no job with id 9" in capsys.readouterr().err


def test_json_logs_are_one_object_per_line_with_structured_keys(data: Path) -> None:
    result = run(
        data, "--log-level", "info", "--log-format", "json", "enqueue", "a", "x"
    )

    records = [json.loads(line) for line in result.stderr.splitlines()]
    migrated = [r for r in records if r.get("action") == "migrate"]
    assert migrated
    assert set(migrated[0]) >= {"time", "level", "logger", "message", "action"}
    assert migrated[0]["logger"] == "moorage.store.sqlite"
    assert result.stdout == "1\n"


def test_room_for_more_commands() -> None:
    assert {"enqueue", "status", "jobs", "show", "retry", "cancel", "prune"} <= set(
        main.commands
    )
    assert callable(cli.open_queue)


def test_format_table_aligns_wide_characters() -> None:
    table = format_table(("A", "B"), [("日本", "x"), ("abcde", "y")])

    assert table.splitlines() == ["A      B", "日本   x", "abcde  y"]


def test_the_installed_console_script(data: Path) -> None:
    env = {**os.environ, "MOORAGE_DATA_DIR": str(data)}

    added = subprocess.run(
        [str(MOORAGE), "enqueue", "family", "-"],
        input="from a pipe",
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    missing = subprocess.run(
        [str(MOORAGE), "show", "99"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )

    assert (added.returncode, added.stdout, added.stderr) == (0, "1\n", "")
    assert missing.returncode == 3
    assert missing.stderr == "moorage: error: no job with id 99\n"
