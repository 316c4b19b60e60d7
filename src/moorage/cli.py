"""The ``moorage`` command line: a thin shell around :class:`moorage.queue.Queue`.

Every command parses and checks all of its input before it opens the
database, so a rejected command changes nothing (not even by creating an
empty data directory).  Errors moorage raises on purpose are printed as
``moorage: error: ...`` and exit with the error's ``exit_code``; bad option
values are click usage errors (exit 2); Ctrl-C exits 130.

Other modules add commands to this group with ``main.add_command(...)``
(``serve`` and ``recover`` live with the dispatcher); they reach the queue
through :func:`open_queue` and print through :func:`echo_json` and
:func:`format_table`.
"""

from __future__ import annotations

import json
import math
import sys
import traceback
import unicodedata
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import MISSING, dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import click
import httpx

from moorage import __version__, validation
from moorage.errors import (
    InvalidInput,
    InvalidTransition,
    JobNotFound,
    MoorageError,
    RemoteError,
    ServerUnavailable,
    StoreError,
)
from moorage.logs import LEVELS, LogFormat, configure_logging
from moorage.models import Event, GroupStatus, Job, Kind, Priority, QueueStatus, Status
from moorage.queue import Queue
from moorage.schedule import parse_repeat
from moorage.store.sqlite import DB_FILENAME, Synchronous

EXIT_INTERRUPTED = 130
#: Seconds to wait for a server given with ``--url`` (connect and each read).
REMOTE_TIMEOUT = 10.0
#: Largest id SQLite can store; larger ones would fail inside the driver.
MAX_ID = 2**63 - 1
PREVIEW_WIDTH = 40


# -- input types ----------------------------------------------------------------

if TYPE_CHECKING:  # click >= 8.2 types ParamType by its value; 8.1 cannot subscript
    _SecondsParam = click.ParamType[float]
    _AnyParam = click.ParamType[Any]
else:
    _SecondsParam = _AnyParam = click.ParamType


class DurationType(_SecondsParam):
    """``90``, ``90s``, ``15m``, ``24h``, ``7d``, ``2w`` -> seconds."""

    name = "duration"

    def __init__(self, *, positive: bool = False) -> None:
        self.positive = positive

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float):
            return value
        try:
            seconds = validation.duration(str(value))
        except InvalidInput as exc:
            self.fail(str(exc), param, ctx)
        if not math.isfinite(seconds):
            self.fail(f"{value!r} is too long", param, ctx)
        if self.positive and seconds <= 0:
            self.fail("must be more than 0 seconds", param, ctx)
        return seconds


class TimestampType(_SecondsParam):
    """Seconds since the epoch, or ISO 8601 (local time unless it names a zone)."""

    name = "time"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float):
            return value
        text = str(value).strip()
        try:
            epoch = float(text)
        except ValueError:
            try:
                epoch = datetime.fromisoformat(text).timestamp()
            except (ValueError, OverflowError, OSError):
                self.fail(
                    f"{value!r} is neither epoch seconds nor an ISO 8601 time "
                    "(like 2026-12-03T17:40:00 or 2026-12-03T16:40:00Z)",
                    param,
                    ctx,
                )
        if not math.isfinite(epoch) or epoch < 0:
            self.fail(f"{value!r} is not a usable time", param, ctx)
        return epoch


class CheckedType(_AnyParam):
    """A text value checked by one of :mod:`moorage.validation`'s functions."""

    def __init__(self, name: str, check: Any) -> None:
        self.name = name
        self._check = check

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> Any:
        try:
            return self._check(value)
        except InvalidInput as exc:
            self.fail(str(exc), param, ctx)


def _job_id(value: object) -> int:
    number = validation.job_id(value)
    if number > MAX_ID:
        raise InvalidInput(f"job id {number} is too large")
    return number


JOB_ID = CheckedType("job", _job_id)
GROUP_ID = CheckedType("group", validation.group_id)
CHAT_JID = CheckedType("jid", validation.chat_jid)


# -- output helpers ---------------------------------------------------------------

