"""Agents for the AG-UI tests: the default agent with a tool that writes ``agent.state``.

Load it with ``AGENTAPP["AGENT_FACTORY"] = "tests.agui_agents.remembering_agent"``; the offline model calls the tool
for a prompt such as ``Call the remember tool with {"key": "color", "value": "blue"}``.
"""

from __future__ import annotations

from typing import Any

from strands import Agent, ToolContext, tool

from agentapp.agents import build_default_agent


@tool(context=True)
def remember(key: str, value: str, tool_context: ToolContext) -> str:
    """Keep a value in the agent's state under a key."""
    tool_context.agent.state.set(key, value)
    return f"{key} is {value}"


def remembering_agent(conversation: Any, user: Any) -> Agent:
    """The default agent, plus ``remember``."""
    agent = build_default_agent(conversation, user)
    agent.tool_registry.process_tools([remember])
    return agent
