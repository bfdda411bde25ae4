"""Property-based test of client frames: random and malformed frames of every kind never break the consumer.

Each example opens a connection, sends a random list of frames (valid, malformed, oversized, binary), then a
sentinel. Every answer must be a documented frame or error code, the socket must stay usable, and once every run
task is over the database must be consistent: no run left running, positions contiguous, tool calls answered.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentapp import protocol, registry
from agentapp.history import orphan_tool_uses
from agentapp.models import Message, Run
from tests.wsclient import Client

DOCS = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()
# The codes of the "Error codes" table.
ERROR_TABLE = DOCS.split("## Error codes", 1)[1].split("\n## ", 1)[0]
DOCUMENTED_CODES = set(re.findall(r"^\| `([a-z_]+)` \|", ERROR_TABLE, re.MULTILINE))
MAX_FRAME_BYTES = 2000
# Examples per run; raise it for a longer hunt (AGENTAPP_FUZZ_EXAMPLES=1000).
EXAMPLES = int(os.environ.get("AGENTAPP_FUZZ_EXAMPLES", "40"))
MAX_PROMPT_CHARS = 100
# The only frame answered with prompt_too_large: random prompts are shorter, oversized frames hit frame_too_large.
SENTINEL = json.dumps({"type": "prompt", "prompt": "s" * (MAX_PROMPT_CHARS + 1)})

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)
prompts = st.one_of(
    st.sampled_from(["Calculate 2+2", "Stream 5 tokens", "What is the capital of France?", "   "]),
    st.text(max_size=40),
    json_values,
)
decisions = st.one_of(st.sampled_from(["approve", "deny"]), json_values)
answer = st.fixed_dictionaries({"decision": decisions}, optional={"text": st.one_of(st.text(max_size=20), json_values)})
structured = st.one_of(
    st.fixed_dictionaries({"type": st.just("prompt"), "prompt": prompts}),
    st.fixed_dictionaries({"type": st.just("prompt")}, optional={"extra": json_values}),
    st.fixed_dictionaries({"type": st.just("cancel")}, optional={"run_id": json_values}),
    st.fixed_dictionaries(
        {"type": st.just("interrupt_response")},
        optional={
            "responses": st.one_of(st.dictionaries(st.text(max_size=12), st.one_of(answer, json_values)), json_values),
            "id": st.one_of(st.text(max_size=12), json_values),
            "decision": decisions,
            "text": json_values,
        },
    ),
    st.fixed_dictionaries(
        {"type": st.just("resume")},
        optional={
            "run_id": st.one_of(st.uuids().map(str), st.text(max_size=12), json_values),
            "seq": st.one_of(st.integers(min_value=-3, max_value=2**60), json_values),
        },
    ),
    st.fixed_dictionaries({"type": st.one_of(st.text(max_size=12), json_values)}),
)
# (kind, payload): text frames as sent, or bytes for a binary frame.
client_frames = st.one_of(
    structured.map(lambda frame: ("text", json.dumps(frame))),
    json_values.map(lambda value: ("text", json.dumps(value))),
    st.text(max_size=30).map(lambda text: ("text", text)),
    st.binary(max_size=16).map(lambda data: ("bytes", data)),
    st.just(("text", json.dumps({"type": "prompt", "prompt": "x" * MAX_FRAME_BYTES}))),
)


@pytest.fixture
def fuzz_settings(settings: Any) -> None:
    settings.AGENTAPP = {
        **getattr(settings, "AGENTAPP", {}),
        "OFFLINE_TOKENS_PER_SECOND": 0,
        "APPROVAL_TOOLS": ["calculator"],
        "MAX_FRAME_BYTES": MAX_FRAME_BYTES,
        "MAX_PROMPT_CHARS": MAX_PROMPT_CHARS,
        "RUNS_PER_USER_PER_MINUTE": 0,
        "SYNC_TIMEOUT_SECONDS": 0.05,
    }


@pytest.fixture
def user(db):
    return get_user_model().objects.get_or_create(username="fuzz")[0]


def test_every_error_code_is_documented() -> None:
    codes = {value for name, value in vars(protocol).items() if name.startswith("ERR_")}
    assert codes <= DOCUMENTED_CODES, codes - DOCUMENTED_CODES


async def exchange(client: Client, frames: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    """Send the frames and a sentinel; return what came back until the sentinel's answer and every run's end."""
    for kind, payload in frames:
        if not payload:  # WebsocketCommunicator.send_to refuses empty frames; a browser may send them
            await client.communicator.send_input({"type": "websocket.receive", kind: payload})
        elif kind == "bytes":
            await client.send_bytes(payload)
        else:
            await client.send_text(payload)
    await client.send_text(SENTINEL)
    received: list[dict[str, Any]] = []
    open_runs: set[str] = set()
    sentinel_seen = False
    while not sentinel_seen or open_runs:
        frame = await client.receive()
        received.append(frame)
        if frame["type"] == protocol.RUN_STARTED:
            open_runs.add(frame["run_id"])
        elif frame["type"] == protocol.RUN_FINISHED:
            open_runs.discard(frame["run_id"])
        elif frame["type"] == protocol.ERROR and frame["code"] == protocol.ERR_PROMPT_TOO_LARGE:
            sentinel_seen = True
    return received


def check_database(conversation_id: str) -> None:
    assert not Run.objects.filter(conversation_id=conversation_id, status=Run.Status.RUNNING).exists()
    rows = list(
        Message.objects.filter(conversation_id=conversation_id)
        .order_by("position")
        .values("position", "role", "content")
    )
    assert [row["position"] for row in rows] == list(range(len(rows)))
    paused = Run.objects.filter(conversation_id=conversation_id, status=Run.Status.AWAITING_APPROVAL).count()
    assert paused <= 1
    messages = [{"role": row["role"], "content": row["content"]} for row in rows]
    # Every tool call is answered, but the one a paused run waits on.
    assert len(orphan_tool_uses(messages)) == (1 if paused else 0)


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=st.lists(client_frames, min_size=1, max_size=6))
async def test_random_frames_never_break_the_consumer(fuzz_settings, user, frames) -> None:
    client = Client(user=user)
    hello = await client.hello()
    received = await exchange(client, frames)
    for frame in received:
        assert f"`{frame['type']}`" in DOCS, frame
        if frame["type"] == protocol.ERROR:
            assert frame["code"] in DOCUMENTED_CODES, frame
            assert isinstance(frame["message"], str) and frame["message"]
    # Still usable: a documented answer to one more bad frame.
    await client.send_text("[]")
    while (frame := await client.receive())["type"] != protocol.ERROR or "run_id" in frame:
        assert frame.get("run_id") is not None, frame  # only late run frames may come first
    assert frame["code"] == protocol.ERR_INVALID_FRAME
    await client.close()
    if registry.tasks:
        await asyncio.wait_for(asyncio.gather(*registry.tasks, return_exceptions=True), timeout=10)
    await database_sync_to_async(check_database)(hello["conversation_id"])
    uuid.UUID(hello["conversation_id"])