# Bidirectional controls are format characters (Cf) that can make a terminal
# show text in an order other than the bytes; other Cf (like the zero-width
# joiner inside emoji) are harmless and kept.
_BIDI = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def printable(text: str, *, keep_newlines: bool = False) -> str:
    """Text safe to write to a terminal: control characters (which could move
    the cursor or recolour the screen) are shown escaped, like ``\\x1b``."""
    out: list[str] = []
    for ch in text:
        category = unicodedata.category(ch)
        if keep_newlines and ch in "\n\t":
            out.append(ch)
        elif category in ("Cc", "Cs", "Co", "Cn", "Zl", "Zp") or ch in _BIDI:
            out.append(ch.encode("unicode_escape", "backslashreplace").decode("ascii"))
        else:
            out.append(ch)
    return "".join(out)


def _display_width(text: str) -> int:
    return sum(
        0
        if unicodedata.combining(ch)
        else 2
        if unicodedata.east_asian_width(ch) in ("W", "F")
        else 1
        for ch in text
    )


def preview(text: str, width: int = PREVIEW_WIDTH) -> str:
    """One line of at most ``width`` columns, ending in ``…`` if cut."""
    flat = printable(" ".join(text.split()))
    if _display_width(flat) <= width:
        return flat
    out = ""
    for ch in flat:
        if _display_width(out + ch) > width - 1:
            break
        out += ch
    return out + "…"


