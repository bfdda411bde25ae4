"""Runs on worker processes: two daphne processes send prompts to ``manage.py agentapp_worker`` processes over a
Redis channel layer, with PostgreSQL as the record.

A worker's run reaches every socket of the conversation on any web process and outlives the socket that asked; a
SIGKILLed worker's run is ended ``interrupted`` within seconds and the conversation goes on without re-running a
tool; queued runs survive a Redis restart; and each double-texting policy works across processes. Every
wait is on frames, or a deadline-bounded poll of the database.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.frames import assert_contiguous, deltas
from tests.livedaphne import LiveSocket, live_socket
from tests.liveworkers import Workers, WorkerStack, eventually, query, worker_stack

pytestmark = pytest.mark.slow

TOKENS_PER_SECOND = 50
LEASE_SECONDS = 3
SWEEP_SECONDS = 0.5
# A worker told to stop lets its runs finish this long (longer than any run here), unless told twice.
DRAIN_SECONDS = 60
# A dead worker's run must be ended within this long of the kill (lease + sweep + the frame's way to a socket).
ENDED_WITHIN_SECONDS = 10

Frames = list[dict[str, Any]]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerStack]:
    env = {"AGENTAPP_OFFLINE_TPS": str(TOKENS_PER_SECOND)}
    settings = {
        "RUN_LEASE_SECONDS": LEASE_SECONDS,
        "WORKER_SWEEP_SECONDS": SWEEP_SECONDS,
        "WORKER_DRAIN_SECONDS": DRAIN_SECONDS,
    }
    with worker_stack(tmp_path_factory.mktemp("workers"), 2, env, **settings) as live:
        yield live


@pytest.fixture
def workers(stack: WorkerStack, tmp_path: Path) -> Iterator[Workers]:
    with stack.workers(tmp_path) as pool:
        yield pool


### Helpers ###


def conversation(stack: WorkerStack, user: str) -> tuple[str, str, str]:
    """A new user's session, and the path and id of a conversation they own."""
    seeded = stack.cluster.seed([user], owner=user)
    conversation_id = seeded["conversation"]
    return seeded["users"][user]["session"], f"/ws/agent/{conversation_id}/", conversation_id


async def prompt(socket: LiveSocket, text: str, if_busy: str | None = None) -> None:
    frame = {"type": "prompt", "prompt": text, **({"if_busy": if_busy} if if_busy else {})}
    await socket.connection.send(json.dumps(frame))


def text(frames: Frames, run_id: str | None = None) -> str:
    return "".join(f["data"] for f in frames if f["type"] == "data" and run_id in (None, f.get("run_id")))


def of_run(frames: Frames, run_id: str) -> Frames:
    return [f for f in frames if f.get("run_id") == run_id and f["type"] not in ("run_queued", "run_dequeued")]


async def until_finished(socket: LiveSocket, run_id: str) -> Frames:
    """Frames up to and including ``run_finished`` of ``run_id``."""
    return await socket.until(lambda f: f[-1]["type"] == "run_finished" and f[-1].get("run_id") == run_id)


async def until_type(socket: LiveSocket, frame_type: str) -> Frames:
    return await socket.until(lambda f: f[-1]["type"] == frame_type)


async def until_queued(socket: LiveSocket, prompt_text: str) -> Frames:
    """Frames up to and including the ``run_queued`` of ``prompt_text``."""
    return await socket.until(lambda f: f[-1]["type"] == "run_queued" and f[-1]["prompt"] == prompt_text)


def started_id(frames: Frames) -> str:
    """The run id of the first ``run_started`` among ``frames`` (a ``run_queued`` of the run may come first)."""
    return next(f["run_id"] for f in frames if f["type"] == "run_started")


def runs(stack: WorkerStack, conversation_id: str) -> list[tuple[str, str, str, str]]:
    """The conversation's runs (id, prompt, status, worker) in the order they were queued or started."""
    rows = query(
        stack.cluster,
        "SELECT id::text, prompt, status, worker FROM agentapp_run WHERE conversation_id = %s"
        " ORDER BY COALESCE(queued_at, started_at), started_at",
        [conversation_id],
    )
    return [tuple(row) for row in rows]  # type: ignore[misc]


