"""The AG-UI endpoint: the frame-to-event mapping, and runs, access, CSRF and bad input through Django's client."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from ag_ui.core import Event, EventType
from django.test import AsyncClient
from pydantic import TypeAdapter

from agentapp import agui, protocol
from agentapp.agui_events import RunTranslator, snapshot_messages
from agentapp.models import Conversation, ConversationMember, Message, Run, ToolResult
from tests.test_sse import logged_in

TIMEOUT = 10
EVENTS = TypeAdapter(Event)
CONVERSATION = "0e2a8f21-0000-4000-8000-000000000001"
RUN = "03e3c08a-0000-4000-8000-000000000002"


def run_frame(frame_type: str, seq: int, **fields: Any) -> dict[str, Any]:
    return {"type": frame_type, **fields, "conversation_id": CONVERSATION, "run_id": RUN, "seq": seq}


def translate(frames: list[dict[str, Any]], history: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The AG-UI events of ``frames`` as a client decodes them, each checked against the protocol's schema."""
    translator = RunTranslator(CONVERSATION, "client-run", history or [])
    events = [event for frame in frames for event in translator.translate(frame)] + translator.end()
    wire = [json.loads(event.model_dump_json(by_alias=True)) for event in events]
    for event in wire:
        EVENTS.validate_python(event)
    return wire


def kinds(events: list[dict[str, Any]]) -> list[str]:
    return [event["type"] for event in events]


### Mapping, frame by frame ###

CALCULATOR_RUN = [
    run_frame("run_started", 0, prompt="Calculate 2+2"),
    run_frame("init_event_loop", 1, init_event_loop=True),
    run_frame("start", 2, start=True),
    run_frame("start_event_loop", 3, start_event_loop=True),
    run_frame("current_tool_use", 4, current_tool_use={"toolUseId": "t1", "name": "calculator", "input": '{"expr'}),
    run_frame("current_tool_use", 5, current_tool_use={"toolUseId": "t1", "name": "calculator", "input": '{"expr'}),
    run_frame(
        "current_tool_use",
        6,
        current_tool_use={"toolUseId": "t1", "name": "calculator", "input": '{"expression": "2+2"}'},
    ),
    run_frame(
        "message",
        7,
        message={"role": "assistant", "content": [{"toolUse": {"toolUseId": "t1", "name": "calculator", "input": {}}}]},
    ),
    run_frame(
        "message",
        8,
        message={"role": "user", "content": [{"toolResult": {"toolUseId": "t1", "content": [{"text": "4"}]}}]},
    ),
    run_frame(
        "tool_result",
        9,
        tool_result={"toolUseId": "t1", "name": "calculator", "status": "success", "content": [{"text": "4"}]},
    ),
    run_frame("reasoning", 10, reasoning=True, reasoningText="Sum known. "),
    run_frame("data", 11, data="2+2 "),
    run_frame("data", 13, seq_first=12, data="= 4."),
    run_frame("message", 14, message={"role": "assistant", "content": [{"text": "2+2 = 4."}]}),
    run_frame(
        "result",
        15,
        result={"stop_reason": "end_turn", "usage": {"inputTokens": 28, "outputTokens": 4, "totalTokens": 32}},
    ),
    run_frame("run_finished", 16, status="completed", stop_reason="end_turn"),
]


