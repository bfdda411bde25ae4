"""Multi-agent runs: a Swarm and a Graph on the offline model stream node frames, store their steps and their answer.

Each goes over a real socket (tests.wsclient); the stored rows and a new connection's history are checked after it.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from agentapp import multiagent, offline_model, protocol
from agentapp.models import Message, Run, RunStep
from agentapp.protocol import from_storable
from tests.wsclient import Client, streamed_text

NODE_FRAMES = (protocol.NODE_STARTED, protocol.NODE_FINISHED, protocol.HANDOFF, protocol.RESULT, protocol.RUN_FINISHED)


def use_team(settings: Any, factory: str, **extra: Any) -> None:
    settings.AGENTAPP = {"AGENT_FACTORY": f"tests.multiagent_agents.{factory}", **extra}


async def run_prompt(user: Any, prompt: str, conversation_id: str = "") -> tuple[str, list[dict[str, Any]]]:
    """A prompt on a new conversation (or the one given): its id and the run's frames."""
    client = Client(f"/ws/agent/{conversation_id}/" if conversation_id else "/ws/agent/", user=user)
    conversation_id = (await client.hello())["conversation_id"]
    await client.prompt(prompt)
    frames = await client.until_finished()
    await client.close()
    return conversation_id, frames


def outline(frames: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """The node-level frames of a run, in order: (type, node) or (handoff, from, to)."""
    seen: list[tuple[str, ...]] = []
    for frame in frames:
        if frame["type"] == protocol.HANDOFF:
            seen.append((frame["type"], ",".join(frame["from_nodes"]), ",".join(frame["to_nodes"])))
        elif frame["type"] in NODE_FRAMES:
            seen.append((frame["type"], frame.get("node", "")))
    return seen


def inner_frames_name_the_running_node(frames: list[dict[str, Any]]) -> None:
    """Every frame between a node's start and its end carries that node; none outside any node does."""
    current = None
    for frame in frames:
        if frame["type"] == protocol.NODE_STARTED:
            current = frame["node"]
        elif frame["type"] == protocol.NODE_FINISHED:
            assert frame["node"] == current, frame
            current = None
        elif current is not None:
            assert frame.get("node") == current, frame
        else:
            assert "node" not in frame, frame


def text_of(frames: list[dict[str, Any]], node: str) -> str:
    return streamed_text([frame for frame in frames if frame.get("node") == node])


async def stored(conversation_id: str) -> list[dict[str, Any]]:
    rows = Message.objects.filter(conversation_id=conversation_id).order_by("position")
    return [{"role": row.role, "content": from_storable(row.content)} async for row in rows]


async def steps(conversation_id: str) -> list[RunStep]:
    return [
        step
        async for step in RunStep.objects.filter(run__conversation_id=conversation_id).order_by(
            "run__started_at", "position"
        )
    ]


async def history(user: Any, conversation_id: str) -> list[dict[str, Any]]:
    client = Client(f"/ws/agent/{conversation_id}/", user=user)
    frame = await client.hello()
    await client.close()
    return frame["messages"]


### A Swarm: the researcher hands off to the writer ###


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_swarm_streams_its_nodes_stores_its_steps_and_its_answer(settings, ada):
    use_team(settings, "swarm")
    prompt = "Hand off to writer and name the capital of France"
    conversation_id, frames = await run_prompt(ada, prompt)
    assert frames[0]["type"] == protocol.RUN_STARTED and frames[-1]["status"] == protocol.STATUS_COMPLETED
    spans = [protocol.seq_span(frame) for frame in frames]  # text deltas may arrive merged
    assert all(first == previous[1] + 1 for previous, (first, _) in zip([(0, -1), *spans], spans, strict=False))
    assert outline(frames) == [
        (protocol.NODE_STARTED, "researcher"),
        (protocol.NODE_FINISHED, "researcher"),
        (protocol.HANDOFF, "researcher", "writer"),
        (protocol.NODE_STARTED, "writer"),
        (protocol.NODE_FINISHED, "writer"),
        (protocol.RESULT, ""),
        (protocol.RUN_FINISHED, ""),
    ]
    inner_frames_name_the_running_node(frames)
    [call] = [f for f in frames if f["type"] == protocol.TOOL_RESULT]
    assert call["node"] == "researcher" and call["tool_result"]["name"] == offline_model.HANDOFF_TOOL
    assert text_of(frames, "researcher") == "I handed off to writer."
    assert text_of(frames, "writer") == "The capital of France is Paris."
    [handoff] = [f for f in frames if f["type"] == protocol.HANDOFF]
    assert handoff["message"] == "Over to you, writer."
    [result] = [f[protocol.RESULT] for f in frames if f["type"] == protocol.RESULT]
    assert result["nodes"] == ["researcher", "writer"] and result["stop_reason"] == "completed"

    answer = {"role": "assistant", "content": [{"text": "The capital of France is Paris."}]}
    assert await stored(conversation_id) == [{"role": "user", "content": [{"text": prompt}]}, answer]
    researcher, writer = await steps(conversation_id)
    assert (researcher.position, researcher.node_id, researcher.node_type, researcher.status) == (
        0,
        "researcher",
        "agent",
        "completed",
    )
    assert researcher.text == "I handed off to writer." and researcher.result["status"] == "completed"
    assert (writer.position, writer.node_id, writer.text) == (1, "writer", "The capital of France is Paris.")
    assert writer.started_at <= writer.finished_at and researcher.finished_at <= writer.started_at
    run = await Run.objects.aget(conversation_id=conversation_id)
    assert run.status == Run.Status.COMPLETED and run.total_tokens == result["usage"]["totalTokens"] > 0

    messages = await history(ada, conversation_id)
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", [{"text": prompt}]),
        ("assistant", answer["content"]),
    ]