async def stored_runs(stack: WorkerStack, conversation_id: str, count: int) -> list[tuple[str, str, str, str]]:
    """The conversation's runs once there are ``count`` of them."""
    return await eventually(lambda: runs(stack, conversation_id), lambda rows: len(rows) == count)


def run_row(stack: WorkerStack, run_id: str) -> tuple[str, str]:
    """A run's status and the worker channel that claimed it."""
    rows = query(stack.cluster, "SELECT status, worker FROM agentapp_run WHERE id = %s", [run_id])
    assert rows, f"no run {run_id}"
    return rows[0]  # type: ignore[return-value]


def stored_answer(stack: WorkerStack, run_id: str) -> tuple[str, bool]:
    """A run's stored assistant text, and whether any of it is marked partial."""
    rows = query(
        stack.cluster,
        "SELECT content, partial FROM agentapp_message WHERE run_id = %s AND role = 'assistant' ORDER BY position",
        [run_id],
    )
    answer = "".join(block.get("text", "") for content, _ in rows for block in content)
    return answer, any(partial for _, partial in rows)


def assert_whole_run(frames: Frames, run_id: str, status: str = "completed") -> None:
    """One run from run_started to run_finished with ``status``, every seq covered once, in order."""
    assert frames[0]["type"] == "run_started" and frames[0]["run_id"] == run_id, frames[0]
    assert frames[-1]["type"] == "run_finished" and frames[-1]["status"] == status, frames[-1]
    assert_contiguous(frames)


### A run on a worker, watched from everywhere ###


@pytest.mark.asyncio
async def test_a_worker_runs_the_prompt_and_the_asker_can_leave_and_come_back(
    stack: WorkerStack, workers: Workers
) -> None:
    workers.start()
    workers.start()
    session, path, _ = conversation(stack, "ada")
    first, second = stack.cluster.servers
    expected = "".join(f"w{n} " for n in range(150))

    async with live_socket(second, path, session) as watcher:
        await watcher.hello()
        async with live_socket(first, path, session) as asker:
            await asker.hello()
            await asker.prompt("Stream 150 tokens")
            seen = await asker.until(lambda f: deltas(f) >= 20)
        run_id = started_id(seen)

        # The asker closed its socket mid-run; the run goes on in the worker, and reopening shows it live.
        async with live_socket(first, path, session) as back:
            hello = await back.hello()
            assert (hello["active_run"] or {}).get("run_id") == run_id, hello
            assert [m for m in hello["messages"] if m["run_id"] == run_id] == []
            replay = await until_finished(back, run_id)
        watched = await until_finished(watcher, run_id)

    for frames in (replay, watched):
        assert_whole_run(of_run(frames, run_id), run_id)
        assert text(frames) == expected
    status, worker = run_row(stack, run_id)
    assert status == "completed"
    assert worker, "the run was not claimed by a worker"
    assert stored_answer(stack, run_id) == (expected, False)


### A worker killed mid-run ###


