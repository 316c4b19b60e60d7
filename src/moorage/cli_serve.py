"""The long-running commands: ``moorage serve`` and ``moorage recover``."""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from moorage import config as config_module
from moorage import serve as serve_module
from moorage.cli import CliState

DEFAULT_HTTP = "127.0.0.1:8750"


def _state(ctx: click.Context) -> CliState:
    state = ctx.find_object(CliState)
    if state is None:
        raise click.UsageError("moorage commands run under the moorage group")
    return state


def _load(
    ctx: click.Context, config_file: Path | None, **flags: Any
) -> config_module.ServeConfig:
    state = _state(ctx)
    if state.synchronous_given:
        flags["synchronous"] = state.synchronous
    return config_module.load(state.data_dir, config_file=config_file, overrides=flags)


runtime_options = [
    click.option(
        "--runtime",
        type=click.Choice(["auto", "docker", "process"]),
        default=None,
        help="auto: the Docker Engine when it answers and an image is set, else processes.",
    ),
    click.option("--image", default=None, help="Agent image (docker runtime)."),
    click.option(
        "--command",
        "command",
        default=None,
        help="Agent command, split into argv like a shell would (never run by one).",
    ),
    click.option(
        "--config",
        "config_file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="TOML config file (default: <data dir>/moorage.toml if present).",
    ),
]


F = TypeVar("F", bound=Callable[..., Any])


def _apply(options: list[Callable[[F], F]]) -> Callable[[F], F]:
    def decorate(function: F) -> F:
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


@click.command()
@_apply(runtime_options)
@click.option("--max-concurrent", type=click.IntRange(min=1), default=None)
@click.option("--timeout", default=None, help="Per-attempt timeout, e.g. 10m.")
@click.option("--replies-file", default=None, help="JSON-lines file replies go to.")
@click.option("--webhook-url", default=None, help="POST replies to this URL instead.")
@click.option(
    "--http",
    is_flag=False,
    flag_value=DEFAULT_HTTP,
    default=None,
    help=f"Serve the HTTP API on HOST:PORT ({DEFAULT_HTTP} if no address).",
)
@click.option("--http-token", default=None, envvar="MOORAGE_HTTP_TOKEN")
@click.option(
    "--idle-timeout",
    default=None,
    help="Ask an agent that said it is idle to close after this long, e.g. 60s.",
)
@click.option(
    "--drain", is_flag=True, help="On SIGTERM wait for active jobs to finish."
)
@click.pass_context
def serve(
    ctx: click.Context,
    runtime: str | None,
    image: str | None,
    command: str | None,
    config_file: Path | None,
    max_concurrent: int | None,
    timeout: str | None,
    replies_file: str | None,
    webhook_url: str | None,
    http: str | None,
    http_token: str | None,
    idle_timeout: str | None,
    drain: bool,
) -> None:
    """Run the queue: recover, then claim, run and watch jobs until stopped.

    SIGTERM or SIGINT stops claiming and exits at once, leaving running
    containers for the next start to reclaim (or, with --drain, waits for
    them first).
    """
    settings = _load(
        ctx,
        config_file,
        runtime=runtime,
        image=image,
        command=shlex.split(command) if command else None,
        max_concurrent=max_concurrent,
        timeout=timeout,
        replies_file=replies_file,
        webhook_url=webhook_url,
        http=http,
        http_token=http_token,
        idle_timeout=idle_timeout,
    )
    serve_module.serve(_state(ctx).data_dir, settings, drain=drain)


@click.command()
@_apply(runtime_options)
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def recover(
    ctx: click.Context,
    runtime: str | None,
    image: str | None,
    command: str | None,
    config_file: Path | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Reconcile active jobs with the engine once (what serve does at start).

    Refused while a serve holds the data directory, unless --dry-run.
    """
    settings = _load(
        ctx,
        config_file,
        runtime=runtime,
        image=image,
        command=shlex.split(command) if command else None,
    )
    report = serve_module.recover(_state(ctx).data_dir, settings, dry_run=dry_run)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
        return
    for action in report.actions:
        click.echo(action.describe())
    click.echo(("plan: " if dry_run else "recovery: ") + report.summary())
