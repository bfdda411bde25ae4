"""Tests of human approval at the Strands level: pausing a marked tool call, answering it, resuming elsewhere."""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from strands import Agent, tool

from agentapp.approvals import (
    APPROVAL_INTERRUPT,
    ApprovalHook,
    Decision,
    StaleApprovalState,
    export_state,
    interrupt_payloads,
    parse_decision,
    requires_approval,
    responses_prompt,
    restore_state,
)
from agentapp.history import orphan_tool_uses, repair
from agentapp.offline_model import OfflineModel

CALLS: list[tuple[str, int]] = []


@requires_approval(reason="It deletes x.")
@tool
def guarded(x: int) -> str:
    """Delete the thing numbered x.

    Args:
        x: The thing's number.
    """
    CALLS.append(("guarded", x))
    return f"deleted {x}"


@tool
def plain(x: int) -> str:
    """Look at the thing numbered x.

    Args:
        x: The thing's number.
    """
    CALLS.append(("plain", x))
    return f"looked at {x}"


GUARDED_PROMPT = 'Call guarded with {"x": 1}'


@pytest.fixture(autouse=True)
def _clear_calls() -> Iterator[None]:
    CALLS.clear()
    yield
    CALLS.clear()


def make_agent(hook: ApprovalHook | None = None, messages: list[dict[str, Any]] | None = None) -> Agent:
    return Agent(
        model=OfflineModel(),
        tools=[guarded, plain],
        hooks=[hook or ApprovalHook()],
        messages=messages,
        callback_handler=None,
    )


async def run(agent: Agent, prompt: Any) -> tuple[list[dict[str, Any]], Any]:
    """Stream ``prompt`` to the end and return the events and the AgentResult."""
    events = [event async for event in agent.stream_async(prompt)]
    return events, events[-1]["result"]


def text_of(result: Any) -> str:
    return "".join(block["text"] for block in result.message["content"] if "text" in block)


def tool_results(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [block["toolResult"] for message in messages for block in message["content"] if "toolResult" in block]


async def paused_agent() -> tuple[Agent, list[dict[str, Any]], Any]:
    agent = make_agent()
    events, result = await run(agent, GUARDED_PROMPT)
    assert result.stop_reason == "interrupt"
    return agent, events, result


### Pausing and answering ###


@pytest.mark.asyncio
async def test_approved_call_pauses_then_runs_on_resume() -> None:
    agent, events, result = await paused_agent()
    assert CALLS == []
    tool_use = agent.messages[-1]["content"][0]["toolUse"]
    [payload] = interrupt_payloads(result)
    assert payload == {
        "id": result.interrupts[0].id,
        "name": APPROVAL_INTERRUPT,
        "tool": "guarded",
        "toolUseId": tool_use["toolUseId"],
        "input": {"x": 1},
        "reason": "It deletes x.",
    }
    # The stream announces the interrupt as it happens, before the result, with the same payload.
    [interrupt_event] = [event for event in events if "tool_interrupt_event" in event]
    assert interrupt_payloads(interrupt_event) == [payload]
    assert interrupt_payloads(agent) == [payload]
    json.dumps(payload)

    _, resumed = await run(agent, responses_prompt({payload["id"]: {"decision": "approve", "user": "alice"}}))
    assert resumed.stop_reason == "end_turn"
    assert CALLS == [("guarded", 1)]
    assert text_of(resumed) == "guarded returned: deleted 1"
    assert interrupt_payloads(agent) == []


@pytest.mark.asyncio
async def test_paused_history_ends_with_an_unanswered_tool_use() -> None:
    agent, _, result = await paused_agent()
    assert [message["role"] for message in agent.messages] == ["user", "assistant"]
    assert tool_results(agent.messages) == []
    # history.repair would answer this toolUse with an error result; restore_state must undo that.
    [orphan] = orphan_tool_uses(agent.messages)
    assert orphan["toolUseId"] == interrupt_payloads(result)[0]["toolUseId"]


@pytest.mark.asyncio
async def test_denied_call_does_not_run_and_the_model_reads_the_reason() -> None:
    agent, _, result = await paused_agent()
    answer = {"decision": "deny", "text": "too risky", "user": "alice"}
    _, resumed = await run(agent, responses_prompt({result.interrupts[0].id: answer}))
    assert CALLS == []
    assert resumed.stop_reason == "end_turn"
    [tool_result] = tool_results(agent.messages)
    assert tool_result["status"] == "error"
    assert tool_result["content"] == [{"text": "Denied by alice: too risky"}]
    assert text_of(resumed) == "guarded failed: Denied by alice: too risky"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "response",
    ["yes", ["approve"], {"decision": "maybe"}, {"decision": "approve", "text": 5}, {"decision": "approve", "user": 1}],
)
async def test_malformed_answer_is_a_denial(response: Any) -> None:
    agent, _, result = await paused_agent()
    # Sent as a raw block, not through responses_prompt, as any caller of stream_async could.
    prompt = [{"interruptResponse": {"interruptId": result.interrupts[0].id, "response": response}}]
    _, resumed = await run(agent, prompt)
    assert CALLS == []
    assert resumed.stop_reason == "end_turn"
    [tool_result] = tool_results(agent.messages)
    assert tool_result["status"] == "error"
    assert "not understood" in tool_result["content"][0]["text"]


