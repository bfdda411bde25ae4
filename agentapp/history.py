"""Reading a conversation back: stored messages as Strands messages, repaired so the model accepts them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .attachments import expand
from .models import Message
from .protocol import from_storable, json_safe

INTERRUPTED_TOOL_TEXT = "Tool call did not finish: the run was stopped before it returned a result."
# Closes a prompt that a run ended without answering, so the next prompt is never merged into it.
UNANSWERED_NOTE = "(No answer: the run ended before the agent replied.)"
# A stored message as read back: (position, role, content).
Row = tuple[int, str, Any]


def orphan_tool_uses(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tool uses in the last assistant message that no later toolResult answers."""
    answered = {
        block["toolResult"].get("toolUseId")
        for message in messages
        for block in message.get("content", [])
        if isinstance(block, dict) and isinstance(block.get("toolResult"), dict)
    }
    for message in reversed(messages):
        if message.get("role") == "assistant":
            return [
                block["toolUse"]
                for block in message.get("content", [])
                if isinstance(block, dict)
                and isinstance(block.get("toolUse"), dict)
                and block["toolUse"].get("toolUseId") not in answered
            ]
    return []


def error_results_for(tool_uses: list[dict[str, Any]], text: str = INTERRUPTED_TOOL_TEXT) -> dict[str, Any]:
    """A user message answering each tool use with an error toolResult."""
    return {
        "role": "user",
        "content": [
            {"toolResult": {"toolUseId": tool_use.get("toolUseId"), "status": "error", "content": [{"text": text}]}}
            for tool_use in tool_uses
        ],
    }


def asks(message: dict[str, Any]) -> bool:
    """Whether a message is a user turn with text: a prompt (not only tool results)."""
    return message.get("role") == "user" and any(
        isinstance(block, dict) and "text" in block for block in message.get("content") or []
    )


def _note() -> dict[str, Any]:
    return {"role": "assistant", "content": [{"text": UNANSWERED_NOTE}]}


