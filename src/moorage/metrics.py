"""Counters and histograms the dispatcher feeds, for the HTTP ``/metrics``.

Each :class:`Metrics` owns its registry, so two in one process (two tests,
two apps) never collide and nothing lands in prometheus-client's global
registry.  The gauges that describe the queue right now (jobs by status,
active containers) are not here: the HTTP app computes them at scrape time
from the queue and the dispatcher, so they can never drift.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric

from moorage.recovery import ActionKind, RecoveryReport

#: The outcomes an attempt can end in; other values are counted as "other".
OUTCOMES = (
    "completed",
    "retried",
    "failed",
    "timed_out",
    "lost",
    "released",
    "cancelled",
)
#: Why an agent is asked to close (see the dispatcher), plus "other".
CLOSE_REASONS = ("idle", "task", "slot", "shutdown", "other")

_RUN_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600)


class Metrics:
    """What the dispatcher counts as it runs.  Every method is thread-safe."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._claims = Counter(
            "moorage_claims", "Jobs claimed (attempts begun).", registry=r
        )
        self._attempts = Counter(
            "moorage_attempts",
            "Attempts that ended, by outcome.",
            ["outcome"],
            registry=r,
        )
        self._run_seconds = Histogram(
            "moorage_run_duration_seconds",
            "Run time of ended attempts, by outcome.",
            ["outcome"],
            buckets=_RUN_BUCKETS,
            registry=r,
        )
        self._wait_seconds = Histogram(
            "moorage_queue_wait_seconds",
            "Time from enqueue (or retry due) to claim.",
            buckets=_WAIT_BUCKETS,
            registry=r,
        )
        self._recoveries = Counter(
            "moorage_recoveries", "Recoveries carried out.", registry=r
        )
        self._recovery_actions = Counter(
            "moorage_recovery_actions",
            "Recovery actions carried out, by kind.",
            ["action"],
            registry=r,
        )
        self._last_recovery = Gauge(
            "moorage_last_recovery_timestamp_seconds",
            "When the last recovery ran (epoch seconds; 0 = never).",
            registry=r,
        )
        self._engine_errors = Counter(
            "moorage_engine_errors",
            "Times the container engine could not be reached.",
            registry=r,
        )
        self._replies = Counter(
            "moorage_replies_delivered", "Replies accepted by the sink.", registry=r
        )
        self._follow_ups = Counter(
            "moorage_follow_ups",
            "Follow-up messages, by step: offered to a running attempt, "
            "received by its agent.",
            ["step"],
            registry=r,
        )
        self._closes = Counter(
            "moorage_close_requests",
            "Agents asked to close, by reason.",
            ["reason"],
            registry=r,
        )
        for step in ("offered", "received"):
            self._follow_ups.labels(step)
        for reason in CLOSE_REASONS:
            self._closes.labels(reason)
        for outcome in (*OUTCOMES, "other"):
            self._attempts.labels(outcome)
        for kind in ActionKind:
            self._recovery_actions.labels(kind.value)

    def claimed(self, n: int = 1) -> None:
        if n > 0:
            self._claims.inc(n)

    def attempt_finished(self, outcome: str, seconds: float | None = None) -> None:
        """An attempt ended; ``seconds`` is its run time when known."""
        label = outcome if outcome in OUTCOMES else "other"
        self._attempts.labels(label).inc()
        if seconds is not None and seconds >= 0:
            self._run_seconds.labels(label).observe(seconds)

    def queue_wait(self, seconds: float) -> None:
        self._wait_seconds.observe(max(seconds, 0.0))

    def recovered(self, report: RecoveryReport) -> None:
        """A (non dry-run) recovery was carried out."""
        if report.dry_run:
            return
        self._recoveries.inc()
        for kind, count in report.counts().items():
            if count:
                self._recovery_actions.labels(kind).inc(count)
        self._last_recovery.set(report.at)

    def engine_error(self) -> None:
        self._engine_errors.inc()

    def follow_ups(self, step: str, n: int = 1) -> None:
        """``n`` follow-ups were offered (``step="offered"``) or received."""
        if n > 0:
            self._follow_ups.labels(step).inc(n)

    def close_requested(self, reason: str) -> None:
        self._closes.labels(reason if reason in CLOSE_REASONS else "other").inc()

    def reply_delivered(self, n: int = 1) -> None:
        if n > 0:
            self._replies.inc(n)

    def collect(self) -> Iterable[Metric]:
        return self.registry.collect()
