"""Load and crash torture: the cap and one-per-group hold under load, and a
dispatcher killed with ``kill -9`` again and again loses nothing, runs nothing
that finished twice, delivers every reply exactly once and leaves nothing."""

from __future__ import annotations

import collections
import os
import random
import threading
import time

import pytest

from moorage.runtime.base import ContainerState

from .conftest import Moorage, eventually

pytestmark = pytest.mark.slow


def test_engine_never_runs_two_containers_for_a_group_or_more_than_the_cap(
    moorage: Moorage,
) -> None:
    ids = [moorage.enqueue(f"g{n % 12}", f"sleep=0.3;reply=j{n}") for n in range(60)]
    samples: list[list[tuple[str, int]]] = []
    done = threading.Event()

    def sample() -> None:
        runtime = moorage.runtime()
        try:
            while not done.is_set():
                running = [
                    c for c in runtime.list() if c.state is ContainerState.RUNNING
                ]
                samples.append([(c.group_id, c.job_id) for c in running])
                time.sleep(0.02)
        finally:
            runtime.close()

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        moorage.start(max_concurrent=4)
        eventually(
            lambda: all(moorage.status(i) == "completed" for i in ids), timeout=240
        )
    finally:
        done.set()
        sampler.join()
    busy = [s for s in samples if s]
    assert len(busy) > 20, "the sampler saw too little to judge"
    assert max(len(s) for s in samples) <= 4
    assert max(len(s) for s in samples) >= 2  # it did run things side by side
    for sample_ in samples:
        per_group = collections.Counter(group for group, _ in sample_)
        assert all(count == 1 for count in per_group.values()), sample_


def test_crash_torture_loses_nothing_and_answers_everything_once(
    moorage: Moorage,
) -> None:
    seed = int(os.environ.get("MOORAGE_TORTURE_SEED", random.randrange(1 << 30)))
    print(f"crash torture seed: {seed} (MOORAGE_TORTURE_SEED={seed} repeats it)")
    rng = random.Random(seed)
    jobs = 150
    ids = [
        moorage.enqueue(
            f"g{rng.randrange(10)}",
            f"sleep={rng.choice(['0', '0.2', '0.5'])};reply=t{n}",
        )
        for n in range(jobs)
    ]
    began = time.monotonic()
    kills = 0
    while kills < 15 and time.monotonic() - began < 240:
        moorage.start(max_concurrent=4)
        time.sleep(rng.uniform(0.3, 2.5))
        moorage.kill9()
        kills += 1
    assert kills >= 15

    moorage.start(max_concurrent=4)
    eventually(lambda: all(moorage.status(i) == "completed" for i in ids), timeout=400)

    eventually(
        lambda: sum(1 for r in moorage.delivered() if r["kind"] == "reply") >= jobs
    )
    texts = collections.Counter(
        r["text"] for r in moorage.delivered() if r["kind"] == "reply"
    )
    assert texts == collections.Counter(f"t{n}" for n in range(jobs))
    recorded = moorage.rows("SELECT job_id, count(*) FROM replies GROUP BY job_id")
    assert sorted(recorded) == [(i, 1) for i in ids]
    eventually(lambda: moorage.containers() == [], timeout=60)
    print(f"{kills} kills; finished in {time.monotonic() - began:.0f} s")