def test_a_calculator_run_maps_event_by_event() -> None:
    history = [
        {"position": 0, "role": "user", "content": [{"text": "hi"}], "partial": False, "run_id": "r0"},
        {"position": 1, "role": "assistant", "content": [{"text": "hello"}], "partial": False, "run_id": "r0"},
    ]
    events = translate(CALCULATOR_RUN, history)
    assert kinds(events) == [
        "RUN_STARTED",
        "MESSAGES_SNAPSHOT",
        "CUSTOM",  # init_event_loop
        "CUSTOM",  # start
        "CUSTOM",  # start_event_loop
        "TOOL_CALL_START",
        "TOOL_CALL_ARGS",
        "TOOL_CALL_ARGS",
        "TOOL_CALL_END",
        "TOOL_CALL_RESULT",
        "REASONING_START",
        "REASONING_MESSAGE_START",
        "REASONING_MESSAGE_CONTENT",
        "REASONING_MESSAGE_END",
        "REASONING_END",
        "TEXT_MESSAGE_START",
        "TEXT_MESSAGE_CONTENT",
        "TEXT_MESSAGE_CONTENT",
        "TEXT_MESSAGE_END",
        "RUN_FINISHED",
    ]
    started, snapshot = events[0], events[1]
    assert (started["threadId"], started["runId"]) == (CONVERSATION, "client-run")
    assert started["metadata"]["agentapp"] == {"prompt": "Calculate 2+2", "run_id": RUN, "seq": 0}
    assert [(m["id"], m["role"], m["content"]) for m in snapshot["messages"]] == [
        (f"{CONVERSATION}.0", "user", "hi"),
        (f"{CONVERSATION}.1", "assistant", "hello"),
        (f"{RUN}.0", "user", "Calculate 2+2"),
    ]
    assert [event["name"] for event in events[2:5]] == [
        "agentapp.init_event_loop",
        "agentapp.start",
        "agentapp.start_event_loop",
    ]
    assert events[2]["value"] == {"init_event_loop": True, "run_id": RUN, "seq": 1}
    assert events[5] == {
        "type": "TOOL_CALL_START",
        "toolCallId": "t1",
        "toolCallName": "calculator",
        "parentMessageId": f"{RUN}.1",
    }
    assert "".join(event["delta"] for event in events[6:8]) == '{"expression": "2+2"}'  # deltas of the input
    assert events[9] == {
        "type": "TOOL_CALL_RESULT",
        "messageId": f"{RUN}.t1.result",
        "toolCallId": "t1",
        "content": "4",
        "role": "tool",
    }
    reasoning_id = events[10]["messageId"]
    assert {event["messageId"] for event in events[10:15]} == {reasoning_id}
    text = events[15:19]
    assert {event["messageId"] for event in text} == {f"{RUN}.3"}  # the run's third message: one id throughout
    assert text[0]["role"] == "assistant" and "".join(e["delta"] for e in text[1:3]) == "2+2 = 4."
    finished = events[-1]
    assert (finished["threadId"], finished["runId"], finished["outcome"]) == (
        CONVERSATION,
        "client-run",
        {"type": "success"},
    )
    assert finished["usage"] == [{"inputTokens": 28, "outputTokens": 4, "totalTokens": 32}]
    assert finished["result"]["stop_reason"] == "end_turn"
    assert finished["metadata"]["agentapp"] == {"run_id": RUN, "status": "completed", "seq": 16}


def test_a_tool_call_that_never_streamed_is_sent_whole_with_its_message() -> None:
    tool_use = {"toolUseId": "t9", "name": "calculator", "input": {"expression": "1+1"}}
    events = translate(
        [
            run_frame("run_started", 0, prompt="x"),
            run_frame("data", 1, data="Let me see."),
            run_frame(
                "message", 2, message={"role": "assistant", "content": [{"text": "Let me see."}, {"toolUse": tool_use}]}
            ),
            run_frame("run_finished", 3, status="completed", stop_reason="tool_use"),
        ]
    )
    assert kinds(events)[2:] == [
        "TEXT_MESSAGE_START",
        "TEXT_MESSAGE_CONTENT",
        "TEXT_MESSAGE_END",
        "TOOL_CALL_START",
        "TOOL_CALL_ARGS",
        "TOOL_CALL_END",
        "RUN_FINISHED",
    ]
    assert events[6]["delta"] == '{"expression": "1+1"}' and events[6]["toolCallId"] == "t9"


def test_a_refusal_outside_any_run_is_the_only_event() -> None:
    refusal = {"type": "error", "conversation_id": CONVERSATION, "code": "busy", "message": "A run is in progress."}
    events = translate([refusal])
    assert events == [{"type": "RUN_ERROR", "message": "A run is in progress.", "code": "busy"}]


def test_an_in_run_error_ends_the_run_and_nothing_follows() -> None:
    events = translate(
        [
            run_frame("run_started", 0, prompt="x"),
            run_frame("data", 1, data="2+"),
            run_frame("force_stop", 2, force_stop=True, force_stop_reason="model failure"),
            run_frame("error", 3, code="run_failed", message="The agent run failed (OfflineModelError)."),
            run_frame("run_finished", 4, status="failed", stop_reason=""),
        ]
    )
    assert kinds(events) == [
        "RUN_STARTED",
        "MESSAGES_SNAPSHOT",
        "TEXT_MESSAGE_START",
        "TEXT_MESSAGE_CONTENT",
        "CUSTOM",
        "TEXT_MESSAGE_END",
        "RUN_ERROR",
    ]
    assert events[4] == {
        "type": "CUSTOM",
        "name": "agentapp.force_stop",
        "value": {"force_stop": True, "force_stop_reason": "model failure", "run_id": RUN, "seq": 2},
    }
    assert events[-1] == {
        "type": "RUN_ERROR",
        "message": "The agent run failed (OfflineModelError).",
        "code": "run_failed",
    }


