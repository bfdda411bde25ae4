"""Everything a Strands agent streams reaches the client or is dropped by a documented rule.

Reasoning, citations, a streaming tool and structured output each go end to end over a socket and into the stored
rows; every event class of the installed Strands is either mapped to frames or listed as dropped, as the docs say.
"""

from __future__ import annotations

import inspect
import json
import time
from pathlib import Path
from typing import Any, Literal

import pytest
from django.contrib.auth import get_user_model
from django.test import AsyncClient
from pydantic import BaseModel
from strands.agent import AgentResult
from strands.telemetry import EventLoopMetrics
from strands.tools.structured_output.structured_output_utils import convert_pydantic_to_tool_spec
from strands.types import _events

from agentapp import offline_model, protocol
from agentapp.models import Message, Run
from agentapp.protocol import from_storable
from tests.stream_agents import Answer
from tests.wsclient import Client, streamed_text

DOCS = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
TOOL_USE = {"toolUseId": "t1", "name": "progress", "input": {}}
ASSISTANT = {"role": "assistant", "content": [{"text": "4"}]}
RESULTS = {"role": "user", "content": [{"toolResult": {"toolUseId": "t1", "status": "success", "content": []}}]}
# What Strands merges into some events before it streams them: never on the wire.
INVOCATION_STATE = {"agent": object(), "request_state": {"secret": 1}, "messages": [{"role": "user"}]}


### Every Strands event class: mapped or dropped, as the table in docs/protocol.md says ###


def strands_event_classes() -> dict[str, type]:
    """The event classes ``strands.types._events`` defines or re-exports (TypedEvent and its subclasses)."""
    return {
        name: value
        for name, value in vars(_events).items()
        if inspect.isclass(value) and issubclass(value, _events.TypedEvent)
    }


def samples() -> dict[str, _events.TypedEvent]:
    """One instance of each Strands event class, as the agent loop would build it."""
    citation = {"title": "Docs", "location": {"web": {"url": "https://example.com", "domain": "example.com"}}}
    result = AgentResult(stop_reason="end_turn", message=ASSISTANT, metrics=EventLoopMetrics(), state={})
    return {
        "TypedEvent": _events.TypedEvent({}),
        "InitEventLoopEvent": _events.InitEventLoopEvent(),
        "StartEvent": _events.StartEvent(),
        "StartEventLoopEvent": _events.StartEventLoopEvent(),
        "ModelStreamChunkEvent": _events.ModelStreamChunkEvent({"contentBlockDelta": {"delta": {"text": "x"}}}),
        "ModelStreamEvent": _events.ModelStreamEvent({}),
        "ToolUseStreamEvent": _events.ToolUseStreamEvent({"toolUse": {"input": "{"}}, {**TOOL_USE, "input": "{"}),
        "TextStreamEvent": _events.TextStreamEvent({"text": "x"}, "x"),
        "CitationStreamEvent": _events.CitationStreamEvent({"citation": citation}, citation),
        "ReasoningTextStreamEvent": _events.ReasoningTextStreamEvent({"reasoningContent": {"text": "h"}}, "h"),
        "ReasoningRedactedContentStreamEvent": _events.ReasoningRedactedContentStreamEvent({}, b"\x00\x01"),
        "ReasoningSignatureStreamEvent": _events.ReasoningSignatureStreamEvent({}, "signature"),
        "EventLoopStopEvent": _events.EventLoopStopEvent("end_turn", ASSISTANT, EventLoopMetrics(), {}),
        "StructuredOutputEvent": _events.StructuredOutputEvent(Answer(answer="4", value=4)),
        "EventLoopThrottleEvent": _events.EventLoopThrottleEvent(4),
        "ToolStreamEvent": _events.ToolStreamEvent(TOOL_USE, {"done": 1}),
        "AgentAsToolStreamEvent": _events.AgentAsToolStreamEvent(TOOL_USE, {"data": "x", **INVOCATION_STATE}, None),
        "ToolCancelEvent": _events.ToolCancelEvent(TOOL_USE, "No."),
        "ToolInterruptEvent": _events.ToolInterruptEvent(TOOL_USE, []),
        "ModelMessageEvent": _events.ModelMessageEvent(ASSISTANT),
        "ToolResultMessageEvent": _events.ToolResultMessageEvent(RESULTS),
        "ForceStopEvent": _events.ForceStopEvent("boom"),
        "AgentResultEvent": _events.AgentResultEvent(result),
        "ModelStopReason": _events.ModelStopReason("end_turn", ASSISTANT, {}, {}),
        "ToolResultEvent": _events.ToolResultEvent({"toolUseId": "t1", "status": "success", "content": []}),
        "MultiAgentResultEvent": _events.MultiAgentResultEvent(result),  # type: ignore[arg-type]
        "MultiAgentNodeStartEvent": _events.MultiAgentNodeStartEvent("a", "agent"),
        "MultiAgentNodeStopEvent": _events.MultiAgentNodeStopEvent("a", object()),  # type: ignore[arg-type]
        "MultiAgentHandoffEvent": _events.MultiAgentHandoffEvent(["a"], ["b"], "over to you"),
        "MultiAgentNodeStreamEvent": _events.MultiAgentNodeStreamEvent("a", {"data": "x"}),
        "MultiAgentNodeCancelEvent": _events.MultiAgentNodeCancelEvent("a", "No."),
        "MultiAgentNodeInterruptEvent": _events.MultiAgentNodeInterruptEvent("a", []),
    }


