"""Where serve's settings come from: defaults < moorage.toml < MOORAGE_*
variables < command-line flags, each value checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from moorage.cli import CliState, main
from moorage.config import ConfigError, load


def write_config(data_dir: Path, text: str) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "moorage.toml").write_text(text, encoding="utf-8")


def test_each_source_overrides_the_one_before(tmp_path: Path) -> None:
    write_config(tmp_path, 'max_concurrent = 3\nidle_timeout = "2m"\nimage = "a:1"\n')

    assert load(tmp_path, environ={}).max_concurrent == 3
    from_env = load(tmp_path, environ={"MOORAGE_MAX_CONCURRENT": "5"})
    assert (from_env.max_concurrent, from_env.idle_timeout) == (5, 120.0)
    flagged = load(
        tmp_path,
        environ={"MOORAGE_MAX_CONCURRENT": "5"},
        overrides={"max_concurrent": 7, "image": None},
    )
    assert (flagged.max_concurrent, flagged.image) == (7, "a:1")  # None: not given


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("colour = 1\n", "unknown keys"),
        ('synchronous = "OFF"\n', "bad value for synchronous"),
        ("max_concurrent = [\n", "cannot read config file"),
    ],
)
def test_bad_settings_are_refused_by_name(
    tmp_path: Path, text: str, message: str
) -> None:
    write_config(tmp_path, text)
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, environ={})


def _serve_config(data_dir: Path, *global_args: str):  # type: ignore[no-untyped-def]
    """The settings ``moorage [global_args] serve`` would run with."""
    from moorage.cli_serve import _load  # after moorage.cli, which it extends

    ctx = main.make_context(
        "moorage", ["--data-dir", str(data_dir), *global_args, "status"]
    )
    with ctx:
        ctx.invoke(main.callback, **ctx.params)  # type: ignore[arg-type]
        assert isinstance(ctx.obj, CliState)
        return _load(ctx, None)


def test_synchronous_in_the_file_holds_unless_the_flag_or_variable_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MOORAGE_SYNCHRONOUS", raising=False)
    write_config(tmp_path, 'synchronous = "normal"\n')

    assert _serve_config(tmp_path).synchronous == "NORMAL"
    assert _serve_config(tmp_path, "--synchronous", "FULL").synchronous == "FULL"
    monkeypatch.setenv("MOORAGE_SYNCHRONOUS", "FULL")
    assert _serve_config(tmp_path).synchronous == "FULL"


def test_the_default_is_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MOORAGE_SYNCHRONOUS", raising=False)
    assert _serve_config(tmp_path).synchronous == "FULL"


def test_pruning_ages_reach_the_dispatcher(tmp_path: Path) -> None:
    from moorage.serve import dispatch_settings

    write_config(tmp_path, 'completed_ttl = "2h"\ncancelled_ttl = "3d"\n')
    settings = dispatch_settings(load(tmp_path, environ={"MOORAGE_FAILED_TTL": "1d"}))
    assert (settings.completed_ttl, settings.failed_ttl, settings.cancelled_ttl) == (
        7200.0,
        86400.0,
        259200.0,
    )
