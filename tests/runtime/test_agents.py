"""The two test agents behave identically, also in conversation; the echo agent
answers each message and each follow-up."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from moorage.runtime import encode_document

from .conftest import batch

AGENTS = Path(__file__).resolve().parent.parent / "agent"


SHELL_AGENT = ["/bin/busybox", "sh", str(AGENTS / "agent.sh")]
PYTHON_AGENT = [sys.executable, str(AGENTS / "agent.py")]
ECHO_AGENT = [sys.executable, "-m", "moorage.agents.echo"]


def run_agent(
    argv: list[str],
    document: dict,
    tmp_path: Path,
    inbox: dict[str, dict] | None = None,
    **env: str,
) -> tuple[int, bytes]:
    """Run an agent to its end on ``document`` with ``inbox`` already in
    place (besides a file ``n`` that is not a message)."""
    source = tmp_path / "input.json"
    source.write_bytes(encode_document(document))
    (tmp_path / "in").mkdir(exist_ok=True)
    (tmp_path / "in" / "n").write_bytes(encode_document({"a": "\u00e9"}))
    for name, content in (inbox or {}).items():
        (tmp_path / "in" / name).write_bytes(encode_document(content))
    env = {"MOORAGE_INPUT": str(source), "MOORAGE_INBOX": str(tmp_path / "in"), **env}
    done = subprocess.run(argv, env=env, capture_output=True, timeout=30)
    return done.returncode, done.stdout


def follow_up(ident: int, text: str) -> dict:
    return {"id": ident, "chat_jid": "chat@x", "kind": "message", "text": text}


CLOSE = {"type": "close", "reason": "idle"}


@pytest.mark.parametrize(
    "texts",
    [
        ["reply=hello world; lines=3; exit=2"],
        ["  reply = spaced ; log=plain", "stderr=e; partial=p"],
        ['reply=quote " back \\ tab\t caf\u00e9 \U0001f600; exit=0'],
        ["reply=$(touch /tmp/x) `id`; sleep=0.01; await=n; exit=300"],
        ["not a directive; lines=x; exit=y; sleep=z; =v; reply="],
    ],
)
def test_shell_and_python_agents_print_the_same_bytes(texts, tmp_path: Path):
    document = batch(*texts)
    shell = run_agent(SHELL_AGENT, document, tmp_path)
    python = run_agent(PYTHON_AGENT, document, tmp_path)

    assert shell == python
    for line in shell[1].splitlines():
        if line.startswith(b"{"):
            json.loads(line)


@pytest.mark.parametrize(
    "document",
    [
        batch("hi", "caf\u00e9"),
        {
            "id": 3,
            "group": "g",
            "chat_jid": "c",
            "kind": "message",
            "text": "hi",
            "attempt": 1,
        },
    ],
)
def test_echo_agent_replies_to_every_message(document, tmp_path: Path):
    code, out = run_agent(ECHO_AGENT, document, tmp_path, MOORAGE_ECHO_LINGER="0")

    texts = [m["text"] for m in document.get("messages", [document])]
    assert code == 0
    assert [json.loads(line) for line in out.splitlines()] == [
        {"type": "reply", "text": f"echo: {t}"} for t in texts
    ]


INBOXES = {
    "in name order, hidden and other names ignored, then close": {
        "message-000000000043.json": follow_up(43, "reply=three; lines=2"),
        "message-000000000042.json": follow_up(42, 'reply=two \u00e9 "q"'),
        ".message-000000000041.json": follow_up(41, "reply=hidden"),
        "message-000000000044.tmp": follow_up(44, "reply=not a message"),
        "close.json": CLOSE,
    },
    "a follow-up's exit code ends the attempt": {
        "message-000000000042.json": follow_up(42, "reply=bye; exit=7; reply=x"),
        "message-000000000043.json": follow_up(43, "reply=never"),
        "close.json": CLOSE,
    },
    "a file without a numeric id is skipped": {
        "message-000000000042.json": {"id": "42", "text": "reply=no"},
        "message-000000000043.json": follow_up(43, "stderr=e; log=l; reply=ok"),
        "close.json": CLOSE,
    },
    "the limit ends a silent conversation": {
        "message-000000000042.json": follow_up(42, "reply=only"),
    },
}


@pytest.mark.parametrize("inbox", INBOXES.values(), ids=INBOXES.keys())
def test_both_agents_converse_alike(inbox, tmp_path: Path):
    document = batch("reply=first; converse=1", "reply=second")

    shell = run_agent(SHELL_AGENT, document, tmp_path, inbox)
    python = run_agent(PYTHON_AGENT, document, tmp_path, inbox)

    assert shell == python
    for line in shell[1].splitlines():
        if line.startswith(b"{"):
            json.loads(line)


def test_the_test_agent_takes_follow_ups_in_name_order_before_closing(
    tmp_path: Path,
):
    inbox = INBOXES["in name order, hidden and other names ignored, then close"]

    code, out = run_agent(
        PYTHON_AGENT, batch("reply=first; converse=20"), tmp_path, inbox
    )

    assert code == 0
    assert out.decode().splitlines() == [
        '{"type":"reply","text":"first"}',
        '{"type":"idle"}',
        '{"type":"received","id":42}',
        '{"type":"reply","text":"two \\u00e9 \\"q\\""}',
        '{"type":"idle"}',
        '{"type":"received","id":43}',
        '{"type":"reply","text":"three"}',
        '{"type":"reply","text":"line 1"}',
        '{"type":"reply","text":"line 2"}',
        '{"type":"idle"}',
    ]


def test_echo_agent_answers_follow_ups_until_close(tmp_path: Path):
    inbox = {
        "message-000000000008.json": follow_up(8, "and caf\u00e9"),
        "message-000000000007.json": follow_up(7, "then"),
        ".message-000000000009.json": follow_up(9, "hidden"),
        "close.json": CLOSE,
    }

    code, out = run_agent(ECHO_AGENT, batch("hi"), tmp_path, inbox)

    assert code == 0
    assert [json.loads(line) for line in out.splitlines()] == [
        {"type": "reply", "text": "echo: hi"},
        {"type": "idle"},
        {"type": "received", "id": 7},
        {"type": "reply", "text": "echo: then"},
        {"type": "idle"},
        {"type": "received", "id": 8},
        {"type": "reply", "text": "echo: and caf\u00e9"},
        {"type": "idle"},
    ]


def test_echo_agent_leaves_by_itself_after_lingering(tmp_path: Path):
    began = time.monotonic()

    code, out = run_agent(ECHO_AGENT, batch("hi"), tmp_path, MOORAGE_ECHO_LINGER="0.3")

    assert code == 0
    assert 0.3 <= time.monotonic() - began < 10
    assert [json.loads(line) for line in out.splitlines()] == [
        {"type": "reply", "text": "echo: hi"},
        {"type": "idle"},
    ]


def test_echo_agent_refuses_a_linger_that_is_not_seconds(tmp_path: Path):
    code, out = run_agent(ECHO_AGENT, batch("hi"), tmp_path, MOORAGE_ECHO_LINGER="x")

    assert (code, out) == (2, b"")
