"""Multi-agent factories for the tests: a two-agent Swarm and a two-node Graph, all on the offline model.

Servers load them with ``AGENTAPP["AGENT_FACTORY"] = "tests.multiagent_agents.swarm"`` (or ``graph``).
"""

from __future__ import annotations

from typing import Any

from strands import Agent
from strands.multiagent import GraphBuilder, Swarm
from strands.multiagent.graph import Graph

from agentapp.conf import app_settings
from agentapp.offline_model import OfflineModel
from agentapp.tools import calculator


def offline_agent(name: str) -> Agent:
    """An agent on the offline model (paced by ``OFFLINE_TOKENS_PER_SECOND``) with the calculator."""
    model = OfflineModel(tokens_per_second=app_settings.OFFLINE_TOKENS_PER_SECOND)
    return Agent(model=model, tools=[calculator], callback_handler=None, name=name)


def swarm(conversation: Any, user: Any) -> Swarm:
    """A researcher that starts and may hand off to a writer ("Hand off to writer")."""
    researcher, writer = offline_agent("researcher"), offline_agent("writer")
    return Swarm([researcher, writer], entry_point=researcher, max_handoffs=4, max_iterations=4)


def graph(conversation: Any, user: Any) -> Graph:
    """Node ``a`` answers first, then node ``b`` reads its answer (a -> b)."""
    builder = GraphBuilder()
    builder.add_node(offline_agent("first"), "a")
    builder.add_node(offline_agent("second"), "b")
    builder.add_edge("a", "b")
    builder.set_entry_point("a")
    builder.set_max_node_executions(4)
    return builder.build()


def failing_graph(conversation: Any, user: Any) -> Graph:
    """Node ``a``'s model fails after its first token; node ``b`` never runs."""
    builder = GraphBuilder()
    builder.add_node(Agent(model=OfflineModel(fail_after_tokens=1), callback_handler=None, name="first"), "a")
    builder.add_node(offline_agent("second"), "b")
    builder.add_edge("a", "b")
    builder.set_entry_point("a")
    builder.set_max_node_executions(4)
    return builder.build()
