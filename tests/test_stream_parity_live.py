"""Structured output, reasoning, citations and tool progress over a real TCP socket, from a daphne process."""

from __future__ import annotations

import pytest

from agentapp import protocol
from tests.frames import assert_contiguous
from tests.livedaphne import live_daphne, live_socket
from tests.livesettings import agentapp_settings

pytestmark = pytest.mark.slow


@pytest.mark.asyncio
async def test_structured_output_reaches_a_websocket_client(tmp_path):
    env = {
        "AGENTAPP_OFFLINE_TPS": "0",
        **agentapp_settings(tmp_path, AGENT_FACTORY="tests.stream_agents.structured_agent"),
    }
    with live_daphne(tmp_path, env) as server:
        async with live_socket(server, "/ws/agent/") as client:
            await client.hello()
            await client.prompt("What is 6 times 7?")
            frames = await client.until_finished()
        output = server.output()
    assert frames[-1]["status"] == protocol.STATUS_COMPLETED, frames[-1]
    run = [frame for frame in frames if frame.get("run_id") == frames[-1]["run_id"]]
    assert_contiguous(run)
    [result] = [frame for frame in run if frame["type"] == protocol.RESULT]
    assert result[protocol.RESULT]["structured_output"] == {"answer": "6 * 7 = 42.", "value": 42}
    assert not [frame for frame in run if frame["type"] == protocol.RAW]
    assert "Traceback" not in output, output


@pytest.mark.asyncio
async def test_reasoning_citations_and_tool_progress_reach_a_websocket_client(tmp_path):
    env = {
        "AGENTAPP_OFFLINE_TPS": "0",
        **agentapp_settings(tmp_path, AGENT_FACTORY="tests.stream_agents.streaming_agent"),
    }
    with live_daphne(tmp_path, env) as server:
        async with live_socket(server, "/ws/agent/") as client:
            await client.hello()
            runs = []
            for prompt in ("Think about cats", "Cite the Django docs", 'Call progress with {"steps": 2}'):
                await client.prompt(prompt)
                runs.append(await client.until_finished())
        output = server.output()
    for frames in runs:
        assert frames[-1]["status"] == protocol.STATUS_COMPLETED, frames[-1]
        assert_contiguous([frame for frame in frames if frame.get("run_id") == frames[-1]["run_id"]])
    thought, cited, progressed = ({frame["type"] for frame in frames} for frames in runs)
    assert protocol.REASONING in thought
    assert protocol.CITATION in cited
    streamed = [frame[protocol.TOOL_STREAM]["data"] for frame in runs[2] if frame["type"] == protocol.TOOL_STREAM]
    assert streamed == [{"done": 1, "of": 2}, {"done": 2, "of": 2}, "finished 2 steps"]
    assert protocol.RAW not in thought | cited | progressed
    assert "Traceback" not in output, output