def format_table(
    headers: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    right: Collection[int] = (),
) -> str:
    """Columns separated by two spaces, each as wide as its widest cell;
    columns whose index is in ``right`` are right-aligned."""
    cells = [list(headers), *(list(row) for row in rows)]
    widths = [max(_display_width(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = []
        for i, cell in enumerate(row):
            pad = " " * (widths[i] - _display_width(cell))
            parts.append(pad + cell if i in right else cell + pad)
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def format_fields(pairs: Iterable[tuple[str, str]]) -> str:
    """``key  value`` lines with the values aligned."""
    items = list(pairs)
    width = max((len(key) for key, _ in items), default=0)
    return "\n".join(f"{key:<{width}}  {value}".rstrip() for key, value in items)


def when(moment: float | None) -> str:
    """Local time like ``2026-12-03 17:40:12``; ``-`` for none."""
    if moment is None:
        return "-"
    return datetime.fromtimestamp(moment).strftime("%Y-%m-%d %H:%M:%S")


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.4g}{unit}"
    return f"{seconds:.4g}s"


def echo_json(value: object) -> None:
    """One JSON document on stdout (ASCII only, so any locale can print it)."""
    click.echo(json.dumps(value, ensure_ascii=True))


# -- errors -----------------------------------------------------------------------


def error_lines(error: BaseException, *, debug: bool = False) -> list[str]:
    """What the CLI prints for an error: the traceback (only with --debug),
    the message, and the cause chain on one more line."""
    lines: list[str] = []
    if debug:
        lines.append("".join(traceback.format_exception(error)).rstrip())
    message = " ".join(str(error).split()) or type(error).__name__
    lines.append(f"moorage: error: {message}")
    causes: list[str] = []
    cause = error.__cause__
    depth = 0
    while cause is not None and len(causes) < 5 and depth < 10:
        depth += 1
        text = " ".join(str(cause).split())
        line = f"{type(cause).__name__}: {text}" if text else type(cause).__name__
        if not causes or causes[-1] != line:  # a library re-raising its own error
            causes.append(line)
        cause = cause.__cause__
    if causes:
        lines.append("moorage: caused by: " + " <- ".join(causes))
    return lines


class ReportedError(Exception):
    """A :class:`MoorageError` on its way out of a command, with whether
    ``--debug`` was given (the context is gone by the time it is printed)."""

    def __init__(self, error: MoorageError, *, debug: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.debug = debug


# -- the group --------------------------------------------------------------------


@dataclass
class CliState:
    """What the global options decided, shared with every command."""

    data_dir: Path
    synchronous: Synchronous
    debug: bool
    queue: Queue | None = None
    #: --synchronous (or its variable) was given, not left at its default:
    #: only then does it override the setting in moorage.toml.
    synchronous_given: bool = False


def _state(ctx: click.Context) -> CliState:
    state = ctx.find_object(CliState)
    if state is None:  # only if a command is invoked outside ``main``
        raise click.UsageError("moorage commands run under the moorage group")
    return state


def open_queue(ctx: click.Context, *, create: bool = True) -> Queue:
    """The queue of ``--data-dir``, opened on first use and closed when the
    command line finishes.

    With ``create=False`` a data directory without a database is an error
    (a :class:`StoreError`) instead of a new empty queue, so a mistyped
    ``--data-dir`` is not mistaken for an empty queue.
    """
    state = _state(ctx)
    if state.queue is not None:
        return state.queue
    if not create and not (state.data_dir / DB_FILENAME).is_file():
        raise StoreError(
            f"no moorage database in {state.data_dir} "
            "(check --data-dir or MOORAGE_DATA_DIR; only enqueue creates one)"
        )
    queue = Queue.open(state.data_dir, synchronous=state.synchronous)
    state.queue = queue

    def close() -> None:
        state.queue = None
        queue.close()

    ctx.find_root().call_on_close(close)
    return queue


class MoorageGroup(click.Group):
    """A click group that turns MoorageError into its exit code and Ctrl-C
    into 130.

    ``main(argv)`` (or calling the group) behaves like any click command: in
    standalone mode it exits the process; with ``standalone_mode=False`` it
    prints the same messages and *returns* the exit status instead.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MoorageError as exc:
            state = ctx.find_object(CliState)
            raise ReportedError(exc, debug=state is not None and state.debug) from exc

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        code = self._run(
            args, prog_name or "moorage", complete_var, windows_expand_args, extra
        )
        if standalone_mode:
            sys.exit(code)
        return code

    def _run(
        self,
        args: Sequence[str] | None,
        prog_name: str,
        complete_var: str | None,
        windows_expand_args: bool,
        extra: dict[str, Any],
    ) -> int:
        try:
            result = super().main(
                args,
                prog_name,
                complete_var,
                standalone_mode=False,
                windows_expand_args=windows_expand_args,
                **extra,
            )
        except ReportedError as exc:
            for line in error_lines(exc.error, debug=exc.debug):
                click.echo(line, err=True)
            return exc.error.exit_code
        except click.ClickException as exc:
            exc.show()
            return exc.exit_code
        except click.Abort as exc:
            if isinstance(exc.__cause__, KeyboardInterrupt):
                return EXIT_INTERRUPTED
            click.echo("Aborted!", err=True)
            return 1
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
        except MoorageError as exc:  # raised outside a command (while closing)
            for line in error_lines(exc):
                click.echo(line, err=True)
            return exc.exit_code
        # A command returns None; click's own exits (like --help) return a code.
        return result if isinstance(result, int) else 0


@click.group(cls=MoorageGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="MOORAGE_DATA_DIR",
    default=Path("moorage-data"),
    show_default="./moorage-data",
    help="The data directory (created owner-only on first enqueue). "
    "Env: MOORAGE_DATA_DIR.",
)
@click.option(
    "--synchronous",
    type=click.Choice(["FULL", "NORMAL"], case_sensitive=False),
    envvar="MOORAGE_SYNCHRONOUS",
    default="FULL",
    show_default=True,
    help="SQLite durability: FULL survives power loss, NORMAL only a crash. "
    "Env: MOORAGE_SYNCHRONOUS.",
)
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.option(
    "--log-level",
    type=click.Choice(LEVELS, case_sensitive=False),
    envvar="MOORAGE_LOG_LEVEL",
    default="warning",
    show_default=True,
    help="Env: MOORAGE_LOG_LEVEL.",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    envvar="MOORAGE_LOG_FORMAT",
    default="text",
    show_default=True,
    help="Logs on stderr as text or one JSON object per line. Env: MOORAGE_LOG_FORMAT.",
)
@click.version_option(__version__, prog_name="moorage")
@click.pass_context
def main(
    ctx: click.Context,
    data_dir: Path,
    synchronous: str,
    debug: bool,
    log_level: str,
    log_format: str,
) -> None:
    """A crash-safe, per-group work queue for chat agents in containers."""
    configure_logging(log_level, cast(LogFormat, log_format))
    ctx.obj = CliState(
        data_dir=data_dir,
        synchronous=cast(Synchronous, synchronous),
        debug=debug,
        synchronous_given=(
            ctx.get_parameter_source("synchronous")
            is not click.core.ParameterSource.DEFAULT
        ),
    )


# -- a running server -------------------------------------------------------------

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

#: The largest page of jobs the server hands out; longer lists take several.
REMOTE_PAGE = 500


def _server_url(value: object) -> str:
    text = str(value).strip()
    try:
        url = httpx.URL(text)
    except httpx.InvalidURL as exc:
        raise InvalidInput(f"{text!r} is not a URL: {exc}") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise InvalidInput(f"{text!r} is not an http:// or https:// URL")
    return text.rstrip("/")


SERVER_URL = CheckedType("url", _server_url)


def remote_options(function: F) -> F:
    """``--url`` and ``--token``: ask a running server instead of the data
    directory."""
    function = click.option(
        "--token",
        metavar="TOKEN",
        envvar="MOORAGE_HTTP_TOKEN",
        help="Bearer token for --url. Env: MOORAGE_HTTP_TOKEN (safer than the "
        "flag, which other users can see in the process list).",
    )(function)
    return click.option(
        "--url",
        type=SERVER_URL,
        envvar="MOORAGE_URL",
        help="Ask the moorage server at this URL (like http://127.0.0.1:8750) "
        "instead of reading --data-dir. Env: MOORAGE_URL.",
    )(function)


def _job_from(document: Any) -> Job:
    """The job of a server's JSON; fields it does not send keep their default."""
    values = {
        f.name: document[f.name]
        for f in fields(Job)
        if f.default is MISSING or f.name in document
    }
    values["kind"] = Kind(document["kind"])
    values["status"] = Status(document["status"])
    values["priority"] = Priority.parse(document["priority"])
    return Job(**values)


def _event_from(document: Any) -> Event:
    before = document["from_status"]
    return Event(
        id=document["id"],
        job_id=document["job_id"],
        at=document["at"],
        from_status=None if before is None else Status(before),
        to_status=Status(document["to_status"]),
        attempt=document["attempt"],
        detail=document["detail"],
    )


def _status_from(document: Any) -> QueueStatus:
    groups = [
        GroupStatus(g["group_id"], g["active_job"], g["waiting"])
        for g in document["groups"]
    ]
    return QueueStatus(counts=dict(document["counts"]), groups=groups)


def _error_body(response: httpx.Response) -> tuple[str | None, str]:
    """The server's error code and message (with the first validation
    details), or the HTTP reason phrase when the answer is not moorage's."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("message"), str):
        return None, response.reason_phrase or "no explanation given"
    message = body["message"]
    details = body.get("details")
    if isinstance(details, list):
        parts = [
            f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg', '')}"
            for d in details[:3]
            if isinstance(d, dict)
        ]
        if parts:
            message += f" ({'; '.join(parts)})"
    code = body.get("error")
    return (code if isinstance(code, str) else None), printable(message)


class RemoteServer:
    """The JSON API of a running ``moorage serve --http``.

    Every failure is a :class:`MoorageError`: no answer is
    :class:`ServerUnavailable`; a missing or wrong token, another refusal or
    a server error is a :class:`RemoteError`.  The refusals a local command
    knows too (no such job, a change the job's status does not allow, input
    the server rejects) become :class:`JobNotFound`,
    :class:`InvalidTransition` and :class:`InvalidInput`, so a command exits
    with the same status whichever way it ran.
    """

    def __init__(
        self, url: str, token: str | None, *, timeout: float = REMOTE_TIMEOUT
    ) -> None:
        headers = {"User-Agent": f"moorage/{__version__}"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.url = url
        self.timeout = timeout
        self.has_token = bool(token)
        self._client = httpx.Client(base_url=url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._client.close()

    def status(self) -> dict[str, Any]:
        document = self.call("GET", "/v1/status")
        self.decode(_status_from, document)  # refuse a foreign answer early
        return cast(dict[str, Any], document)

    def jobs(
        self,
        *,
        status: str | None,
        group_id: str | None,
        limit: int,
        before_id: int | None,
    ) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        while len(found) < limit:
            params: dict[str, str | int] = {
                "limit": min(limit - len(found), REMOTE_PAGE)
            }
            if status is not None:
                params["status"] = status
            if group_id is not None:
                params["group_id"] = group_id
            if before_id is not None:
                params["before_id"] = before_id
            page = self.call("GET", "/v1/jobs", params=params)
            found += self.decode(lambda p: [self._checked(j) for j in p["jobs"]], page)
            before_id = self.decode(lambda p: p["next_before_id"], page)
            if before_id is None:
                break
        return found

    def job(self, job_id: int) -> dict[str, Any]:
        """``{"job", "events", "replies"}`` of one job."""
        document = self.call("GET", f"/v1/jobs/{job_id}", job_id=job_id)
        self.decode(lambda d: self._checked(d["job"]), document)
        return cast(dict[str, Any], document)

    def enqueue(
        self, body: dict[str, object], idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """The new job (or the one made under the key), as the server sent it."""
        headers = (
            {} if idempotency_key is None else {"Idempotency-Key": idempotency_key}
        )
        return self._checked(self.call("POST", "/v1/jobs", json=body, headers=headers))

    def change(self, job_id: int, verb: str) -> dict[str, Any]:
        """``retry`` or ``cancel`` a job; the job as the server sent it."""
        return self._checked(
            self.call("POST", f"/v1/jobs/{job_id}/{verb}", job_id=job_id)
        )

    def _checked(self, document: Any) -> dict[str, Any]:
        """A job document, once it is known to read as a job."""
        self.decode(_job_from, document)
        return cast(dict[str, Any], document)

    def call(
        self, method: str, path: str, *, job_id: int | None = None, **kwargs: Any
    ) -> Any:
        """The decoded JSON answer to one request; ``job_id`` is the job a
        404 is about."""
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise ServerUnavailable(
                f"the server at {self.url} did not answer within {self.timeout:g} s"
            ) from exc
        except httpx.TransportError as exc:
            raise ServerUnavailable(
                f"cannot reach a moorage server at {self.url}"
            ) from exc
        if not response.is_success:
            raise self._refusal(response, job_id)
        try:
            return response.json()
        except ValueError as exc:
            raise RemoteError(
                f"{self.url} answered {method} {path} with something other "
                "than JSON; is it a moorage server?",
                status=response.status_code,
            ) from exc

    def decode(self, convert: Callable[[Any], T], document: Any) -> T:
        """``convert(document)``; an answer of the wrong shape is a RemoteError."""
        try:
            return convert(document)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise RemoteError(
                f"the answer of {self.url} is not what moorage {__version__} "
                "expects; is it a moorage server of the same version?"
            ) from exc

    def _refusal(self, response: httpx.Response, job_id: int | None) -> MoorageError:
        status = response.status_code
        code, message = _error_body(response)
        if status == 401:
            hint = (
                "it refused the token given"
                if self.has_token
                else "give --token or set MOORAGE_HTTP_TOKEN"
            )
            return RemoteError(
                f"the server at {self.url} requires a valid bearer token: {hint}",
                status=status,
                code=code,
            )
        if status == 404 and code == "not_found" and job_id is not None:
            return JobNotFound(job_id)
        if status == 409 and code is not None:
            return InvalidTransition(message)
        if status == 422 and code == "invalid_input":
            return InvalidInput(message)
        request = f"{response.request.method} {response.request.url.path}"
        what = "failed" if status >= 500 else "refused"
        return RemoteError(
            f"the server at {self.url} {what} {request}: {status} {message}",
            status=status,
            code=code,
        )


def open_remote(
    ctx: click.Context, url: str | None, token: str | None
) -> RemoteServer | None:
    """The server of ``--url``, closed when the command line finishes; None
    when no URL was given (the command reads the data directory)."""
    if url is None:
        return None
    server = RemoteServer(url, token)
    ctx.find_root().call_on_close(server.close)
    return server


# -- commands ---------------------------------------------------------------------


def _read_stdin_text(limit: int) -> str:
    if sys.stdin is None:  # started with stdin closed
        raise InvalidInput("TEXT is '-' but there is no standard input")
    data = sys.stdin.buffer.read(limit + 1)
    if len(data) > limit:
        raise InvalidInput(f"message text on stdin is over the limit of {limit} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"message text on stdin is not UTF-8: {exc}") from exc


@main.command()
@click.argument("group", type=GROUP_ID)
@click.argument("text")
@click.option("--chat-jid", type=CHAT_JID, help="Where the reply goes (messages).")
@click.option(
    "--priority",
    type=click.Choice([p.label for p in Priority], case_sensitive=False),
    default="normal",
    show_default=True,
)
@click.option(
    "--kind",
    type=click.Choice([k.value for k in Kind]),
    default="message",
    show_default=True,
)
@click.option(
    "--run-after",
    type=TimestampType(),
    help="Tasks only: not before this time (epoch seconds or ISO 8601).",
)
@click.option(
    "--repeat",
    help="Tasks only: run again every interval (15m, 2h) or on a five-field "
    "cron expression, in UTC ('0 9 * * mon-fri') or in a time zone "
    "('TZ=Europe/Paris 0 9 * * mon-fri').",
)
@click.option(
    "--timeout", type=DurationType(positive=True), help="Per attempt, e.g. 15m."
)
@click.option(
    "--max-retries",
    type=click.IntRange(0, 1000),
    help="Failed attempts retried before the job fails [default: 5].",
)
@click.option(
    "--idempotency-key",
    help="Enqueue at most once under this key: running the command again with "
    "it prints the job made the first time.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
@remote_options
@click.pass_context
def enqueue(
    ctx: click.Context,
    group: str,
    text: str,
    chat_jid: str | None,
    priority: str,
    kind: str,
    run_after: float | None,
    repeat: str | None,
    timeout: float | None,
    max_retries: int | None,
    idempotency_key: str | None,
    as_json: bool,
    url: str | None,
    token: str | None,
) -> None:
    """Add a job for GROUP and print its id.  TEXT '-' reads stdin."""
    if idempotency_key is not None:
        validation.idempotency_key(idempotency_key)
    if run_after is not None and kind != Kind.TASK:
        raise click.BadParameter(
            "only tasks can be scheduled; messages run in their group's order",
            param_hint="'--run-after'",
        )
    if repeat is not None:
        if kind != Kind.TASK:
            raise click.BadParameter(
                "only tasks can repeat; messages run once", param_hint="'--repeat'"
            )
        parse_repeat(repeat)  # refused before anything is opened or sent
    limit = validation.DEFAULT_MAX_MESSAGE_BYTES
    body = _read_stdin_text(limit) if text == "-" else text
    # Checked before the database is opened (or created): rejected is unchanged.
    validation.message_text(body, limit)

    server = open_remote(ctx, url, token)
    if server is not None:
        document = server.enqueue(
            {
                "group_id": group,
                "text": body,
                "kind": kind,
                "priority": priority.lower(),
                "chat_jid": chat_jid,
                "run_after": run_after,
                "timeout": timeout,
                "repeat": repeat,
                "max_retries": max_retries,
            },
            idempotency_key,
        )
    else:
        document = (
            open_queue(ctx)
            .enqueue(
                group,
                body,
                kind=kind,
                chat_jid=chat_jid,
                priority=priority,
                run_after=run_after,
                max_retries=max_retries,
                timeout=timeout,
                repeat=repeat,
                idempotency_key=idempotency_key,
            )
            .as_dict()
        )
    if as_json:
        echo_json(document)
    else:
        click.echo(document["id"])


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@remote_options
@click.pass_context
def status(
    ctx: click.Context, as_json: bool, url: str | None, token: str | None
) -> None:
    """Jobs by status, and per group its active job and waiting count."""
    server = open_remote(ctx, url, token)
    if server is None:
        snapshot = open_queue(ctx, create=False).status()
        if as_json:
            echo_json(snapshot.as_dict())
        else:
            _print_status(snapshot)
        return
    document = server.status()
    if as_json:
        echo_json(document)
        return
    _print_status(server.decode(_status_from, document))
    click.echo()
    click.echo(format_fields(server.decode(_server_fields, document)))


def _server_fields(document: Any) -> list[tuple[str, str]]:
    """What only a server knows: its runtime, the engine, the outbox."""
    runtime = document["runtime"]
    engine = {True: "up", False: "unreachable", None: "-"}[runtime["engine_ok"]]
    return [
        ("runtime", printable(runtime["name"] or "- (no dispatcher)")),
        ("engine", engine),
        ("undelivered replies", str(document["replies"]["undelivered"])),
    ]


def _print_status(snapshot: QueueStatus) -> None:
    click.echo(
        format_table(
            ("STATUS", "JOBS"),
            ((name, str(count)) for name, count in snapshot.counts.items()),
            right={1},
        )
    )
    click.echo()
    if not snapshot.groups:
        click.echo("no group has waiting or active jobs")
        return
    click.echo(
        format_table(
            ("GROUP", "ACTIVE", "WAITING"),
            (
                (
                    printable(g.group_id),
                    "-" if g.active_job is None else str(g.active_job),
                    str(g.waiting),
                )
                for g in snapshot.groups
            ),
            right={1, 2},
        )
    )


def _job_row(job: Job) -> tuple[str, ...]:
    return (
        str(job.id),
        job.group_id,
        job.kind.value,
        job.status.value,
        job.priority.label,
        str(job.attempt),
        when(job.enqueued_at),
        preview(job.message_text),
    )


@main.command()
@click.option("--status", "status_", type=click.Choice([s.value for s in Status]))
@click.option("--group", type=GROUP_ID)
@click.option("--limit", type=click.IntRange(1, 10000), default=50, show_default=True)
@click.option("--before", type=JOB_ID, help="Only jobs with a smaller id (paging).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of jobs.")
@remote_options
@click.pass_context
def jobs(
    ctx: click.Context,
    status_: str | None,
    group: str | None,
    limit: int,
    before: int | None,
    as_json: bool,
    url: str | None,
    token: str | None,
) -> None:
    """List jobs, newest first."""
    server = open_remote(ctx, url, token)
    if server is None:
        found = open_queue(ctx, create=False).jobs(
            status=status_, group_id=group, limit=limit, before_id=before
        )
        documents = [job.as_dict() for job in found]
    else:
        documents = server.jobs(
            status=status_, group_id=group, limit=limit, before_id=before
        )
        found = [_job_from(d) for d in documents]
    if as_json:
        echo_json(documents)
        return
    if not found:
        click.echo("no jobs")
        return
    headers = (
        "ID",
        "GROUP",
        "KIND",
        "STATUS",
        "PRIORITY",
        "ATTEMPT",
        "ENQUEUED",
        "TEXT",
    )
    click.echo(format_table(headers, map(_job_row, found), right={0, 5}))
    if len(found) == limit:
        click.echo(f"(limit reached; older jobs: --before {found[-1].id})")


def _event_row(event: Event) -> tuple[str, ...]:
    return (
        when(event.at),
        "-" if event.from_status is None else event.from_status.value,
        event.to_status.value,
        str(event.attempt),
        preview(event.detail or "", 60),
    )


@main.command()
@click.argument("job_id", metavar="JOB", type=JOB_ID)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@remote_options
@click.pass_context
def show(
    ctx: click.Context,
    job_id: int,
    as_json: bool,
    url: str | None,
    token: str | None,
) -> None:
    """One job and its history (and, from a server, its replies)."""
    server = open_remote(ctx, url, token)
    if server is None:
        queue = open_queue(ctx, create=False)
        job = queue.get(job_id)
        history = queue.events(job_id)
        if as_json:
            echo_json({"job": job.as_dict(), "events": [e.as_dict() for e in history]})
            return
    else:
        document = server.job(job_id)
        if as_json:
            echo_json(document)
            return
        job = server.decode(lambda d: _job_from(d["job"]), document)
        history = server.decode(
            lambda d: [_event_from(e) for e in d["events"]], document
        )
    _print_job(job, history)


def _conversation_fields(job: Job) -> list[tuple[str, str]]:
    """Batch and recurrence lines, shown only for jobs that have them."""
    fields: list[tuple[str, str]] = []
    if job.batch_of is not None:
        fields.append(("batch of", f"job {job.batch_of}"))
    if job.closing_at is not None:
        fields.append(("closing", when(job.closing_at)))
    if job.repeat is not None:
        fields.append(("repeat", job.repeat))
        fields.append(("series", f"job {job.series_id}"))
        if job.follows is not None:
            fields.append(("follows", f"job {job.follows}"))
    return fields


def _print_job(job: Job, history: Sequence[Event]) -> None:
    click.echo(
        format_fields(
            [
                ("job", str(job.id)),
                ("group", job.group_id),
                ("kind", job.kind.value),
                ("status", job.status.value),
                ("priority", job.priority.label),
                ("chat jid", job.chat_jid or "-"),
                ("enqueued", when(job.enqueued_at)),
                ("run after", when(job.run_after)),
                ("started", when(job.started_at)),
                ("finished", when(job.finished_at)),
                ("attempt", str(job.attempt)),
                ("retries", f"{job.retry_count}/{job.max_retries}"),
                ("timeout", human_duration(job.timeout)),
                ("container", job.container_id or "-"),
                ("last error", printable(job.last_error or "-")),
                *_conversation_fields(job),
            ]
        )
    )
    click.echo("\ntext:")
    for line in printable(job.message_text, keep_newlines=True).split("\n"):
        click.echo(f"  {line}".rstrip())
    click.echo("\nevents:")
    click.echo(
        format_table(
            ("TIME", "FROM", "TO", "ATTEMPT", "DETAIL"),
            map(_event_row, history),
            right={3},
        )
    )


@main.command()
@click.argument("job_id", metavar="JOB", type=JOB_ID)
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
@remote_options
@click.pass_context
def retry(
    ctx: click.Context,
    job_id: int,
    as_json: bool,
    url: str | None,
    token: str | None,
) -> None:
    """Send a failed or cancelled job back to waiting, with fresh retries."""
    _change(ctx, job_id, "retry", as_json, url, token)
    if not as_json:
        click.echo(f"job {job_id} is waiting again")


@main.command()
@click.argument("job_id", metavar="JOB", type=JOB_ID)
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
@remote_options
@click.pass_context
def cancel(
    ctx: click.Context,
    job_id: int,
    as_json: bool,
    url: str | None,
    token: str | None,
) -> None:
    """Withdraw a waiting job, or stop a running one.

    A running job is cancelled at once, with the other messages of its
    attempt; the running ``serve`` then stops and removes its container.
    """
    before = _change(ctx, job_id, "cancel", as_json, url, token)
    if as_json:
        return
    if before == Status.ACTIVE.value:
        click.echo(
            f"job {job_id} cancelled; its attempt has ended and serve stops its "
            "container"
        )
    else:
        click.echo(f"job {job_id} cancelled")


def _change(
    ctx: click.Context,
    job_id: int,
    verb: str,
    as_json: bool,
    url: str | None,
    token: str | None,
) -> str | None:
    """Retry or cancel a job, locally or on a server; print it with --json.
    Returns the job's status before a cancel (which says whether it stopped a
    running attempt); None for a retry."""
    server = open_remote(ctx, url, token)
    before = None
    if server is None:
        queue = open_queue(ctx, create=False)
        if verb == "retry":
            job = queue.retry(job_id)
        else:
            before = queue.get(job_id).status.value
            job = queue.cancel(job_id)
        document = job.as_dict()
    else:
        if verb == "cancel":
            before = str(server.job(job_id)["job"]["status"])
        document = server.change(job_id, verb)
    if as_json:
        echo_json(document)
    return before


@main.command()
@click.option(
    "--completed-older-than", type=DurationType(), default="24h", show_default=True
)
@click.option(
    "--failed-older-than", type=DurationType(), default="7d", show_default=True
)
@click.option(
    "--cancelled-older-than", type=DurationType(), default="7d", show_default=True
)
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@click.pass_context
def prune(
    ctx: click.Context,
    completed_older_than: float,
    failed_older_than: float,
    cancelled_older_than: float,
    as_json: bool,
) -> None:
    """Delete finished jobs (and their history) older than the given ages."""
    result = open_queue(ctx, create=False).prune(
        completed_older_than, failed_older_than, cancelled_older_than
    )
    if as_json:
        echo_json(
            {
                "completed": result.completed,
                "failed": result.failed,
                "cancelled": result.cancelled,
                "total": result.total,
            }
        )
    else:
        click.echo(
            f"pruned {result.total} jobs ({result.completed} completed, "
            f"{result.failed} failed, {result.cancelled} cancelled)"
        )


# The long-running commands live in their own module; registered last because
# that module imports this one.
from moorage.cli_serve import recover, serve  # noqa: E402

main.add_command(serve)
main.add_command(recover)
