"""Human approval over the WebSocket: the interrupt frame, answers from any connection, cancel, admin visibility."""

from __future__ import annotations

from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model

from agentapp import protocol
from agentapp.history import load_messages
from agentapp.models import Conversation, ConversationMember, Message, Run, ToolResult
from tests.frames import assert_contiguous
from tests.wsclient import Client, streamed_text


@pytest.fixture
def approvals(settings: Any) -> None:
    """The calculator needs approval; the offline model streams at full speed."""
    settings.AGENTAPP = {
        **getattr(settings, "AGENTAPP", {}),
        "OFFLINE_TOKENS_PER_SECOND": 0,
        "APPROVAL_TOOLS": ["calculator"],
    }


@pytest.fixture
def user(db):
    return get_user_model().objects.create_user("ada", password="x")


async def paused(client: Client) -> tuple[str, list[dict[str, Any]]]:
    """Prompt a calculation and return the conversation id and the paused run's frames."""
    hello = await client.hello()
    await client.prompt("Calculate 2+2")
    frames = await client.until_finished()
    assert frames[-1]["status"] == protocol.STATUS_AWAITING_APPROVAL
    return hello["conversation_id"], frames


def interrupt_of(frames: list[dict[str, Any]]) -> dict[str, Any]:
    [frame] = [frame for frame in frames if frame["type"] == protocol.INTERRUPT]
    [interrupt] = frame["interrupts"]
    return interrupt


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_approve_from_a_fresh_connection_resumes_the_run(layer, approvals, user) -> None:
    first = Client(user=user)
    conversation_id, frames = await paused(first)
    interrupt = interrupt_of(frames)
    assert interrupt["tool"] == "calculator"
    assert interrupt["input"] == {"expression": "2+2"}
    assert_contiguous(frames)
    assert frames[-2]["result"]["stop_reason"] == "interrupt"
    assert not [frame for frame in frames if frame["type"] == protocol.TOOL_RESULT]
    run = await Run.objects.aget()
    assert run.status == Run.Status.AWAITING_APPROVAL
    assert [item["id"] for item in run.interrupts] == [interrupt["id"]]
    assert run.interrupt_state["activated"] is True

    # A plain prompt must wait for the answer; the socket closing leaves the approval pending.
    await first.prompt("Calculate 3+3")
    error = await first.receive()
    assert (error["type"], error["code"]) == (protocol.ERROR, protocol.ERR_AWAITING_APPROVAL)
    await first.close()

    second = Client(f"/ws/agent/{conversation_id}/", user=user)
    hello = await second.hello()
    assert hello["pending_approval"] == {"run_id": str(run.pk), "interrupts": [interrupt]}
    await second.send({"type": "interrupt_response", "responses": {interrupt["id"]: {"decision": "approve"}}})
    resumed = await second.until_finished()
    assert resumed[0]["type"] == protocol.RUN_STARTED
    assert resumed[0]["resumes"] == str(run.pk)
    assert resumed[0]["responses"] == {interrupt["id"]: {"decision": "approve", "text": "", "user": "ada"}}
    [result] = [frame["tool_result"] for frame in resumed if frame["type"] == protocol.TOOL_RESULT]
    assert (result["name"], result["status"], result["content"]) == ("calculator", "success", [{"text": "4"}])
    assert resumed[-1]["status"] == protocol.STATUS_COMPLETED
    assert "4" in resumed[-2]["result"]["message"]["content"][0]["text"]

    await run.arefresh_from_db()
    assert run.status == Run.Status.COMPLETED
    assert run.interrupt_state == {} and run.interrupts == []
    assert run.decisions[interrupt["id"]]["user"] == "ada"
    new_run = await Run.objects.aget(resumed_from=run)
    assert new_run.status == Run.Status.COMPLETED
    tool_result = await ToolResult.objects.aget()
    assert (tool_result.status, tool_result.tool_name, tool_result.run_id) == ("success", "calculator", new_run.pk)
    history = await database_sync_to_async(load_messages)(conversation_id)
    assert [message["role"] for message in history] == ["user", "assistant", "user", "assistant"]

    # The conversation goes on normally.
    await second.prompt("What is the capital of France?")
    after = await second.until_finished()
    assert after[-1]["status"] == protocol.STATUS_COMPLETED
    await second.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_deny_reaches_the_model_and_every_connection_sees_the_interrupt(layer, approvals, user) -> None:
    first = Client(user=user)
    hello = await first.hello()
    watcher = Client(f"/ws/agent/{hello['conversation_id']}/", user=user)
    await watcher.hello()
    await first.prompt("Calculate 2+2")
    frames = await first.until_finished()
    watched = await watcher.until_finished()
    assert interrupt_of(watched) == interrupt_of(frames)
    assert watched[-1]["status"] == protocol.STATUS_AWAITING_APPROVAL

    interrupt_id = interrupt_of(frames)["id"]
    await watcher.send({"type": "interrupt_response", "id": interrupt_id, "decision": "deny", "text": "not now"})
    resumed = await watcher.until_finished()
    seen_by_first = await first.until_finished()
    # The watcher's group frames may merge text deltas: same run, same end, same text.
    assert seen_by_first[-1] == {**resumed[-1]}
    assert streamed_text(seen_by_first) == streamed_text(resumed)
    [result] = [frame["tool_result"] for frame in resumed if frame["type"] == protocol.TOOL_RESULT]
    assert result["status"] == "error"
    assert "Denied by ada: not now" in result["content"][0]["text"]
    assert resumed[-1]["status"] == protocol.STATUS_COMPLETED
    assert await ToolResult.objects.filter(status="error").acount() == 1
    await first.close()
    await watcher.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_cancel_during_approval_wait_clears_it_and_keeps_history_valid(layer, approvals, user) -> None:
    first = Client(user=user)
    conversation_id, frames = await paused(first)
    watcher = Client(f"/ws/agent/{conversation_id}/", user=user)
    await watcher.hello()
    await watcher.cancel()
    for client in (watcher, first):
        resolved = await client.receive()
        assert resolved["type"] == protocol.INTERRUPT_RESOLVED
        assert resolved["outcome"] == protocol.STATUS_CANCELLED
        assert resolved["interrupt_ids"] == [interrupt_of(frames)["id"]]
    run = await Run.objects.aget()
    assert run.status == Run.Status.CANCELLED
    assert run.decisions == {"cancelled_by": "ada"}
    tool_result = await ToolResult.objects.aget()
    assert tool_result.status == "error" and tool_result.run_id == run.pk
    history = await database_sync_to_async(load_messages)(conversation_id)
    assert history[-1]["content"][0]["toolResult"]["status"] == "error"

    # Nothing is pending any more: an answer is refused, a second cancel has nothing to stop, a prompt runs.
    await first.send({"type": "interrupt_response", "id": interrupt_of(frames)["id"], "decision": "approve"})
    assert (await first.receive())["code"] == protocol.ERR_NO_PENDING_APPROVAL
    await first.cancel()
    assert (await first.receive())["code"] == protocol.ERR_NO_ACTIVE_RUN
    await first.prompt("What is the capital of France?")
    after = await first.until_finished()
    assert after[-1]["status"] == protocol.STATUS_COMPLETED
    assert await Message.objects.filter(conversation_id=conversation_id).acount() == 5
    await first.close()
    await watcher.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_bad_answers_get_documented_errors(approvals, user) -> None:
    owner = Client(user=user)
    await owner.hello()
    await owner.send({"type": "interrupt_response", "id": "x", "decision": "approve"})
    assert (await owner.receive())["code"] == protocol.ERR_NO_PENDING_APPROVAL
    await owner.prompt("Calculate 2+2")
    await owner.until_finished()
    for bad in (
        {"type": "interrupt_response"},
        {"type": "interrupt_response", "responses": {}},
        {"type": "interrupt_response", "responses": {"x": {"decision": "maybe"}}},
        {"type": "interrupt_response", "responses": {"x": {"decision": "approve", "text": 3}}},
        {"type": "interrupt_response", "responses": ["x"]},
    ):
        await owner.send(bad)
        assert (await owner.receive())["code"] == protocol.ERR_INVALID_RESPONSE, bad
    await owner.send({"type": "interrupt_response", "id": "no-such-id", "decision": "approve"})
    assert (await owner.receive())["code"] == protocol.ERR_UNKNOWN_INTERRUPT
    assert await Run.objects.filter(status=Run.Status.AWAITING_APPROVAL).acount() == 1
    await owner.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_viewer_may_not_answer(approvals, user) -> None:
    viewer_user = await get_user_model().objects.acreate_user("vic", password="x")
    owner = Client(user=user)
    conversation_id, frames = await paused(owner)
    conversation = await Conversation.objects.aget(pk=conversation_id)
    await ConversationMember.objects.acreate(conversation=conversation, user=viewer_user, role="viewer")
    viewer = Client(f"/ws/agent/{conversation_id}/", user=viewer_user)
    hello = await viewer.hello()
    assert hello["pending_approval"]["interrupts"] == [interrupt_of(frames)]
    await viewer.send({"type": "interrupt_response", "id": interrupt_of(frames)["id"], "decision": "approve"})
    assert (await viewer.receive())["code"] == protocol.ERR_READ_ONLY
    assert await Run.objects.filter(status=Run.Status.AWAITING_APPROVAL).acount() == 1
    await viewer.close()
    await owner.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_pending_approval_is_listed_in_the_admin(approvals, user, client) -> None:
    owner = Client(user=user)
    await paused(owner)
    await owner.close()
    admin = await get_user_model().objects.acreate_superuser("root", password="x")
    await database_sync_to_async(client.force_login)(admin)
    page = await database_sync_to_async(client.get)("/admin/agentapp/run/?status__exact=awaiting_approval")
    assert page.status_code == 200
    html = page.content.decode()
    assert "calculator({&#x27;expression&#x27;: &#x27;2+2&#x27;})" in html  # the Pending approval column
    assert "Awaiting Approval" in html
    assert "1 run" in html