def repair(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Make stored messages a valid model input: answer dangling tool uses and merge same-role neighbours.

    A prompt is never merged into an earlier unanswered prompt: a note that no answer came stands between them.
    Linear in the number of messages: tool uses are tracked as they are met.
    """
    return repair_rows(messages, list(range(len(messages))))[0]


def repair_rows(messages: list[dict[str, Any]], positions: list[int]) -> tuple[list[dict[str, Any]], list[int]]:
    """``repair`` of stored messages at ``positions``, with the position each repaired message starts at.

    A message repair adds starts at the stored message it stands before (one past the last at the end).
    """
    repaired: list[dict[str, Any]] = []
    starts: list[int] = []
    open_uses: list[dict[str, Any]] = []  # tool uses of the last assistant message not answered yet

    def close_open_uses(answered_next: set[Any]) -> list[dict[str, Any]]:
        missing = [use for use in open_uses if use.get("toolUseId") not in answered_next]
        open_uses.clear()
        return error_results_for(missing)["content"] if missing else []

    for message, position in zip(messages, positions, strict=True):
        content = [block for block in message["content"] if block]
        if message["role"] == "user":
            answered_here = {block["toolResult"].get("toolUseId") for block in content if "toolResult" in block}
            content = close_open_uses(answered_here) + content
        else:
            errors = close_open_uses(set())
            if errors:
                repaired.append({"role": "user", "content": errors})
                starts.append(position)
        if not content:
            continue
        if message["role"] == "assistant":
            open_uses[:] = [
                block["toolUse"]
                for block in content
                if isinstance(block, dict) and isinstance(block.get("toolUse"), dict)
            ]
        if repaired and repaired[-1]["role"] == message["role"]:
            if message["role"] == "user" and asks(repaired[-1]) and asks({"role": "user", "content": content}):
                repaired += [_note(), {"role": "user", "content": content}]
                starts += [position, position]
                continue
            repaired[-1]["content"].extend(content)
        else:
            repaired.append({"role": message["role"], "content": content})
            starts.append(position)
    errors = close_open_uses(set())
    if errors:
        repaired.append({"role": "user", "content": errors})
        starts.append(positions[-1] + 1)
    return repaired, starts


def prompt_input(
    messages: list[dict[str, Any]], prompt: str, blocks: list[dict[str, Any]] | None = None
) -> str | list[dict[str, Any]] | None:
    """What to give ``stream_async``: the prompt (with ``blocks``, its attachments), or None once it has joined the
    history's last user message.

    A run cut short after its tool results leaves the history ending on a user message. Models require
    alternating roles, so the prompt is added to that message and Strands continues from the history. A
    prompt left unanswered there is closed with a note instead: a new prompt never re-asks an old one.
    """
    given: str | list[dict[str, Any]] = [{"text": prompt}, *blocks] if blocks else prompt
    if messages and asks(messages[-1]):
        messages.append(_note())
        return given
    if messages and messages[-1].get("role") == "user":
        last = messages[-1]
        messages[-1] = {**last, "content": [*last["content"], {"text": prompt}, *(blocks or [])]}
        return None
    return given


@dataclass
class Window:
    """The stored messages a prompt reads, repaired, and the stored position each of them starts at."""

    messages: list[dict[str, Any]]
    positions: list[int]
    # The position the next stored message takes: one past the newest row (``start`` when none was read).
    end: int


def load_messages(conversation_id: Any, limit: int | None = None) -> list[dict[str, Any]]:
    """The conversation's messages as Strands messages, ready to seed an Agent (synchronous ORM).

    With ``limit``, only the last turns that fit in ``limit`` stored messages are read (at least the last turn, so
    a long tool loop is never cut inside): a prompt then costs O(window) rows, however long the conversation.
    """
    return window_of(conversation_id, tail_rows(conversation_id, limit), limit).messages


def tail_rows(conversation_id: Any, limit: int | None, start: int = 0) -> list[Row]:
    """The last ``limit`` stored messages from position ``start`` (all for None) as (position, role, content)."""
    rows = Message.objects.filter(conversation_id=conversation_id)
    if start:
        rows = rows.filter(position__gte=start)
    if limit is None:
        return list(rows.order_by("position").values_list("position", "role", "content"))
    tail = list(rows.order_by("-position").values_list("position", "role", "content")[: max(limit, 1)])
    tail.reverse()
    return tail


def window_of(
    conversation_id: Any, tail: list[Row], limit: int | None, start: int = 0, summarized: bool = False
) -> Window:
    """The messages of ``tail`` (``tail_rows``) from position ``start`` on, from their first prompt, repaired.

    ``start`` is where a conversation manager's kept messages begin. After a summary (``summarized``) they are kept
    from there as they are, when the tail reaches back to it: the summary stands before them.
    """
    rows = [row for row in tail if row[0] >= start]
    as_kept = limit is None or (summarized and bool(tail) and tail[0][0] <= start)
    picked = rows if as_kept else _from_first_prompt(conversation_id, rows, start)
    if summarized:
        picked = _without_leading_results(picked)
    messages, positions = repair_rows(
        [{"role": role, "content": expand(from_storable(content), conversation_id)} for _, role, content in picked],
        [position for position, _, _ in picked],
    )
    return Window(messages, positions, tail[-1][0] + 1 if tail else start)


def _from_first_prompt(conversation_id: Any, tail: list[Row], start: int) -> list[Row]:
    """The rows from the first prompt of ``tail`` on; a tail with none is read back to its prompt (not before start)."""
    begin = next((index for index, row in enumerate(tail) if _is_prompt(row[1], row[2])), None)
    if begin is not None or not tail or tail[0][0] <= start:
        return tail[begin or 0 :]
    # One turn longer than the window: read back to its prompt, a chunk at a time.
    before = (
        Message.objects.filter(conversation_id=conversation_id, position__lt=tail[0][0], position__gte=start)
        .order_by("-position")
        .values_list("position", "role", "content")
    )
    earlier: list[Row] = []
    for row in before.iterator(chunk_size=100):
        earlier.append(row)
        if _is_prompt(row[1], row[2]):
            return [*reversed(earlier), *tail]
    return tail  # no prompt at all before: keep the window as it is


def _without_leading_results(picked: list[Row]) -> list[Row]:
    """Drop leading user messages that only carry tool results: their tool uses were summarized away."""
    skip = 0
    while skip < len(picked) and picked[skip][1] == Message.Role.USER and not _is_prompt(*picked[skip][1:]):
        skip += 1
    return picked[skip:]


def _is_prompt(role: str, content: Any) -> bool:
    """Whether a stored message starts a turn: a user message with text (not only tool results)."""
    return role == "user" and asks({"role": role, "content": content})


def wire_message(row: dict[str, Any]) -> dict[str, Any]:
    """A stored Message row (as ``values()``) in the wire form used by history frames and the API."""
    return {
        "position": row["position"],
        "role": row["role"],
        "content": json_safe(from_storable(row["content"])),
        "partial": row["partial"],
        "run_id": str(row["run_id"]) if row["run_id"] else None,
    }