def test_every_strands_event_class_is_mapped_or_dropped_in_the_table():
    classes = set(strands_event_classes())
    mapped, dropped = set(protocol.STRANDS_EVENTS), set(protocol.DROPPED_EVENTS)
    assert not mapped & dropped
    assert classes == mapped | dropped, (classes - mapped - dropped, (mapped | dropped) - classes)
    assert set(samples()) == classes
    docs = DOCS.read_text()
    for name, frames in protocol.STRANDS_EVENTS.items():
        assert f"| `{name}` | {', '.join(f'`{frame}`' for frame in frames)} |" in docs, name
    for name, why in protocol.DROPPED_EVENTS.items():
        assert f"| `{name}` | {why} |" in docs, name


@pytest.mark.parametrize("name", sorted(samples()))
def test_the_code_follows_the_table(name):
    """Each event, with the invocation state Strands merges into some, becomes the frames its row names."""
    event = samples()[name]
    event.prepare(dict(INVOCATION_STATE))
    if not event.is_callback_event:  # never streamed: were it, it would still make no frame
        assert name in protocol.DROPPED_EVENTS
    frames = protocol.RunFrames("c", "r")
    payloads = frames.payloads(event.as_dict())
    expected = list(protocol.STRANDS_EVENTS.get(name, ()))
    if name == "ToolInterruptEvent":
        # The runner builds the interrupt frame from the agent's interrupt state, on this key.
        assert "tool_interrupt_event" in event.as_dict() and payloads == []
        return
    assert [payload["type"] for payload in payloads] == expected
    for payload in payloads:
        text = protocol.encode_frame(frames.frame(payload))
        assert "secret" not in text and "[unserializable]" not in text, text


def test_an_event_no_rule_knows_is_a_raw_frame_of_its_plain_fields():
    event = {"type": "brand_new", "count": 2, "detail": {"when": b"ab"}, "handle": object(), **INVOCATION_STATE}
    [payload] = protocol.payloads_for_event(event, {})
    assert payload == {
        "type": protocol.RAW,
        protocol.RAW: {"type": "brand_new", "count": 2, "detail": {"when": {"bytes": 2}}},
    }
    # Nothing plain left: nothing to send.
    assert protocol.payloads_for_event({"handle": object(), **INVOCATION_STATE}, {}) == []


def test_a_structured_output_is_in_the_result_payload():
    result = AgentResult(
        stop_reason="end_turn",
        message=ASSISTANT,
        metrics=EventLoopMetrics(),
        state={},
        structured_output=Answer(answer="four", value=4),
    )
    assert protocol.result_payload(result)["structured_output"] == {"answer": "four", "value": 4}
    result.structured_output = None
    assert "structured_output" not in protocol.result_payload(result)


