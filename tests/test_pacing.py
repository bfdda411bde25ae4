"""The pace of client frames: a token bucket per connection, and a flood costs no database work."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth import get_user_model

from agentapp import protocol, registry
from agentapp.pacing import CLOSE_TOO_MANY_FRAMES, ERR_TOO_MANY_FRAMES, FramePace, Verdict
from tests.wsclient import Client


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def verdicts(pace: FramePace, count: int) -> list[Verdict]:
    return [pace.check() for _ in range(count)]


def test_a_burst_passes_then_one_refusal_is_reported_and_the_rest_dropped() -> None:
    pace = FramePace(burst=3, rate=1, clock=Clock())
    assert verdicts(pace, 6) == [Verdict.ACCEPT] * 3 + [Verdict.REFUSE, Verdict.DROP, Verdict.DROP]


def test_tokens_come_back_at_the_rate_up_to_the_burst() -> None:
    clock = Clock()
    pace = FramePace(burst=4, rate=2, clock=clock)
    assert verdicts(pace, 4) == [Verdict.ACCEPT] * 4
    clock.now += 1.0  # two tokens
    assert verdicts(pace, 3) == [Verdict.ACCEPT, Verdict.ACCEPT, Verdict.REFUSE]
    clock.now += 60  # a long pause refills the burst, no more
    assert verdicts(pace, 5) == [Verdict.ACCEPT] * 4 + [Verdict.REFUSE]


def test_an_accepted_frame_starts_a_new_row_of_refusals() -> None:
    clock = Clock()
    pace = FramePace(burst=2, rate=1, clock=clock)
    assert verdicts(pace, 4) == [Verdict.ACCEPT, Verdict.ACCEPT, Verdict.REFUSE, Verdict.DROP]
    clock.now += 1.0
    assert verdicts(pace, 3) == [Verdict.ACCEPT, Verdict.REFUSE, Verdict.DROP]


def test_a_connection_that_keeps_sending_while_refused_is_closed() -> None:
    pace = FramePace(burst=3, rate=0.001, clock=Clock())
    assert verdicts(pace, 6) == [Verdict.ACCEPT] * 3 + [Verdict.REFUSE, Verdict.DROP, Verdict.DROP]
    assert pace.check() is Verdict.CLOSE  # a burst's worth of frames past the refusal


@pytest.fixture
def user(db):
    return get_user_model().objects.create_user("ada", password="x")


@pytest.fixture
def database_cancels(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The conversations of every cancel that reached the database."""
    calls: list[str] = []
    real = registry._cancel_stored

    def counted(conversation_id: str, *args: Any) -> Any:
        calls.append(conversation_id)
        return real(conversation_id, *args)

    monkeypatch.setattr(registry, "_cancel_stored", counted)
    return calls


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_flood_of_frames_gets_one_error_then_the_close_code(settings, user, database_cancels) -> None:
    settings.AGENTAPP = {**settings.AGENTAPP, "CLIENT_FRAME_BURST": 10, "CLIENT_FRAMES_PER_SECOND": 0.001}
    client = Client(user=user)
    await client.hello()
    for _ in range(200):
        await client.cancel()
    answers = [await client.receive() for _ in range(12)]
    assert [frame["code"] for frame in answers] == [protocol.ERR_NO_ACTIVE_RUN] * 10 + [ERR_TOO_MANY_FRAMES] * 2
    assert await client.receive_close() == CLOSE_TOO_MANY_FRAMES
    # Ten cancels were handled; the first found nothing, the nine repeats were answered from memory.
    assert len(database_cancels) == 1


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_frames_within_the_burst_are_all_answered(settings, user, database_cancels) -> None:
    settings.AGENTAPP = {**settings.AGENTAPP, "CLIENT_FRAME_BURST": 40, "CLIENT_FRAMES_PER_SECOND": 0.001}
    client = Client(user=user)
    await client.hello()
    for number in range(40):
        await client.send_text("{" if number % 2 else json.dumps({"type": "cancel"}))
    answers = [(await client.receive())["code"] for _ in range(40)]
    assert answers == [protocol.ERR_NO_ACTIVE_RUN, protocol.ERR_INVALID_JSON] * 20
    await client.send_text("{")
    assert (await client.receive())["code"] == ERR_TOO_MANY_FRAMES
    await client.close()
    assert len(database_cancels) == 1


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_cancel_after_a_run_goes_to_the_database_again(settings, offline_instant, user, database_cancels):
    client = Client(user=user)
    await client.hello()
    await client.cancel()
    assert (await client.receive())["code"] == protocol.ERR_NO_ACTIVE_RUN
    await client.prompt("Calculate 2+2")
    assert (await client.until_finished())[-1]["status"] == protocol.STATUS_COMPLETED
    await client.cancel()
    assert (await client.receive())["code"] == protocol.ERR_NO_ACTIVE_RUN
    await client.close()
    assert len(database_cancels) == 2