@pytest.mark.asyncio
async def test_none_answer_is_a_denial_not_a_new_pause() -> None:
    agent, _, result = await paused_agent()
    _, resumed = await run(agent, responses_prompt({result.interrupts[0].id: None}))
    assert resumed.stop_reason == "end_turn"
    assert CALLS == []


@pytest.mark.asyncio
async def test_a_new_prompt_while_paused_is_refused_by_strands() -> None:
    agent, _, _ = await paused_agent()
    with pytest.raises(TypeError, match="interruptResponse"):
        await run(agent, "something else")
    assert interrupt_payloads(agent), "the pause survives the refused prompt"


### Which tools need approval ###


@pytest.mark.asyncio
async def test_unmarked_tool_runs_without_a_pause() -> None:
    _, result = await run(make_agent(), 'Call plain with {"x": 2}')
    assert result.stop_reason == "end_turn"
    assert CALLS == [("plain", 2)]
    assert interrupt_payloads(result) == []


@pytest.mark.asyncio
async def test_tool_named_in_the_setting_needs_approval() -> None:
    agent = make_agent(ApprovalHook(tool_names={"plain"}))
    _, result = await run(agent, 'Call plain with {"x": 2}')
    assert result.stop_reason == "interrupt"
    assert CALLS == []
    [payload] = interrupt_payloads(result)
    assert (payload["tool"], payload["input"], payload["reason"]) == (
        "plain",
        {"x": 2},
        "The agent wants to call plain.",
    )
    _, resumed = await run(agent, responses_prompt({payload["id"]: {"decision": "approve"}}))
    assert resumed.stop_reason == "end_turn"
    assert CALLS == [("plain", 2)]


@pytest.fixture
def plain_marked_by_name() -> Iterator[None]:
    from agentapp import approvals

    requires_approval("plain")
    yield
    approvals.APPROVAL_NAMES.pop("plain", None)


@pytest.mark.asyncio
@pytest.mark.usefixtures("plain_marked_by_name")
async def test_tool_marked_by_name_needs_approval() -> None:
    _, result = await run(make_agent(), 'Call plain with {"x": 2}')
    assert result.stop_reason == "interrupt"
    assert CALLS == []


def test_marker_works_above_or_below_tool_and_on_methods() -> None:
    @tool
    @requires_approval
    def below(x: int) -> int:
        """Below."""
        return x

    class Tools:
        @requires_approval(reason="method")
        @tool
        def method(self, x: int) -> int:
            """Method."""
            return x

    hook = ApprovalHook()
    assert hook.reason_for(below, "below") == ""
    assert hook.reason_for(Tools().method, "method") == "method"
    assert hook.reason_for(guarded, "guarded") == "It deletes x."
    assert hook.reason_for(plain, "plain") is None
    assert hook.reason_for(None, "unknown") is None