### A Graph: node a, then node b ###


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_graph_streams_its_nodes_in_order_stores_its_steps_and_its_answer(settings, ada):
    use_team(settings, "graph")
    conversation_id, frames = await run_prompt(ada, "What is 6 times 7?")
    assert frames[-1]["status"] == protocol.STATUS_COMPLETED
    assert outline(frames) == [
        (protocol.NODE_STARTED, "a"),
        (protocol.NODE_FINISHED, "a"),
        (protocol.HANDOFF, "a", "b"),
        (protocol.NODE_STARTED, "b"),
        (protocol.NODE_FINISHED, "b"),
        (protocol.RESULT, ""),
        (protocol.RUN_FINISHED, ""),
    ]
    inner_frames_name_the_running_node(frames)
    # Node a computes with the calculator; node b reads a's answer and computes it again.
    calls = [(f["node"], f["tool_result"]["name"]) for f in frames if f["type"] == protocol.TOOL_RESULT]
    assert calls == [("a", "calculator"), ("b", "calculator")]
    assert text_of(frames, "a").endswith("42.") and text_of(frames, "b").endswith("42.")
    finished = {f["node"]: f for f in frames if f["type"] == protocol.NODE_FINISHED}
    assert finished["a"]["text"] == text_of(frames, "a") and finished["a"]["status"] == "completed"

    rows = await stored(conversation_id)
    assert rows[-1] == {"role": "assistant", "content": [{"text": text_of(frames, "b")}]} and len(rows) == 2
    assert [(s.position, s.node_id, s.status) for s in await steps(conversation_id)] == [
        (0, "a", "completed"),
        (1, "b", "completed"),
    ]
    assert (await history(ada, conversation_id))[-1]["content"] == [{"text": text_of(frames, "b")}]


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_second_prompt_gives_the_team_the_conversation_so_far(settings, ada):
    use_team(settings, "graph")
    conversation_id, _ = await run_prompt(ada, "What is the capital of France?")
    context = await sync_to_async(multiagent.conversation_text)(conversation_id, None)
    assert context == "user: What is the capital of France?\nassistant: The capital of France is Paris."
    assert (
        multiagent.team_input(context, "And Japan?")
        == f"The conversation so far:\n{context}\n\nThe new request: And Japan?"
    )
    assert multiagent.team_input("", "And Japan?") == "And Japan?"
    # A new connection's team reads the stored turn; the second turn is stored after the first.
    _, frames = await run_prompt(ada, "What is the capital of Japan?", conversation_id)
    assert frames[-1]["status"] == protocol.STATUS_COMPLETED
    # The offline model names the first capital it reads: France, which only the first turn mentions.
    assert text_of(frames, "a") == "The capital of France is Paris."
    assert [row["role"] for row in await stored(conversation_id)] == ["user", "assistant", "user", "assistant"]
    assert [s.position for s in await steps(conversation_id)] == [0, 1, 0, 1]


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_tool_needing_approval_is_refused_in_a_team_not_paused(settings, ada):
    use_team(settings, "graph", APPROVAL_TOOLS=["calculator"])
    _, frames = await run_prompt(ada, "What is 6 times 7?")
    assert frames[-1]["status"] == protocol.STATUS_COMPLETED
    assert not [f for f in frames if f["type"] == protocol.INTERRUPT]
    results = [f["tool_result"] for f in frames if f["type"] == protocol.TOOL_RESULT]
    assert results and all(r["status"] == "error" for r in results)
    assert results[0]["content"] == [{"text": multiagent.REFUSED_APPROVAL}]


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_one_connection_runs_its_team_twice(settings, ada):
    use_team(settings, "swarm")
    client = Client(user=ada)
    conversation_id = (await client.hello())["conversation_id"]
    for prompt in ("Hand off to writer and name the capital of France", "What is 6 times 7?"):
        await client.prompt(prompt)
        frames = await client.until_finished()
        assert frames[-1]["status"] == protocol.STATUS_COMPLETED, frames[-1]
    await client.close()
    # The team reads the first turn as text, so the researcher hands off again (the first prompt asked it to).
    assert [s.node_id for s in await steps(conversation_id)] == ["researcher", "writer", "researcher", "writer"]
    rows = await stored(conversation_id)
    assert [row["role"] for row in rows] == ["user", "assistant", "user", "assistant"]
    assert rows[-1]["content"] == [{"text": text_of(frames, "writer")}]


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_cancel_stops_the_running_node_and_the_team(settings, ada):
    use_team(settings, "graph", OFFLINE_TOKENS_PER_SECOND=200)
    client = Client(user=ada)
    conversation_id = (await client.hello())["conversation_id"]
    await client.prompt("Stream 2000 tokens")
    frames = await client.until(protocol.DATA)
    await client.cancel()
    frames += await client.until_finished()
    await client.close()
    assert frames[-1]["status"] == protocol.STATUS_CANCELLED, frames[-1]
    assert (protocol.NODE_STARTED, "b") not in outline(frames)
    # What node a said before the cancel is kept, marked partial.
    row = await Message.objects.filter(conversation_id=conversation_id, role="assistant").alast()
    assert row.partial and from_storable(row.content)[0]["text"] == text_of(frames, "a")


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_failing_node_fails_the_run_and_its_step_is_stored(settings, ada):
    use_team(settings, "failing_graph")
    conversation_id, frames = await run_prompt(ada, "What is the capital of France?")
    assert frames[-1]["status"] == protocol.STATUS_FAILED, frames[-1]
    assert [f["code"] for f in frames if f["type"] == protocol.ERROR] == [protocol.ERR_RUN_FAILED]
    assert outline(frames) == [
        (protocol.NODE_STARTED, "a"),
        (protocol.NODE_FINISHED, "a"),
        (protocol.RUN_FINISHED, ""),
    ]
    [finished] = [f for f in frames if f["type"] == protocol.NODE_FINISHED]
    assert (finished["status"], finished["text"]) == ("failed", "")
    run = await Run.objects.aget(conversation_id=conversation_id)
    assert run.status == Run.Status.FAILED
    [step] = await steps(conversation_id)
    assert (step.node_id, step.status, step.result["result"]["type"]) == ("a", "failed", "exception")
    # No answer: the prompt is closed with the unanswered note, as for an agent's failed run.
    assert (await stored(conversation_id))[-1]["role"] == "assistant"


