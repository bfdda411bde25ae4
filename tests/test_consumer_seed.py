"""The streaming core end to end: each seed prompt over a WebSocket, on both channel layers."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth import get_user_model

from agentapp import protocol
from tests.frames import assert_contiguous
from tests.wsclient import Client

SEED_PROMPTS = [
    ("Calculate 2+2", [("2+2", "success", "4")], "4"),
    ("Calculate 15 * 23 and then add 100", [("15 * 23", "success", "345"), ("345 + 100", "success", "445")], "445"),
    (
        "What is 50 divided by 2, then multiply by 3?",
        [("50 / 2", "success", "25"), ("25 * 3", "success", "75")],
        "75",
    ),
    ("Calculate the square root of -1", [("sqrt(-1)", "error", "math domain error")], "math domain error"),
    ("What is the capital of France and what is 42+7?", [("42+7", "success", "49")], "Paris"),
]

LIFECYCLE = [protocol.RUN_STARTED, protocol.INIT_EVENT_LOOP, protocol.START, protocol.START_EVENT_LOOP]


@pytest.fixture
def user(db):
    return get_user_model().objects.create_user("ada", password="x")


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("prompt", "steps", "answer_contains"), SEED_PROMPTS)
async def test_seed_prompt_frame_sequence(layer, offline_instant, user, prompt, steps, answer_contains):
    client = Client(user=user)
    connected, _ = await client.connect()
    assert connected
    hello = await client.receive()
    assert hello["type"] == protocol.CONVERSATION
    assert hello["messages"] == []
    conversation_id = hello["conversation_id"]

    await client.prompt(prompt)
    frames = await client.until_finished()
    await client.close()

    types = [frame["type"] for frame in frames]
    assert types[: len(LIFECYCLE)] == LIFECYCLE
    assert types[-2:] == [protocol.RESULT, protocol.RUN_FINISHED]
    assert_contiguous(frames)
    assert {frame["conversation_id"] for frame in frames} == {conversation_id}
    assert len({frame["run_id"] for frame in frames}) == 1
    for raw in client.raw:
        assert json.loads(raw) is not None  # every frame is JSON text

    tool_uses = [frame["current_tool_use"] for frame in frames if frame["type"] == protocol.CURRENT_TOOL_USE]
    assert {tool_use["name"] for tool_use in tool_uses} == {"calculator"}
    results = [frame["tool_result"] for frame in frames if frame["type"] == protocol.TOOL_RESULT]
    assert len(results) == len(steps)
    assistant_tool_inputs = [
        block["toolUse"]["input"]["expression"]
        for frame in frames
        if frame["type"] == protocol.MESSAGE and frame["message"]["role"] == "assistant"
        for block in frame["message"]["content"]
        if "toolUse" in block
    ]
    assert assistant_tool_inputs == [expression for expression, _, _ in steps]
    for result, (_, status, text) in zip(results, steps, strict=True):
        assert result["name"] == "calculator"
        assert result["status"] == status
        assert text in " ".join(item.get("text", "") for item in result["content"])

    result = frames[-2]["result"]
    assert result["stop_reason"] == "end_turn"
    final_text = "".join(block.get("text", "") for block in result["message"]["content"])
    streamed_after_last_tool = []
    for frame in frames:
        if frame["type"] == protocol.TOOL_RESULT:
            streamed_after_last_tool = []
        elif frame["type"] == protocol.DATA:
            streamed_after_last_tool.append(frame["data"])
    assert "".join(streamed_after_last_tool) == final_text
    assert answer_contains in final_text
    assert result["usage"]["totalTokens"] > 0
    assert frames[-1]["status"] == protocol.STATUS_COMPLETED
