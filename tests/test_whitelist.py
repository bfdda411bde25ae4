"""Only whitelisted, JSON-safe fields leave the server, whatever a tool puts into the stream or the database."""

from __future__ import annotations

import datetime
import decimal
import json
import math
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from strands import Agent, tool
from strands.types.tools import ToolContext

from agentapp import protocol
from agentapp.models import Message, Run, ToolResult
from agentapp.offline_model import OfflineModel
from tests.wsclient import Client


class Opaque:
    """A value no JSON encoder knows, with a recognisable repr."""

    def __repr__(self) -> str:
        return "<Opaque secret=hunter2>"


# What the tool saw when it tried to put an object into agent.state (Strands validates state values).
STATE_ATTEMPTS: list[str] = []

WHEN = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
RAW = b"\x00\xffraw bytes"
PNG = b"\x89PNG\r\n\x1a\n fake image"

FORBIDDEN = [
    repr(Opaque()),
    "hunter2",
    "Opaque",
    "Agent object",
    "<strands",
    "Span",
    "invocation_state",
    "request_state",
    "event_loop_cycle",
    "smuggled",
]


@tool(context=True)
async def leaky(tool_context: ToolContext) -> AsyncIterator[Any]:
    """Stream values that are not JSON (the agent itself among them) and return a datetime, bytes and objects."""
    agent = tool_context.agent
    # Everything in invocation_state is merged into Strands' later delta events.
    tool_context.invocation_state["smuggled"] = Opaque()
    tool_context.invocation_state.setdefault("request_state", {})["smuggled"] = Opaque()
    try:
        agent.state.set("smuggled", Opaque())
        STATE_ATTEMPTS.append("accepted")
    except ValueError:
        STATE_ATTEMPTS.append("rejected")
    # Intermediate yields become tool_stream_event events.
    yield Opaque()
    yield {"agent": agent, "when": WHEN}
    yield {
        "status": "success",
        "content": [
            {"text": "leaky done"},
            {
                "json": {
                    "when": WHEN,
                    "raw": RAW,
                    "obj": Opaque(),
                    "nested": [Opaque(), {"deep": Opaque(), "nan": math.nan}],
                    "set": {1, 2},
                    7: "integer key",
                }
            },
            {"image": {"format": "png", "source": {"bytes": PNG}}},
        ],
    }


@tool(context=True)
def agent_in_result(tool_context: ToolContext) -> dict[str, Any]:
    """Return the agent object itself inside a JSON tool result."""
    return {"status": "success", "content": [{"json": {"agent": tool_context.agent, "obj": Opaque()}}]}


