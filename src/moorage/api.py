"""The HTTP API: jobs, status, health, metrics and the operator's status page.

:func:`create_app` builds a FastAPI app over one :class:`~moorage.queue.Queue`
(and, inside ``moorage serve``, its :class:`~moorage.dispatcher.Dispatcher`).
:func:`serve_http` runs it under uvicorn in a daemon thread.  Every request
that is refused changes nothing: input is checked completely before the
queue is called, and each queue call is one transaction.

Two pure ASGI middlewares sit in front of the routes: the bearer-token check
(so nothing, not even the body, is read for a caller without the token) and
the body-size limit (enforced from ``Content-Length`` and again while the body
streams in, so a chunked upload cannot get past it).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NamedTuple

import uvicorn
from fastapi import FastAPI, Header, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from moorage import validation
from moorage.errors import (
    ConfigError,
    InvalidInput,
    InvalidTransition,
    JobNotFound,
    MoorageError,
    StoreError,
)
from moorage.metrics import Metrics
from moorage.models import Job, Status
from moorage.outbox import Outbox
from moorage.queue import Queue
from moorage.schedule import parse_repeat

if TYPE_CHECKING:
    from collections.abc import Iterable

    from moorage.dispatcher import Dispatcher

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
MAX_ID = 2**63 - 1  # SQLite's largest integer; larger ids cannot exist
MAX_PAGE = 500
RECENT_MINUTES = 10
#: Paths served without the token: liveness, and the status page's files
#: (they hold no data; the page's script sends the token for every call).
OPEN_PATHS = frozenset({"/healthz", "/", "/favicon.ico"})
OPEN_PREFIXES = ("/static/",)


# -- request and response bodies ------------------------------------------------


class JobIn(BaseModel):
    """A job to enqueue.  Unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", strict=True)

    group_id: str = Field(min_length=1, max_length=validation.MAX_GROUP_ID_CHARS)
    text: str
    kind: Literal["message", "task"] = "message"
    priority: Literal["high", "normal", "low"] = "normal"
    chat_jid: str | None = Field(default=None, max_length=validation.MAX_CHAT_JID_CHARS)
    run_after: float | None = Field(
        default=None, ge=0, allow_inf_nan=False, description="epoch seconds; tasks only"
    )
    timeout: float | None = Field(
        default=None, gt=0, allow_inf_nan=False, description="seconds per attempt"
    )
    max_retries: int | None = Field(
        default=None,
        ge=0,
        le=1000,
        description="failed attempts retried before the job fails (default: "
        "the server's retry policy, 5 unless configured)",
    )
    repeat: str | None = Field(
        default=None,
        max_length=200,
        description="tasks only: an interval (15m, 2h) or a five-field cron "
        "expression, in UTC or after TZ=<IANA zone>; each occurrence "
        "schedules the next",
    )


StatusName = Literal["waiting", "active", "completed", "failed", "cancelled"]
JobId = Annotated[int, PathParam(ge=1, le=MAX_ID)]


class JobOut(BaseModel):
    id: int
    group_id: str
    kind: Literal["message", "task"]
    status: StatusName
    priority: Literal["high", "normal", "low"]
    message_text: str
    chat_jid: str | None
    enqueued_at: float
    run_after: float
    started_at: float | None
    finished_at: float | None
    attempt: int
    retry_count: int
    max_retries: int
    timeout: float | None
    container_id: str | None
    last_error: str | None
    batch_of: int | None = Field(
        default=None, description="the job whose attempt carries this one"
    )
    idle_since: float | None = None
    closing_at: float | None = None
    repeat: str | None = None
    series_id: int | None = None
    scheduled_for: float | None = None
    follows: int | None = None


class EventOut(BaseModel):
    id: int
    job_id: int
    at: float
    from_status: StatusName | None
    to_status: StatusName
    attempt: int
    detail: str | None


class ReplyOut(BaseModel):
    id: int
    job_id: int
    attempt: int
    position: int
    group_id: str
    chat_jid: str | None
    kind: str
    text: str
    created_at: float
    delivered_at: float | None


class JobPage(BaseModel):
    jobs: list[JobOut]
    next_before_id: int | None = Field(
        description="pass as before_id for the next page; null on the last page"
    )


class JobDetail(BaseModel):
    job: JobOut
    events: list[EventOut]
    replies: list[ReplyOut]