@pytest.mark.parametrize(
    ("status", "ending"),
    [
        ("cancelled", {"type": "RUN_FINISHED", "outcome": {"type": "cancelled"}}),
        ("failed", {"type": "RUN_ERROR", "code": "run_failed"}),
        ("interrupted", {"type": "RUN_ERROR", "code": "interrupted"}),
    ],
)
def test_each_run_status_ends_the_run(status: str, ending: dict[str, Any]) -> None:
    events = translate(
        [
            run_frame("run_started", 0, prompt="x"),
            run_frame("event_loop_throttled_delay", 1, event_loop_throttled_delay=4),
            run_frame("current_tool_use", 2, current_tool_use={"toolUseId": "t1", "name": "calculator", "input": "{"}),
            run_frame("run_finished", 3, status=status, stop_reason=""),
        ]
    )
    assert kinds(events)[2:5] == ["CUSTOM", "TOOL_CALL_START", "TOOL_CALL_ARGS"]
    assert events[2]["name"] == "agentapp.event_loop_throttled_delay"
    assert events[5] == {"type": "TOOL_CALL_END", "toolCallId": "t1"}  # closed before the end
    assert {key: events[-1][key] for key in ending} == ending
    assert len(events) == 7


def test_an_approval_wait_finishes_the_run_with_an_interrupt_outcome() -> None:
    waiting = {
        "id": "v1:before_tool_call:t1:abc",
        "name": "agentapp-approval",
        "tool": "calculator",
        "toolUseId": "t1",
        "input": {"expression": "2+2"},
        "reason": "The agent wants to call calculator.",
    }
    events = translate(
        [
            run_frame("run_started", 0, prompt="x"),
            run_frame("interrupt", 1, interrupts=[waiting]),
            run_frame("run_finished", 2, status="awaiting_approval", stop_reason="interrupt"),
        ]
    )
    assert events[2]["name"] == "agentapp.interrupt"
    assert events[3]["outcome"] == {
        "type": "interrupt",
        "interrupts": [
            {
                "id": waiting["id"],
                "reason": "tool_call",
                "message": "The agent wants to call calculator.",
                "toolCallId": "t1",
                "responseSchema": {
                    "type": "object",
                    "properties": {"approved": {"type": "boolean"}, "text": {"type": "string"}},
                    "required": ["approved"],
                },
                "metadata": {"agentapp": {"tool": "calculator", "input": {"expression": "2+2"}}},
            }
        ],
    }


def test_frames_outside_the_run_and_a_dropped_stream() -> None:
    title = {"type": "title", "conversation_id": CONVERSATION, "title": "New"}
    events = translate([title, run_frame("run_started", 0, prompt="x"), title, run_frame("data", 1, data="a")])
    assert kinds(events) == [
        "RUN_STARTED",
        "MESSAGES_SNAPSHOT",
        "CUSTOM",  # inside the run: passed on; before it: left out (RUN_STARTED comes first)
        "TEXT_MESSAGE_START",
        "TEXT_MESSAGE_CONTENT",
        "TEXT_MESSAGE_END",
        "RUN_ERROR",  # the stream ended before run_finished
    ]
    assert events[2] == {"type": "CUSTOM", "name": "agentapp.title", "value": {"title": "New"}}
    assert events[-1]["code"] == protocol.ERR_RUN_FAILED


