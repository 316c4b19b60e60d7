"""The dispatcher: the loop that runs the queue on a runtime.

Each :meth:`Dispatcher.step` lists this install's containers once, records new
reply lines of the attempts it watches, settles the attempts that exited
(outcome first, container removal after), stops those past their deadline,
reconciles queue and engine when that is due, claims runnable jobs within the
cap and starts their containers, and prunes old rows when that is due.  A
test can call ``step`` by hand with a fake clock and an in-memory runtime.

Before the first step, :meth:`Dispatcher.recover` reconciles everything an
earlier process left behind (see :mod:`moorage.recovery`).

Conversations: an attempt of a message starts with its group's waiting
messages as one batch; messages that arrive while it runs are offered to it
as follow-ups (files in its inbox); an agent that says it is idle is asked to
close after ``idle_timeout`` (at once when a task of its group is due, or
when moorage drains, or when another group waits for the slot it holds), and
stopped ``close_grace`` later if it has not exited.
Every step of that is recorded in the queue before it is acted on, so a
restarted moorage finishes it without losing or repeating a message.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from moorage.clock import Clock, SystemClock
from moorage.delivery import Deliverer
from moorage.errors import ContainerNotFound, EngineUnavailable, RuntimeFailure
from moorage.metrics import Metrics
from moorage.models import Job, Kind
from moorage.outbox import Outbox
from moorage.queue import DAY, Batch, Queue, StaleAttempt
from moorage.recovery import Action, ActionKind, RecoveryReport, plan
from moorage.runtime.base import (
    AttemptSpec,
    ContainerInfo,
    ContainerState,
    Limits,
    Mount,
    Runtime,
)

logger = logging.getLogger(__name__)

#: The agent run when no image or command is configured (process runtime).
ECHO_AGENT = (sys.executable, "-m", "moorage.agents.echo")


@dataclass(frozen=True)
class DispatchSettings:
    max_concurrent: int = 4
    image: str | None = None
    command: Sequence[str] | None = None
    timeout: float = 600.0  # per attempt, unless the job sets its own
    poll_interval: float = 0.25
    reconcile_interval: float = 30.0
    prune_interval: float = 3600.0
    completed_ttl: float = DAY
    failed_ttl: float = 7 * DAY
    cancelled_ttl: float = 7 * DAY
    stop_grace: float = 10.0
    limits: Limits = field(default_factory=Limits)
    network: str = "none"
    user: str | None = None
    mounts: Sequence[Mount] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    read_only_rootfs: bool = False
    batch_messages: int = 10  # messages one attempt takes at its start
    batch_bytes: int = 1024 * 1024
    follow_ups: bool = True  # offer new messages to a running attempt
    idle_timeout: float = 60.0  # an agent idle this long is asked to close
    close_grace: float = 15.0  # then stopped if it has not exited

    @property
    def batch(self) -> Batch:
        return Batch(messages=self.batch_messages, bytes=self.batch_bytes)


#: Inbox name of the request to close.
CLOSE_NAME = "close.json"


def inbox_name(job_id: int) -> str:
    """Inbox name of a follow-up: in name order = in enqueue order."""
    return f"message-{job_id:012d}.json"


@dataclass
class _Watch:
    job: Job
    ref: str
    position: int
    timed_out: bool = False
    #: Started by this process: nothing was delivered to it before.  False
    #: after a reclaim: a file is looked for before it is written again.
    fresh: bool = True
    delivered: set[str] = field(default_factory=set)
    pending: dict[int, Job] = field(default_factory=dict)  # offered, not received
    offered_at: float = 0.0
    stopping: bool = False
    close_reason: str = "idle"  # why it was asked to close, for close.json


class Dispatcher:
    def __init__(
        self,
        queue: Queue,
        runtime: Runtime,
        settings: DispatchSettings | None = None,
        *,
        outbox: Outbox | None = None,
        deliverer: Deliverer | None = None,
        clock: Clock | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.queue = queue
        self.metrics = metrics
        self.runtime = runtime
        self.settings = settings or DispatchSettings()
        self.clock = clock or queue.clock or SystemClock()
        self.outbox = outbox or Outbox(queue.db, self.clock)
        self.deliverer = deliverer
        self.watched: dict[int, _Watch] = {}
        self.last_recovery: RecoveryReport | None = None
        self.engine_ok = True
        self.draining = False
        self._engine_backoff = 1.0
        self._engine_retry_at = 0.0
        self._outage_since: float | None = None
        self._outages: list[tuple[float, float]] = []
        now = self.clock.now()
        self._next_reconcile = now + self.settings.reconcile_interval
        self._next_prune = now + self.settings.prune_interval
        self._wake = threading.Event()
        self._slot_wanted = False

    # -- recovery --------------------------------------------------------------

    def recover(self, *, dry_run: bool = False) -> RecoveryReport:
        """Reconcile every active job with the engine (one list call)."""
        began = time.perf_counter()
        containers = self.runtime.list()
        report = RecoveryReport(
            actions=plan(self.queue.active(), containers),
            dry_run=dry_run,
            at=self.clock.now(),
        )
        if not dry_run:
            for action in report.actions:
                self._apply(action)
        report.seconds = time.perf_counter() - began
        if not dry_run:
            self.last_recovery = report
            if self.metrics is not None:
                self.metrics.recovered(report)
            logger.info("recovery: %s", report.summary(), extra={"action": "recover"})
        return report

    def _apply(self, action: Action) -> None:
        job, container = action.job, action.container
        try:
            if action.kind is ActionKind.ORPHAN and container is not None:
                self._remove(container, stop=True)
                logger.info(
                    "removed orphan container %s",
                    container.name,
                    extra={"action": "orphan", "container": container.name},
                )
            elif job is None:
                return
            elif action.kind is ActionKind.REQUEUE:
                self.queue.fail(job.id, job.attempt, "container lost")
            elif action.kind is ActionKind.RELEASE and container is not None:
                self._remove(container, stop=False)
                self.queue.release(job.id, job.attempt, "container was never started")
            elif action.kind is ActionKind.RECLAIM and container is not None:
                self._reclaim(job, container)
            elif action.kind is ActionKind.COLLECT and container is not None:
                self._settle(job, container, self.outbox.position(job), timed_out=False)
        except StaleAttempt as exc:
            logger.warning(
                "%s: %s", action.describe(), exc, extra={"action": action.kind.value}
            )

    def _reclaim(self, job: Job, container: ContainerInfo) -> None:
        if job.container_id != container.ref:
            job = self.queue.start(job.id, job.attempt, container.ref)
        self.queue.reclaim(job.id, job.attempt, f"reclaimed {container.name}")
        self.watched[job.id] = _Watch(
            job,
            container.ref,
            self.outbox.position(job),
            fresh=False,
            pending={j.id: j for j in self.queue.offered(job.id)},
            offered_at=self.clock.now(),
            close_reason=self.queue.close_reason(job.id, job.attempt) or "idle",
        )
        logger.info(
            "reclaimed job %d attempt %d in %s",
            job.id,
            job.attempt,
            container.name,
            extra={
                "action": "reclaim",
                "job": job.id,
                "group": job.group_id,
                "container": container.name,
            },
        )

    # -- the loop ----------------------------------------------------------------

    def step(self) -> None:
        """One pass of the loop.  Never raises for an engine outage: it is
        logged, no attempt is spent, and the engine is tried again later."""
        now = self.clock.now()
        if self._engine_reachable(now):
            try:
                containers = self.runtime.list()
                self._poll(containers, now)
                if now >= self._next_reconcile:
                    self._reconcile(containers)
                if not self.draining:
                    self._claim_and_start()
            except EngineUnavailable as exc:
                self._engine_lost(exc, now)
        if now >= self._next_prune:
            self._next_prune = now + self.settings.prune_interval
            self.queue.prune(
                self.settings.completed_ttl,
                self.settings.failed_ttl,
                self.settings.cancelled_ttl,
            )

    def run(self, stop: threading.Event, *, drain: bool = False) -> None:
        """Recover, then step until ``stop`` is set.  Containers still running
        then are left alone (a later start reclaims them) unless ``drain``:
        then no new job is claimed and the run ends when none is active."""
        self._recover_when_reachable(stop)
        if self.deliverer is not None:
            self.deliverer.start()
        try:
            while True:
                if stop.is_set():
                    if not drain or not self.watched:
                        break
                    if not self.draining:
                        self.draining = True
                        logger.info(
                            "draining: waiting for %d active jobs", len(self.watched)
                        )
                self.step()
                self._wake.wait(self.settings.poll_interval)
                self._wake.clear()
        finally:
            if self.deliverer is not None:
                self.deliverer.stop()
        logger.info(
            "dispatcher stopped; %d containers left running for the next start",
            len(self.watched),
            extra={"action": "stop"},
        )

    def wake(self) -> None:
        """Run the next step now (a job was enqueued in this process)."""
        self._wake.set()

    def _recover_when_reachable(self, stop: threading.Event) -> None:
        delay = 1.0
        while not stop.is_set():
            try:
                self.recover()
                return
            except EngineUnavailable as exc:
                logger.warning(
                    "engine unreachable at start-up (%s); jobs stay waiting; retrying in %.0f s",
                    exc,
                    delay,
                    extra={"action": "engine"},
                )
                self.engine_ok = False
                stop.wait(delay)
                delay = min(delay * 2, 30.0)
        self.engine_ok = True

    # -- watching attempts ---------------------------------------------------------

    def _poll(self, containers: list[ContainerInfo], now: float) -> None:
        by_attempt = {(c.job_id, c.attempt): c for c in containers}
        waiting = self.queue.busy_groups() if self.watched else {}
        running = (
            {(j.id, j.attempt) for j in self.queue.active()} if self.watched else set()
        )
        self._slot_wanted = self._starved(now)
        for watch in list(self.watched.values()):
            container = by_attempt.get((watch.job.id, watch.job.attempt))
            if (watch.job.id, watch.job.attempt) not in running:
                self._stop_ended(watch, container)
                continue
            if container is None or container.state is ContainerState.MISSING:
                self.watched.pop(watch.job.id, None)
                self._fail_or_release(watch.job, None, "container lost")
                continue
            self._read(watch)
            if container.state is ContainerState.EXITED:
                self._settle(watch.job, container, watch.position, watch.timed_out)
                continue
            if (
                container.deadline is not None
                and now >= container.deadline
                and not watch.timed_out
            ):
                watch.timed_out = True
                logger.info(
                    "job %d attempt %d reached its deadline; stopping %s",
                    watch.job.id,
                    watch.job.attempt,
                    container.name,
                    extra={
                        "action": "timeout",
                        "job": watch.job.id,
                        "container": container.name,
                    },
                )
                self.runtime.stop(container.ref, self.settings.stop_grace)
            elif container.state is ContainerState.RUNNING and not watch.timed_out:
                try:
                    self._converse(watch, waiting.get(watch.job.group_id, 0), now)
                except (
                    StaleAttempt
                ) as exc:  # changed under us: the next reconcile mends it
                    logger.warning("%s", exc, extra={"action": "converse"})

    def _stop_ended(self, watch: _Watch, container: ContainerInfo | None) -> None:
        """The attempt was ended outside the dispatcher (cancelled while
        running): its container is an orphan now; stop and remove it."""
        self.watched.pop(watch.job.id, None)
        logger.info(
            "job %d attempt %d is no longer running (cancelled); stopping its container",
            watch.job.id,
            watch.job.attempt,
            extra={
                "action": "cancel",
                "job": watch.job.id,
                "group": watch.job.group_id,
            },
        )
        if container is not None and container.state is not ContainerState.MISSING:
            with contextlib.suppress(ContainerNotFound):
                self._remove(container, stop=True)
        self._count("cancelled", None)

    def _read(self, watch: _Watch) -> None:
        try:
            lines = self.runtime.read_output(watch.ref, watch.position)
        except ContainerNotFound:
            return
        if lines:
            self._record(watch.job, watch.position, lines, watch)
            watch.position += len(lines)

    def _record(
        self, job: Job, position: int, lines: list[str], watch: _Watch | None
    ) -> None:
        output = self.queue.record_output(job, position, lines)
        if output.replies and self.deliverer is not None:
            self.deliverer.wake()
        if output.received and self.metrics is not None:
            self.metrics.follow_ups("received", len(output.received))
        if watch is not None:
            watch.job = replace(
                watch.job, idle_since=output.idle_since, closing_at=output.closing_at
            )
            for job_received in output.received:
                watch.pending.pop(job_received.id, None)
        for job_received in output.received:
            logger.info(
                "job %d joined attempt %d of job %d",
                job_received.id,
                job.attempt,
                job.id,
                extra={
                    "action": "receive",
                    "job": job_received.id,
                    "group": job.group_id,
                    "attempt": job.attempt,
                },
            )

    # -- conversations -------------------------------------------------------------

    def _converse(self, watch: _Watch, waiting: int, now: float) -> None:
        """Offer follow-ups to a running attempt, or close it when idle."""
        job = watch.job
        if job.closing_at is not None:
            self._deliver_close(watch, watch.close_reason)
            if not watch.stopping and now >= job.closing_at + self.settings.close_grace:
                watch.stopping = True
                logger.info(
                    "job %d attempt %d did not close within %.0f s; stopping it",
                    job.id,
                    job.attempt,
                    self.settings.close_grace,
                    extra={"action": "close", "job": job.id, "container": watch.ref},
                )
                self.runtime.stop(watch.ref, self.settings.stop_grace)
            return
        for pending in list(watch.pending.values()):
            self._deliver_message(watch, pending)
        reason = self._close_reason(watch, waiting, now)
        if reason is not None:
            watch.job = self.queue.request_close(job.id, job.attempt, reason)
            if self.metrics is not None:
                self.metrics.close_requested(reason)
            logger.info(
                "asking job %d attempt %d to close (%s)",
                job.id,
                job.attempt,
                reason,
                extra={"action": "close", "job": job.id, "group": job.group_id},
            )
            watch.close_reason = reason
            self._deliver_close(watch, reason)
            return
        if (
            self.settings.follow_ups
            and job.kind is Kind.MESSAGE
            and not self.draining
            and waiting > len(watch.pending)
        ):
            offered = self.queue.offer(
                job.id, job.attempt, self.settings.batch_messages
            )
            if offered and self.metrics is not None:
                self.metrics.follow_ups("offered", len(offered))
            for follow_up in offered:
                watch.pending[follow_up.id] = follow_up
                watch.offered_at = now
                self._deliver_message(watch, follow_up)

    def _starved(self, now: float) -> bool:
        """Whether every slot is taken, a free group is ready to run, and no
        attempt is already closing (which will free a slot soon)."""
        if len(self.watched) < self.settings.max_concurrent or self.draining:
            return False
        if any(w.job.closing_at is not None for w in self.watched.values()):
            return False
        ready = self.queue.next_ready_at()
        return ready is not None and ready <= now

    def _close_reason(self, watch: _Watch, waiting: int, now: float) -> str | None:
        idle_since = watch.job.idle_since
        if idle_since is None:
            return None
        quiet = now - max(idle_since, watch.offered_at)
        if watch.pending:
            # The agent said it was idle but has not taken what was offered:
            # it may not read its inbox.  Close it; the offers run next.
            return "idle" if quiet >= self.settings.idle_timeout else None
        if watch.job.kind is Kind.TASK:
            return "idle"  # a task has nothing more to wait for
        if self.draining:
            return "shutdown"
        if quiet >= self.settings.idle_timeout:
            return "idle"
        if waiting > 0 and self.queue.due_task(watch.job.group_id):
            return "task"
        if self._slot_wanted:
            # Another group waits for a slot an idle conversation holds.
            self._slot_wanted = False
            return "slot"
        return None

    def _deliver_message(self, watch: _Watch, job: Job) -> None:
        self._deliver(watch, inbox_name(job.id), message_entry(job))

    def _deliver_close(self, watch: _Watch, reason: str) -> None:
        self._deliver(watch, CLOSE_NAME, {"type": "close", "reason": reason})

    def _deliver(self, watch: _Watch, name: str, document: dict[str, object]) -> None:
        """Write an inbox file once.  After a reclaim, a file an earlier
        process may have written is looked for first, so it is never written
        twice; a failed write is tried again on the next step."""
        if name in watch.delivered:
            return
        try:
            if not watch.fresh and self.runtime.has_input(watch.ref, name):
                watch.delivered.add(name)
                return
            self.runtime.deliver(watch.ref, name, document)
        except ContainerNotFound:
            return  # it exited: the next poll settles it
        except EngineUnavailable:
            raise
        except RuntimeFailure as exc:
            logger.warning(
                "could not deliver %s to job %d: %s; trying again",
                name,
                watch.job.id,
                exc,
                extra={"action": "deliver", "job": watch.job.id},
            )
            return
        watch.delivered.add(name)

    def _settle(
        self, job: Job, container: ContainerInfo, position: int, timed_out: bool
    ) -> None:
        """Record an exited attempt's remaining output and outcome, then remove
        its container (evidence is kept until the outcome is committed)."""
        watch = self.watched.pop(job.id, None)
        try:
            lines = self.runtime.read_output(container.ref, position)
        except ContainerNotFound:
            lines = []
        if lines:
            self._record(job, position, lines, watch)
        if watch is not None:
            job = watch.job
        seconds = None
        elapsed = ""
        if container.started_at and container.finished_at:
            seconds = container.finished_at - container.started_at
            elapsed = f" in {seconds:.1f} s"
        try:
            if job.closing_at is not None:
                # Asked to close while idle: everything it took was answered,
                # however it ends now.
                code = (
                    "stopped"
                    if container.exit_code is None
                    else f"exit {container.exit_code}"
                )
                self.queue.finish(job.id, job.attempt, f"closed ({code}){elapsed}")
                self._count("completed", seconds)
            elif timed_out or container.timed_out:
                limit = self._timeout_of(job)
                self.queue.fail(job.id, job.attempt, f"timed out after {limit:g} s")
                self._count("timed_out", seconds)
            elif container.exit_code == 0:
                self.queue.finish(job.id, job.attempt, f"exit 0{elapsed}")
                self._count("completed", seconds)
            else:
                self._fail_or_release(
                    job, container, f"exit code {container.exit_code}"
                )
        except StaleAttempt as exc:
            logger.warning("%s", exc, extra={"action": "settle", "job": job.id})
        self._remove(container, stop=False)
        if self.deliverer is not None:
            self.deliverer.wake()

    def _fail_or_release(
        self, job: Job, container: ContainerInfo | None, error: str
    ) -> None:
        """A failed attempt costs a retry, unless it ended during an engine
        outage (invariant 10): then the claim is given back for free."""
        finished = container.finished_at if container is not None else None
        if self._during_outage(finished):
            self.queue.release(job.id, job.attempt, f"{error} during an engine outage")
            self._count("released", None)
        else:
            after = self.queue.fail(job.id, job.attempt, error)
            lost = container is None or error == "container lost"
            outcome = "retried" if after.status.value == "waiting" else "failed"
            self._count("lost" if lost else outcome, None)

    def _count(self, outcome: str, seconds: float | None) -> None:
        if self.metrics is not None:
            self.metrics.attempt_finished(outcome, seconds)

    def _during_outage(self, at: float | None) -> bool:
        """Whether an attempt that ended at ``at`` ended while the engine was
        unreachable (the window widened by one poll, when it may have begun
        unnoticed)."""
        if at is None:
            return False
        margin = self.settings.poll_interval + 1.0
        return any(
            began - margin <= at <= ended + margin for began, ended in self._outages
        )

    def _remove(self, container: ContainerInfo, *, stop: bool) -> None:
        if stop and container.state is ContainerState.RUNNING:
            self.runtime.stop(container.ref, self.settings.stop_grace)
        self.runtime.remove(container.ref)

    def _reconcile(self, containers: list[ContainerInfo]) -> None:
        self._next_reconcile = self.clock.now() + self.settings.reconcile_interval
        watched = {(w.job.id, w.job.attempt) for w in self.watched.values()}
        actions = plan(self.queue.active(), containers, watched)
        for action in actions:
            self._apply(action)
        if actions:
            logger.info(
                "reconcile: %s",
                RecoveryReport(actions=actions).summary(),
                extra={"action": "reconcile"},
            )

    # -- starting attempts -------------------------------------------------------

    def _claim_and_start(self) -> None:
        jobs = self.queue.claim(self.settings.max_concurrent, batch=self.settings.batch)
        if jobs and self.metrics is not None:
            self.metrics.claimed(len(jobs))
            for job in jobs:
                self.metrics.queue_wait(max(0.0, self.clock.now() - job.run_after))
        for index, job in enumerate(jobs):
            try:
                info = self.runtime.start(self.spec_for(job))
            except EngineUnavailable:
                for unstarted in jobs[index:]:
                    self.queue.release(
                        unstarted.id, unstarted.attempt, "engine unreachable"
                    )
                raise
            except RuntimeFailure as exc:
                self.queue.fail(job.id, job.attempt, f"could not start: {exc}")
                continue
            job = self.queue.start(job.id, job.attempt, info.ref)
            self.watched[job.id] = _Watch(job, info.ref, 0)
            logger.info(
                "started job %d attempt %d in %s",
                job.id,
                job.attempt,
                info.name,
                extra={
                    "action": "start",
                    "job": job.id,
                    "group": job.group_id,
                    "container": info.name,
                },
            )

    def spec_for(self, job: Job) -> AttemptSpec:
        s = self.settings
        command = s.command
        if command is None and s.image is None:
            command = ECHO_AGENT
        return AttemptSpec(
            install=self.queue.install_id,
            job_id=job.id,
            attempt=job.attempt,
            group_id=job.group_id,
            input=input_document(job, self.queue.members(job.id)),
            image=s.image,
            command=command,
            env=s.env,
            timeout=self._timeout_of(job),
            limits=s.limits,
            network=s.network,
            user=s.user,
            mounts=s.mounts,
            read_only_rootfs=s.read_only_rootfs,
        )

    def _timeout_of(self, job: Job) -> float:
        return job.timeout if job.timeout is not None else self.settings.timeout

    # -- engine outages ------------------------------------------------------------

    def _engine_lost(self, exc: EngineUnavailable, now: float) -> None:
        if self.metrics is not None:
            self.metrics.engine_error()
        if self.engine_ok:
            self._outage_since = now
            self._engine_backoff = 1.0
        self.engine_ok = False
        self._engine_retry_at = now + self._engine_backoff
        logger.warning(
            "engine unreachable (%s); jobs stay waiting, no attempt is spent; retrying in %.0f s",
            exc,
            self._engine_backoff,
            extra={"action": "engine"},
        )
        self._engine_backoff = min(self._engine_backoff * 2, 30.0)

    def _engine_reachable(self, now: float) -> bool:
        if self.engine_ok:
            return True
        if now < self._engine_retry_at:
            return False
        try:
            self.runtime.ping()
        except EngineUnavailable as exc:
            self._engine_lost(exc, now)
            return False
        began = self._outage_since if self._outage_since is not None else now
        self._outages = [*self._outages[-9:], (began, now)]
        self._outage_since = None
        self.engine_ok = True
        self._next_reconcile = now  # containers may have changed meanwhile
        logger.info(
            "engine reachable again after %.1f s",
            now - began,
            extra={"action": "engine"},
        )
        return True


def message_entry(job: Job) -> dict[str, object]:
    """One message as an agent sees it, in its input or in its inbox."""
    return {
        "id": job.id,
        "chat_jid": job.chat_jid,
        "kind": job.kind.value,
        "text": job.message_text,
    }


def input_document(job: Job, members: Sequence[Job] = ()) -> dict[str, object]:
    """The JSON document an attempt's container reads at its input path: the
    lead job and the members of its batch, in order."""
    return {
        "job": job.id,
        "attempt": job.attempt,
        "group": job.group_id,
        "messages": [message_entry(j) for j in (job, *members)],
    }
