"""Structured output over a real TCP socket: a daphne process serving an agent with a structured output model."""

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