def test_stored_history_becomes_ag_ui_messages() -> None:
    history = [
        {"position": 4, "role": "user", "content": [{"text": "Calculate 2+2"}]},
        {
            "position": 5,
            "role": "assistant",
            "content": [{"toolUse": {"toolUseId": "t1", "name": "calculator", "input": {"expression": "2+2"}}}],
        },
        {
            "position": 6,
            "role": "user",
            "content": [
                {"toolResult": {"toolUseId": "t1", "status": "success", "content": [{"text": "4"}]}},
                {"toolResult": {"toolUseId": "t2", "status": "error", "content": [{"json": {"e": 1}}]}},
            ],
        },
        {"position": 7, "role": "assistant", "content": [{"text": "2+2 = 4."}], "partial": True},
    ]
    messages = [json.loads(m.model_dump_json(by_alias=True)) for m in snapshot_messages("c", history)]
    assert messages == [
        {"id": "c.4", "role": "user", "content": "Calculate 2+2"},
        {
            "id": "c.5",
            "role": "assistant",
            "toolCalls": [
                {
                    "id": "t1",
                    "type": "function",
                    "function": {"name": "calculator", "arguments": '{"expression": "2+2"}'},
                }
            ],
        },
        {"id": "c.6.t1", "role": "tool", "content": "4", "toolCallId": "t1"},
        {"id": "c.6.t2", "role": "tool", "content": '{"e": 1}', "toolCallId": "t2", "error": '{"e": 1}'},
        {"id": "c.7", "role": "assistant", "content": "2+2 = 4."},
    ]


### Runs through Django's client ###


def run_input(prompt: str | None, thread_id: str | None = None, **fields: Any) -> dict[str, Any]:
    """A RunAgentInput as HttpAgent sends it, with an earlier exchange the server ignores."""
    messages = [
        {"id": "u0", "role": "user", "content": "an earlier prompt"},
        {"id": "a0", "role": "assistant", "content": "an earlier answer"},
    ]
    if prompt is not None:
        messages.append({"id": "u1", "role": "user", "content": prompt})
    return {
        "threadId": thread_id or str(uuid.uuid4()),
        "runId": str(uuid.uuid4()),
        "state": {},
        "messages": messages,
        "tools": [],
        "context": [],
        "forwardedProps": {},
        **fields,
    }


async def post(client: AsyncClient, path: str, body: Any, **extra: Any) -> Any:
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return await client.post(path, data, content_type="application/json", **extra)