def test_parse_decision() -> None:
    assert parse_decision({"decision": "approve"}) == Decision(approved=True)
    denial = parse_decision({"decision": "deny", "text": "no", "user": "bob"})
    assert denial == Decision(approved=False, text="no", user="bob")
    assert denial.denial_message() == "Denied by bob: no"
    assert parse_decision({"decision": "deny"}).denial_message() == "Denied by a reviewer."
    assert parse_decision({"decision": "deny", "text": "x" * 10_000}).text == "x" * 4000
    assert parse_decision({"decision": "approve", "user": "eve"}).as_response() == {
        "decision": "approve",
        "text": "",
        "user": "eve",
    }
    for malformed in (None, 1, "approve", {}, {"decision": "APPROVE"}, {"decision": "deny", "text": ["a"]}):
        assert parse_decision(malformed).valid is False
        assert parse_decision(malformed).approved is False


def test_responses_prompt_needs_an_answer() -> None:
    with pytest.raises(ValueError):
        responses_prompt({})


### Resuming on another Agent ###


def roundtrip(value: Any) -> Any:
    return json.loads(json.dumps(value))


def completed_results(state: dict[str, Any]) -> list[dict[str, Any]]:
    """Tool results finished before the pause, in Strands' current state layout or the one before 1.55."""
    if "pending_tool_execution" in state:
        return state["pending_tool_execution"]["completed_tool_results"]
    return state["context"]["tool_results"]


def legacy_layout(state: dict[str, Any]) -> dict[str, Any]:
    """An exported state as Strands before 1.55 wrote it: the pending tool uses in its context."""
    state = dict(state)
    pending = state.pop("pending_tool_execution", None)
    if pending is not None:
        state["context"] = {
            **state["context"],
            "tool_use_message": pending["assistant_message"],
            "tool_results": pending["completed_tool_results"],
        }
    return state


@pytest.mark.asyncio
async def test_fresh_agent_resumes_from_exported_state_and_the_same_messages() -> None:
    old, _, result = await paused_agent()
    saved = roundtrip(export_state(old))
    assert interrupt_payloads(saved) == interrupt_payloads(result)

    fresh = make_agent(messages=roundtrip(old.messages))
    restore_state(fresh, saved)
    answer = {"decision": "approve", "user": "alice"}
    _, resumed = await run(fresh, responses_prompt({interrupt_payloads(saved)[0]["id"]: answer}))
    assert resumed.stop_reason == "end_turn"
    assert CALLS == [("guarded", 1)]
    assert text_of(resumed) == "guarded returned: deleted 1"
    assert [message["role"] for message in fresh.messages] == ["user", "assistant", "user", "assistant"]
    assert interrupt_payloads(export_state(fresh)) == []


@pytest.mark.asyncio
async def test_fresh_agent_resumes_from_repaired_history() -> None:
    old, _, result = await paused_agent()
    saved = roundtrip(export_state(old))
    history = repair(roundtrip(old.messages))
    assert [result["status"] for result in tool_results(history)] == ["error"]

    fresh = make_agent(messages=history)
    restore_state(fresh, saved)
    assert tool_results(fresh.messages) == [], "the repair's error result is dropped"
    _, resumed = await run(fresh, responses_prompt({result.interrupts[0].id: {"decision": "approve"}}))
    assert resumed.stop_reason == "end_turn"
    [tool_result] = tool_results(fresh.messages)
    assert tool_result["status"] == "success"
    assert [message["role"] for message in fresh.messages] == ["user", "assistant", "user", "assistant"]


@pytest.mark.asyncio
async def test_fresh_agent_without_state_cannot_resume() -> None:
    old, _, result = await paused_agent()
    fresh = make_agent(messages=roundtrip(old.messages))
    with pytest.raises(ValueError, match="not in interrupt state"):
        await run(fresh, responses_prompt({result.interrupts[0].id: {"decision": "approve"}}))
    assert CALLS == []


