"""Property-based fuzz of the live HTTP API from its own OpenAPI schema:
whatever a client sends, the server answers without a 5xx, with a status
code, content type and body that the schema documents, and it refuses
every request the schema rules out.

Not checked: that every schema-valid request is accepted.  Some rules cannot
be said in JSON Schema (no Unicode control or format characters in a group
id, ``run_after`` only for tasks, the message size in UTF-8 bytes); requests
breaking them are schema-valid and rightly answered 422.

The schema is taken from the app itself at collection time; every generated
request goes over a real socket to a live uvicorn server.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from moorage.api import create_app, serve_http
from moorage.queue import Queue

MAX_BODY = 64 * 1024


def _schema_and_labels(tmp: Path) -> tuple[Any, list[str]]:
    queue = Queue.open(tmp)
    try:
        spec = create_app(queue).openapi()
    finally:
        queue.close()
    schema = schemathesis.openapi.from_dict(spec)
    labels = [result.ok().label for result in schema.get_all_operations()]
    return schema, labels


def _collect() -> tuple[Any, list[str]]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return _schema_and_labels(Path(tmp) / "data")


SCHEMA, LABELS = _collect()


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    queue = Queue.open(tmp_path_factory.mktemp("fuzz") / "data")
    queue.enqueue("seed", "a job for the id-taking endpoints to find")
    handle = serve_http(create_app(queue, max_body_bytes=MAX_BODY), "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{handle.port}"
    finally:
        handle.stop()
        queue.close()


# Negative cases need something to break: only operations with input.
CASES = [(label, "positive") for label in LABELS] + [
    (label, "negative")
    for label in LABELS
    if label.startswith("POST") or "/v1/jobs" in label
]


@pytest.mark.parametrize(("label", "mode"), CASES)
def test_operation_conforms_to_the_schema(base_url: str, label: str, mode: str) -> None:
    operation = next(
        r.ok() for r in SCHEMA.get_all_operations() if r.ok().label == label
    )

    excluded = [schemathesis.checks.positive_data_acceptance]
    if label == "GET /readyz":
        # 503 is its documented answer while not ready (no dispatcher here).
        excluded.append(schemathesis.checks.not_a_server_error)

    @given(case=operation.as_strategy(schemathesis.GenerationMode(mode)))
    @settings(
        max_examples=50,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def fuzz(case: Any) -> None:
        case.call_and_validate(
            base_url=base_url,
            timeout=10,
            excluded_checks=excluded,
        )

    fuzz()