@pytest.mark.asyncio
async def test_a_killed_worker_s_run_is_ended_and_the_conversation_goes_on(
    stack: WorkerStack, workers: Workers
) -> None:
    doomed = workers.start()
    session, path, conversation_id = conversation(stack, "bo")
    first, second = stack.cluster.servers

    async with live_socket(first, path, session) as asker, live_socket(second, path, session) as watcher:
        await asker.hello()
        await watcher.hello()
        # One calculator call, then a paced answer of 400 tokens (8 s): killed while it streams.
        await asker.prompt("Calculate 15 * 23 and stream 400 tokens")
        seen = await asker.until(lambda f: f[-1]["type"] == "data")
        dead = started_id(seen)
        assert [f["tool_result"]["status"] for f in seen if f["type"] == "tool_result"] == ["success"], seen

        await prompt(asker, "Calculate 6 * 7", if_busy="enqueue")
        seen += await until_queued(asker, "Calculate 6 * 7")
        queued = seen[-1]
        assert queued["position"] == 0 and queued["prompt"] == "Calculate 6 * 7", queued

        # The only worker so far holds the dead run; the survivor starts now, then the other dies.
        survivor = workers.start()
        doomed.kill()
        killed_at = time.monotonic()

        try:
            async with asyncio.timeout(ENDED_WITHIN_SECONDS):
                watched = await until_finished(watcher, dead)
        except TimeoutError:
            pytest.fail(f"the killed worker's run was not ended within {ENDED_WITHIN_SECONDS}s")
        ended_after = time.monotonic() - killed_at
        assert watched[-1]["status"] == "interrupted", watched[-1]
        assert ended_after < ENDED_WITHIN_SECONDS, ended_after

        # The run queued behind the dead one starts on the surviving worker.
        watched = await until_finished(watcher, queued["run_id"])
        assert_whole_run(of_run(watched, queued["run_id"]), queued["run_id"])
        assert "42" in text(watched, queued["run_id"])

        # And the conversation takes the next prompt.
        seen += await until_finished(asker, queued["run_id"])
        await asker.prompt("Calculate 2 + 3")
        started = await until_type(asker, "run_started")
        latest = started[-1]["run_id"]
        answer = started[-1:] + await until_finished(asker, latest)
        assert_whole_run(answer, latest)
        assert "5" in text(answer)
        watched = of_run(await until_finished(watcher, latest), latest)
        assert_whole_run(watched, latest)
        assert text(watched) == text(answer)

    assert survivor.process.poll() is None
    dead_status, dead_worker = run_row(stack, dead)
    assert dead_status == "interrupted"
    for run_id in (queued["run_id"], latest):
        status, worker = run_row(stack, run_id)
        assert status == "completed"
        assert worker and worker != dead_worker, (worker, dead_worker)

    # No tool ran twice: one result per call, one calculator call per run.
    results = query(
        stack.cluster,
        "SELECT run_id::text, tool_use_id, tool_name, status FROM agentapp_toolresult WHERE conversation_id = %s",
        [conversation_id],
    )
    use_ids = [row[1] for row in results]
    assert len(use_ids) == len(set(use_ids)), results
    per_run = sorted((row[0], row[2], row[3]) for row in results)
    assert per_run == sorted((run_id, "calculator", "success") for run_id in (dead, queued["run_id"], latest))
    uses = query(
        stack.cluster,
        "SELECT content FROM agentapp_message WHERE run_id = %s AND role = 'assistant'",
        [dead],
    )
    assert sum(1 for (content,) in uses for block in content if "toolUse" in block) == 1


### A worker told to stop ###


async def exit_code(worker: Any) -> int:
    """The worker's exit status, once it exited on its own."""
    return await eventually(worker.process.poll, lambda code: code is not None, timeout=ENDED_WITHIN_SECONDS)


@pytest.mark.asyncio
async def test_a_worker_told_to_stop_finishes_its_run_takes_no_other_and_exits(
    stack: WorkerStack, workers: Workers
) -> None:
    stopping = workers.start()
    session, path, conversation_id = conversation(stack, "gil")
    first, second = stack.cluster.servers

    async with live_socket(first, path, session) as asker, live_socket(second, path, session) as watcher:
        await asker.hello()
        await watcher.hello()
        await asker.prompt("Stream 150 tokens")
        seen = await asker.until(lambda f: deltas(f) >= 5)
        run_id = started_id(seen)
        stopping.signal()
        await prompt(asker, "Calculate 6 * 7", if_busy="enqueue")
        seen += await until_queued(asker, "Calculate 6 * 7")
        queued = seen[-1]["run_id"]

        watched = await until_finished(watcher, run_id)
        assert_whole_run(of_run(watched, run_id), run_id)
        assert text(watched, run_id) == "".join(f"w{n} " for n in range(150))
        assert await exit_code(stopping) == 0, stopping.output()
        assert run_row(stack, queued)[0] == "queued"  # the stopping worker took no new run

        workers.start()  # another worker takes it
        watched = await until_finished(watcher, queued)
        assert_whole_run(of_run(watched, queued), queued)
        assert "42" in text(watched, queued)

    assert "Traceback" not in stopping.output()
    assert [row[2] for row in runs(stack, conversation_id)] == ["completed", "completed"]