### End to end over a socket, and in the stored rows ###


@pytest.fixture
def user(db: Any) -> Any:
    return get_user_model().objects.create_user("ada", password="x")


def use_agent(settings: Any, factory: str) -> None:
    settings.AGENTAPP = {"AGENT_FACTORY": f"tests.stream_agents.{factory}", "OFFLINE_TOKENS_PER_SECOND": 0}


async def run_prompt(user: Any, prompt: str) -> tuple[str, list[dict[str, Any]]]:
    """A prompt on a new conversation: its id and the run's frames."""
    client = Client(user=user)
    conversation_id = (await client.hello())["conversation_id"]
    await client.prompt(prompt)
    frames = await client.until_finished()
    await client.close()
    assert frames[-1]["status"] == protocol.STATUS_COMPLETED, frames[-1]
    return conversation_id, frames


async def stored(conversation_id: str) -> list[dict[str, Any]]:
    rows = Message.objects.filter(conversation_id=conversation_id).order_by("position")
    return [{"role": row.role, "content": from_storable(row.content)} async for row in rows]


async def history(user: Any, conversation_id: str) -> list[dict[str, Any]]:
    """The messages a new connection to the conversation gets."""
    client = Client(f"/ws/agent/{conversation_id}/", user=user)
    frame = await client.hello()
    await client.close()
    return frame["messages"]