class GroupOut(BaseModel):
    group_id: str
    active_job: int | None
    container_id: str | None
    waiting: int
    agent: Literal["working", "idle", "closing"] | None = Field(
        default=None,
        description="the running agent, as it last said: working on its input, "
        "idle (waiting for more), or asked to close",
    )


class RuntimeOut(BaseModel):
    name: str | None
    engine_ok: bool | None
    active_containers: int | None


class RecoveryOut(BaseModel):
    dry_run: bool
    seconds: float
    at: float
    counts: dict[str, int]
    actions: list[str]


class RepliesOut(BaseModel):
    undelivered: int
    per_minute: list[int] = Field(
        description=f"replies recorded in each of the last {RECENT_MINUTES} "
        "minutes, the current minute first"
    )


class StatusOut(BaseModel):
    counts: dict[str, int]
    groups: list[GroupOut]
    runtime: RuntimeOut
    last_recovery: RecoveryOut | None
    replies: RepliesOut
    recent_failures: list[JobOut]


class HealthOut(BaseModel):
    status: Literal["ok"]


class ReadyOut(BaseModel):
    ready: bool
    reason: str | None


class ErrorOut(BaseModel):
    error: str = Field(description="a stable code: invalid_input, not_found, …")
    message: str
    details: list[dict[str, Any]] | None = None


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorOut} for code in codes}


# -- the app ---------------------------------------------------------------------


