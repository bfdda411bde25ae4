"""Synchronous writes of a conversation's transcript: one message with its ToolResult rows, a turn closed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.db import transaction

from .history import error_results_for, orphan_tool_uses
from .models import Message, ToolResult
from .protocol import from_storable, to_storable, tool_results_in
from .storable import storable

# How many of the last stored messages are read to find a turn's open tool uses.
TAIL_MESSAGES = 8


def write_message(
    conversation_id: Any,
    run_id: Any,
    position: int,
    message: Mapping[str, Any],
    partial: bool,
    tool_calls: Mapping[str, dict[str, Any]],
    replace: bool = False,
) -> None:
    """Store one message and, for a user-role message, a ToolResult row per toolResult block.

    Text a database cannot store is made storable and the row marked ``altered``. With ``replace`` the row at
    ``position`` (the text saved while it streamed) is overwritten instead of a new one inserted.
    """
    content, altered = storable(to_storable(list(message.get("content") or [])))
    fields = {"role": message["role"], "content": content, "partial": partial, "altered": altered}
    found = list(tool_results_in(message))
    if (
        replace
        and not found
        and Message.objects.filter(conversation_id=conversation_id, position=position).update(**fields)
    ):
        return
    if not found:  # one statement: atomic by itself
        Message.objects.create(conversation_id=conversation_id, run_id=run_id, position=position, **fields)
        return
    with transaction.atomic():  # a crash never leaves a tool result's message without its ToolResult rows
        row = Message.objects.create(conversation_id=conversation_id, run_id=run_id, position=position, **fields)
        _write_tool_results(row, conversation_id, run_id, found, tool_calls)


def _write_tool_results(
    row: Message,
    conversation_id: Any,
    run_id: Any,
    found: list[Mapping[str, Any]],
    tool_calls: Mapping[str, dict[str, Any]],
) -> None:
    results = []
    for result in found:
        call = tool_calls.get(str(result.get("toolUseId", ""))) or {}
        result_content, _ = storable(to_storable(list(result.get("content") or [])))
        tool_input, _ = storable(to_storable(call.get("input", {})))
        results.append(
            ToolResult(
                message=row,
                run_id=run_id,
                conversation_id=conversation_id,
                tool_use_id=storable(str(result.get("toolUseId", "")))[0][:128],
                tool_name=storable(call.get("name", ""))[0][:128],
                tool_input=tool_input,
                status=ToolResult.Status.ERROR if result.get("status") == "error" else ToolResult.Status.SUCCESS,
                content=result_content,
                duration_ms=call.get("duration_ms"),
            )
        )
    if results:
        ToolResult.objects.bulk_create(results)


def close_turn(conversation_id: Any, run_id: Any, tool_text: str, note: str) -> None:
    """End a turn a run left open: error results for its unanswered tool uses, then a note if no answer follows.

    The next prompt then starts a turn of its own instead of being merged into the one that was cut.
    """
    rows = list(
        Message.objects.filter(conversation_id=conversation_id)
        .order_by("-position")
        .values_list("position", "role", "content")[:TAIL_MESSAGES]
    )
    if not rows:
        return
    position = rows[0][0] + 1
    messages = [{"role": role, "content": from_storable(content)} for _, role, content in reversed(rows)]
    orphans = orphan_tool_uses(messages)
    if orphans:
        calls = {
            str(use.get("toolUseId", "")): {"name": use.get("name", ""), "input": use.get("input")} for use in orphans
        }
        write_message(conversation_id, run_id, position, error_results_for(orphans, tool_text), False, calls)
        position += 1
    if orphans or messages[-1]["role"] == Message.Role.USER:
        write_message(conversation_id, run_id, position, {"role": "assistant", "content": [{"text": note}]}, True, {})