def of_type(frames: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [frame for frame in frames if frame["type"] == kind]


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_reasoning_streams_is_stored_and_comes_back_in_history(settings, user):
    use_agent(settings, "streaming_agent")
    conversation_id, frames = await run_prompt(user, "Think about cats")
    thought = "Let me think about cats: it deserves a careful answer."
    assert "".join(frame["reasoningText"] for frame in of_type(frames, protocol.REASONING)) == thought
    assert streamed_text(frames) == "I thought about cats."
    # Reasoning comes before the answer's text.
    kinds = [frame["type"] for frame in frames if frame["type"] in (protocol.REASONING, protocol.DATA)]
    assert kinds.index(protocol.DATA) > kinds.index(protocol.REASONING)
    block = {"reasoningContent": {"reasoningText": {"text": thought}}}
    [message] = [f[protocol.MESSAGE] for f in of_type(frames, protocol.MESSAGE)]
    assert message["content"] == [block, {"text": "I thought about cats."}]
    rows = await stored(conversation_id)
    assert rows[-1] == {"role": "assistant", "content": [block, {"text": "I thought about cats."}]}
    assert (await history(user, conversation_id))[-1]["content"] == [block, {"text": "I thought about cats."}]


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_citation_streams_and_is_stored_with_its_text(settings, user):
    use_agent(settings, "streaming_agent")
    conversation_id, frames = await run_prompt(user, "Cite the Django docs")
    citation = {
        "location": {"documentChar": {"documentIndex": 0, "start": 0, "end": 15}},
        "sourceContent": [{"text": "the Django docs"}],
        "title": "the Django docs",
    }
    assert [frame[protocol.CITATION] for frame in of_type(frames, protocol.CITATION)] == [citation]
    text = "According to the Django docs, this answer has a source."
    assert streamed_text(frames) == text
    block = {"citationsContent": {"citations": [citation], "content": [{"text": text}]}}
    rows = await stored(conversation_id)
    assert rows[-1] == {"role": "assistant", "content": [block]}
    assert (await history(user, conversation_id))[-1]["content"] == [block]


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_streaming_tool_reports_progress_to_the_client(settings, user):
    use_agent(settings, "streaming_agent")
    conversation_id, frames = await run_prompt(user, 'Call progress with {"steps": 2}')
    [call] = {frame["current_tool_use"]["toolUseId"] for frame in of_type(frames, protocol.CURRENT_TOOL_USE)}
    streamed = [frame[protocol.TOOL_STREAM] for frame in of_type(frames, protocol.TOOL_STREAM)]
    assert streamed == [
        {"toolUseId": call, "name": "progress", "data": {"done": 1, "of": 2}},
        {"toolUseId": call, "name": "progress", "data": {"done": 2, "of": 2}},
        {"toolUseId": call, "name": "progress", "data": "finished 2 steps"},
    ]
    # Progress comes between the call and its result.
    kinds = [frame["type"] for frame in frames]
    assert (
        kinds.index(protocol.CURRENT_TOOL_USE) < kinds.index(protocol.TOOL_STREAM) < kinds.index(protocol.TOOL_RESULT)
    )
    [result] = of_type(frames, protocol.TOOL_RESULT)
    assert result["tool_result"]["content"] == [{"text": "finished 2 steps"}]
    assert streamed_text(frames) == "progress returned: finished 2 steps"
    assert (await stored(conversation_id))[-1]["content"] == [{"text": "progress returned: finished 2 steps"}]


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_structured_output_reaches_the_result_frame_and_the_run_row(settings, user):
    use_agent(settings, "structured_agent")
    conversation_id, frames = await run_prompt(user, "What is 2+2?")
    [result] = of_type(frames, protocol.RESULT)
    assert result[protocol.RESULT]["structured_output"] == {"answer": "2+2 = 4.", "value": 4}
    run = await Run.objects.aget(conversation_id=conversation_id)
    assert run.structured_output == {"answer": "2+2 = 4.", "value": 4}
    api = AsyncClient()
    await api.aforce_login(user)
    [listed] = (await api.get(f"/api/conversations/{conversation_id}/")).json()["runs"]
    assert listed["structured_output"] == {"answer": "2+2 = 4.", "value": 4}
    # Strands' own structured output tool call and its result are stored like any tool call.
    rows = await stored(conversation_id)
    calls = [block["toolUse"] for row in rows for block in row["content"] if "toolUse" in block]
    assert calls[-1]["name"] == "Answer" and calls[-1]["input"] == {"answer": "2+2 = 4.", "value": 4}
    for raw in of_type(frames, protocol.RAW):
        pytest.fail(f"an event without a rule: {json.dumps(raw)}")


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_run_without_structured_output_stores_none(settings, user):
    use_agent(settings, "streaming_agent")
    conversation_id, frames = await run_prompt(user, "What is 2+2?")
    assert "structured_output" not in of_type(frames, protocol.RESULT)[0][protocol.RESULT]
    assert (await Run.objects.aget(conversation_id=conversation_id)).structured_output is None


### The offline model's new prompts and its structured output call ###


class Nested(BaseModel):
    """A model with every kind of field the offline model fills."""

    kind: Literal["sum", "product"]
    note: str | None
    ratio: float
    flags: list[bool]
    inner: Answer
    label: str = "fixed"


def test_the_offline_model_fills_a_structured_output_from_its_answer():
    spec = convert_pydantic_to_tool_spec(Nested)
    messages = [
        {"role": "user", "content": [{"text": "What is 2+2?"}]},
        {"role": "assistant", "content": [{"text": "2+2 = 4.5"}]},
        {"role": "user", "content": [{"text": "You must format the previous response as structured output."}]},
    ]
    turn = offline_model._next_turn(messages, {spec["name"]}, False, spec)
    assert isinstance(turn.action, offline_model._ToolCall) and turn.action.name == "Nested"
    filled = Nested.model_validate(turn.action.input)
    assert filled == Nested(
        kind="sum", note="2+2 = 4.5", ratio=4.5, flags=[True], inner=Answer(answer="2+2 = 4.5", value=4)
    )


# "Think about" and "Cite" prompts a model reads in time linear in their length (MAX_PROMPT_CHARS is 16,000).
LONG_PROMPTS = {
    "think about": "think about " * 1334,
    "think spaces": "think" + " " * 15995,
    "cite": "cite " * 3200,
    "cite spaces": "cite" + " " * 15995 + "x",
    "thinks": "think" * 3200,
}


@pytest.mark.parametrize("prompt", LONG_PROMPTS.values(), ids=LONG_PROMPTS)
def test_think_and_cite_prompts_are_read_in_linear_time(prompt):
    messages = [{"role": "user", "content": [{"text": prompt}]}]
    started = time.process_time()
    offline_model._next_turn(messages, {"calculator"}, False)
    assert time.process_time() - started < 0.25