class TolerantOfflineModel(OfflineModel):
    """The offline model, reading tool results through a JSON round trip so it can quote them."""

    async def stream(self, messages: Any, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        plain = json.loads(json.dumps(messages, default=lambda value: "opaque", skipkeys=True))
        async for event in super().stream(plain, *args, **kwargs):
            yield event


def leaky_factory(conversation: Any, user: Any) -> Agent:
    return Agent(model=TolerantOfflineModel(), tools=[leaky, agent_in_result], callback_handler=None)


@pytest.fixture
def user(db):
    return get_user_model().objects.create_user("ada", password="x")


### Over the WebSocket ###


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_non_json_tool_output_never_reaches_the_wire(layer, settings, user):
    settings.AGENTAPP = {"AGENT_FACTORY": "tests.test_whitelist.leaky_factory", "OFFLINE_TOKENS_PER_SECOND": 0}
    STATE_ATTEMPTS.clear()
    client = Client(user=user)
    conversation_id = (await client.hello())["conversation_id"]

    await client.prompt("Call leaky with {}")
    frames = await client.until_finished()
    await client.close()

    assert frames[-1]["status"] == protocol.STATUS_COMPLETED
    assert STATE_ATTEMPTS == ["rejected"]
    for raw in client.raw:
        assert isinstance(json.loads(raw), dict)
        for forbidden in FORBIDDEN:
            assert forbidden not in raw, (forbidden, raw)
    types = {frame["type"] for frame in frames}
    assert protocol.DATA in types  # the delta events that carried invocation_state were forwarded, cleaned

    results = [frame["tool_result"] for frame in frames if frame["type"] == protocol.TOOL_RESULT]
    assert len(results) == 1
    content = results[0]["content"]
    assert results[0]["name"] == "leaky"
    assert content[0] == {"text": "leaky done"}
    assert content[1]["json"] == {
        "when": WHEN.isoformat(),
        "raw": {"bytes": len(RAW)},
        "obj": "[unserializable]",
        "nested": ["[unserializable]", {"deep": "[unserializable]", "nan": None}],
        "set": "[unserializable]",
    }
    assert content[2] == {"image": {"format": "png", "source": {"bytes": {"bytes": len(PNG)}}}}
    assert "leaky returned: leaky done" in frames[-2]["result"]["message"]["content"][0]["text"]

    # The database holds JSON only; bytes are kept (base64) so the history can be replayed to a model.
    run = await Run.objects.aget(conversation_id=conversation_id)
    assert run.status == Run.Status.COMPLETED
    rows = [row async for row in Message.objects.filter(conversation_id=conversation_id).order_by("position")]
    assert [row.role for row in rows] == ["user", "assistant", "user", "assistant"]
    tool_rows = [row async for row in ToolResult.objects.filter(conversation_id=conversation_id)]
    assert len(tool_rows) == 1
    for stored in [row.content for row in rows] + [tool_rows[0].content, tool_rows[0].tool_input, run.usage]:
        text = json.dumps(stored, allow_nan=False)
        for forbidden in FORBIDDEN:
            assert forbidden not in text, (forbidden, text)
    stored_json = tool_rows[0].content[1]["json"]
    assert stored_json["when"] == WHEN.isoformat()
    assert stored_json["obj"] == "[unserializable]"
    assert protocol.from_storable(stored_json["raw"]) == RAW
    assert protocol.from_storable(tool_rows[0].content[2])["image"]["source"]["bytes"] == PNG


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_agent_object_in_a_tool_result_fails_the_run_cleanly(layer, settings, user):
    """Strands deep-copies the history before each model call, and an Agent cannot be copied: the run fails.

    The failure is reported with a code and no traceback, the stored result is JSON, and the next prompt runs
    from the stored (clean) history.
    """
    settings.AGENTAPP = {"AGENT_FACTORY": "tests.test_whitelist.leaky_factory", "OFFLINE_TOKENS_PER_SECOND": 0}
    client = Client(user=user)
    conversation_id = (await client.hello())["conversation_id"]

    await client.prompt("Call agent_in_result with {}")
    frames = await client.until_finished()
    errors = [frame for frame in frames if frame["type"] == protocol.ERROR]
    assert [error["code"] for error in errors] == [protocol.ERR_RUN_FAILED]
    assert frames[-1]["status"] == protocol.STATUS_FAILED
    for raw in client.raw:
        assert isinstance(json.loads(raw), dict)
        assert "Traceback" not in raw
        for forbidden in FORBIDDEN:
            assert forbidden not in raw, (forbidden, raw)
    tool_row = await ToolResult.objects.aget(conversation_id=conversation_id)
    assert tool_row.content == [{"json": {"agent": "[unserializable]", "obj": "[unserializable]"}}]

    await client.prompt("Calculate 2+2")
    frames = await client.until_finished()
    await client.close()
    assert frames[-1]["status"] == protocol.STATUS_COMPLETED
    statuses = [run.status async for run in Run.objects.filter(conversation_id=conversation_id).order_by("started_at")]
    assert statuses == [Run.Status.FAILED, Run.Status.COMPLETED]


### protocol, directly ###


def test_payloads_for_event_keeps_only_whitelisted_keys():
    event = {
        "data": "x",
        "delta": {"text": "x"},
        "agent": object(),
        "event_loop_cycle_span": object(),
        "event_loop_cycle_id": uuid.uuid4(),
        "request_state": {"secret": Opaque()},
        "model": object(),
    }
    assert list(protocol.payloads_for_event(event, {})) == [{"type": "data", "data": "x"}]


def test_payloads_for_tool_use_message_and_reasoning_events():
    noise = {"agent": object(), "event_loop_cycle_span": object(), "request_state": {"k": Opaque()}}
    tool_use = {"toolUseId": "t1", "name": "calc", "input": '{"expression": "1+', "extra": Opaque()}
    assert list(protocol.payloads_for_event({"current_tool_use": tool_use, "delta": {}, **noise}, {})) == [
        {
            "type": "current_tool_use",
            "current_tool_use": {"toolUseId": "t1", "name": "calc", "input": '{"expression": "1+'},
        }
    ]
    reasoning = {"reasoningText": "hmm", "reasoning": True, "delta": {}, **noise}
    assert list(protocol.payloads_for_event(reasoning, {})) == [
        {"type": "reasoning", "reasoning": True, "reasoningText": "hmm"}
    ]
    message = {
        "role": "user",
        "content": [{"toolResult": {"toolUseId": "t1", "status": "error", "content": [{"json": {"o": Opaque()}}]}}],
        "metadata": {"usage": {}},
        "tracking_id": "abc",
    }
    payloads = list(protocol.payloads_for_event({"message": message, **noise}, {"t1": "calc"}))
    assert payloads == [
        {
            "type": "message",
            "message": {
                "role": "user",
                "content": [
                    {
                        "toolResult": {
                            "toolUseId": "t1",
                            "status": "error",
                            "content": [{"json": {"o": "[unserializable]"}}],
                        }
                    }
                ],
            },
        },
        {
            "type": "tool_result",
            "tool_result": {
                "toolUseId": "t1",
                "name": "calc",
                "status": "error",
                "content": [{"json": {"o": "[unserializable]"}}],
            },
        },
    ]
    for payload in payloads:
        protocol.encode_frame(payload)


@pytest.mark.parametrize(
    "event",
    [
        {"event": {"contentBlockDelta": {"delta": {"text": "x"}}}},
        {"tool_stream_event": {"tool_use": {"toolUseId": "t"}, "data": Opaque()}},
        {"tool_cancel_event": {"tool_use": {}, "message": "stop"}},
        {"result": "a string is not an AgentResult"},
        {"data": Opaque()},
        {"agent": object(), "request_state": {}},
        {},
    ],
)
def test_unknown_or_malformed_events_produce_nothing(event):
    assert list(protocol.payloads_for_event(event, {})) == []


def test_json_safe_handles_every_kind_of_value():
    value = {
        "text": "é",
        "int": 3,
        "big": 10**30,
        "float": 1.5,
        "nan": math.nan,
        "inf": -math.inf,
        "none": None,
        "bool": True,
        "bytes": b"abc",
        "bytearray": bytearray(b"ab"),
        "date": datetime.date(2024, 1, 2),
        "uuid": uuid.UUID(int=1),
        "decimal": decimal.Decimal("1.25"),
        "bad_decimal": decimal.Decimal("NaN"),
        "tuple": (1, "a"),
        "object": Opaque(),
        "function": print,
        ("tuple", "key"): "dropped",
        5: "dropped",
    }
    safe = protocol.json_safe(value)
    assert safe == {
        "text": "é",
        "int": 3,
        "big": 10**30,
        "float": 1.5,
        "nan": None,
        "inf": None,
        "none": None,
        "bool": True,
        "bytes": {"bytes": 3},
        "bytearray": {"bytes": 2},
        "date": "2024-01-02",
        "uuid": str(uuid.UUID(int=1)),
        "decimal": 1.25,
        "bad_decimal": None,
        "tuple": [1, "a"],
        "object": "[unserializable]",
        "function": "[unserializable]",
    }
    json.dumps(safe, allow_nan=False)


def test_json_safe_stops_at_depth_and_survives_cycles():
    cycle: list[Any] = []
    cycle.append(cycle)
    text = json.dumps(protocol.json_safe(cycle), allow_nan=False)
    assert "[too deep]" in text
