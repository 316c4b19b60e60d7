"""Matching the queue's active jobs to the engine's containers.

Ground truth is the engine (invariant 5).  Given the active jobs and one list
of this install's containers, :func:`plan` decides for each job and each
container what must happen; the dispatcher carries the plan out, at start-up
(before it takes new work), in every periodic reconcile, and not at all for
``moorage recover --dry-run``.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from moorage.models import Job
from moorage.runtime.base import ContainerInfo, ContainerState


class ActionKind(enum.StrEnum):
    RECLAIM = "reclaim"  # container still running: watch it again
    COLLECT = "collect"  # container exited while nobody watched: record its outcome
    REQUEUE = "requeue"  # container gone: the attempt failed ("container lost")
    RELEASE = "release"  # container created but never started: give the claim back
    ORPHAN = "orphan"  # container no active job owns: stop and remove it


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    job: Job | None = None
    container: ContainerInfo | None = None

    def describe(self) -> str:
        where = ""
        if self.container is not None:
            where = f" {self.container.name} ({self.container.state.value})"
        if self.job is None:
            return f"{self.kind.value}{where}"
        return f"{self.kind.value} job {self.job.id} attempt {self.job.attempt}{where}"


@dataclass
class RecoveryReport:
    actions: list[Action] = field(default_factory=list)
    dry_run: bool = False
    seconds: float = 0.0
    at: float = 0.0

    def count(self, kind: ActionKind) -> int:
        return sum(1 for action in self.actions if action.kind is kind)

    def counts(self) -> dict[str, int]:
        counter = Counter(action.kind.value for action in self.actions)
        return {kind.value: counter.get(kind.value, 0) for kind in ActionKind}

    def summary(self) -> str:
        c = self.counts()
        verb = "would be" if self.dry_run else "were"
        return (
            f"{c['reclaim']} reclaimed, {c['collect']} collected, {c['requeue']} requeued, "
            f"{c['release']} released, {c['orphan']} orphans removed"
            + (f" ({verb} planned)" if self.dry_run else f" in {self.seconds:.3f} s")
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "dry_run": self.dry_run,
            "seconds": self.seconds,
            "at": self.at,
            "counts": self.counts(),
            "actions": [action.describe() for action in self.actions],
        }


def plan(
    active: Iterable[Job],
    containers: Iterable[ContainerInfo],
    watched: Collection[tuple[int, int]] = (),
) -> list[Action]:
    """What to do so that queue and engine agree.

    A container belongs to an active job when its ``moorage.job`` and
    ``moorage.attempt`` labels name the job's current attempt; the recorded
    container id is not needed, so a container whose id never reached the
    database is still found.  Jobs in ``watched`` are already being watched
    and get no action, but their containers are not orphans.
    """
    by_attempt = {(c.job_id, c.attempt): c for c in containers}
    owned: set[tuple[int, int]] = set()
    actions: list[Action] = []
    for job in active:
        key = (job.id, job.attempt)
        owned.add(key)
        if key in watched:
            continue
        container = by_attempt.get(key)
        if container is None or container.state is ContainerState.MISSING:
            actions.append(Action(ActionKind.REQUEUE, job, container))
        elif container.state is ContainerState.RUNNING:
            actions.append(Action(ActionKind.RECLAIM, job, container))
        elif container.state is ContainerState.EXITED:
            actions.append(Action(ActionKind.COLLECT, job, container))
        else:
            actions.append(Action(ActionKind.RELEASE, job, container))
    for key, container in by_attempt.items():
        if key not in owned:
            actions.append(Action(ActionKind.ORPHAN, None, container))
    return actions
