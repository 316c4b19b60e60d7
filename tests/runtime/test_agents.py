"""The two test agents behave identically; the echo agent answers each message."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from moorage.runtime import encode_document

from .conftest import batch

AGENTS = Path(__file__).resolve().parent.parent / "agent"


def run_agent(argv: list[str], document: dict, tmp_path: Path) -> tuple[int, bytes]:
    source = tmp_path / "input.json"
    source.write_bytes(encode_document(document))
    (tmp_path / "in").mkdir(exist_ok=True)
    (tmp_path / "in" / "n").write_bytes(encode_document({"a": "\u00e9"}))
    env = {"MOORAGE_INPUT": str(source), "MOORAGE_INBOX": str(tmp_path / "in")}
    done = subprocess.run(argv, env=env, capture_output=True, timeout=30)
    return done.returncode, done.stdout


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
    shell = run_agent(
        ["/bin/busybox", "sh", str(AGENTS / "agent.sh")], document, tmp_path
    )
    python = run_agent([sys.executable, str(AGENTS / "agent.py")], document, tmp_path)

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
    code, out = run_agent(
        [sys.executable, "-m", "moorage.agents.echo"], document, tmp_path
    )

    texts = [m["text"] for m in document.get("messages", [document])]
    assert code == 0
    assert [json.loads(line) for line in out.splitlines()] == [
        {"type": "reply", "text": f"echo: {t}"} for t in texts
    ]