def create_app(
    queue: Queue,
    *,
    dispatcher: Dispatcher | None = None,
    token: str | None = None,
    max_body_bytes: int = 512 * 1024,
    wake: Callable[[], None] | None = None,
    metrics: Metrics | None = None,
) -> FastAPI:
    """The HTTP app over ``queue``.

    ``dispatcher`` (when this process runs one) feeds readiness, the runtime
    state and the active-container gauge; ``token`` makes every path but
    ``/healthz`` and the status page's files require ``Authorization: Bearer
    <token>``; ``wake`` is called after each new job; ``metrics`` are the
    dispatcher's counters, exported at ``/metrics`` with the gauges computed
    at scrape time.
    """
    if token is not None and not token:
        raise ConfigError("the HTTP token must not be empty")
    if max_body_bytes < 1:
        raise ConfigError("max_body_bytes must be at least 1")
    outbox = Outbox(queue.db, queue.clock)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ScrapeCollector(queue, outbox, dispatcher, metrics or Metrics()))

    app = FastAPI(
        title="moorage",
        version="1",
        description="Crash-safe per-group work queue for chat-agent jobs.",
        responses=_errors(401),
    )
    _install_error_handlers(app)
    _install_openapi(app, secured=token is not None)

    @app.post(
        "/v1/jobs",
        status_code=201,
        response_model=JobOut,
        responses={
            200: {"model": JobOut, "description": "replay of an idempotent request"},
            **_errors(400, 409, 413, 422),
        },
        tags=["jobs"],
    )
    def enqueue(
        body: JobIn,
        response: Response,
        idempotency_key: Annotated[
            str | None,
            Header(
                alias="Idempotency-Key",
                pattern=r"^[!-~]{1,200}$",
                description="a retried request with the same key returns the "
                "same job (200) instead of making a second one",
            ),
        ] = None,
    ) -> dict[str, object]:
        """Enqueue a job (201).  With an ``Idempotency-Key`` already used for
        the same body: the job made then (200); for a different body: 409."""
        key = None
        if idempotency_key is not None:
            key = validation.idempotency_key(idempotency_key)
            known = queue.job_for_key(key)
            if known is not None:
                _check_same_request(known, body, key)
                response.status_code = 200
                return known.as_dict()
        job = queue.enqueue(
            body.group_id,
            body.text,
            kind=body.kind,
            chat_jid=body.chat_jid,
            priority=body.priority,
            run_after=body.run_after,
            timeout=body.timeout,
            max_retries=body.max_retries,
            idempotency_key=key,
            repeat=body.repeat,
        )
        if key is not None:
            # A concurrent request with the same key may have won the race.
            _check_same_request(job, body, key)
        if wake is not None:
            wake()
        return job.as_dict()

    @app.get(
        "/v1/jobs", response_model=JobPage, responses=_errors(400, 422), tags=["jobs"]
    )
    def list_jobs(
        status: StatusName | None = None,
        group_id: Annotated[
            str | None, Query(max_length=validation.MAX_GROUP_ID_CHARS)
        ] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
        before_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    ) -> dict[str, object]:
        """Jobs newest first; follow ``next_before_id`` for older ones."""
        jobs = queue.jobs(
            status=status, group_id=group_id, limit=limit, before_id=before_id
        )
        more = len(jobs) == limit and jobs[-1].id > 1
        return {
            "jobs": [job.as_dict() for job in jobs],
            "next_before_id": jobs[-1].id if more else None,
        }

    @app.get(
        "/v1/jobs/{job_id}",
        response_model=JobDetail,
        responses=_errors(404, 422),
        tags=["jobs"],
    )
    def get_job(job_id: JobId) -> dict[str, object]:
        """A job with its event history and its replies."""
        job = queue.get(job_id)
        return {
            "job": job.as_dict(),
            "events": [event.as_dict() for event in queue.events(job_id)],
            "replies": [reply.as_dict() for reply in outbox.for_job(job_id)],
        }

    @app.post(
        "/v1/jobs/{job_id}/retry",
        response_model=JobOut,
        responses=_errors(404, 409, 422),
        tags=["jobs"],
    )
    def retry_job(job_id: JobId) -> dict[str, object]:
        """Send a failed or cancelled job back to waiting (409 otherwise)."""
        job = queue.retry(job_id).as_dict()
        if wake is not None:
            wake()
        return job

    @app.post(
        "/v1/jobs/{job_id}/cancel",
        response_model=JobOut,
        responses=_errors(404, 409, 422),
        tags=["jobs"],
    )
    def cancel_job(job_id: JobId) -> dict[str, object]:
        """Withdraw a waiting job, or stop a running attempt: the job is
        cancelled at once and its container stopped (409 for a job that is
        finished, a batch member or being offered)."""
        job = queue.cancel(job_id).as_dict()
        if wake is not None:
            wake()
        return job

    @app.get("/v1/status", response_model=StatusOut, tags=["operations"])
    def status() -> dict[str, object]:
        """Counts, groups, runtime, last recovery, replies, recent failures."""
        return _status(queue, outbox, dispatcher)

    @app.get("/healthz", response_model=HealthOut, tags=["operations"])
    def healthz() -> dict[str, str]:
        """Liveness: 200 whenever the process serves HTTP.  Never needs the token."""
        return {"status": "ok"}

    @app.get(
        "/readyz",
        response_model=ReadyOut,
        responses={503: {"model": ReadyOut, "description": "not ready"}},
        tags=["operations"],
    )
    def readyz() -> JSONResponse:
        """Readiness: 200 once recovery has run and the engine answers."""
        reason = _not_ready_reason(dispatcher)
        return JSONResponse(
            {"ready": reason is None, "reason": reason},
            status_code=503 if reason else 200,
        )

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        responses={
            200: {
                "content": {"text/plain": {"schema": {"type": "string"}}},
                "description": "Prometheus text exposition format",
            }
        },
        tags=["operations"],
    )
    def metrics_text() -> Response:
        """Prometheus metrics (text format 0.0.4)."""
        return Response(
            generate_latest(registry),
            media_type="text/plain; version=0.0.4; charset=utf-8",
        )

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers=_PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    # Added last = outermost: the token is checked before the body is read.
    app.add_middleware(_BodyLimit, max_bytes=max_body_bytes)
    if token is not None:
        app.add_middleware(_BearerAuth, token=token)
    return app


_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _check_same_request(job: Job, body: JobIn, key: str) -> None:
    """A reused idempotency key must come with the request it was made for."""
    same = (
        job.group_id == body.group_id
        and job.message_text == body.text
        and job.kind.value == body.kind
        and job.priority.label == body.priority
        and job.chat_jid == (body.chat_jid or None)
        and job.timeout == body.timeout
        and (body.max_retries is None or job.max_retries == body.max_retries)
        and (body.run_after is None or job.run_after == body.run_after)
        and _same_repeat(body.repeat, job.repeat)
    )
    if not same:
        raise _KeyReused(
            f"idempotency key {key!r} was used for job {job.id} with a "
            "different request; use a new key for a new job"
        )


def _same_repeat(asked: str | None, stored: str | None) -> bool:
    """Whether a request's ``repeat`` is the one stored (in its normal form)."""
    if asked is None or stored is None:
        return asked is stored
    return parse_repeat(asked).spec == stored


class _KeyReused(InvalidTransition):
    pass


