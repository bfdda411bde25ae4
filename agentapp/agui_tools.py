"""Frontend tools: the tools an AG-UI client declares in ``RunAgentInput.tools``, offered to the agent.

A call of one pauses the run with a Strands interrupt (as an approval does, ``agentapp.approvals``): the AG-UI run
ends with the tool call for the client to run, and the client's next run carries its result in a ``tool`` message,
which answers the interrupt, so the tool returns it and the run goes on. The declarations come from a client that
may be hostile: their number, names, descriptions and schemas are bounded and checked here. See docs/agui.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for
from strands import Agent, ToolContext
from strands.tools.tools import PythonAgentTool
from strands.types.tools import ToolResult, ToolSpec, ToolUse

from . import protocol
from .approvals import APPROVE, parse_decision

# Name of the interrupts a frontend tool's call raises (``Interrupt.name``).
FRONTEND_TOOL_INTERRUPT = "agentapp-frontend-tool"
# Tools one request may declare.
MAX_TOOLS = 32
# A tool's name: what every model provider accepts (letters, digits, ``_`` and ``-``, at most 64).
TOOL_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")
# Longest description, and longest parameters schema as JSON, of one tool; and of all of them together (every
# model call sends them, so they are bounded as a prompt is).
MAX_DESCRIPTION_CHARS = 4_000
MAX_SCHEMA_CHARS = 16_000
MAX_TOOLS_CHARS = 32_000
# The schema of a tool declared without parameters.
NO_PARAMETERS = {"type": "object", "properties": {}}
# Longest result text a client's tool message gives the model (an interrupt answer's ``text``).
MAX_RESULT_CHARS = protocol.MAX_DECISION_TEXT_CHARS
# The result of a call the client answered with no text (model providers refuse empty text blocks).
NO_OUTPUT = "(no output)"


class ToolDeclarationError(ValueError):
    """A declared tool the server refuses; the message says which and why."""


@dataclass(frozen=True)
class ClientTool:
    """A checked tool declaration: its name, description and parameters (a JSON schema of an object)."""

    name: str
    description: str
    parameters: dict[str, Any]

    def spec(self) -> ToolSpec:
        """The tool's Strands spec."""
        return {"name": self.name, "description": self.description, "inputSchema": {"json": self.parameters}}


def checked_tools(declared: Iterable[Any]) -> list[ClientTool]:
    """The declared tools (``ag_ui.core.Tool``), checked; raises ToolDeclarationError on the first refused one."""
    tools: list[ClientTool] = []
    seen: set[str] = set()
    size = 0
    for tool in declared:
        if len(tools) == MAX_TOOLS:
            raise ToolDeclarationError(f"At most {MAX_TOOLS} tools may be declared.")
        name = tool.name
        if not TOOL_NAME_RE.fullmatch(name):
            raise ToolDeclarationError("A tool name is 1 to 64 letters, digits, '_' or '-', not starting with a digit.")
        if name in seen:
            raise ToolDeclarationError(f"The tool {name} is declared twice.")
        seen.add(name)
        if len(tool.description) > MAX_DESCRIPTION_CHARS:
            raise ToolDeclarationError(f"The description of {name} is over {MAX_DESCRIPTION_CHARS} characters.")
        parameters = checked_schema(name, tool.parameters)
        size += len(tool.description) + len(json.dumps(parameters))
        if size > MAX_TOOLS_CHARS:
            raise ToolDeclarationError(f"The tools' descriptions and schemas are over {MAX_TOOLS_CHARS} characters.")
        tools.append(ClientTool(name, tool.description or name, parameters))
    return tools


def checked_schema(name: str, parameters: Any) -> dict[str, Any]:
    """A tool's parameters: a JSON schema of an object, at most ``MAX_SCHEMA_CHARS`` as JSON (None: no parameters)."""
    if parameters is None:
        return dict(NO_PARAMETERS)
    if not isinstance(parameters, dict) or parameters.get("type") != "object":
        raise ToolDeclarationError(f"The parameters of {name} must be a JSON schema of type 'object'.")
    if len(json.dumps(parameters)) > MAX_SCHEMA_CHARS:
        raise ToolDeclarationError(f"The parameters schema of {name} is over {MAX_SCHEMA_CHARS} characters of JSON.")
    try:
        validator_for(parameters).check_schema(parameters)
    except SchemaError as invalid:
        raise ToolDeclarationError(
            f"The parameters of {name} are not a valid JSON schema ({invalid.message})."
        ) from None
    return parameters


### The tools the agent gets ###


def frontend_tool(declared: ClientTool) -> PythonAgentTool:
    """A Strands tool whose call waits for the client's result (an interrupt), then returns it."""

    async def call(tool_use: ToolUse, **invocation_state: Any) -> ToolResult:
        context = ToolContext(tool_use=tool_use, agent=invocation_state["agent"], invocation_state=invocation_state)
        details = {
            "tool": declared.name,
            "toolUseId": str(tool_use.get("toolUseId", "")),
            "input": protocol.json_safe(tool_use.get("input")),
        }
        answer = parse_decision(context.interrupt(FRONTEND_TOOL_INTERRUPT, reason=details))
        return {
            "toolUseId": str(tool_use.get("toolUseId", "")),
            "status": "success" if answer.approved else "error",
            "content": [{"text": (answer.text or NO_OUTPUT) if answer.valid else "The client sent no usable result."}],
        }

    return PythonAgentTool(declared.name, declared.spec(), call)


class FrontendTools:
    """The client's tools for the agent one request builds: ``agentapp.preparing`` calls it with that agent.

    A declared tool named like one of the agent's own is left out: the server's tool is the one called.
    """

    def __init__(self, tools: Iterable[ClientTool]) -> None:
        self.tools = list(tools)

    def __call__(self, agent: Agent) -> None:
        """Add the tools the agent does not have already."""
        own = set(agent.tool_names)
        offered = [frontend_tool(tool) for tool in self.tools if tool.name not in own]
        if offered:
            agent.tool_registry.process_tools(offered)


### Interrupts and results ###


def is_frontend_interrupt(payload: Mapping[str, Any]) -> bool:
    """Whether a pending interrupt (``approvals.interrupt_payloads``) waits for a frontend tool's result."""
    return payload.get("name") == FRONTEND_TOOL_INTERRUPT and isinstance(payload.get("reason"), Mapping)


def waiting_calls(interrupts: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """The frontend tool calls a run waits for: toolUseId -> interrupt id."""
    return {
        str(payload["reason"].get("toolUseId")): str(payload["id"])
        for payload in interrupts
        if is_frontend_interrupt(payload)
    }


def result_answer(content: str, error: str | None) -> dict[str, str]:
    """A client's tool result as the answer to its interrupt: approve with the text, or deny with the error."""
    if error:
        return {"decision": "deny", "text": error[:MAX_RESULT_CHARS]}
    return {"decision": APPROVE, "text": content[:MAX_RESULT_CHARS]}