@pytest.mark.asyncio
async def test_a_worker_told_to_stop_twice_cancels_its_run_at_once(stack: WorkerStack, workers: Workers) -> None:
    stopping = workers.start()
    session, path, _ = conversation(stack, "hal")
    first = stack.cluster.servers[0]

    async with live_socket(first, path, session) as asker:
        await asker.hello()
        await asker.prompt("Stream 2000 tokens")  # 40 s at this pace: only the second signal ends it in time
        seen = await asker.until(lambda f: deltas(f) >= 5)
        run_id = started_id(seen)
        stopping.signal()
        # Two signals at once may arrive as one: the second is sent once the worker said it drains.
        await eventually(stopping.output, lambda output: "takes no more runs" in output)
        stopping.signal()
        try:
            async with asyncio.timeout(ENDED_WITHIN_SECONDS):
                seen += await until_finished(asker, run_id)
        except TimeoutError:
            pytest.fail(f"the run was not cancelled within {ENDED_WITHIN_SECONDS}s of the second signal")
        assert seen[-1]["status"] == "cancelled", seen[-1]
        assert_contiguous(of_run(seen, run_id))
        assert await exit_code(stopping) == 0, stopping.output()

    assert run_row(stack, run_id)[0] == "cancelled"
    answer, _ = stored_answer(stack, run_id)
    assert answer and text(seen, run_id).startswith(answer[:20])


### Redis restarted while runs wait ###


@pytest.mark.asyncio
async def test_queued_runs_survive_a_redis_restart(stack: WorkerStack, workers: Workers) -> None:
    first, second = stack.cluster.servers
    conversations = [conversation(stack, "cy"), conversation(stack, "dee")]
    prompts = [["Calculate 1 + 1", "Calculate 2 + 2"], ["Calculate 3 + 3"]]

    # No worker runs: the prompts are stored queued (the second of a conversation enqueued behind the first).
    queued = []
    for (session, path, conversation_id), texts in zip(conversations, prompts, strict=True):
        async with live_socket(first, path, session) as asker:
            await asker.hello()
            for index, prompt_text in enumerate(texts):
                await prompt(asker, prompt_text, if_busy="enqueue" if index else None)
                rows = await stored_runs(stack, conversation_id, index + 1)
        queued.append(rows)
    for rows, texts in zip(queued, prompts, strict=True):
        assert [(prompt_text, status, worker) for _, prompt_text, status, worker in rows] == [
            (prompt_text, "queued", "") for prompt_text in texts
        ]

    stack.redis.restart()  # every doorbell is gone

    sockets = [live_socket(second, path, session) for session, path, _ in conversations]
    async with sockets[0] as one, sockets[1] as two:
        for watcher, rows in zip((one, two), queued, strict=True):
            hello = await watcher.hello()
            assert [item["run_id"] for item in hello.get("queued", [])] == [row[0] for row in rows], hello
        workers.start()
        for watcher, rows in zip((one, two), queued, strict=True):
            for run_id, prompt_text, _, _ in rows:
                frames = of_run(await until_finished(watcher, run_id), run_id)
                assert_whole_run(frames, run_id)
                left, right = prompt_text.removeprefix("Calculate ").split(" + ")
                assert str(int(left) + int(right)) in text(frames)

    for (_, _, conversation_id), rows in zip(conversations, queued, strict=True):
        assert [(run_id, status) for run_id, _, status, _ in runs(stack, conversation_id)] == [
            (row[0], "completed") for row in rows
        ]


### Double texting ###


@pytest.mark.asyncio
async def test_reject_refuses_a_prompt_while_a_worker_runs(stack: WorkerStack, workers: Workers) -> None:
    workers.start()
    workers.start()
    session, path, conversation_id = conversation(stack, "eve")
    first, second = stack.cluster.servers

    async with live_socket(first, path, session) as asker, live_socket(second, path, session) as other:
        await asker.hello()
        await other.hello()
        await asker.prompt("Stream 100 tokens")
        seen = await asker.until(lambda f: deltas(f) >= 5)
        run_id = started_id(seen)
        # From the other process: the setting's default, then the field.
        watched: Frames = []
        for if_busy in (None, "reject"):
            await prompt(other, "Calculate 2 + 2", if_busy=if_busy)
            refused = await until_type(other, "error")
            assert refused[-1]["code"] == "busy", refused[-1]
            assert "run_id" not in refused[-1]
            watched += refused[:-1]
        seen += await until_finished(asker, run_id)
        watched += await until_finished(other, run_id)

    for frames in (seen, watched):
        assert_whole_run(of_run(frames, run_id), run_id)
        assert text(frames) == "".join(f"w{n} " for n in range(100))
    assert [(row[0], row[2]) for row in runs(stack, conversation_id)] == [(run_id, "completed")]