def _agent_state(lead: Job) -> str:
    if lead.closing_at is not None:
        return "closing"
    return "working" if lead.idle_since is None else "idle"


def _status(
    queue: Queue, outbox: Outbox, dispatcher: Dispatcher | None
) -> dict[str, object]:
    snapshot = queue.status()
    leads = {job.id: job for job in queue.active()}
    groups = []
    for g in snapshot.groups:
        lead = leads.get(g.active_job) if g.active_job else None
        groups.append(
            {
                "group_id": g.group_id,
                "active_job": g.active_job,
                "container_id": None if lead is None else lead.container_id,
                "waiting": g.waiting,
                "agent": None if lead is None else _agent_state(lead),
            }
        )
    runtime: dict[str, object] = {
        "name": None,
        "engine_ok": None,
        "active_containers": None,
    }
    recovery = None
    if dispatcher is not None:
        runtime = {
            "name": getattr(dispatcher.runtime, "name", None),
            "engine_ok": dispatcher.engine_ok,
            "active_containers": len(dispatcher.watched),
        }
        if dispatcher.last_recovery is not None:
            recovery = dispatcher.last_recovery.as_dict()
    failures = queue.jobs(status=Status.FAILED, limit=5)
    return {
        "counts": snapshot.counts,
        "groups": groups,
        "runtime": runtime,
        "last_recovery": recovery,
        "replies": {
            "undelivered": outbox.undelivered(),
            "per_minute": outbox.replies_per_minute(RECENT_MINUTES),
        },
        "recent_failures": [job.as_dict() for job in failures],
    }


def _not_ready_reason(dispatcher: Dispatcher | None) -> str | None:
    if dispatcher is None:
        return "no dispatcher runs in this process"
    if dispatcher.last_recovery is None:
        return "start-up recovery has not finished"
    if not dispatcher.engine_ok:
        return "the container engine cannot be reached"
    return None


# -- errors ------------------------------------------------------------------------

_ERROR_STATUS: tuple[tuple[type[MoorageError], int, str], ...] = (
    (JobNotFound, 404, "not_found"),
    (_KeyReused, 409, "idempotency_key_reused"),
    (InvalidTransition, 409, "invalid_transition"),
    (InvalidInput, 422, "invalid_input"),
    (StoreError, 503, "store_unavailable"),
)
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
}


def _error(
    status: int,
    code: str,
    message: str,
    details: list[dict[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, object] = {"error": code, "message": message}
    if details is not None:
        body["details"] = details
    return JSONResponse(body, status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    async def moorage_error(request: Request, exc: Exception) -> JSONResponse:
        for cls, status, code in _ERROR_STATUS:
            if isinstance(exc, cls):
                return _error(status, code, str(exc))
        logger.error("unexpected error on %s: %s", request.url.path, exc)
        return _error(500, "internal", "internal error")

    async def request_invalid(request: Request, exc: Exception) -> JSONResponse:
        errors = exc.errors() if isinstance(exc, RequestValidationError) else []
        # The input itself is never echoed back: it may be large or private.
        details = [
            {
                "loc": [str(part) for part in e.get("loc", ())],
                "msg": str(e.get("msg", "")),
                "type": str(e.get("type", "")),
            }
            for e in errors
        ]
        if any(d["type"] == "json_invalid" for d in details):
            return _error(400, "malformed_json", "the body is not valid JSON", details)
        return _error(422, "invalid_input", "the request is not valid", details)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        if not isinstance(exc, StarletteHTTPException):
            return _error(500, "internal", "internal error")
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return _error(exc.status_code, code, str(exc.detail), headers=exc.headers)

    app.add_exception_handler(MoorageError, moorage_error)
    app.add_exception_handler(RequestValidationError, request_invalid)
    app.add_exception_handler(StarletteHTTPException, http_error)


def _install_openapi(app: FastAPI, *, secured: bool) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            if secured:
                components = schema.setdefault("components", {})
                components.setdefault("securitySchemes", {})["bearer"] = {
                    "type": "http",
                    "scheme": "bearer",
                }
                schema["security"] = [{"bearer": []}]
                health = schema["paths"]["/healthz"]["get"]
                health["security"] = []
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


# -- middleware ----------------------------------------------------------------------


async def _send_json(
    send: Send, status: int, body: dict[str, object], headers: dict[str, str]
) -> None:
    payload = json.dumps(body).encode()
    raw = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(payload)),
    ]
    raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


class _BearerAuth:
    """Refuse every request without ``Authorization: Bearer <token>`` (401),
    except the open paths.  The comparison takes constant time."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        given = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                given = value
                break
        if hmac.compare_digest(given, self.expected):
            await self.app(scope, receive, send)
            return
        await _send_json(
            send,
            401,
            {"error": "unauthorized", "message": "a valid bearer token is required"},
            {"WWW-Authenticate": 'Bearer realm="moorage"'},
        )


def _is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


class _BodyTooLarge(StarletteHTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes")


class _BodyLimit:
    """Refuse bodies over ``max_bytes`` (413): at once when ``Content-Length``
    says so, else as soon as the streamed body passes the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await _send_json(
                send,
                413,
                {
                    "error": "body_too_large",
                    "message": str(_BodyTooLarge(self.max_bytes).detail),
                },
                {"Connection": "close"},
            )
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge(self.max_bytes)
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, watching_send)
        except _BodyTooLarge as exc:
            # Normally the app's handler has answered already; this catches a
            # read that happened outside a route (a middleware, a mount).
            if started:
                raise
            await _send_json(
                send, 413, {"error": "body_too_large", "message": str(exc.detail)}, {}
            )


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


