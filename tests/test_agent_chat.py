"""The agent_chat management command streams a run in the terminal and saves it."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from agentapp.models import Conversation, Message, Run, ToolResult


@pytest.mark.django_db(transaction=True)
def test_agent_chat_streams_and_saves(offline_instant):
    out = StringIO()
    call_command("agent_chat", "Calculate 15 * 23 and then add 100", stdout=out)
    text = out.getvalue()
    assert "[tool] calculator {'expression': '15 * 23'}" in text
    assert "[success] calculator: 445" in text
    assert "15 * 23 = 345, then 345 + 100 = 445." in text
    assert "[run completed] stop reason: end_turn" in text
    run = Run.objects.get()
    assert run.status == Run.Status.COMPLETED
    assert list(ToolResult.objects.values_list("status", flat=True)) == ["success", "success"]


@pytest.mark.django_db(transaction=True)
def test_agent_chat_continues_a_conversation_with_json_frames(offline_instant):
    call_command("agent_chat", "Calculate 2+2", stdout=StringIO())
    conversation = Conversation.objects.get()
    out = StringIO()
    call_command("agent_chat", "Hello", "--conversation", str(conversation.pk), "--json", stdout=out)
    frames = [json.loads(line) for line in out.getvalue().splitlines()]
    assert frames[0]["type"] == "run_started"
    assert frames[-1] == {**frames[-1], "type": "run_finished", "status": "completed"}
    assert [frame["seq"] for frame in frames] == list(range(len(frames)))
    assert Run.objects.filter(conversation=conversation).count() == 2
    roles = list(Message.objects.filter(conversation=conversation).values_list("role", flat=True))
    assert roles == ["user", "assistant", "user", "assistant", "user", "assistant"]


@pytest.mark.django_db(transaction=True)
def test_agent_chat_refuses_unknown_conversation(offline_instant):
    with pytest.raises(CommandError, match="No conversation"):
        call_command("agent_chat", "Hello", "--conversation", "00000000-0000-0000-0000-000000000000")