@pytest.mark.asyncio
async def test_restore_refuses_a_history_that_moved_on() -> None:
    old, _, _ = await paused_agent()
    saved = roundtrip(export_state(old))
    moved_on = [*roundtrip(old.messages), {"role": "user", "content": [{"text": "never mind"}]}]
    with pytest.raises(StaleApprovalState):
        restore_state(make_agent(messages=moved_on), saved)
    with pytest.raises(StaleApprovalState):
        restore_state(make_agent(messages=roundtrip(old.messages[:1])), saved)
    with pytest.raises(StaleApprovalState):
        restore_state(make_agent(), {"not": "a state"})


def test_restore_of_nothing_leaves_the_agent_unpaused() -> None:
    agent = make_agent()
    restore_state(agent, None)
    assert interrupt_payloads(agent) == []
    assert export_state(agent)["activated"] is False


@pytest.mark.asyncio
async def test_results_of_unguarded_siblings_wait_in_the_state_until_resume() -> None:
    calls = [
        {"toolUse": {"toolUseId": "t1", "name": "guarded", "input": {"x": 1}}},
        {"toolUse": {"toolUseId": "t2", "name": "plain", "input": {"x": 2}}},
    ]
    messages = [{"role": "user", "content": [{"text": GUARDED_PROMPT}]}, {"role": "assistant", "content": calls}]
    old = make_agent(messages=roundtrip(messages))
    _, result = await run(old, None)  # None: Strands executes the tool uses of the last message
    assert result.stop_reason == "interrupt"
    assert CALLS == [("plain", 2)]
    assert [payload["toolUseId"] for payload in interrupt_payloads(result)] == ["t1"]
    assert tool_results(old.messages) == [], "the finished sibling's result is not in the messages yet"
    saved = roundtrip(export_state(old))
    assert [r["toolUseId"] for r in completed_results(saved)] == ["t2"]

    fresh = make_agent(messages=repair(roundtrip(old.messages)))
    restore_state(fresh, saved)
    _, resumed = await run(fresh, responses_prompt({result.interrupts[0].id: {"decision": "approve"}}))
    assert resumed.stop_reason == "end_turn"
    assert CALLS == [("plain", 2), ("guarded", 1)]
    assert [(r["toolUseId"], r["status"]) for r in tool_results(fresh.messages)] == [
        ("t2", "success"),
        ("t1", "success"),
    ]


@pytest.mark.asyncio
async def test_a_state_saved_by_an_older_strands_resumes() -> None:
    old, _, result = await paused_agent()
    saved = legacy_layout(roundtrip(export_state(old)))
    assert "tool_use_message" in saved["context"]

    fresh = make_agent(messages=repair(roundtrip(old.messages)))
    restore_state(fresh, saved)
    assert tool_results(fresh.messages) == [], "the repair's error result is dropped"
    _, resumed = await run(fresh, responses_prompt({result.interrupts[0].id: {"decision": "approve"}}))
    assert resumed.stop_reason == "end_turn"
    assert CALLS == [("guarded", 1)]


def private_strands_uses(path: Path) -> list[str]:
    """Private Strands names a module imports, and private ``_interrupt_state``-style attributes it touches."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("strands"):
            found += [f"{node.module}.{alias.name}" for alias in node.names if alias.name.startswith("_")]
            found += [node.module] if any(part.startswith("_") for part in node.module.split(".")) else []
        elif isinstance(node, ast.Attribute) and node.attr in PRIVATE_STRANDS_ATTRIBUTES:
            found.append(f"line {node.lineno}: .{node.attr}")
    return found


# Private attributes of Strands objects that a public API covers (``Agent.take_snapshot`` / ``load_snapshot``).
PRIVATE_STRANDS_ATTRIBUTES = {"_interrupt_state", "_model_state", "_system_prompt_content"}


def test_agentapp_uses_only_public_strands_apis() -> None:
    package = Path(__file__).resolve().parents[1] / "agentapp"
    uses = {str(path.relative_to(package)): private_strands_uses(path) for path in sorted(package.rglob("*.py"))}
    assert {name: found for name, found in uses.items() if found} == {}
