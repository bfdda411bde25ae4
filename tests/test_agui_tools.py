"""AG-UI frontend tools: the client's declared tools are checked, offered to the agent, and a call of one ends the run
for the client to run it; the next run carries its result, which is stored like any other tool's."""

from __future__ import annotations

import json
from typing import Any

import pytest
from ag_ui.core import Tool

from agentapp.agui_tools import MAX_SCHEMA_CHARS, MAX_TOOLS, NO_PARAMETERS, ToolDeclarationError, checked_tools
from agentapp.models import Message, Run, ToolResult
from tests.test_agui import AguiReader, kinds, logged_in, post, run_input, text_of

BACKGROUND = {
    "name": "change_background",
    "description": "Change the page's background colour.",
    "parameters": {"type": "object", "properties": {"color": {"type": "string"}}, "required": ["color"]},
}
ASK = 'Call the change_background tool with {"color": "blue"}'


def declared(**fields: Any) -> Tool:
    return Tool.model_validate({**BACKGROUND, **fields})


### Declarations ###


def test_declared_tools_are_checked() -> None:
    (tool,) = checked_tools([declared()])
    assert (tool.name, tool.parameters) == ("change_background", BACKGROUND["parameters"])
    assert tool.spec()["inputSchema"] == {"json": BACKGROUND["parameters"]}
    assert checked_tools([declared(parameters=None, description="")])[0].parameters == NO_PARAMETERS
    refused = [
        ([declared(name=f"t{index}") for index in range(MAX_TOOLS + 1)], "At most"),
        ([declared(name="1st")], "tool name"),
        ([declared(name="a b")], "tool name"),
        ([declared(name="x" * 65)], "tool name"),
        ([declared(), declared()], "declared twice"),
        ([declared(description="x" * 4001)], "description"),
        ([declared(parameters={"type": "string"})], "type 'object'"),
        ([declared(parameters=["type", "object"])], "type 'object'"),
        ([declared(parameters={"type": "object", "properties": {"a": {"type": "nope"}}})], "not a valid JSON schema"),
        ([declared(parameters={"type": "object", "description": "x" * MAX_SCHEMA_CHARS})], "over"),
        (
            [
                declared(name=f"t{index}", parameters={"type": "object", "description": "x" * 9000})
                for index in range(4)
            ],
            "together|over 32000",
        ),
    ]
    for tools, problem in refused:
        with pytest.raises(ToolDeclarationError, match=problem):
            checked_tools(tools)


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_refused_tools_get_400_before_any_run(offline_instant, ada) -> None:
    client = await logged_in(ada)
    bad = {**BACKGROUND, "parameters": {"type": "object", "properties": {"a": {"type": "nope"}}}}
    response = await post(client, "/agui/", run_input(ASK, tools=[bad]))
    assert response.status_code == 400 and response.json()["error"] == "invalid_tools"
    assert "change_background" in response.json()["message"]
    assert await Run.objects.acount() == 0
    no_tools = run_input("Calculate 2+2")
    del no_tools["tools"]  # optional in a RunAgentInput
    assert (await AguiReader(await post(client, "/agui/", no_tools)).rest())[-1]["type"] == "RUN_FINISHED"


### Runs ###


def assistant_with_call(call_id: str) -> dict[str, Any]:
    call = {
        "id": call_id,
        "type": "function",
        "function": {"name": "change_background", "arguments": '{"color":"blue"}'},
    }
    return {"id": "a1", "role": "assistant", "toolCalls": [call]}


def continuation(thread_id: str, call_id: str, tools: list[dict[str, Any]], **result: Any) -> dict[str, Any]:
    """The next RunAgentInput after the client ran the call: the thread's messages, then the tool's result."""
    body = run_input(ASK, thread_id=thread_id, tools=tools)
    body["messages"] += [assistant_with_call(call_id), {"id": "r1", "role": "tool", "toolCallId": call_id, **result}]
    return body