### Frames and the offline model ###


def test_a_multiagent_event_without_a_rule_is_a_raw_frame():
    event = {"type": "multiagent_new_thing", "node_id": "a", "agent": object()}
    assert protocol.payloads_for_event(event, {}) == [
        {"type": protocol.RAW, protocol.RAW: {"type": "multiagent_new_thing", "node_id": "a"}}
    ]
    assert (
        protocol.payloads_for_event({"type": "multiagent_node_interrupt", "node_id": "a", "interrupts": []}, {}) == []
    )


def test_the_text_of_two_nodes_never_merges():
    first = {"type": protocol.DATA, "run_id": "r", "seq": 4, protocol.DATA: "a ", "node": "a"}
    assert not protocol.continues(first, {**first, "seq": 5, "node": "b"})
    assert protocol.continues(first, {**first, "seq": 5})


def test_the_offline_model_hands_off_only_to_another_agent_of_the_swarm():
    tools = {offline_model.HANDOFF_TOOL}
    listed = "User Request: Hand off to writer\n\nAgent name: writer.\n"
    turn = offline_model._next_turn([{"role": "user", "content": [{"text": listed}]}], tools, False)
    assert turn.action == offline_model._ToolCall(
        offline_model.HANDOFF_TOOL, {"agent_name": "writer", "message": "Over to you, writer."}
    )
    # The writer itself is not listed as another agent; without the tool there is no swarm.
    for text, names in ((listed.replace("Agent name: writer.", ""), tools), (listed, set())):
        turn = offline_model._next_turn([{"role": "user", "content": [{"text": text}]}], names, False)
        assert not isinstance(turn.action, offline_model._ToolCall)


@pytest.mark.parametrize("prompt", ["hand off to " * 1500, "hand" + " " * 15995 + "x", "handoff to" + " " * 15990])
def test_handoff_prompts_are_read_in_linear_time(prompt):
    started = time.process_time()
    offline_model._next_turn([{"role": "user", "content": [{"text": prompt}]}], {offline_model.HANDOFF_TOOL}, False)
    assert time.process_time() - started < 0.25