class AguiReader:
    """Reads an AG-UI event stream: each event decoded and checked against the protocol's schema."""

    def __init__(self, response: Any) -> None:
        assert response.status_code == 200, response.content
        assert response["Content-Type"].startswith("text/event-stream")
        self._chunks: asyncio.Queue[bytes | None] = asyncio.Queue()
        # Read in a task, as Django's ASGI handler does: a client hanging up cancels that task.
        self._pump = asyncio.create_task(self._read(aiter(response.streaming_content)))
        self._buffer = b""

    async def _read(self, chunks: AsyncIterator[bytes]) -> None:
        async for chunk in chunks:
            self._chunks.put_nowait(chunk)
        self._chunks.put_nowait(None)

    async def event(self) -> dict[str, Any] | None:
        """The next event, or None at the end of the stream."""
        while b"\n\n" not in self._buffer:
            chunk = await asyncio.wait_for(self._chunks.get(), TIMEOUT)
            if chunk is None:
                self._chunks.put_nowait(None)
                assert not self._buffer.strip(), self._buffer
                return None
            self._buffer += chunk
        block, self._buffer = self._buffer.split(b"\n\n", 1)
        data = [line[len(b"data: ") :] for line in block.split(b"\n") if line.startswith(b"data: ")]
        if not data:
            return await self.event()  # a comment
        event = json.loads(b"\n".join(data))
        EVENTS.validate_python(event)
        return event

    async def until(self, event_type: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        while not events or events[-1]["type"] != event_type:
            event = await self.event()
            assert event is not None, events
            events.append(event)
        return events

    async def rest(self) -> list[dict[str, Any]]:
        events = []
        while (event := await self.event()) is not None:
            events.append(event)
        return events

    async def close(self) -> None:
        self._pump.cancel()
        await asyncio.gather(self._pump, return_exceptions=True)


def text_of(events: list[dict[str, Any]]) -> str:
    return "".join(event["delta"] for event in events if event["type"] == EventType.TEXT_MESSAGE_CONTENT)


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_calculator_run_streams_and_is_saved_then_the_thread_goes_on(layer, offline_instant, ada) -> None:
    client = await logged_in(ada)
    first = run_input("Calculate 2+2")
    events = await AguiReader(await post(client, "/agui/", first)).rest()
    assert kinds(events)[:2] == ["RUN_STARTED", "MESSAGES_SNAPSHOT"] and kinds(events)[-1] == "RUN_FINISHED"
    thread_id = events[0]["threadId"]
    assert thread_id != first["threadId"] and events[0]["runId"] == first["runId"]  # agui/ opens a new conversation
    assert [m["content"] for m in events[1]["messages"]] == ["Calculate 2+2"]
    assert text_of(events) == "2+2 = 4."
    calls = [event for event in events if event["type"].startswith("TOOL_CALL")]
    assert kinds(calls) == ["TOOL_CALL_START", "TOOL_CALL_ARGS", "TOOL_CALL_END", "TOOL_CALL_RESULT"]
    assert json.loads(calls[1]["delta"]) == {"expression": "2+2"} and calls[3]["content"] == "4"
    assert events[-1]["outcome"] == {"type": "success"}

    run = await Run.objects.aget(conversation_id=thread_id)
    assert (run.status, run.prompt, str(run.pk)) == (
        "completed",
        "Calculate 2+2",
        events[0]["metadata"]["agentapp"]["run_id"],
    )
    assert await ToolResult.objects.filter(run=run, status="success").acount() == 1

    second = run_input("Calculate 3*3", thread_id=thread_id)
    again = await AguiReader(await post(client, f"/agui/{thread_id}/", second)).rest()
    snapshot = again[1]["messages"]
    assert [m["role"] for m in snapshot] == ["user", "assistant", "tool", "assistant", "user"]
    assert snapshot[2]["content"] == "4" and snapshot[-1]["content"] == "Calculate 3*3"
    assert text_of(again) == "3*3 = 9." and again[-1]["outcome"] == {"type": "success"}
    assert await Run.objects.filter(conversation_id=thread_id, status="completed").acount() == 2


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_client_hanging_up_cancels_its_run(paced, ada) -> None:
    client = await logged_in(ada)
    reader = AguiReader(await post(client, "/agui/", run_input("Stream 300 tokens")))
    seen = await reader.until("TEXT_MESSAGE_CONTENT")
    await reader.close()
    run = await Run.objects.aget(conversation_id=seen[0]["threadId"])
    assert run.status == "cancelled"
    partial = await Message.objects.aget(run=run, role="assistant")
    assert partial.partial and partial.content[0]["text"].startswith(text_of(seen))


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_an_approval_is_an_interrupt_and_a_resume_answers_it(settings, offline_instant, ada) -> None:
    settings.AGENTAPP = {**settings.AGENTAPP, "APPROVAL_TOOLS": ["calculator"]}
    client = await logged_in(ada)
    paused = await AguiReader(await post(client, "/agui/", run_input("Calculate 2+2"))).rest()
    outcome = paused[-1]["outcome"]
    assert outcome["type"] == "interrupt" and outcome["interrupts"][0]["reason"] == "tool_call"
    interrupt = outcome["interrupts"][0]
    thread_id = paused[0]["threadId"]
    resume = [{"interruptId": interrupt["id"], "status": "resolved", "payload": {"approved": True}}]
    resumed = await AguiReader(
        await post(client, f"/agui/{thread_id}/", run_input(None, thread_id=thread_id, resume=resume))
    ).rest()
    assert resumed[0]["metadata"]["agentapp"]["resumes"] == paused[0]["metadata"]["agentapp"]["run_id"]
    result = next(event for event in resumed if event["type"] == "TOOL_CALL_RESULT")
    assert result["toolCallId"] == interrupt["toolCallId"] and result["content"] == "4"
    assert text_of(resumed) == "2+2 = 4." and resumed[-1]["outcome"] == {"type": "success"}


### Who may do what, and bad requests ###


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_access_answers_are_the_sse_ones(settings, ada, stranger) -> None:
    settings.AGENTAPP = {**settings.AGENTAPP, "ALLOW_ANONYMOUS": False}
    conversation = await Conversation.objects.acreate(owner=ada)
    cid = str(conversation.pk)
    prompt = {"type": "prompt", "prompt": "x"}

    async def both(client: AsyncClient, conversation_id: str | None) -> tuple[Any, Any]:
        suffix = f"{conversation_id}/" if conversation_id else ""
        agui = await post(client, f"/agui/{suffix}", run_input("x", thread_id=conversation_id))
        sse = await post(client, f"/sse/{suffix}", prompt)
        return agui, sse

    anonymous = AsyncClient()
    outsider = await logged_in(stranger)
    for client, conversation_id, status in [
        (anonymous, None, 401),
        (anonymous, cid, 401),
        (outsider, cid, 403),
        (outsider, str(uuid.uuid4()), 404),
    ]:
        agui, sse = await both(client, conversation_id)
        assert (agui.status_code, agui.json()) == (sse.status_code, sse.json()) and agui.status_code == status

    await ConversationMember.objects.acreate(conversation=conversation, user=stranger, role="viewer")
    refused = await post(outsider, f"/agui/{cid}/", run_input("x", thread_id=cid))
    assert refused.status_code == 403 and refused.json()["error"] == protocol.ERR_READ_ONLY
    assert await Run.objects.filter(conversation=conversation).acount() == 0


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_bad_input_gets_400_with_a_json_error(settings, ada) -> None:
    settings.AGENTAPP = {**settings.AGENTAPP, "MAX_PROMPT_CHARS": 10}
    conversation = await Conversation.objects.acreate(owner=ada)
    cid = str(conversation.pk)
    path = f"/agui/{cid}/"
    client = await logged_in(ada)
    no_run_id = run_input("x", thread_id=cid)
    del no_run_id["runId"]
    answers_only = [{"id": "a0", "role": "assistant", "content": "an answer"}]
    cases = [
        ("not json", 400, protocol.ERR_INVALID_JSON),
        (b"\xff\xfe", 400, protocol.ERR_INVALID_JSON),
        (json.dumps(run_input("x", thread_id=cid))[:-1] + ', "state": ' + "9" * 5000 + "}", 400, "invalid_json"),
        ("[1]", 400, "invalid_input"),
        (no_run_id, 400, "invalid_input"),
        (
            json.dumps(run_input("x", thread_id=cid))[:-1] + ', "state": ' + "[" * 5000 + "]" * 5000 + "}",
            400,
            protocol.ERR_TOO_DEEP,
        ),
        (
            json.dumps(run_input("x", thread_id=cid))[:-1] + ', "state": [' + "[]," * 60_000 + "[]]}",
            400,
            protocol.ERR_TOO_COMPLEX,
        ),
        (
            {**run_input("x", thread_id=cid), "messages": [{"role": "user", "content": "x"}]},  # no id
            400,
            "invalid_input",
        ),
        (run_input("x"), 400, "invalid_input"),  # another threadId than the URL's
        ({**run_input(None, thread_id=cid), "messages": answers_only}, 400, protocol.ERR_MISSING_PROMPT),
        (run_input("   ", thread_id=cid), 400, protocol.ERR_MISSING_PROMPT),
        (run_input("x" * 11, thread_id=cid), 413, protocol.ERR_PROMPT_TOO_LARGE),
        ({**run_input(None, thread_id=cid), "messages": answers_only, "resume": []}, 400, protocol.ERR_MISSING_PROMPT),
    ]
    for body, status, code in cases:
        response = await post(client, path, body)
        assert (response.status_code, response.json()["error"]) == (status, code), body
        assert "Traceback" not in response.content.decode()
    for answer, allowed in [(await client.put(path), "GET, POST"), (await client.get("/agui/"), "POST")]:
        assert (answer.status_code, answer["Allow"], answer.json()["error"]) == (405, allowed, "method_not_allowed")
    assert (await post(client, "/agui/not-a-uuid/", run_input("x"))).status_code == 404
    assert await Run.objects.acount() == 0


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_posts_need_the_csrf_token(offline_instant, ada) -> None:
    client = await logged_in(ada, enforce_csrf_checks=True)
    refused = await post(client, "/agui/", run_input("Calculate 2+2"))
    assert refused.status_code == 403
    token = (await client.get("/api/conversations/")).cookies["csrftoken"].value
    answer = await post(client, "/agui/", run_input("Calculate 2+2"), headers={"x-csrftoken": token})
    assert (await AguiReader(answer).rest())[-1]["type"] == "RUN_FINISHED"
    assert await Run.objects.acount() == 1


def test_a_long_history_from_the_client_is_read_and_only_its_last_prompt_kept() -> None:
    earlier = [
        {"id": f"m{index}", "role": "user" if index % 2 == 0 else "assistant", "content": f"turn {index}"}
        for index in range(4000)
    ]
    body = run_input("the newest prompt")
    body["messages"] = [*earlier, *body["messages"]]
    read = agui.read_input(json.dumps(body).encode(), None)
    assert agui.prompt_of(read) == "the newest prompt"
    assert len(read.messages) == 1
