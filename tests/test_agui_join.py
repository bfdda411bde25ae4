"""AG-UI state and reconnects: ``agent.state`` as STATE_SNAPSHOT and STATE_DELTA, and ``GET agui/<id>/`` joining a
thread (its snapshots, a run in progress from its start, the interrupts still waiting)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.test import AsyncClient

from agentapp.agui_events import RunTranslator, state_delta
from agentapp.models import Conversation, Run
from tests.test_agui import AguiReader, kinds, logged_in, post, run_input, text_of

REMEMBER = 'Call the remember tool with {"key": "color", "value": "blue"}'


@pytest.fixture
def remembering(settings: Any) -> None:
    settings.AGENTAPP = {**settings.AGENTAPP, "AGENT_FACTORY": "tests.agui_agents.remembering_agent"}


### State ###


def test_the_state_delta_is_a_json_patch_key_by_key() -> None:
    before = {"same": [1], "changed": 1, "gone/with~slash": True}
    after = {"same": [1], "changed": {"x": 2}, "new": None}
    assert state_delta(before, after) == [
        {"op": "remove", "path": "/gone~1with~0slash"},
        {"op": "add", "path": "/changed", "value": {"x": 2}},
        {"op": "add", "path": "/new", "value": None},
    ]
    assert state_delta(after, dict(after)) == []


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_agent_state_is_snapshot_at_the_start_and_a_delta_at_the_end(offline_instant, remembering, ada) -> None:
    client = await logged_in(ada)
    events = await AguiReader(await post(client, "/agui/", run_input(REMEMBER, state={"color": "red"}))).rest()
    assert kinds(events)[:3] == ["RUN_STARTED", "MESSAGES_SNAPSHOT", "STATE_SNAPSHOT"]
    assert events[2]["snapshot"] == {}  # the input's state is not the agent's
    assert kinds(events)[-2:] == ["STATE_DELTA", "RUN_FINISHED"]
    assert events[-2]["delta"] == [{"op": "add", "path": "/color", "value": "blue"}]
    assert text_of(events) == "remember returned: color is blue"

    thread_id = events[0]["threadId"]
    body = run_input("Calculate 2+2", thread_id=thread_id, state={"color": "red", "size": 3})
    again = await AguiReader(await post(client, f"/agui/{thread_id}/", body)).rest()
    assert again[2] == {"type": "STATE_SNAPSHOT", "snapshot": {"color": "blue"}}
    assert "STATE_DELTA" not in kinds(again) and text_of(again) == "2+2 = 4."


### Joining a thread ###


def test_a_joined_run_opens_at_its_first_frame_even_without_its_run_started() -> None:
    run_id = "03e3c08a-0000-4000-8000-000000000002"
    translator = RunTranslator("c", None, [{"position": 0, "role": "user", "content": [{"text": "hi"}]}], {}, True)
    frames = [
        {"type": "title", "conversation_id": "c", "title": "New"},  # outside the run: nothing to open
        {"type": "data", "conversation_id": "c", "run_id": run_id, "seq": 7, "data": "late"},
        {"type": "run_finished", "conversation_id": "c", "run_id": run_id, "seq": 8, "status": "completed"},
    ]
    events = [event for frame in frames for event in translator.translate(frame)]
    assert [type(event).__name__ for event in events] == [
        "RunStartedEvent",
        "MessagesSnapshotEvent",
        "StateSnapshotEvent",
        "TextMessageStartEvent",
        "TextMessageContentEvent",
        "TextMessageEndEvent",
        "RunFinishedEvent",
    ]
    assert events[0].run_id == run_id and events[-1].run_id == run_id and events[4].delta == "late"


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_joining_mid_run_streams_the_run_from_its_start(layer, settings, ada) -> None:
    settings.AGENTAPP = {**settings.AGENTAPP, "OFFLINE_TOKENS_PER_SECOND": 600}
    client = await logged_in(ada)
    asker = AguiReader(await post(client, "/agui/", run_input("Stream 2000 tokens")))
    seen = await asker.until("TEXT_MESSAGE_CONTENT")
    thread_id, run_id = seen[0]["threadId"], seen[0]["metadata"]["agentapp"]["run_id"]

    joined = await AguiReader(await client.get(f"/agui/{thread_id}/")).rest()
    asked = seen + await asker.rest()
    assert kinds(joined)[:3] == ["RUN_STARTED", "MESSAGES_SNAPSHOT", "STATE_SNAPSHOT"]
    assert (joined[0]["threadId"], joined[0]["runId"]) == (thread_id, run_id)
    assert [m["content"] for m in joined[1]["messages"]] == ["Stream 2000 tokens"]
    assert len(text_of(asked).split()) == 2000 and text_of(joined) == text_of(asked)  # from the first token
    assert joined[-1]["type"] == "RUN_FINISHED" and joined[-1]["outcome"] == {"type": "success"}
    assert (await Run.objects.aget(pk=run_id)).status == "completed"


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_joining_a_thread_at_rest_gives_its_snapshots_and_waiting_interrupts(settings, offline_instant, ada):
    settings.AGENTAPP = {**settings.AGENTAPP, "APPROVAL_TOOLS": ["calculator"]}
    client = await logged_in(ada)
    paused = await AguiReader(await post(client, "/agui/", run_input("Calculate 2+2"))).rest()
    thread_id = paused[0]["threadId"]

    joined = await AguiReader(await client.get(f"/agui/{thread_id}/")).rest()
    assert kinds(joined) == ["RUN_STARTED", "MESSAGES_SNAPSHOT", "STATE_SNAPSHOT", "RUN_FINISHED"]
    assert [m["role"] for m in joined[1]["messages"]] == ["user", "assistant"]
    assert joined[1]["messages"][1]["toolCalls"][0]["function"]["name"] == "calculator"
    assert joined[-1]["outcome"] == paused[-1]["outcome"] and joined[-1]["outcome"]["type"] == "interrupt"

    settled = await Conversation.objects.acreate(owner=ada)
    quiet = await AguiReader(await client.get(f"/agui/{settled.pk}/")).rest()
    assert kinds(quiet) == ["RUN_STARTED", "MESSAGES_SNAPSHOT", "STATE_SNAPSHOT", "RUN_FINISHED"]
    assert quiet[1]["messages"] == [] and quiet[-1]["outcome"] == {"type": "success"}


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_joining_is_refused_as_sse_watching_is(settings, ada, stranger) -> None:
    settings.AGENTAPP = {**settings.AGENTAPP, "ALLOW_ANONYMOUS": False}
    conversation = await Conversation.objects.acreate(owner=ada)
    outsider = await logged_in(stranger)
    for client, conversation_id, status in [
        (AsyncClient(), str(conversation.pk), 401),
        (outsider, str(conversation.pk), 403),
        (outsider, str(uuid.uuid4()), 404),
    ]:
        agui, sse = await client.get(f"/agui/{conversation_id}/"), await client.get(f"/sse/{conversation_id}/")
        assert (agui.status_code, agui.json()) == (sse.status_code, sse.json()) and agui.status_code == status
