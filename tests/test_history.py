"""history.repair turns whatever was stored into a valid model input; the storage codec keeps bytes."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from agentapp import protocol
from agentapp.history import (
    INTERRUPTED_TOOL_TEXT,
    UNANSWERED_NOTE,
    load_messages,
    orphan_tool_uses,
    prompt_input,
    repair,
)
from agentapp.models import Conversation, Message


def assert_valid_history(messages: list[dict[str, Any]], *, ends_with_user: bool = True) -> None:
    """A model accepts the messages: user first, roles alternate, each toolUse answered in the next message."""
    assert messages, "empty history"
    assert messages[0]["role"] == "user", messages[0]
    for index, message in enumerate(messages):
        assert message["role"] in ("user", "assistant"), message
        assert message["content"], f"message {index} has no content"
        if index:
            assert message["role"] != messages[index - 1]["role"], f"messages {index - 1} and {index} share a role"
        uses = {block["toolUse"]["toolUseId"] for block in message["content"] if "toolUse" in block}
        results = {block["toolResult"]["toolUseId"] for block in message["content"] if "toolResult" in block}
        if uses:
            assert message["role"] == "assistant" and not results
            assert index + 1 < len(messages), f"tool uses {uses} at the end are never answered"
            answered = {
                block["toolResult"]["toolUseId"] for block in messages[index + 1]["content"] if "toolResult" in block
            }
            assert uses <= answered, f"tool uses {uses - answered} are not answered by the next message"
        if results:
            assert message["role"] == "user"
            previous_uses = {
                block["toolUse"]["toolUseId"] for block in messages[index - 1]["content"] if "toolUse" in block
            }
            assert results <= previous_uses, f"tool results {results - previous_uses} answer no tool use"
    if ends_with_user:
        assert messages[-1]["role"] == "user"


def user(*blocks: dict[str, Any]) -> dict[str, Any]:
    return {"role": "user", "content": list(blocks)}


def assistant(*blocks: dict[str, Any]) -> dict[str, Any]:
    return {"role": "assistant", "content": list(blocks)}


def text(value: str) -> dict[str, Any]:
    return {"text": value}


def use(tool_use_id: str) -> dict[str, Any]:
    return {"toolUse": {"toolUseId": tool_use_id, "name": "calculator", "input": {"expression": "1+1"}}}


def result(tool_use_id: str, status: str = "success", value: str = "2") -> dict[str, Any]:
    return {"toolResult": {"toolUseId": tool_use_id, "status": status, "content": [{"text": value}]}}


def interrupted(tool_use_id: str) -> dict[str, Any]:
    return result(tool_use_id, "error", INTERRUPTED_TOOL_TEXT)


### repair ###


def test_valid_history_is_unchanged():
    messages = [user(text("hi")), assistant(use("t1")), user(result("t1")), assistant(text("2")), user(text("more"))]
    assert repair(copy.deepcopy(messages)) == messages
    assert_valid_history(messages)


def test_orphan_tool_use_at_the_end_is_answered():
    messages = [user(text("Calculate 1+1")), assistant(text("let me see"), use("t1"), use("t2"))]
    repaired = repair(messages)
    assert repaired == [
        user(text("Calculate 1+1")),
        assistant(text("let me see"), use("t1"), use("t2")),
        user(interrupted("t1"), interrupted("t2")),
    ]
    assert_valid_history(repaired)


def test_orphan_followed_by_a_user_prompt_gets_results_before_the_prompt():
    messages = [user(text("a")), assistant(use("t1")), user(text("b"))]
    repaired = repair(messages)
    assert repaired == [user(text("a")), assistant(use("t1")), user(interrupted("t1"), text("b"))]
    assert_valid_history(repaired)


def test_partly_answered_tool_uses_get_the_missing_results():
    messages = [user(text("a")), assistant(use("t1"), use("t2")), user(result("t1")), assistant(text("done"))]
    repaired = repair(messages)
    assert repaired[2] == user(interrupted("t2"), result("t1"))
    assert_valid_history(repaired, ends_with_user=False)


def test_two_assistant_messages_in_a_row_are_merged():
    messages = [user(text("a")), assistant(text("partial ")), assistant(text("answer"))]
    repaired = repair(messages)
    assert repaired == [user(text("a")), assistant(text("partial "), text("answer"))]
    assert_valid_history([*repaired, user(text("next"))])


def test_assistant_after_an_unanswered_tool_use_gets_results_in_between():
    messages = [user(text("a")), assistant(use("t1")), assistant(text("cut short")), user(text("b"))]
    repaired = repair(messages)
    assert repaired == [
        user(text("a")),
        assistant(use("t1")),
        user(interrupted("t1")),
        assistant(text("cut short")),
        user(text("b")),
    ]
    assert_valid_history(repaired)


def test_a_prompt_is_never_merged_into_an_unanswered_prompt():
    """A run that died after its prompt must not have that prompt applied again with the next one."""
    messages = [user(text("a")), user(text("b")), assistant(text("c")), user(text("d")), user(text("e"))]
    repaired = repair(messages)
    assert repaired == [
        user(text("a")),
        assistant(text(UNANSWERED_NOTE)),
        user(text("b")),
        assistant(text("c")),
        user(text("d")),
        assistant(text(UNANSWERED_NOTE)),
        user(text("e")),
    ]
    assert_valid_history(repaired)


def test_repair_is_linear_in_the_history():
    """A long conversation of tool rounds repairs in time proportional to its length (counted, not timed)."""
    messages = []
    for n in range(2000):
        messages += [user(text(f"q{n}")), assistant(use(f"t{n}")), user(result(f"t{n}")), assistant(text("ok"))]
    repaired = repair(messages)
    assert repaired == messages


def test_tool_results_then_a_prompt_after_a_cancel_merge_into_one_user_message():
    """A run cancelled right after its tool ran ends on the tool results; the next prompt joins them."""
    messages = [user(text("a")), assistant(use("t1")), user(result("t1")), user(text("b"))]
    repaired = repair(messages)
    assert repaired == [user(text("a")), assistant(use("t1")), user(result("t1"), text("b"))]
    assert_valid_history(repaired)


def test_empty_blocks_and_empty_messages_are_dropped():
    messages = [user(text("a"), {}), assistant(), assistant(text("b"), {})]
    assert repair(messages) == [user(text("a")), assistant(text("b"))]


def test_repair_does_not_modify_its_input():
    messages = [user(text("a")), user(text("b")), assistant(use("t1"))]
    before = copy.deepcopy(messages)
    repair(messages)
    assert messages == before


def test_orphan_tool_uses_looks_at_the_last_assistant_message_only():
    assert orphan_tool_uses([user(text("a")), assistant(use("t1")), user(result("t1"))]) == []
    assert orphan_tool_uses([user(text("a")), assistant(use("t1"), use("t2")), user(result("t2"))]) == [
        use("t1")["toolUse"]
    ]
    assert orphan_tool_uses([user(text("a"))]) == []


### prompt_input ###


def test_prompt_after_an_assistant_message_is_passed_as_is():
    messages = [user(text("a")), assistant(text("b"))]
    assert prompt_input(messages, "next") == "next"
    assert messages == [user(text("a")), assistant(text("b"))]


def test_prompt_after_a_user_message_joins_it():
    """A run cut after its tool results ends on a user message; the prompt must not start another."""
    messages = [user(text("a")), assistant(use("t1")), user(result("t1"))]
    stored_last = messages[-1]
    assert prompt_input(messages, "next") is None
    assert messages[-1] == user(result("t1"), text("next"))
    assert stored_last == user(result("t1"))  # the caller's message object is left alone
    assert_valid_history(messages)


def test_prompt_after_an_unanswered_prompt_starts_a_turn_of_its_own():
    """A history ending on a prompt nothing answered gets a note, and the new prompt is passed on its own."""
    messages = [user(text("Stream 400 tokens"))]
    assert prompt_input(messages, "Calculate 3+3") == "Calculate 3+3"
    assert messages == [user(text("Stream 400 tokens")), assistant(text(UNANSWERED_NOTE))]


def test_prompt_into_an_empty_history_is_passed_as_is():
    messages: list[dict[str, Any]] = []
    assert prompt_input(messages, "first") == "first"
    assert messages == []


### Storage codec ###

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe"


def test_bytes_in_content_round_trip_through_json():
    document = {"document": {"format": "txt", "name": "empty", "source": {"bytes": b""}}}
    messages = [
        user(text("look"), {"image": {"format": "png", "source": {"bytes": PNG}}}),
        assistant(use("t1")),
        user({"toolResult": {"toolUseId": "t1", "status": "success", "content": [document]}}),
    ]
    stored = json.loads(json.dumps(protocol.to_storable(messages)))
    assert protocol.from_storable(stored) == messages
    assert repair(protocol.from_storable(stored)) == messages


def test_a_dict_that_only_looks_like_the_bytes_marker_is_kept():
    value = {"__agentapp_bytes__": "aGk=", "other": 1}
    assert protocol.from_storable(protocol.to_storable(value)) == value


def test_to_storable_makes_unknown_objects_json():
    stored = protocol.to_storable({"obj": object(), "nested": [b"\x00", float("nan")]})
    json.dumps(stored, allow_nan=False)
    assert stored["obj"] == "[unserializable]"
    assert protocol.from_storable(stored)["nested"] == [b"\x00", None]


### load_messages ###


@pytest.mark.django_db
def test_load_messages_repairs_and_decodes_stored_rows():
    conversation = Conversation.objects.create()
    rows = [user(text("look"), {"image": {"format": "png", "source": {"bytes": PNG}}}), assistant(use("t1"))]
    for position, message in enumerate(rows):
        Message.objects.create(
            conversation=conversation,
            position=position,
            role=message["role"],
            content=protocol.to_storable(message["content"]),
        )
    loaded = load_messages(conversation.pk)
    assert loaded == [*rows, user(interrupted("t1"))]
    assert_valid_history(loaded)
