"""The admin: a read-only audit log of conversations, runs and tool results, with an escaped transcript."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape

from agentapp import protocol
from agentapp.models import Conversation, Message, Run, ToolResult
from tests.test_session_repository import channels_run

CHANGELIST = reverse("admin:agentapp_conversation_changelist")
TOOL_RESULTS = reverse("admin:agentapp_toolresult_changelist")


def transcript_of(page: str) -> str:
    """The transcript table of a conversation change page."""
    start = page.index('<table class="agentapp-transcript">')
    return page[start : page.index("</table>", start)]


@pytest.fixture
def staff_client(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("boss", "boss@example.com", "x"))
    return client


@pytest.fixture
def recorded(db):
    """A conversation of ada's with two real runs: one tool error, one success."""
    owner = get_user_model().objects.create_user("ada", password="x")
    conversation = Conversation.objects.create(owner=owner)
    assert channels_run(conversation, "Calculate the square root of -1") == protocol.STATUS_COMPLETED
    assert channels_run(conversation, "Calculate 2+2") == protocol.STATUS_COMPLETED
    return conversation


@pytest.mark.django_db(transaction=True)
def test_conversation_list_and_transcript(staff_client, recorded):
    Conversation.objects.create(session_key="anon-session", title="Anonymous chat")

    page = staff_client.get(CHANGELIST)
    assert page.status_code == 200
    text = page.content.decode()
    assert "Calculate the square root of -1" in text
    assert '<td class="field-run_count">2</td>' in text
    assert '<td class="field-owner_name">ada</td>' in text
    assert '<td class="field-owner_name">anonymous</td>' in text
    anonymous = staff_client.get(CHANGELIST, {"anonymous": "yes"}).content.decode()
    assert "Anonymous chat" in anonymous and "square root" not in anonymous
    searched = staff_client.get(CHANGELIST, {"q": "ada"}).content.decode()
    assert "square root" in searched and "Anonymous chat" not in searched

    page = staff_client.get(reverse("admin:agentapp_conversation_change", args=[recorded.pk]))
    assert page.status_code == 200
    text = page.content.decode()
    transcript = transcript_of(text)
    assert escape(json.dumps({"expression": "sqrt(-1)"}, indent=2)) in transcript
    assert escape(json.dumps({"expression": "2+2"}, indent=2)) in transcript
    assert "math domain error" in transcript
    assert '<span class="agentapp-status-error">error</span>' in transcript
    assert '<span class="agentapp-status-success">success</span>' in transcript
    assert transcript.index("Calculate the square root of -1") < transcript.index("Calculate 2+2")
    assert "2+2 = 4." in transcript
    # Read-only: no save button, no inline forms to add or delete rows.
    assert 'name="_save"' not in text
    assert "<textarea" not in text and 'name="runs-0-prompt"' not in text and 'name="messages-0-content"' not in text


@pytest.mark.django_db(transaction=True)
def test_tool_result_and_run_lists_filter(staff_client, recorded):
    everything = staff_client.get(TOOL_RESULTS).content.decode()
    assert "2 tool results" in everything

    page = staff_client.get(TOOL_RESULTS, {"tool_name": "calculator", "status__exact": "error"})
    assert page.status_code == 200
    text = page.content.decode()
    assert "1 tool result" in text and "2 tool results" not in text
    assert '<td class="field-status">Error</td>' in text
    assert '<td class="field-status">Success</td>' not in text

    tool_use_id = ToolResult.objects.get(status="success").tool_use_id
    searched = staff_client.get(TOOL_RESULTS, {"q": tool_use_id}).content.decode()
    assert "1 tool result" in searched and '<td class="field-status">Success</td>' in searched

    runs = staff_client.get(reverse("admin:agentapp_run_changelist"), {"status__exact": "completed"})
    assert runs.status_code == 200
    assert "2 runs" in runs.content.decode()
    assert staff_client.get(reverse("admin:agentapp_message_changelist")).status_code == 200


def test_transcript_escapes_model_and_tool_text(staff_client, db):
    conversation = Conversation.objects.create(title="<b>title</b>")
    Message.objects.create(conversation=conversation, position=0, role="user", content=[{"text": "<i>prompt</i>"}])
    use = {"toolUseId": "t1", "name": "<em>tool</em>", "input": {"html": "<img src=x onerror=alert(1)>"}}
    Message.objects.create(conversation=conversation, position=1, role="assistant", content=[{"toolUse": use}])
    script = "<script>alert(1)</script>"
    result = {"toolUseId": "t1", "status": "error", "content": [{"text": script}]}
    carrier = Message.objects.create(
        conversation=conversation, position=2, role="user", content=[{"toolResult": result}]
    )
    ToolResult.objects.create(
        message=carrier, conversation=conversation, tool_use_id="t1", tool_name="calc", status="error", content=[]
    )
    Message.objects.create(
        conversation=conversation, position=3, role="assistant", content=[{"text": script}], partial=True
    )

    text = staff_client.get(reverse("admin:agentapp_conversation_change", args=[conversation.pk])).content.decode()
    assert script not in text
    assert "<img src=x" not in text and "<i>prompt</i>" not in text and "<em>tool</em>" not in text
    transcript = transcript_of(text)
    assert transcript.count(escape(script)) == 2
    assert escape("<i>prompt</i>") in transcript
    assert escape("<em>tool</em>") in transcript
    assert '<em class="agentapp-partial">(partial)</em>' in transcript
    assert "Tool result of <strong>calc</strong>" in transcript


