"""Tests of OfflineModel, driven through a real strands.Agent and directly."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from strands import Agent, tool

from agentapp.offline_model import HELP, INTRODUCTION, OfflineModel, OfflineModelError
from agentapp.tools import calculator

CALCULATOR_SPEC = {"name": "calculator", "description": "calc", "inputSchema": {"json": {}}}


async def run(agent: Agent, prompt: str) -> dict[str, Any]:
    """Stream one prompt through ``agent`` and sort the events into what the tests look at."""
    events = [event async for event in agent.stream_async(prompt)]
    blocks = [
        (event["message"]["role"], block)
        for event in events
        if "message" in event
        for block in event["message"]["content"]
    ]
    result = events[-1]["result"]
    return {
        "events": events,
        "data": [event["data"] for event in events if "data" in event],
        "tool_uses": [block["toolUse"] for role, block in blocks if role == "assistant" and "toolUse" in block],
        "tool_results": [block["toolResult"] for role, block in blocks if role == "user" and "toolResult" in block],
        "result": result,
        "text": "".join(block["text"] for block in result.message["content"] if "text" in block),
    }


async def collect(model: OfflineModel, messages: list[dict[str, Any]], **kwargs: Any) -> list[dict[str, Any]]:
    """Return every event ``model.stream`` yields for ``messages``."""
    return [event async for event in model.stream(messages, **kwargs)]


SEEDS = [
    ("Calculate 2+2", ["2+2"], [("success", "4")], "2+2 = 4."),
    (
        "Calculate 15 * 23 and then add 100",
        ["15 * 23", "345 + 100"],
        [("success", "345"), ("success", "445")],
        "15 * 23 = 345, then 345 + 100 = 445.",
    ),
    (
        "What is 50 divided by 2, then multiply by 3?",
        ["50 / 2", "25 * 3"],
        [("success", "25"), ("success", "75")],
        "50 / 2 = 25, then 25 * 3 = 75.",
    ),
    (
        "Calculate the square root of -1",
        ["sqrt(-1)"],
        [("error", "Error: sqrt(-1) is undefined (math domain error)")],
        "I could not compute sqrt(-1). The calculator said: Error: sqrt(-1) is undefined (math domain error).",
    ),
    (
        "What is the capital of France and what is 42+7?",
        ["42+7"],
        [("success", "49")],
        "The capital of France is Paris, and 42+7 = 49.",
    ),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(("prompt", "expressions", "results", "answer"), SEEDS)
async def test_seed_prompts(prompt: str, expressions: list[str], results: list[tuple[str, str]], answer: str) -> None:
    run_ = await run(Agent(model=OfflineModel(), tools=[calculator], callback_handler=None), prompt)

    assert [use["name"] for use in run_["tool_uses"]] == ["calculator"] * len(expressions)
    assert [use["input"]["expression"] for use in run_["tool_uses"]] == expressions
    assert [(r["status"], r["content"][0]["text"]) for r in run_["tool_results"]] == results
    assert "".join(run_["data"]) == run_["text"] == answer
    assert run_["result"].stop_reason == "end_turn"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("prompt", "expressions", "answer"),
    [
        ("Compute (2+3)*4, then divide by 5", ["(2+3)*4", "20 / 5"], "(2+3)*4 = 20, then 20 / 5 = 4."),
        ("What is 10 minus 3 and then subtract 2", ["10 - 3", "7 - 2"], "10 - 3 = 7, then 7 - 2 = 5."),
        ("What is -5 times 3, then multiply by 2", ["-5 * 3", "(-15) * 2"], "-5 * 3 = -15, then (-15) * 2 = -30."),
        ("square root of 16 then add 1", ["sqrt(16)", "4 + 1"], "sqrt(16) = 4, then 4 + 1 = 5."),
        ("calculate 2+2 and 3+3", ["2+2", "3+3"], "2+2 = 4, and 3+3 = 6."),
        ("What is the capital of Germany?", [], "The capital of Germany is Berlin."),
    ],
)
async def test_more_phrasings(prompt: str, expressions: list[str], answer: str) -> None:
    run_ = await run(Agent(model=OfflineModel(), tools=[calculator], callback_handler=None), prompt)

    assert [use["input"]["expression"] for use in run_["tool_uses"]] == expressions
    assert run_["text"] == answer


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("prompt", "expressions", "answer"),
    [
        ("What is 7 squared?", ["7**2"], "7**2 = 49."),
        ("What is -3 squared?", ["(-3)**2"], "(-3)**2 = 9."),
        ("2 cubed", ["2**3"], "2**3 = 8."),
        ("Calculate 25% of 300", ["300 * 25 / 100"], "300 * 25 / 100 = 75."),
        ("What is 12.5 percent of 80?", ["80 * 12.5 / 100"], "80 * 12.5 / 100 = 10."),
        ("2 to the power of 10", ["2**10"], "2**10 = 1024."),
        ("What is 5 to the power 3?", ["5**3"], "5**3 = 125."),
        ("2 raised to the power of -1", ["2**(-1)"], "2**(-1) = 0.5."),
        ("3 to the 4th power", ["3**4"], "3**4 = 81."),
        ("What is the cube root of 27?", ["cbrt(27)"], "cbrt(27) = 3."),
        ("Multiply 6 by 7", ["6 * 7"], "6 * 7 = 42."),
        ("Divide 10 by 4", ["10 / 4"], "10 / 4 = 2.5."),
        ("Add 5 to 3", ["3 + 5"], "3 + 5 = 8."),
        ("Subtract 3 from 10", ["10 - 3"], "10 - 3 = 7."),
        ("Subtract 3 from -10", ["(-10) - 3"], "(-10) - 3 = -13."),
        (
            "Multiply 6 by 7, then add 10, then divide it by 4",
            ["6 * 7", "42 + 10", "52 / 4"],
            "6 * 7 = 42, then 42 + 10 = 52, then 52 / 4 = 13.",
        ),
        (
            "What is 2 cubed and 10 percent of 50?",
            ["2**3", "50 * 10 / 100"],
            "2**3 = 8, and 50 * 10 / 100 = 5.",
        ),
    ],
)
async def test_everyday_arithmetic_phrasings(prompt: str, expressions: list[str], answer: str) -> None:
    run_ = await run(Agent(model=OfflineModel(), tools=[calculator], callback_handler=None), prompt)

    assert [use["input"]["expression"] for use in run_["tool_uses"]] == expressions
    assert run_["text"] == answer


@pytest.mark.asyncio
@pytest.mark.parametrize("prompt", ["Hello 42", "compute my taxes", "3 to the", "What is the sum of the primes?"])
async def test_arithmetic_it_cannot_read_gets_what_it_can_do(prompt: str) -> None:
    run_ = await run(Agent(model=OfflineModel(), tools=[calculator], callback_handler=None), prompt)

    assert run_["tool_uses"] == []
    assert run_["text"] == HELP
    assert '"What is 7 squared?"' in HELP
    assert 'AGENTAPP["MODEL"]' in HELP


@pytest.mark.asyncio
async def test_tool_use_ids_are_unique_across_turns() -> None:
    agent = Agent(model=OfflineModel(), tools=[calculator], callback_handler=None)
    await run(agent, "Calculate 2+2")
    second = await run(agent, "What is 50 divided by 2, then multiply by 3?")

    ids = [b["toolUse"]["toolUseId"] for m in agent.messages for b in m["content"] if "toolUse" in b]
    assert len(ids) == len(set(ids)) == 3
    assert second["text"] == "50 / 2 = 25, then 25 * 3 = 75."


@pytest.mark.asyncio
async def test_stream_many_tokens() -> None:
    run_ = await run(Agent(model=OfflineModel(), callback_handler=None), "Stream 10000 tokens")

    assert len(run_["data"]) == 10000
    assert run_["data"][:2] == ["w0 ", "w1 "]
    assert "".join(run_["data"]) == run_["text"]


@pytest.mark.asyncio
async def test_stream_tokens_after_a_calculation() -> None:
    agent = Agent(model=OfflineModel(), tools=[calculator], callback_handler=None)
    run_ = await run(agent, "Calculate 2+2 and stream 50 tokens")

    assert [use["input"] for use in run_["tool_uses"]] == [{"expression": "2+2"}]
    assert len(run_["data"]) == 50
    assert run_["data"][:4] == ["2+2 ", "= ", "4. ", "w3 "]
    assert "".join(run_["data"]) == run_["text"]


@pytest.mark.asyncio
async def test_answer_tokens_pads_and_truncates() -> None:
    capital = "What is the capital of France?"
    padded = await run(Agent(model=OfflineModel(answer_tokens=8), callback_handler=None), capital)
    truncated = await run(Agent(model=OfflineModel(answer_tokens=2), callback_handler=None), "Hello")

    assert padded["data"] == ["The ", "capital ", "of ", "France ", "is ", "Paris. ", "w6 ", "w7 "]
    assert truncated["text"] == "Offline model "


@pytest.mark.asyncio
async def test_plain_prompt_gets_a_deterministic_answer() -> None:
    run_ = await run(Agent(model=OfflineModel(), callback_handler=None), "Hello")

    again = await run(Agent(model=OfflineModel(), callback_handler=None), "Hello")

    assert run_["data"][:6] == ["Offline ", "model ", "here. ", "You ", "said: ", "Hello "]
    assert run_["data"] == again["data"]
    assert "".join(run_["data"]) == f"Offline model here. You said: Hello {INTRODUCTION}"
    assert run_["tool_uses"] == []


@pytest.mark.asyncio
async def test_pacing_spaces_tokens() -> None:
    agent = Agent(model=OfflineModel(tokens_per_second=200, answer_tokens=20), callback_handler=None)
    started = time.monotonic()
    run_ = await run(agent, "Hello")

    assert len(run_["data"]) == 20
    assert time.monotonic() - started >= 0.09


@pytest.mark.asyncio
async def test_fail_after_tokens_raises_mid_stream() -> None:
    agent = Agent(model=OfflineModel(fail_after_tokens=3), callback_handler=None)
    data = []
    with pytest.raises(OfflineModelError, match="offline model failure after 3 tokens"):
        async for event in agent.stream_async("Hello"):
            if "data" in event:
                data.append(event["data"])

    assert data == ["Offline ", "model ", "here. "]


@pytest.mark.asyncio
async def test_reasoning_block_precedes_the_answer() -> None:
    run_ = await run(Agent(model=OfflineModel(reasoning=True), callback_handler=None), "Hello")

    reasoning = "".join(event["reasoningText"] for event in run_["events"] if event.get("reasoning"))
    assert reasoning == 'The user asked "Hello". I have 0 tool result(s), so I answer now.'
    content = run_["result"].message["content"]
    assert content[0]["reasoningContent"]["reasoningText"]["text"] == reasoning
    assert content[1] == {"text": f"Offline model here. You said: Hello {INTRODUCTION}"}


@pytest.mark.asyncio
async def test_without_calculator_no_tool_is_called() -> None:
    run_ = await run(Agent(model=OfflineModel(), tools=[], callback_handler=None), "Calculate 2+2")

    assert run_["tool_uses"] == []
    assert run_["text"] == "No calculator is available, so I cannot compute 2+2."


@tool
async def slow_tool(seconds: float) -> str:
    """Sleep for a while and say so.

    Args:
        seconds: How long to sleep.
    """
    await asyncio.sleep(seconds)
    return f"slept {seconds} s"


@pytest.mark.asyncio
async def test_generic_tool_call_with_json_input() -> None:
    agent = Agent(model=OfflineModel(), tools=[calculator, slow_tool], callback_handler=None)
    run_ = await run(agent, 'Call slow_tool with {"seconds": 0.01}')

    assert [(use["name"], use["input"]) for use in run_["tool_uses"]] == [("slow_tool", {"seconds": 0.01})]
    assert run_["text"] == "slow_tool returned: slept 0.01 s"


@pytest.mark.asyncio
async def test_generic_tool_that_is_missing() -> None:
    run_ = await run(Agent(model=OfflineModel(), tools=[calculator], callback_handler=None), "Use the slow_tool tool")

    assert run_["tool_uses"] == []
    assert run_["text"] == "I have no tool named slow_tool."


@pytest.mark.asyncio
async def test_raw_events_of_a_tool_call() -> None:
    messages = [{"role": "user", "content": [{"text": "Calculate 2+2"}]}]
    events = await collect(OfflineModel(), messages, tool_specs=[CALCULATOR_SPEC])

    assert events[:5] == [
        {"messageStart": {"role": "assistant"}},
        {"contentBlockStart": {"start": {"toolUse": {"toolUseId": "tooluse_1_0", "name": "calculator"}}}},
        {"contentBlockDelta": {"delta": {"toolUse": {"input": '{"expression": "2+2"}'}}}},
        {"contentBlockStop": {}},
        {"messageStop": {"stopReason": "tool_use"}},
    ]
    assert events[5]["metadata"]["usage"] == {"inputTokens": 2, "outputTokens": 1, "totalTokens": 3}
    assert isinstance(events[5]["metadata"]["metrics"]["latencyMs"], int)


@pytest.mark.asyncio
async def test_cancel_signal_stops_the_stream() -> None:
    cancel = threading.Event()
    model = OfflineModel(tokens_per_second=1000, answer_tokens=1000)
    events = []
    async for event in model.stream([{"role": "user", "content": [{"text": "Hi"}]}], cancel_signal=cancel):
        events.append(event)
        if len(events) == 5:
            cancel.set()

    assert len(events) == 5
    assert not any("messageStop" in event for event in events)


def test_config_round_trip() -> None:
    model = OfflineModel(tokens_per_second=5)
    model.update_config(answer_tokens=3)

    assert model.get_config() == {
        "tokens_per_second": 5,
        "answer_tokens": 3,
        "fail_after_tokens": None,
        "reasoning": False,
        "model_id": "agentapp-offline",
    }


@pytest.mark.asyncio
@pytest.mark.parametrize("prompt", ["Hello", "Tell me a joke", "What's the weather?"])
async def test_a_prompt_it_cannot_answer_gets_what_it_can_do(prompt: str) -> None:
    """A newcomer asking anything learns what the demo does and how to configure a real model, not only an echo."""
    run_ = await run(Agent(model=OfflineModel(), callback_handler=None), prompt)

    assert run_["text"] == f"Offline model here. You said: {prompt} {INTRODUCTION}"
    assert "7 squared" in run_["text"] and 'AGENTAPP["MODEL"]' in run_["text"]
