"""The HTTP API against a live uvicorn server on loopback."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from apisupport import StillRuntime, job_count
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from moorage.api import check_bind, create_app, serve_http
from moorage.dispatcher import Dispatcher
from moorage.errors import ConfigError
from moorage.metrics import Metrics
from moorage.queue import Batch, Queue
from moorage.recovery import RecoveryReport

TOKEN = "t0ken-for-the-tests-0123456789"


def _enqueue(client: httpx.Client, **fields: object) -> httpx.Response:
    body: dict[str, object] = {"group_id": "family", "text": "hello"}
    body.update(fields)
    return client.post("/v1/jobs", json=body)


# -- jobs ------------------------------------------------------------------------


def test_enqueue_returns_201_with_the_stored_job_and_wakes(
    serve: Callable[..., str], queue: Queue
) -> None:
    woken: list[int] = []
    with httpx.Client(base_url=serve(wake=lambda: woken.append(1))) as client:
        response = _enqueue(
            client, chat_jid="123@g.us", priority="high", kind="message", timeout=30
        )
    assert response.status_code == 201
    job = response.json()
    assert job["status"] == "waiting"
    assert job["priority"] == "high"
    assert job["message_text"] == "hello"
    assert job["timeout"] == 30
    stored = queue.get(job["id"])
    assert (stored.group_id, stored.chat_jid) == ("family", "123@g.us")
    assert woken == [1]


def test_a_job_can_carry_its_own_retry_budget(
    client: httpx.Client, queue: Queue
) -> None:
    response = _enqueue(client, max_retries=0)
    assert response.status_code == 201
    assert response.json()["max_retries"] == 0
    assert queue.get(response.json()["id"]).max_retries == 0
    assert _enqueue(client).json()["max_retries"] == 5  # the policy's default

    for bad in (-1, 1001, "3", True, 2.5):
        refused = _enqueue(client, max_retries=bad)
        assert refused.status_code == 422, (bad, refused.text)
    assert queue.status().counts["waiting"] == 2


def test_task_can_be_scheduled_with_run_after(
    client: httpx.Client, queue: Queue
) -> None:
    response = _enqueue(client, kind="task", run_after=4_000_000_000)
    assert response.status_code == 201
    assert queue.get(response.json()["id"]).run_after == 4_000_000_000


def test_a_recurring_task_can_be_enqueued_and_a_repeating_message_is_refused(
    client: httpx.Client, queue: Queue
) -> None:
    response = _enqueue(client, kind="task", repeat="*/5 * * * *")
    assert response.status_code == 201
    assert response.json()["repeat"] == "cron */5 * * * *"
    assert response.json()["series_id"] == response.json()["id"]

    for bad in ({"repeat": "15m"}, {"kind": "task", "repeat": "every blue moon"}):
        refused = _enqueue(client, **bad)
        assert refused.status_code in (400, 422), refused.text
    assert job_count(queue) == 1


def test_job_detail_has_events_and_replies(client: httpx.Client, queue: Queue) -> None:
    job_id = _enqueue(client).json()["id"]
    (claimed,) = queue.claim(1)
    queue.record_output(claimed, 0, ['{"type": "reply", "text": "pasta"}', "log"])
    queue.finish(job_id, claimed.attempt)

    detail = client.get(f"/v1/jobs/{job_id}").json()

    assert detail["job"]["status"] == "completed"
    assert [e["to_status"] for e in detail["events"]] == [
        "waiting",
        "active",
        "completed",
    ]
    assert [(r["text"], r["position"]) for r in detail["replies"]] == [("pasta", 0)]


def test_list_pages_newest_first_until_next_before_id_is_null(
    client: httpx.Client,
) -> None:
    made = [_enqueue(client, group_id=f"g{i % 2}").json()["id"] for i in range(5)]
    seen: list[int] = []
    before: int | None = None
    while True:
        params: dict[str, int] = {"limit": 2}
        if before is not None:
            params["before_id"] = before
        page = client.get("/v1/jobs", params=params).json()
        seen += [job["id"] for job in page["jobs"]]
        before = page["next_before_id"]
        if before is None:
            break
    assert seen == sorted(made, reverse=True)

    only_g1 = client.get("/v1/jobs", params={"group_id": "g1"}).json()
    assert [job["id"] for job in only_g1["jobs"]] == [made[3], made[1]]
    assert only_g1["next_before_id"] is None
    waiting = client.get("/v1/jobs", params={"status": "waiting"}).json()
    assert len(waiting["jobs"]) == 5
    assert client.get("/v1/jobs", params={"status": "failed"}).json()["jobs"] == []


def test_cancel_then_retry_and_refused_transitions(
    client: httpx.Client, queue: Queue
) -> None:
    job_id = _enqueue(client).json()["id"]

    cancelled = client.post(f"/v1/jobs/{job_id}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    again = client.post(f"/v1/jobs/{job_id}/cancel")
    assert again.status_code == 409
    assert again.json()["error"] == "invalid_transition"

    retried = client.post(f"/v1/jobs/{job_id}/retry")
    assert retried.status_code == 200
    assert retried.json()["status"] == "waiting"
    assert client.post(f"/v1/jobs/{job_id}/retry").status_code == 409
    assert queue.get(job_id).status == "waiting"


def test_cancel_stops_a_running_job_and_refuses_a_member(
    client: httpx.Client, queue: Queue
) -> None:
    lead_id = _enqueue(client).json()["id"]
    member_id = _enqueue(client).json()["id"]
    queue.claim(1, batch=Batch(messages=10))

    member = client.post(f"/v1/jobs/{member_id}/cancel")
    assert member.status_code == 409
    assert f"cancel job {lead_id}" in member.json()["message"]
    assert queue.get(member_id).status == "active"

    cancelled = client.post(f"/v1/jobs/{lead_id}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert queue.get(member_id).status == "cancelled"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/jobs/999"),
        ("POST", "/v1/jobs/999/retry"),
        ("POST", "/v1/jobs/999/cancel"),
    ],
)
def test_unknown_job_is_404(client: httpx.Client, method: str, path: str) -> None:
    response = client.request(method, path)
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


# -- idempotency -------------------------------------------------------------------


def test_same_idempotency_key_twice_makes_one_job(
    client: httpx.Client, queue: Queue
) -> None:
    headers = {"Idempotency-Key": "msg-42"}
    body = {"group_id": "family", "text": "hi"}
    first = client.post("/v1/jobs", json=body, headers=headers)
    second = client.post("/v1/jobs", json=body, headers=headers)
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json() == second.json()
    assert job_count(queue) == 1


def test_a_key_replayed_with_another_schedule_is_refused(
    client: httpx.Client, queue: Queue
) -> None:
    headers = {"Idempotency-Key": "digest-1"}
    body = {"group_id": "g", "text": "digest", "kind": "task", "repeat": "15m"}
    assert client.post("/v1/jobs", json=body, headers=headers).status_code == 201
    same = client.post("/v1/jobs", json=body | {"repeat": "every 900"}, headers=headers)
    assert same.status_code == 200  # the same schedule, written another way
    other = client.post("/v1/jobs", json=body | {"repeat": "1h"}, headers=headers)
    assert other.status_code == 409
    assert other.json()["error"] == "idempotency_key_reused"
    assert job_count(queue) == 1


def test_idempotency_key_survives_a_restart(tmp_path: Path) -> None:
    body = {"group_id": "family", "text": "hi"}
    ids = []
    for _ in range(2):
        queue = Queue.open(tmp_path / "data")
        handle = serve_http(create_app(queue), "127.0.0.1", 0)
        try:
            response = httpx.post(
                f"http://127.0.0.1:{handle.port}/v1/jobs",
                json=body,
                headers={"Idempotency-Key": "k1"},
            )
            ids.append(response.json()["id"])
        finally:
            handle.stop()
            queue.close()
    assert ids[0] == ids[1]


def test_reused_key_with_another_body_is_409_and_stores_nothing(
    client: httpx.Client, queue: Queue
) -> None:
    headers = {"Idempotency-Key": "k"}
    assert _enqueue_with(client, headers, text="one").status_code == 201
    response = _enqueue_with(client, headers, text="two")
    assert response.status_code == 409
    assert response.json()["error"] == "idempotency_key_reused"
    assert job_count(queue) == 1


@pytest.mark.parametrize("key", ["", "x" * 201, "has space", "tab\there", "é"])
def test_invalid_idempotency_key_is_refused(
    client: httpx.Client, queue: Queue, key: str
) -> None:
    response = client.post(
        "/v1/jobs",
        content=json.dumps({"group_id": "g", "text": "t"}).encode(),
        headers={
            "Idempotency-Key": key.encode("utf-8"),
            "Content-Type": "application/json",
        },  # type: ignore[dict-item]
    )
    assert response.status_code == 422
    assert job_count(queue) == 0


def _enqueue_with(
    client: httpx.Client, headers: dict[str, str], **fields: object
) -> httpx.Response:
    body: dict[str, object] = {"group_id": "family", "text": "hello"}
    body.update(fields)
    return client.post("/v1/jobs", json=body, headers=headers)


# -- bad input changes nothing -----------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"group_id": " family", "text": "x"}, 422),
        ({"group_id": "fam\x00ily", "text": "x"}, 422),
        ({"group_id": "", "text": "x"}, 422),
        ({"group_id": "g" * 129, "text": "x"}, 422),
        ({"group_id": "g", "text": "x", "priority": "urgent"}, 422),
        ({"group_id": "g", "text": "x", "kind": "chore"}, 422),
        ({"group_id": "g", "text": "x", "image": "evil:latest"}, 422),
        ({"group_id": "g", "text": "x", "mounts": ["/:/host"]}, 422),
        ({"group_id": "g", "text": "x", "run_after": 5}, 422),  # a message
        ({"group_id": "g", "text": "x", "timeout": 0}, 422),
        ({"group_id": "g", "text": "x", "timeout": "5"}, 422),
        ({"group_id": "g", "text": "x", "chat_jid": "a b"}, 422),
        ({"group_id": 7, "text": "x"}, 422),
        ({"group_id": "g"}, 422),
        ({"group_id": "g", "text": "nul\x00"}, 422),
        ([1, 2], 422),
    ],
)
def test_bad_body_is_refused_and_stores_nothing(
    client: httpx.Client, queue: Queue, body: object, status: int
) -> None:
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"] == "invalid_input"
    assert job_count(queue) == 0


def test_malformed_json_is_400(client: httpx.Client, queue: Queue) -> None:
    response = client.post(
        "/v1/jobs",
        content=b'{"group_id": "g", "text":',
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"] == "malformed_json"
    assert job_count(queue) == 0


def test_body_over_the_limit_by_content_length_is_413(
    serve: Callable[..., str], queue: Queue
) -> None:
    with httpx.Client(base_url=serve(max_body_bytes=1000)) as client:
        response = _enqueue(client, text="x" * 2000)
        small = _enqueue(client, text="x" * 100)
    assert response.status_code == 413
    assert response.json()["error"] == "body_too_large"
    assert small.status_code == 201
    assert job_count(queue) == 1


def test_streamed_body_over_the_limit_is_413(
    serve: Callable[..., str], queue: Queue
) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"group_id": "g", "text": "'
        for _ in range(50):
            yield b"x" * 100
        yield b'"}'

    with httpx.Client(base_url=serve(max_body_bytes=1000)) as client:
        response = client.post(
            "/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"}
        )
    assert "content-length" not in {k.lower() for k in response.request.headers}
    assert response.status_code == 413
    assert job_count(queue) == 0


@pytest.mark.parametrize(
    "path",
    ["/v1/jobs/0", "/v1/jobs/-1", "/v1/jobs/abc", f"/v1/jobs/{2**64}"],
)
def test_bad_job_id_is_422(client: httpx.Client, path: str) -> None:
    assert client.get(path).status_code == 422


@pytest.mark.parametrize(
    "params",
    [
        {"status": "sleeping"},
        {"limit": 0},
        {"limit": 501},
        {"before_id": 0},
        {"group_id": " padded"},
    ],
)
def test_bad_list_query_is_422(client: httpx.Client, params: dict[str, object]) -> None:
    assert client.get("/v1/jobs", params=params).status_code == 422  # type: ignore[arg-type]


# -- security ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/jobs"),
        ("POST", "/v1/jobs"),
        ("GET", "/v1/jobs/1"),
        ("POST", "/v1/jobs/1/retry"),
        ("POST", "/v1/jobs/1/cancel"),
        ("GET", "/v1/status"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
        ("GET", "/docs"),
    ],
)
@pytest.mark.parametrize("auth", [None, "Bearer wrong", f"Basic {TOKEN}", TOKEN])
def test_token_is_required_everywhere_but_healthz(
    serve: Callable[..., str],
    queue: Queue,
    method: str,
    path: str,
    auth: str | None,
) -> None:
    headers = {} if auth is None else {"Authorization": auth}
    with httpx.Client(base_url=serve(token=TOKEN)) as client:
        response = client.request(
            method, path, headers=headers, json={"group_id": "g", "text": "t"}
        )
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert job_count(queue) == 0


def test_right_token_is_accepted_and_healthz_needs_none(
    serve: Callable[..., str], queue: Queue
) -> None:
    with httpx.Client(base_url=serve(token=TOKEN)) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/").status_code == 200  # the page; its data needs the token
        ok = client.post(
            "/v1/jobs",
            json={"group_id": "g", "text": "t"},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert ok.status_code == 201
        spec = client.get(
            "/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"}
        ).json()
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert job_count(queue) == 1


def test_no_endpoint_takes_image_mounts_or_runtime_options(
    client: httpx.Client,
) -> None:
    spec = client.get("/openapi.json").json()
    text = json.dumps(spec).lower()
    for word in ("image", "mount", "privileged", "network", "command", "env"):
        assert f'"{word}' not in text


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "", "example.com"])
def test_non_loopback_bind_without_token_is_refused(host: str) -> None:
    with pytest.raises(ConfigError, match="without a token"):
        check_bind(host, None)
    check_bind(host, TOKEN)


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"]
)
def test_loopback_bind_needs_no_token(host: str) -> None:
    check_bind(host, None)


def test_short_token_is_refused() -> None:
    with pytest.raises(ConfigError, match="16 characters"):
        check_bind("127.0.0.1", "short")


def test_serve_http_reports_a_taken_port(queue: Queue) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(ConfigError, match="cannot serve"):
            serve_http(create_app(queue), "127.0.0.1", port)


# -- operations ------------------------------------------------------------------------


def test_healthz_is_always_ok(client: httpx.Client) -> None:
    response = client.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_readyz_without_dispatcher_is_503_with_reason(client: httpx.Client) -> None:
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {
        "ready": False,
        "reason": "no dispatcher runs in this process",
    }


def test_readyz_follows_recovery_and_engine(
    serve: Callable[..., str], queue: Queue
) -> None:
    dispatcher = Dispatcher(queue, StillRuntime())
    with httpx.Client(base_url=serve(dispatcher=dispatcher)) as client:
        before = client.get("/readyz")
        dispatcher.recover()
        after = client.get("/readyz")
        dispatcher.engine_ok = False
        outage = client.get("/readyz")
    assert before.status_code == 503
    assert "recovery" in before.json()["reason"]
    assert after.status_code == 200
    assert after.json() == {"ready": True, "reason": None}
    assert outage.status_code == 503
    assert "engine" in outage.json()["reason"]


def test_status_shows_groups_runtime_recovery_and_replies(
    serve: Callable[..., str], queue: Queue
) -> None:
    dispatcher = Dispatcher(queue, StillRuntime())
    dispatcher.recover()
    for group in ("a", "a", "b"):
        queue.enqueue(group, "x")
    (running,) = queue.claim(1)
    queue.start(running.id, running.attempt, "c0ffee")
    queue.record_output(running, 0, ['{"type": "reply", "text": "hi"}'])

    with httpx.Client(base_url=serve(dispatcher=dispatcher)) as client:
        status = client.get("/v1/status").json()

    assert status["counts"]["waiting"] == 2
    assert status["counts"]["active"] == 1
    groups = {g["group_id"]: g for g in status["groups"]}
    assert groups["a"] == {
        "group_id": "a",
        "active_job": running.id,
        "container_id": "c0ffee",
        "waiting": 1,
        "agent": "working",
    }
    assert groups["b"]["waiting"] == 1
    assert groups["b"]["agent"] is None
    assert status["runtime"] == {
        "name": "still",
        "engine_ok": True,
        "active_containers": 0,
    }
    assert status["last_recovery"]["counts"]["reclaim"] == 0
    assert status["replies"]["undelivered"] == 1
    assert status["replies"]["per_minute"][0] == 1
    assert status["recent_failures"] == []


def test_status_shows_whether_a_groups_agent_is_idle_or_closing(
    client: httpx.Client, queue: Queue
) -> None:
    queue.enqueue("a", "x")
    queue.enqueue("b", "x")
    first, second = queue.claim(2)
    queue.record_output(first, 0, ['{"type": "idle"}'])
    queue.request_close(second.id, second.attempt, "idle")

    groups = {g["group_id"]: g for g in client.get("/v1/status").json()["groups"]}

    assert groups[first.group_id]["agent"] == "idle"
    assert groups[second.group_id]["agent"] == "closing"


def test_status_lists_recent_failures(client: httpx.Client, queue: Queue) -> None:
    job = queue.enqueue("g", "x", max_retries=0)
    (claimed,) = queue.claim(1)
    queue.fail(job.id, claimed.attempt, "exit code 3")
    status = client.get("/v1/status").json()
    assert [(j["id"], j["last_error"]) for j in status["recent_failures"]] == [
        (job.id, "exit code 3")
    ]
    assert status["runtime"]["name"] is None


def test_metrics_parse_and_report_queue_and_dispatcher(
    serve: Callable[..., str], queue: Queue
) -> None:
    metrics = Metrics()
    dispatcher = Dispatcher(queue, StillRuntime())
    report = dispatcher.recover()
    metrics.recovered(report)
    metrics.recovered(RecoveryReport(dry_run=True))  # a dry run is not counted
    metrics.claimed(2)
    metrics.attempt_finished("completed", 1.5)
    metrics.attempt_finished("failed", 3.0)
    metrics.attempt_finished("weird")
    metrics.queue_wait(0.2)
    metrics.engine_error()
    metrics.reply_delivered()
    queue.enqueue("g", "x")
    queue.enqueue("h", "x")

    with httpx.Client(base_url=serve(dispatcher=dispatcher, metrics=metrics)) as client:
        response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")

    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }
    assert samples[("moorage_jobs", (("status", "waiting"),))] == 2
    assert samples[("moorage_jobs", (("status", "failed"),))] == 0
    assert samples[("moorage_active_containers", ())] == 0
    assert samples[("moorage_engine_up", ())] == 1
    assert samples[("moorage_claims_total", ())] == 2
    assert samples[("moorage_attempts_total", (("outcome", "completed"),))] == 1
    assert samples[("moorage_attempts_total", (("outcome", "other"),))] == 1
    assert (
        samples[("moorage_run_duration_seconds_count", (("outcome", "failed"),))] == 1
    )
    assert (
        samples[("moorage_run_duration_seconds_sum", (("outcome", "failed"),))] == 3.0
    )
    assert samples[("moorage_queue_wait_seconds_count", ())] == 1
    assert samples[("moorage_recoveries_total", ())] == 1
    assert samples[("moorage_recovery_actions_total", (("action", "orphan"),))] == 0
    assert samples[("moorage_engine_errors_total", ())] == 1
    assert samples[("moorage_replies_delivered_total", ())] == 1
    assert samples[("moorage_replies_undelivered", ())] == 0
    assert REGISTRY.get_sample_value("moorage_claims_total") is None


def test_two_apps_in_one_process_have_separate_metrics(
    serve: Callable[..., str], queue: Queue
) -> None:
    first, second = Metrics(), Metrics()
    first.claimed(5)
    urls = [serve(metrics=first), serve(metrics=second)]
    texts = [httpx.get(f"{url}/metrics").text for url in urls]
    assert "moorage_claims_total 5.0" in texts[0]
    assert "moorage_claims_total 0.0" in texts[1]


def test_openapi_and_docs_are_served(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/status", "/readyz"} <= set(
        spec["paths"]
    )
    assert client.get("/docs").status_code == 200


def test_status_page_and_script_are_served(client: httpx.Client) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert "/static/app.js" in page.text
    script = client.get("/static/app.js")
    assert script.status_code == 200
    assert "/v1/status" in script.text
