"""A run id alone never reads a run: every path that hands out a run's frames checks its conversation.

The attacker has a conversation of its own with a second connection open on it (which, before the fix, answered
the replay request from the run's log in memory) and asks for a run of the victim's conversation by its id: with a
``resume`` frame, a ``?resume=`` URL and SSE's ``Last-Event-ID``, while the run streams and after it ended. The
answer is the one for an unknown run, ``resume_unavailable``, and nothing of the run. The victim's own connections
still resume the same run with each entry point.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from django.contrib.auth import get_user_model

from agentapp import protocol, runlog
from tests.test_sse import EventReader, logged_in
from tests.wsclient import Client

SECRET = "Stream 3000 tokens"
ENTRY_POINTS = ["resume_frame", "resume_query", "sse_last_event_id"]


@pytest.fixture
def users(db) -> tuple[Any, Any]:
    model = get_user_model()
    return model.objects.create_user("victim", password="x"), model.objects.create_user("attacker", password="x")


@pytest.fixture
def streaming(settings: Any) -> None:
    settings.AGENTAPP = {
        **getattr(settings, "AGENTAPP", {}),
        "OFFLINE_TOKENS_PER_SECOND": 1000,
        "SYNC_TIMEOUT_SECONDS": 0.3,
    }


async def own_conversation(user: Any) -> tuple[Client, str]:
    """A stored conversation of ``user`` (one finished run) and a connection that stays open on it."""
    client = Client(user=user)
    hello = await client.hello()
    await client.prompt("Calculate 1+1")
    await client.until_finished()
    return client, hello["conversation_id"]


@asynccontextmanager
async def resumed(entry: str, user: Any, conversation_id: str, run_id: str) -> AsyncIterator[Any]:
    """A connection to ``conversation_id`` that asked for ``run_id`` from its start, by one entry point."""
    path = f"/ws/agent/{conversation_id}/"
    if entry == "sse_last_event_id":
        client = await logged_in(user)
        reader = EventReader(await client.get(f"/sse/{conversation_id}/", headers={"last-event-id": f"{run_id}:-1"}))
        assert (await reader.frame())["type"] == protocol.CONVERSATION
        try:
            yield reader
        finally:
            await reader.close()
        return
    socket = Client(f"{path}?resume={run_id}&seq=-1" if entry == "resume_query" else path, user=user)
    await socket.hello()
    if entry == "resume_frame":
        await socket.send({"type": "resume", "run_id": run_id, "seq": -1})
    try:
        yield socket
    finally:
        await socket.close()


async def answer_to_resume(connection: Any, run_id: str) -> list[dict[str, Any]]:
    """The frames up to the refusal of the resume, or up to the run's first text (the resume worked)."""
    frames: list[dict[str, Any]] = []
    while True:
        frame = await connection.frame() if isinstance(connection, EventReader) else await connection.receive()
        frames.append(frame)
        if frame.get("code") == protocol.ERR_RESUME_UNAVAILABLE or (
            frame.get("run_id") == run_id and frame["type"] == protocol.DATA
        ):
            return frames


async def assert_unreadable(entry: str, attacker: Any, conversation_id: str, run_id: str) -> None:
    async with resumed(entry, attacker, conversation_id, run_id) as connection:
        frames = await answer_to_resume(connection, run_id)
    assert [frame.get("code") for frame in frames] == [protocol.ERR_RESUME_UNAVAILABLE], frames
    assert all(SECRET not in str(frame) for frame in frames)


async def assert_readable(entry: str, victim: Any, conversation_id: str, run_id: str) -> None:
    async with resumed(entry, victim, conversation_id, run_id) as connection:
        frames = await answer_to_resume(connection, run_id)
    started = [frame for frame in frames if frame.get("run_id") == run_id and frame["type"] == protocol.RUN_STARTED]
    assert [frame["prompt"] for frame in started] == [SECRET], frames


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("entry", ENTRY_POINTS)
async def test_a_run_of_another_conversation_is_never_replayed(layer, streaming, users, entry) -> None:
    victim, attacker = users
    victim_socket, victim_conversation = await own_conversation(victim)
    attacker_socket, attacker_conversation = await own_conversation(attacker)  # it would answer a replay request

    await victim_socket.prompt(SECRET)
    frames = await victim_socket.until(protocol.DATA)
    run_id = frames[-1]["run_id"]
    # Live: the run is streaming (its log in this process's memory) while both ask.
    await assert_unreadable(entry, attacker, attacker_conversation, run_id)
    await assert_readable(entry, victim, victim_conversation, run_id)
    await victim_socket.cancel()
    finished = await victim_socket.until(protocol.RUN_FINISHED)
    assert finished[-1]["status"] == protocol.STATUS_CANCELLED, "the run ended before the live checks were done"
    # Finished: the log is kept for RUN_LOG_KEEP_SECONDS, for the run's own conversation only.
    await assert_unreadable(entry, attacker, attacker_conversation, run_id)
    await assert_readable(entry, victim, victim_conversation, run_id)
    await victim_socket.close()
    await attacker_socket.close()


def test_the_run_log_is_read_only_with_its_conversation() -> None:
    log = runlog.start("run-a", "conversation-a")
    try:
        # Before any frame is logged (a run just started), as after.
        assert runlog.get("run-a", "conversation-b") is None
        assert runlog.get("run-a", None) is None
        assert runlog.get("run-a", "conversation-a") is log
        log.append({"type": protocol.RUN_STARTED, "conversation_id": "conversation-a", "run_id": "run-a", "seq": 0})
        assert runlog.get("run-a", "conversation-b") is None
        assert runlog.get("unknown", "conversation-a") is None
    finally:
        runlog.retire("run-a", 0)
