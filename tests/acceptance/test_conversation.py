"""Conversations through the real ``moorage serve``, on the Docker Engine and
on the process runtime: batches, follow-ups, idle close, tasks first."""

from __future__ import annotations

import pytest

from .conftest import Moorage, eventually

pytestmark = pytest.mark.slow

#: Short conversations, so a test sees a whole one.
QUICK = {"MOORAGE_IDLE_TIMEOUT": "1.5", "MOORAGE_CLOSE_GRACE": "3"}


def texts(moorage: Moorage) -> list[str]:
    return [r["text"] for r in moorage.delivered() if r["kind"] == "reply"]


def test_five_messages_that_piled_up_run_in_one_container_in_order(
    moorage: Moorage,
) -> None:
    ids = [moorage.enqueue("fam", f"reply=m{n}") for n in range(5)]

    moorage.start(max_concurrent=1)

    eventually(lambda: all(moorage.status(i) == "completed" for i in ids), timeout=60)
    rows = [moorage.job(i) for i in ids]
    assert {r["container_id"] for r in rows} == {rows[0]["container_id"]}
    assert [r["batch_of"] for r in rows] == [None] + [ids[0]] * 4
    assert [r["attempt"] for r in rows] == [1] * 5
    eventually(lambda: texts(moorage) == ["m0", "m1", "m2", "m3", "m4"])
    eventually(lambda: moorage.containers() == [])


def test_a_follow_up_reaches_the_running_container_and_is_answered(
    moorage: Moorage,
) -> None:
    first = moorage.enqueue("fam", "converse=60;reply=first", chat_jid="fam@chat")
    # Idle long enough that a loaded machine still offers the follow-up
    # before the conversation is closed.
    moorage.start(env={"MOORAGE_IDLE_TIMEOUT": "8", "MOORAGE_CLOSE_GRACE": "3"})
    eventually(lambda: texts(moorage) == ["first"], timeout=60)
    container = moorage.job(first)["container_id"]

    second = moorage.enqueue("fam", "reply=second", chat_jid="fam@chat")

    eventually(lambda: texts(moorage) == ["first", "second"], timeout=60)
    row = moorage.job(second)
    assert (row["status"], row["batch_of"], row["container_id"]) == (
        "active",
        first,
        container,
    )
    eventually(lambda: moorage.status(first) == "completed", timeout=60)
    assert moorage.status(second) == "completed"
    assert any("asked to close (idle)" in e for e in moorage.events(first))
    assert any(f"received by job {first}" in e for e in moorage.events(second))
    assert [r["chat_jid"] for r in moorage.delivered()] == ["fam@chat"] * 2
    eventually(lambda: moorage.containers() == [])


def test_a_follow_up_that_arrives_as_the_container_exits_runs_in_the_next_one(
    moorage: Moorage,
) -> None:
    # This agent never reads its inbox: it answers and exits.
    first = moorage.enqueue("fam", "sleep=4;reply=first")
    moorage.start(env=QUICK)
    eventually(lambda: moorage.job(first)["container_id"])
    container = moorage.job(first)["container_id"]

    late = moorage.enqueue("fam", "reply=late")

    eventually(lambda: moorage.status(late) == "completed", timeout=60)
    row = moorage.job(late)
    assert row["container_id"] != container
    assert row["batch_of"] is None
    events = moorage.events(late)
    assert any(f"offered to job {first}" in e for e in events)
    assert any("back in line" in e for e in events)
    assert texts(moorage) == ["first", "late"]


def test_an_idle_agent_is_closed_and_one_that_ignores_close_is_stopped(
    moorage: Moorage,
) -> None:
    polite = moorage.enqueue("a", "converse=60;reply=a")
    stubborn = moorage.enqueue("b", "converse=60;close=ignore;reply=b")

    moorage.start(env=QUICK)

    eventually(
        lambda: moorage.status(polite) == moorage.status(stubborn) == "completed",
        timeout=60,
    )
    assert any("closed (exit 0)" in e for e in moorage.events(polite))
    last = moorage.events(stubborn)[-1]
    assert "closed (exit 137)" in last or "closed (exit 143)" in last, last
    eventually(lambda: moorage.containers() == [])


def test_a_due_task_makes_an_idle_message_container_close_early(
    moorage: Moorage,
) -> None:
    chat = moorage.enqueue("fam", "converse=120;reply=chat")
    moorage.start(env={"MOORAGE_IDLE_TIMEOUT": "300", "MOORAGE_CLOSE_GRACE": "5"})
    eventually(lambda: texts(moorage) == ["chat"])
    eventually(lambda: moorage.job(chat)["idle_since"] is not None)

    task = moorage.enqueue("fam", "reply=task", kind="task")

    eventually(lambda: moorage.status(task) == "completed", timeout=60)
    assert any("asked to close (task)" in e for e in moorage.events(chat))
    assert moorage.status(chat) == "completed"
    assert moorage.job(task)["container_id"] != moorage.job(chat)["container_id"]
    assert texts(moorage) == ["chat", "task"]