@pytest.mark.asyncio
async def test_enqueue_runs_prompts_in_turn_and_a_queued_one_can_be_cancelled(
    stack: WorkerStack, workers: Workers
) -> None:
    workers.start()
    workers.start()
    session, path, conversation_id = conversation(stack, "fay")
    first, second = stack.cluster.servers

    async with live_socket(first, path, session) as asker, live_socket(second, path, session) as watcher:
        await asker.hello()
        await watcher.hello()
        await asker.prompt("Stream 100 tokens")
        seen = await asker.until(lambda f: deltas(f) >= 5)
        running = started_id(seen)

        await prompt(asker, "Calculate 3 * 3", if_busy="enqueue")
        seen += await until_queued(asker, "Calculate 3 * 3")
        nine = seen[-1]
        await prompt(asker, "Calculate 4 * 4", if_busy="enqueue")
        seen += await until_queued(asker, "Calculate 4 * 4")
        sixteen = seen[-1]
        assert (nine["prompt"], nine["position"]) == ("Calculate 3 * 3", 0)
        assert (sixteen["prompt"], sixteen["position"]) == ("Calculate 4 * 4", 1)

        # The page on the other process shows the queue, and cancels the second queued prompt.
        watched = await until_queued(watcher, "Calculate 4 * 4")
        positions = [
            (f["run_id"], f["position"]) for f in watched if f["type"] == "run_queued" and f["run_id"] != running
        ]
        assert positions == [(nine["run_id"], 0), (sixteen["run_id"], 1)]
        await watcher.connection.send(json.dumps({"type": "cancel", "run_id": sixteen["run_id"]}))
        watched += await until_type(watcher, "run_dequeued")
        assert watched[-1]["run_id"] == sixteen["run_id"] and watched[-1]["reason"] == "cancelled", watched[-1]

        seen += await until_finished(asker, nine["run_id"])
        watched += await until_finished(watcher, nine["run_id"])

    for frames in (seen, watched):
        assert_whole_run(of_run(frames, running), running)
        assert text(frames, running) == "".join(f"w{n} " for n in range(100))
        assert_whole_run(of_run(frames, nine["run_id"]), nine["run_id"])
        assert "9" in text(frames, nine["run_id"])
        assert of_run(frames, sixteen["run_id"]) == []
        # The queued run started only after the first ended.
        order = [(f["type"], f["run_id"]) for f in frames if f["type"] in ("run_started", "run_finished")]
        assert order == [
            ("run_started", running),
            ("run_finished", running),
            ("run_started", nine["run_id"]),
            ("run_finished", nine["run_id"]),
        ]
    rows = {row[0]: row[2] for row in runs(stack, conversation_id)}
    assert rows[running] == rows[nine["run_id"]] == "completed"
    assert rows.get(sixteen["run_id"]) in (None, "cancelled"), rows


@pytest.mark.asyncio
async def test_interrupt_cancels_the_worker_s_run_and_starts_the_new_prompt(
    stack: WorkerStack, workers: Workers
) -> None:
    workers.start()
    workers.start()
    session, path, conversation_id = conversation(stack, "gus")
    first, second = stack.cluster.servers

    async with live_socket(first, path, session) as asker, live_socket(second, path, session) as other:
        await asker.hello()
        await other.hello()
        await asker.prompt("Stream 400 tokens")
        seen = await asker.until(lambda f: deltas(f) >= 5)
        running = started_id(seen)

        # From the other process, whose web process does not hold the run: it must reach the worker.
        await prompt(other, "Calculate 5 * 5", if_busy="interrupt")
        seen += await until_finished(asker, running)
        assert seen[-1]["status"] == "cancelled", seen[-1]
        started = await until_type(asker, "run_started")
        newer = started[-1]["run_id"]
        seen += started + await until_finished(asker, newer)
        watched = await until_finished(other, newer)

    cut = of_run(seen, running)
    assert_whole_run(cut, running, status="cancelled")
    assert deltas(cut) < 400
    answer = of_run(seen, newer)
    assert_whole_run(answer, newer)
    assert answer[0]["prompt"] == "Calculate 5 * 5" and "25" in text(answer)
    assert_whole_run(of_run(watched, running), running, status="cancelled")
    assert_whole_run(of_run(watched, newer), newer)
    assert text(watched, newer) == text(answer)
    assert [(row[0], row[2]) for row in runs(stack, conversation_id)] == [(running, "cancelled"), (newer, "completed")]
