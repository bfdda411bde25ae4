"""Multi-agent runs: a Strands Swarm or Graph as a conversation's agent, streamed node by node and recorded.

The run is an ``AgentRun`` whose agent is a team. Its events become frames that name their node (``protocol``), each
node that ends is stored as a ``RunStep``, and the team's answer (the last node's text) is stored as the assistant
message after the prompt. The team reads the conversation so far as text before the prompt; it keeps no memory of
its own (no ``AgentState``), its agents' inner messages are not stored one by one, and a tool call that needs
approval is refused, not paused (a team cannot be resumed).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.utils import timezone
from strands import Agent
from strands.hooks import BeforeToolCallEvent, HookProvider, HookRegistry
from strands.multiagent.graph import Graph
from strands.multiagent.swarm import Swarm

from . import protocol
from .approvals import ApprovalHook
from .conf import app_settings
from .models import Message, RunStep
from .runner import AgentRun
from .storable import storable

TEAMS = (Swarm, Graph)
NO_ATTACHMENTS = "A multi-agent run takes a text prompt only, without attachments."
REFUSED_APPROVAL = "Not run: a tool call that needs approval is not supported in a multi-agent run."
# Most characters of the conversation so far a team reads (the newest are kept).
MAX_CONTEXT_CHARS = 20_000


def is_team(agent: Any) -> bool:
    """Whether a factory's agent is a Strands Swarm or Graph."""
    return isinstance(agent, TEAMS)


def node_agents(team: Any) -> dict[str, Agent]:
    """The Strands agents of a team by node id, those of a team nested in a node included."""
    agents: dict[str, Agent] = {}
    for node_id, node in team.nodes.items():
        executor = getattr(node, "executor", None)
        if isinstance(executor, Agent):
            agents[node_id] = executor
        elif is_team(executor):
            agents.update(node_agents(executor))
    return agents


class RefuseApprovals(HookProvider):
    """Cancels each call of a tool needing approval (``requires_approval``, ``APPROVAL_TOOLS``): a team cannot pause."""

    def __init__(self, tool_names: Any = ()) -> None:
        self.approvals = ApprovalHook(tool_names)

    def register_hooks(self, registry: HookRegistry, **kwargs: Any) -> None:
        """Look at every tool call."""
        registry.add_callback(BeforeToolCallEvent, self.before_tool_call)

    def before_tool_call(self, event: BeforeToolCallEvent) -> None:
        """Refuse the call when it needs approval; the model gets the refusal as the tool's error."""
        if self.approvals.reason_for(event.selected_tool, str(event.tool_use.get("name", ""))) is not None:
            event.cancel_tool = REFUSED_APPROVAL


def prepare_team(team: Any) -> Any:
    """Make a factory's team ready to run: each of its agents refuses tool calls that need approval."""
    for agent in node_agents(team).values():
        agent.hooks.add_hook(RefuseApprovals(app_settings.APPROVAL_TOOLS))
    return team


def conversation_text(conversation_id: Any, limit: int | None) -> str:
    """The text of the conversation's last ``limit`` stored messages (all for None), one "role: text" line each.

    Runs in the database thread. Tool calls and results are left out: a team reads what was said.
    """
    rows = Message.objects.filter(conversation_id=conversation_id).order_by("-position").values_list("role", "content")
    lines = []
    for role, content in reversed(list(rows[:limit] if limit else rows)):
        text = " ".join(
            block["text"] for block in content or [] if isinstance(block, dict) and isinstance(block.get("text"), str)
        ).strip()
        if text:
            lines.append(f"{role}: {text}")
    return "\n".join(lines)[-MAX_CONTEXT_CHARS:]


def team_input(context: str, prompt: str) -> str:
    """What the team is given: the prompt, after the conversation so far when there is one."""
    return f"The conversation so far:\n{context}\n\nThe new request: {prompt}" if context else prompt


class MultiAgentRun(AgentRun):
    """A prompt run by a Swarm or a Graph: node frames on the wire, a ``RunStep`` per node, the answer stored."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.context = ""
        self.steps = 0
        self.running: dict[str, tuple[str, datetime]] = {}  # the nodes running now: their type and start
        self.node_results: dict[str, Any] = {}  # a finished node's result as JSON, until its step is written
        if self.prepare is None:
            self.prepare = self._prepare

    def _prepare(self) -> Any:
        """Read the conversation so far and start each node afresh (database thread)."""
        self.context = conversation_text(self.conversation_id, app_settings.MAX_HISTORY_MESSAGES or None)
        for node in self.agent.nodes.values():
            node.reset_executor_state()
        return self.agent

    def _input(self) -> Any:
        return team_input(self.context, self.prompt)

    def cancel(self) -> None:
        """Ask the run to stop: the agents of the nodes running now stop at Strands' next safe point."""
        super().cancel()
        agents = node_agents(self.agent) if self.agent is not None else {}
        for node_id in self.running:
            if node_id in agents:
                agents[node_id].cancel()

    async def _send(self, payload: dict[str, Any]) -> None:
        kind = payload["type"]
        if kind == protocol.NODE_STARTED:
            self._node_started(payload)
        elif kind == protocol.NODE_FINISHED:
            self._node_finished(payload)
        elif kind == protocol.RESULT and payload[protocol.RESULT]["message"]["content"]:
            # The team's answer is the conversation's assistant message (its agents' own are not stored).
            self.recorder.added(dict(payload[protocol.RESULT]["message"]))
        await super()._send(payload)

    def _node_started(self, payload: dict[str, Any]) -> None:
        node = payload["node"]
        self.running[node] = (payload["node_type"], timezone.now())
        self.recorder.model_call_starts()  # a draft of the answer holds the text of the node speaking now
        if self.cancel_signal.is_set():
            agent = node_agents(self.agent).get(node)
            if agent is not None:
                agent.cancel()  # a node starting after a cancel stops at once

    def _node_finished(self, payload: dict[str, Any]) -> None:
        node = payload["node"]
        node_type, started_at = self.running.pop(node, ("", None))
        position, self.steps = self.steps, self.steps + 1
        step = {
            "run_id": self.run_id,
            "position": position,
            "node_id": node[:200],
            "node_type": node_type[:32],
            "status": payload["status"][:32],
            "text": storable(payload["text"])[0],
            "result": storable(self.node_results.pop(node, {}))[0],
            "execution_time_ms": max(0, payload["execution_time_ms"]),
            "started_at": started_at,
            "finished_at": timezone.now(),
        }
        self.recorder.enqueue(lambda: RunStep.objects.create(**step))

    def _settle(self, outcome: dict[str, Any]) -> None:
        """As an agent's run ends, but a team that did not complete (``stop_reason``: its status) fails the run."""
        super()._settle(outcome)
        if self.status == protocol.STATUS_COMPLETED and self.stop_reason != "completed":
            self.status = protocol.STATUS_FAILED
            outcome["error"] = f"The multi-agent run ended {self.stop_reason or 'without a result'}."
            outcome["error_frame"] = (protocol.ERR_RUN_FAILED, outcome["error"])

    async def _forward(self, event: dict[str, Any], outcome: dict[str, Any]) -> None:
        if event.get("type") == "multiagent_node_stop":
            self.node_results[str(event.get("node_id", ""))] = _node_result_json(event.get("node_result"))
        await super()._forward(event, outcome)


def _node_result_json(node_result: Any) -> dict[str, Any]:
    """A node's result as Strands serializes it (``NodeResult.to_dict``), JSON-safe; {} when it cannot be."""
    try:
        return protocol.json_safe(node_result.to_dict())
    except Exception:
        return {}