async def ask(client: Any) -> list[dict[str, Any]]:
    events = await AguiReader(await post(client, "/agui/", run_input(ASK, tools=[BACKGROUND]))).rest()
    calls = [event for event in events if event["type"].startswith("TOOL_CALL")]
    assert kinds(calls) == ["TOOL_CALL_START", "TOOL_CALL_ARGS", "TOOL_CALL_END"]  # no result: the client runs it
    assert calls[0]["toolCallName"] == "change_background" and json.loads(calls[1]["delta"]) == {"color": "blue"}
    finished = events[-1]
    assert finished["type"] == "RUN_FINISHED" and finished["outcome"] == {"type": "success"}
    assert finished["metadata"]["agentapp"]["client_tool_calls"] == [calls[0]["toolCallId"]]
    return events


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_frontend_tool_call_ends_the_run_and_its_result_continues_it(layer, offline_instant, ada) -> None:
    client = await logged_in(ada)
    asked = await ask(client)
    thread_id, call_id = asked[0]["threadId"], asked[2 + kinds(asked[2:]).index("TOOL_CALL_START")]["toolCallId"]
    paused = await Run.objects.aget(conversation_id=thread_id)
    assert paused.status == "awaiting_approval"

    body = continuation(thread_id, call_id, [BACKGROUND], content="The background is blue.")
    events = await AguiReader(await post(client, f"/agui/{thread_id}/", body)).rest()
    assert events[0]["metadata"]["agentapp"]["resumes"] == str(paused.pk)
    results = [event for event in events if event["type"] == "TOOL_CALL_RESULT"]
    assert [(r["toolCallId"], r["content"]) for r in results] == [(call_id, "The background is blue.")]
    assert text_of(events) == "change_background returned: The background is blue."
    assert events[-1]["outcome"] == {"type": "success"}

    stored = await ToolResult.objects.aget(conversation_id=thread_id)
    assert (stored.tool_name, stored.tool_use_id, stored.status, stored.tool_input, stored.content) == (
        "change_background",
        call_id,
        "success",
        {"color": "blue"},
        [{"text": "The background is blue."}],
    )
    roles = [m.role async for m in Message.objects.filter(conversation_id=thread_id).order_by("position")]
    assert roles == ["user", "assistant", "user", "assistant"]  # prompt, call, result, answer
    resumed = await Run.objects.exclude(pk=paused.pk).aget(conversation_id=thread_id)
    assert resumed.status == "completed"


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_an_error_result_without_the_tools_declared_again(offline_instant, ada) -> None:
    client = await logged_in(ada)
    asked = await ask(client)
    thread_id = asked[0]["threadId"]
    call_id = next(event["toolCallId"] for event in asked if event["type"] == "TOOL_CALL_START")
    body = continuation(thread_id, call_id, [], content="", error="No page is open.")
    events = await AguiReader(await post(client, f"/agui/{thread_id}/", body)).rest()
    result = next(event for event in events if event["type"] == "TOOL_CALL_RESULT")
    assert result["content"] == "No page is open."
    assert text_of(events) == "change_background failed: No page is open."
    stored = await ToolResult.objects.aget(conversation_id=thread_id)
    assert (stored.status, stored.content) == ("error", [{"text": "No page is open."}])


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_declared_tool_named_like_a_server_tool_is_left_out(offline_instant, ada) -> None:
    client = await logged_in(ada)
    shadow = {**BACKGROUND, "name": "calculator", "parameters": None}
    events = await AguiReader(await post(client, "/agui/", run_input("Calculate 2+2", tools=[shadow]))).rest()
    result = next(event for event in events if event["type"] == "TOOL_CALL_RESULT")
    assert result["content"] == "4" and text_of(events) == "2+2 = 4." and events[-1]["outcome"] == {"type": "success"}


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_new_prompt_while_a_frontend_tool_waits_is_refused(offline_instant, ada) -> None:
    client = await logged_in(ada)
    thread_id = (await ask(client))[0]["threadId"]
    body = run_input("Calculate 2+2", thread_id=thread_id, tools=[BACKGROUND])
    events = await AguiReader(await post(client, f"/agui/{thread_id}/", body)).rest()
    assert [(event["type"], event["code"]) for event in events] == [("RUN_ERROR", "awaiting_approval")]
