"""A conversation exported whole: as JSON (the API's detail, versioned) or as Markdown for people to read.

Both carry every message in order with its tool calls and tool results. Markdown shows text as written and each
tool call and result as a fenced code block, with a fence longer than any backtick run inside it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from django.utils import timezone

EXPORT_FORMAT = "agentapp.conversation/1"
_BACKTICKS = re.compile(r"`+")


def export_json(detail: dict[str, Any]) -> dict[str, Any]:
    """The JSON export of a conversation's API detail (``api_conversations.conversation_detail``)."""
    return {"format": EXPORT_FORMAT, "exported": timezone.now().isoformat(), "conversation": detail}


def _fence(text: str, language: str = "") -> str:
    longest = max((len(run) for run in _BACKTICKS.findall(text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{language}\n{text}\n{fence}"


def _dump(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


def _tool_result_text(content: Any) -> str:
    """A tool result's content: its text blocks as written, anything else as JSON."""
    parts = []
    for block in content if isinstance(content, list) else [content]:
        if isinstance(block, dict) and set(block) == {"text"} and isinstance(block["text"], str):
            parts.append(block["text"])
        else:
            parts.append(_dump(block))
    return "\n".join(parts)


def _block_markdown(block: Any) -> str:
    if not isinstance(block, dict):
        return _fence(_dump(block), "json")
    if isinstance(block.get("text"), str):
        return block["text"]
    if isinstance(block.get("toolUse"), dict):
        use = block["toolUse"]
        heading = f"**Tool call** `{use.get('name', '')}` ({use.get('toolUseId', '')})"
        return f"{heading}\n\n{_fence(_dump(use.get('input', {})), 'json')}"
    if isinstance(block.get("toolResult"), dict):
        result = block["toolResult"]
        heading = f"**Tool result** ({result.get('toolUseId', '')}, {result.get('status', '')})"
        return f"{heading}\n\n{_fence(_tool_result_text(result.get('content', [])))}"
    if isinstance(block.get("reasoningContent"), dict):
        text = (block["reasoningContent"].get("reasoningText") or {}).get("text", "")
        return "\n".join(f"> {line}" for line in str(text).splitlines()) or "> (reasoning)"
    return _fence(_dump(block), "json")


def export_markdown(detail: dict[str, Any]) -> str:
    """The Markdown export of a conversation's API detail: a heading per message, tool calls as code blocks."""
    title = " ".join(detail["title"].split()) or "Untitled conversation"
    lines = [f"# {title}", ""]
    lines.append(f"Conversation `{detail['id']}`, created {detail['created']}, updated {detail['updated']}.")
    for message in detail["messages"]:
        role = "User" if message["role"] == "user" else "Assistant"
        partial = " (partial)" if message.get("partial") else ""
        lines += ["", f"## {role}{partial}", ""]
        blocks = [_block_markdown(block) for block in message["content"]]
        lines.append("\n\n".join(blocks))
    return "\n".join(lines) + "\n"