def test_everything_is_read_only(staff_client, db):
    conversation = Conversation.objects.create(title="audit")
    change = reverse("admin:agentapp_conversation_change", args=[conversation.pk])
    assert staff_client.post(change, {"title": "edited"}).status_code == 403
    assert staff_client.get(reverse("admin:agentapp_conversation_add")).status_code == 403
    assert staff_client.get(reverse("admin:agentapp_conversation_delete", args=[conversation.pk])).status_code == 403
    for model in ("run", "message", "toolresult", "agentstate"):
        assert staff_client.get(reverse(f"admin:agentapp_{model}_add")).status_code == 403
    conversation.refresh_from_db()
    assert conversation.title == "audit"


def test_non_staff_are_refused(client, django_user_model, db):
    assert client.get(CHANGELIST).status_code == 302
    client.force_login(django_user_model.objects.create_user("eve", password="x"))
    page = client.get(CHANGELIST)
    assert page.status_code == 302
    assert page["Location"].startswith(reverse("admin:login"))
    client.force_login(django_user_model.objects.create_user("sam", password="x", is_staff=True))
    assert client.get(CHANGELIST).status_code == 403


def test_changelist_queries_do_not_grow_with_rows(staff_client, db):
    def count_queries() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert staff_client.get(CHANGELIST).status_code == 200
        return len(queries)

    def add_conversation(index: int) -> None:
        owner = get_user_model().objects.create_user(f"user{index}", password="x")
        conversation = Conversation.objects.create(owner=owner, title=f"chat {index}")
        Run.objects.create(conversation=conversation, prompt="p")

    add_conversation(0)
    few = count_queries()
    for index in range(1, 6):
        add_conversation(index)
    assert count_queries() == few


### Change list order and long titles ###


def order_in(page: str, names: list[str]) -> list[str]:
    """``names`` sorted by where they first appear in the page."""
    return sorted(names, key=page.index)


def test_runs_messages_and_tool_results_list_newest_first(staff_client, db):
    conversation = Conversation.objects.create(title="order")
    start = timezone.now() - timedelta(hours=1)
    for index, name in enumerate(["first", "second", "third"]):
        at = start + timedelta(minutes=index)
        run = Run.objects.create(conversation=conversation, prompt=f"prompt-{name}")
        message = Message.objects.create(
            conversation=conversation, position=index, role="user", content=[{"text": name}], run=run
        )
        ToolResult.objects.create(
            message=message, conversation=conversation, run=run, tool_use_id=f"t-{name}", tool_name=f"tool_{name}",
            status="success", content=[],
        )  # fmt: skip
        Run.objects.filter(pk=run.pk).update(started_at=at)
        Message.objects.filter(pk=message.pk).update(created_at=at)
        ToolResult.objects.filter(message=message).update(created_at=at)

    runs = staff_client.get(reverse("admin:agentapp_run_changelist")).content.decode()
    assert order_in(runs, ["prompt-first", "prompt-second", "prompt-third"]) == [
        "prompt-third", "prompt-second", "prompt-first",
    ]  # fmt: skip
    messages = staff_client.get(reverse("admin:agentapp_message_changelist")).content.decode()
    assert order_in(messages, ["#0 user", "#1 user", "#2 user"]) == ["#2 user", "#1 user", "#0 user"]
    results = staff_client.get(TOOL_RESULTS).content.decode()
    assert order_in(results, ["tool_first", "tool_second", "tool_third"]) == ["tool_third", "tool_second", "tool_first"]
    # The models keep their own order (oldest first), which the history code relies on.
    assert [run.prompt for run in Run.objects.filter(conversation=conversation)] == [
        "prompt-first", "prompt-second", "prompt-third",
    ]  # fmt: skip


def test_long_titles_are_cut_in_change_lists(staff_client, db):
    title = "A <long> title " + "x" * 170 + " THE-END"  # 193 characters: within the column on every database
    conversation = Conversation.objects.create(title=title)
    Run.objects.create(conversation=conversation, prompt="p")
    short = Conversation.objects.create(title="Short & sweet")

    page = staff_client.get(CHANGELIST).content.decode()
    cells = re.findall(r'<th class="field-title_display"><a href="([^"]*)">(.*?)</a></th>', page)
    assert cells == [
        (reverse("admin:agentapp_conversation_change", args=[short.pk]), "Short &amp; sweet"),
        (
            reverse("admin:agentapp_conversation_change", args=[conversation.pk]),
            f'<span title="{escape(title)}">{escape(title[:59])}…</span>',
        ),
    ]
    assert "THE-END" not in re.sub(r'title="[^"]*"', "", page)  # only the tooltip holds the whole title

    runs = staff_client.get(reverse("admin:agentapp_run_changelist")).content.decode()
    assert f'<td class="field-conversation_title"><span title="{escape(title)}">' in runs
    assert "THE-END" not in re.sub(r'title="[^"]*"', "", runs)
