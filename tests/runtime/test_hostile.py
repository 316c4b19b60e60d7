"""Hostile input: group ids and texts that try to reach a shell, refs that
are not ours, mounts that would hand over the engine or moorage's data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from moorage.errors import InvalidInput
from moorage.runtime import DockerRuntime, Mount, ProcessRuntime, container_name

from .conftest import Harness, reply


def hostile_groups(marker: Path) -> list[str]:
    return [
        f"$(touch {marker})",
        f"`touch {marker}`",
        f"g; touch {marker}; rm -rf /",
        'it\'s "quoted" \\ back\\slash',
        "two\nlines\r\n\ttab",
        "unicode \u00e9\u4e2d\U0001f600 \u202e",
        "x" * 128,
    ]


def test_hostile_group_ids_make_valid_names_and_round_trip(
    harness: Harness, tmp_path: Path
):
    marker = tmp_path / "pwned"
    runtime = harness.runtime()
    groups = hostile_groups(marker)
    texts = [f"reply=$(touch {marker})", f"reply=`touch {marker}`"]
    started = [
        runtime.start(harness.spec(*texts, job=job, group=group))
        for job, group in enumerate(groups, start=1)
    ]

    for info in started:
        assert runtime.wait(info.ref, 20).exit_code == 0
        assert runtime.read_output(info.ref) == [reply(t[6:]) for t in texts]
    listed = {c.job_id: c for c in runtime.list()}
    for job, group in enumerate(groups, start=1):
        assert listed[job].group_id == group
        assert listed[job].name == container_name(harness.install, job, 1)
    assert not marker.exists()


BAD_REFS = [
    "",
    "abc",
    "../../etc/passwd",
    "A" * 64,
    "0" * 63,
    "0" * 65,
    "$(touch /tmp/pwned)",
    "moorage-0123456789ab-1-1/../x",
    "moorage-0123456789ab-0-1",
]


@pytest.mark.parametrize("ref", BAD_REFS)
def test_a_ref_that_is_not_an_id_is_refused_before_any_engine_call(
    tmp_path: Path, install_id: str, ref: str
):
    # The engine address leads nowhere: a call that reached it would raise
    # EngineUnavailable instead of InvalidInput.
    nowhere = f"unix://{tmp_path}/no-engine.sock"
    runtimes = [
        DockerRuntime(install_id, tmp_path, base_url=nowhere),
        ProcessRuntime(install_id, tmp_path),
    ]
    for runtime in runtimes:
        if isinstance(runtime, DockerRuntime) and len(ref) == 64 and ref.islower():
            continue
        for method, args in (
            (runtime.inspect, ()),
            (runtime.read_output, ()),
            (runtime.wait, (0,)),
            (runtime.stop, ()),
            (runtime.remove, ()),
            (runtime.deliver, ("x", {})),
        ):
            with pytest.raises(InvalidInput):
                method(ref, *args)
    assert not Path("/tmp/pwned").exists()


def _docker_spec(install: str, source: str, target: str = "/data"):
    from moorage.runtime import AttemptSpec

    return AttemptSpec(
        install=install,
        job_id=1,
        attempt=1,
        group_id="g",
        input={"messages": []},
        image="moorage-test-agent:latest",
        mounts=[Mount(source=source, target=target)],
    )


def test_mounts_of_the_engine_or_moorage_data_are_refused(
    tmp_path: Path, install_id: str
):
    data_dir = tmp_path / "data"
    (data_dir / "sub").mkdir(parents=True)
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    sock_link = allowed / "engine"
    sock_link.symlink_to("/var/run/docker.sock")
    data_link = allowed / "data"
    data_link.symlink_to(data_dir)
    nowhere = f"unix://{tmp_path}/engine.sock"
    runtime = DockerRuntime(
        install_id,
        data_dir,
        base_url=nowhere,
        mount_allowlist=["/", str(tmp_path)],  # even an allowlist of everything
    )

    refused = [
        "/var/run/docker.sock",
        "/run/docker.sock",
        "/var/run",
        "/run",
        "/",
        str(tmp_path / "engine.sock"),  # the socket this runtime talks to
        str(sock_link),
        str(data_dir),
        str(data_dir / "sub"),
        str(data_link),
        str(tmp_path),  # holds the data dir
        "relative/path",
    ]
    for source in refused:
        with pytest.raises(InvalidInput):
            runtime.start(_docker_spec(install_id, source))
    with pytest.raises(InvalidInput):
        runtime.start(_docker_spec(install_id, str(allowed), target="/moorage"))


def test_mounts_outside_the_allowlist_are_refused(tmp_path: Path, install_id: str):
    inside = tmp_path / "ok"
    inside.mkdir()
    outside = tmp_path / "other"
    outside.mkdir()
    (inside / "escape").symlink_to(outside)
    runtime = DockerRuntime(
        install_id,
        tmp_path / "data",
        base_url=f"unix://{tmp_path}/engine.sock",
        mount_allowlist=[str(inside)],
    )

    for source in (str(outside), str(inside / "escape"), str(inside / ".." / "other")):
        with pytest.raises(InvalidInput):
            runtime.start(_docker_spec(install_id, source))


@pytest.mark.docker
def test_an_allowed_mount_is_bound_read_only(
    tmp_path: Path, install_id: str, test_image: str, docker_client
):
    shared = tmp_path / "shared"
    shared.mkdir()
    runtime = DockerRuntime(
        install_id, tmp_path / "data", mount_allowlist=[str(shared)]
    )
    try:
        info = runtime.start(_docker_spec(install_id, str(shared)))
        mounts = docker_client.api.inspect_container(info.ref)["Mounts"]
        assert [(m["Source"], m["Destination"], m["RW"]) for m in mounts] == [
            (os.path.realpath(shared), "/data", False)
        ]
    finally:
        for container in runtime.list():
            runtime.remove(container.ref)
