"""500 runs mixing completions, cancels, disconnects, model errors and approvals; then nothing may be left over.

Checked, not assumed: no asyncio task of the runs, no ``running`` Run row (the per-conversation lock), no
PostgreSQL session idle in a transaction, no Strands agent holding its invocation lock, and every conversation's
history valid (positions contiguous, every tool call answered).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.db import connection
from strands import Agent

from agentapp import protocol, registry
from agentapp.agents import build_model
from agentapp.history import orphan_tool_uses
from agentapp.models import Message, Run
from agentapp.offline_model import OfflineModel
from agentapp.tools import DEFAULT_TOOLS
from tests.wsclient import Client

WORKERS = 20
RUNS_PER_WORKER = 25
SETTLE_SECONDS = 10

# Every agent the factory built, to check their invocation locks at the end.
AGENTS: list[Agent] = []


def stress_agent(conversation: Any, user: Any) -> Agent:
    """The default tools on the no-delay offline model; users named ``failing-*`` get a model that fails mid-answer."""
    model = OfflineModel(fail_after_tokens=2) if user.username.startswith("failing") else build_model()
    agent = Agent(model=model, tools=list(DEFAULT_TOOLS), callback_handler=None, name="stress")
    AGENTS.append(agent)
    return agent


@pytest.fixture
def stress_settings(settings: Any) -> None:
    settings.AGENTAPP = {
        **getattr(settings, "AGENTAPP", {}),
        "AGENT_FACTORY": "tests.test_stress.stress_agent",
        "OFFLINE_TOKENS_PER_SECOND": 0,
        "APPROVAL_TOOLS": ["calculator"],
        "RUNS_PER_USER_PER_MINUTE": 0,
    }
    AGENTS.clear()


async def until_end(client: Client) -> list[dict[str, Any]]:
    """Frames up to run_finished, or up to interrupt_resolved for a cancelled wait."""
    frames = []
    while True:
        frame = await client.receive()
        frames.append(frame)
        if frame["type"] in (protocol.RUN_FINISHED, protocol.INTERRUPT_RESOLVED):
            return frames
        assert frame["type"] != protocol.ERROR or "run_id" in frame, frame


async def worker(number: int, path_for: dict[int, str]) -> dict[str, int]:
    """Drive one conversation through RUNS_PER_WORKER runs of every kind; return the statuses seen."""
    name = f"failing-{number}" if number % 4 == 0 else f"user-{number}"
    user = await get_user_model().objects.acreate_user(name, password="x")
    client = Client(user=user)
    path_for[number] = f"/ws/agent/{(await client.hello())['conversation_id']}/"
    statuses: dict[str, int] = {}
    runs = 0
    step = 0
    while runs < RUNS_PER_WORKER:
        kind = step % 4
        step += 1
        if kind == 0:  # to the end (completed, or failed on the failing model)
            await client.prompt("Stream 30 tokens")
        elif kind == 1:  # cancelled while starting
            await client.prompt("Stream 30 tokens")
            await client.cancel()
        elif kind == 2:  # the socket drops right after the prompt: the run is cancelled (or already over)
            await client.prompt("Stream 30 tokens")
            await client.close()
            runs += 1
            client = Client(path_for[number], user=user)
            await client.hello()
            continue
        else:  # a tool call waiting for approval, then approved, denied or cancelled
            await client.prompt("Calculate 2+2")
        finished = (await until_end(client))[-1]
        runs += 1
        statuses[finished["status"]] = statuses.get(finished["status"], 0) + 1
        if finished["status"] == protocol.STATUS_AWAITING_APPROVAL:
            interrupt_id = await database_sync_to_async(_pending_id)(finished["run_id"])
            answer = (runs // 4) % 3
            if answer == 2:
                await client.cancel()
            else:
                decision = "approve" if answer == 0 else "deny"
                await client.send({"type": "interrupt_response", "id": interrupt_id, "decision": decision})
                runs += 1
            resolved = (await until_end(client))[-1]
            statuses[resolved.get("status", resolved.get("outcome"))] = 1 + statuses.get(
                resolved.get("status", resolved.get("outcome")), 0
            )
    await client.close()
    return statuses


def _pending_id(run_id: str) -> str:
    return Run.objects.get(pk=run_id).interrupts[0]["id"]


def check_database(paths: list[str]) -> None:
    assert Run.objects.count() >= WORKERS * RUNS_PER_WORKER
    assert list(Run.objects.filter(status=Run.Status.RUNNING).values_list("id", flat=True)) == []
    assert Run.objects.filter(status=Run.Status.AWAITING_APPROVAL).count() == 0
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND state LIKE 'idle in transaction%%'"
            )
            assert cursor.fetchone()[0] == 0
    for path in paths:
        conversation_id = path.split("/")[3]
        rows = list(
            Message.objects.filter(conversation_id=conversation_id)
            .order_by("position")
            .values_list("position", "role", "content")
        )
        assert [row[0] for row in rows] == list(range(len(rows)))
        assert orphan_tool_uses([{"role": role, "content": content} for _, role, content in rows]) == []


async def settled(before: set[asyncio.Task[Any]]) -> set[asyncio.Task[Any]]:
    """The tasks started since ``before`` still alive once they had SETTLE_SECONDS to end (polled, bounded)."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        left = {task for task in asyncio.all_tasks() if task not in before and task is not asyncio.current_task()}
        left = {task for task in left if not task.done()}
        if not left or time.monotonic() > deadline:
            return left
        await asyncio.sleep(0.02)  # poll interval of a bounded wait, not synchronization


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_500_runs_leave_nothing_behind(stress_settings) -> None:
    before = set(asyncio.all_tasks())
    paths: dict[int, str] = {}
    results = await asyncio.gather(*(worker(number, paths) for number in range(WORKERS)))

    statuses: dict[str, int] = {}
    for result in results:
        for status, count in result.items():
            statuses[status] = statuses.get(status, 0) + count
    # Every kind of ending happened.
    for status in ("completed", "cancelled", "failed", "awaiting_approval"):
        assert statuses.get(status, 0) > 0, statuses

    left = await settled(before)
    assert left == set(), sorted(task.get_name() for task in left)
    assert registry.tasks == set()
    assert registry.slots == {}
    assert AGENTS and [agent for agent in AGENTS if agent._concurrency._invocation_lock.locked()] == []
    await database_sync_to_async(check_database)(list(paths.values()))
