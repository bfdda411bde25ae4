"""Exporting a conversation as JSON and Markdown: every message and tool result, access checks, download headers."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from agentapp import export
from agentapp.models import Conversation, ConversationMember, Message, ToolResult
from agentapp.recorder import write_message
from tests.test_api_conversations import calculator_run, detail_url


def json_url(conversation: Conversation) -> str:
    return f"/api/conversations/{conversation.pk}/export.json"


def md_url(conversation: Conversation) -> str:
    return f"/api/conversations/{conversation.pk}/export.md"


@pytest.fixture
def people(db) -> dict[str, Any]:
    users = get_user_model().objects
    return {name: users.create_user(name, password=None) for name in ("owner", "vera", "eve")}


@pytest.fixture
def conversation(people) -> Conversation:
    """A calculator run (tool call, result, answer) then a second answer with backticks in it; vera may view."""
    conversation = Conversation.objects.create(owner=people["owner"], title="Sums\nand more")
    run_id = calculator_run(conversation, people["owner"])
    answer = {"role": "assistant", "content": [{"text": "Use ```python\nprint(4)\n``` to print it."}]}
    write_message(conversation.pk, run_id, Message.objects.filter(conversation=conversation).count(), answer, False, {})
    ConversationMember.objects.create(conversation=conversation, user=people["vera"], role="viewer")
    return conversation


def logged_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_json_export_round_trips_every_message_and_tool_result(people, conversation):
    client = logged_in(people["owner"])
    answer = client.get(json_url(conversation))

    assert answer.status_code == 200
    assert answer["Content-Type"] == "application/json"
    assert answer["Content-Disposition"] == f'attachment; filename="conversation-{conversation.pk}.json"'
    exported = json.loads(answer.content)
    assert exported["format"] == export.EXPORT_FORMAT
    assert exported["conversation"] == client.get(detail_url(conversation.pk)).json()
    messages = exported["conversation"]["messages"]
    assert [m["position"] for m in messages] == list(
        Message.objects.filter(conversation=conversation).values_list("position", flat=True)
    )
    assert [m["content"] for m in messages][1] == [
        {"toolUse": {"toolUseId": "tu-1", "name": "calculator", "input": {"expression": "2+2"}}}
    ]
    results = [result for m in messages for result in m["tool_results"]]
    assert [(r["tool_use_id"], r["tool_name"], r["status"], r["content"]) for r in results] == [
        ("tu-1", "calculator", "success", [{"text": "4"}])
    ]
    assert len(results) == ToolResult.objects.filter(conversation=conversation).count()


def test_markdown_export_shows_text_and_tool_calls_as_code_blocks(people, conversation):
    answer = logged_in(people["owner"]).get(md_url(conversation))

    assert answer.status_code == 200
    assert answer["Content-Type"] == "text/markdown; charset=utf-8"
    assert answer["Content-Disposition"] == f'attachment; filename="conversation-{conversation.pk}.md"'
    text = answer.content.decode()
    assert text.startswith("# Sums and more\n")
    assert text.count("## User") == 2 and text.count("## Assistant") == 3
    assert "Calculate 2+2" in text and "2+2 = 4." in text
    assert '**Tool call** `calculator` (tu-1)\n\n```json\n{\n  "expression": "2+2"\n}\n```' in text
    assert "**Tool result** (tu-1, success)\n\n```\n4\n```" in text
    # Text keeps its own code blocks; the image block is shown as JSON, not dropped.
    assert "Use ```python\nprint(4)\n``` to print it." in text
    assert '"image"' in text
    # The order of the conversation is kept.
    assert text.index("Calculate 2+2") < text.index("Tool call") < text.index("Tool result") < text.index("2+2 = 4.")


def test_a_fence_is_longer_than_any_backticks_inside():
    block = {"toolResult": {"toolUseId": "t", "status": "success", "content": [{"text": "a ```` b"}]}}
    detail = {
        "id": "x",
        "title": "",
        "created": None,
        "updated": None,
        "messages": [{"role": "user", "content": [block], "partial": False}],
    }
    text = export.export_markdown(detail)
    assert "# Untitled conversation" in text
    assert "`````\na ```` b\n`````" in text


def test_who_may_export(people, conversation):
    for user, status in ((people["vera"], 200), (people["eve"], 404)):
        client = logged_in(user)
        assert client.get(json_url(conversation)).status_code == status
        assert client.get(md_url(conversation)).status_code == status
    assert Client().get(json_url(conversation)).status_code == 404  # demo mode: an anonymous visitor is a stranger
    assert logged_in(people["owner"]).post(json_url(conversation)).status_code == 405
    assert logged_in(people["owner"]).get(f"/api/conversations/{conversation.pk}/export.txt").status_code == 404
