"""``moorage serve`` killed with ``kill -9`` and started again: nothing lost,
nothing that finished run twice, no container left behind."""

from __future__ import annotations

import time

import pytest

from moorage.runtime.base import AttemptSpec, ContainerState

from .conftest import Moorage, eventually

pytestmark = pytest.mark.slow


def test_queued_messages_survive_a_kill_and_then_all_complete(moorage: Moorage) -> None:
    first = moorage.enqueue("fam", "sleep=2;reply=m0")
    moorage.start(max_concurrent=1)
    eventually(lambda: moorage.status(first) == "active")
    # Queued behind a running attempt whose agent never reads its inbox:
    # offered to it as follow-ups, but never taken.
    queued = [moorage.enqueue("fam", f"reply=m{n}") for n in range(1, 4)]
    eventually(lambda: all(moorage.job(i)["batch_of"] == first for i in queued))
    moorage.kill9()
    assert [moorage.status(i) for i in [first, *queued]] == [
        "active",
        "waiting",
        "waiting",
        "waiting",
    ]

    moorage.start(max_concurrent=1)
    ids = [first, *queued]
    eventually(lambda: all(moorage.status(i) == "completed" for i in ids), timeout=60)
    rows = [moorage.job(i) for i in queued]
    assert {r["container_id"] for r in rows} == {rows[0]["container_id"]}
    assert rows[0]["container_id"] != moorage.job(first)["container_id"]
    assert [r["batch_of"] for r in rows] == [None, queued[0], queued[0]]
    eventually(
        lambda: [r["text"] for r in moorage.delivered()] == ["m0", "m1", "m2", "m3"]
    )
    eventually(lambda: moorage.containers() == [])


def test_container_active_during_a_kill_is_reclaimed_and_replies_once(
    moorage: Moorage,
) -> None:
    job = moorage.enqueue("fam", "reply=before;sleep=4;reply=after")
    moorage.start()
    eventually(lambda: [r["text"] for r in moorage.delivered()] == ["before"])
    container = moorage.job(job)["container_id"]
    moorage.kill9()
    assert [c.ref for c in moorage.running()] == [container]

    moorage.start()
    eventually(lambda: moorage.status(job) == "completed", timeout=60)
    row = moorage.job(job)
    assert (row["attempt"], row["container_id"]) == (1, container)
    assert any(
        f"reclaimed moorage-{moorage.install[:12]}-{job}-1" in e
        for e in moorage.events(job)
    )
    eventually(lambda: [r["text"] for r in moorage.delivered()] == ["before", "after"])
    eventually(lambda: moorage.containers() == [])


def test_container_removed_while_down_is_requeued_and_run_again(
    moorage: Moorage,
) -> None:
    job = moorage.enqueue("fam", "sleep=3;reply=done")
    moorage.start()
    eventually(lambda: moorage.job(job)["container_id"])
    moorage.kill9()
    runtime = moorage.runtime()
    for container in runtime.list():
        runtime.stop(container.ref, 0)
        runtime.remove(container.ref)
    runtime.close()

    moorage.start()
    eventually(lambda: moorage.status(job) == "completed", timeout=60)
    row = moorage.job(job)
    assert (row["attempt"], row["retry_count"]) == (2, 1)
    assert "active:waiting:container lost; retry 1/5" in " ".join(moorage.events(job))
    eventually(lambda: [r["text"] for r in moorage.delivered()] == ["done"])


def test_container_that_finished_while_down_is_collected_not_rerun(
    moorage: Moorage,
) -> None:
    job = moorage.enqueue("fam", "sleep=1;reply=finished while nobody watched")
    moorage.start()
    eventually(lambda: moorage.job(job)["container_id"])
    moorage.kill9()
    eventually(
        lambda: [c.state for c in moorage.containers()] == [ContainerState.EXITED]
    )

    moorage.start()
    eventually(lambda: moorage.status(job) == "completed", timeout=60)
    assert moorage.job(job)["attempt"] == 1  # never run again
    eventually(
        lambda: (
            [r["text"] for r in moorage.delivered()]
            == ["finished while nobody watched"]
        )
    )
    eventually(lambda: moorage.containers() == [])


def test_orphans_are_removed_and_other_installs_untouched(
    moorage: Moorage, session_installs: set[str]
) -> None:
    other_install = "e" * 32
    session_installs.add(other_install)
    ours, theirs = moorage.runtime(), moorage.runtime(other_install)
    try:
        spec = dict(
            job_id=999,
            attempt=1,
            group_id="ghost",
            input={"messages": []},
            timeout=120.0,
        )
        options = (
            {"image": moorage.image, "command": ["/bin/sh", "-c", "sleep 60"]}
            if moorage.kind == "docker"
            else {"command": ["sleep", "60"]}
        )
        orphan = ours.start(AttemptSpec(install=moorage.install, **spec, **options))
        foreign = theirs.start(AttemptSpec(install=other_install, **spec, **options))
        moorage.start()
        eventually(
            lambda: ours.inspect(orphan.ref).state is ContainerState.MISSING, timeout=60
        )
        assert theirs.inspect(foreign.ref).state is ContainerState.RUNNING
    finally:
        for container in theirs.list():
            theirs.stop(container.ref, 0)
            theirs.remove(container.ref)
        ours.close()
        theirs.close()


def test_a_second_serve_on_the_same_data_directory_is_refused(moorage: Moorage) -> None:
    moorage.start()
    eventually(lambda: "recovery:" in moorage.log.read_text())
    second = moorage.start()
    assert second.wait(30) != 0
    assert "another moorage serve" in moorage.log.read_text()
    assert moorage.procs[0].poll() is None  # the first one is unharmed


def test_sigterm_leaves_containers_running_for_the_next_start(moorage: Moorage) -> None:
    job = moorage.enqueue("fam", "sleep=3;reply=ok")
    first = moorage.start()
    eventually(lambda: moorage.job(job)["container_id"])
    began = time.monotonic()
    assert moorage.terminate(first) == 0
    assert time.monotonic() - began < 5  # prompt
    assert len(moorage.running()) == 1
    moorage.start()
    eventually(lambda: moorage.status(job) == "completed", timeout=60)
    assert moorage.job(job)["attempt"] == 1