# -- metrics -------------------------------------------------------------------------


class _ScrapeCollector:
    """Gauges computed from the queue and dispatcher at each scrape, plus the
    dispatcher's counters and histograms."""

    def __init__(
        self,
        queue: Queue,
        outbox: Outbox,
        dispatcher: Dispatcher | None,
        metrics: Metrics,
    ) -> None:
        self.queue = queue
        self.outbox = outbox
        self.dispatcher = dispatcher
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        jobs = GaugeMetricFamily(
            "moorage_jobs", "Jobs by status, right now.", labels=["status"]
        )
        for status, count in self.queue.status().counts.items():
            jobs.add_metric([status], count)
        yield jobs
        yield GaugeMetricFamily(
            "moorage_replies_undelivered",
            "Replies recorded but not yet accepted by the sink.",
            value=self.outbox.undelivered(),
        )
        if self.dispatcher is not None:
            yield GaugeMetricFamily(
                "moorage_active_containers",
                "Containers the dispatcher watches right now.",
                value=len(self.dispatcher.watched),
            )
            yield GaugeMetricFamily(
                "moorage_engine_up",
                "1 when the container engine answers, 0 during an outage.",
                value=1 if self.dispatcher.engine_ok else 0,
            )
        yield from self.metrics.collect()


# -- serving -------------------------------------------------------------------------


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen anywhere but loopback without a token.

    A token, when given, must be at least 16 characters: it is the only thing
    between the network and the queue.
    """
    if token is not None and len(token) < 16:
        raise ConfigError("the HTTP token must be at least 16 characters long")
    if token is None and not is_loopback(host):
        raise ConfigError(
            f"refusing to serve HTTP on {host or 'all interfaces'} without a token; "
            "set a token (MOORAGE_HTTP_TOKEN) or bind to 127.0.0.1"
        )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class HttpServer(NamedTuple):
    """A running uvicorn server and its thread; unpacks as ``(server, thread)``."""

    server: uvicorn.Server
    thread: threading.Thread

    @property
    def port(self) -> int:
        """The port actually bound (useful after asking for port 0)."""
        for server in getattr(self.server, "servers", []):
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        raise ConfigError("the HTTP server is not listening")

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the server to finish its requests and stop; wait for it."""
        self.server.should_exit = True
        self.thread.join(timeout)


def serve_http(
    app: FastAPI, host: str, port: int, *, startup_timeout: float = 10.0
) -> HttpServer:
    """Start uvicorn on ``host:port`` in a daemon thread and wait until it
    listens.  Raises ConfigError when it cannot (port taken, bad host)."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        server_header=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=_run_server, args=(server,), name="moorage-http", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(1.0)
            raise ConfigError(f"cannot serve HTTP on {host}:{port}")
        time.sleep(0.01)
    handle = HttpServer(server, thread)
    logger.info("serving HTTP on %s:%d", host, handle.port, extra={"action": "http"})
    return handle


def _run_server(server: uvicorn.Server) -> None:
    # uvicorn ends with SystemExit when it cannot listen; serve_http sees the
    # thread end before the server started and reports it as ConfigError.
    try:
        server.run()
    except SystemExit as exc:
        logger.error("the HTTP server stopped: exit status %s", exc.code)
