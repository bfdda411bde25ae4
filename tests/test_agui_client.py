"""The real ``@ag-ui/client`` (npm, pinned in tests/agui_client) runs ``HttpAgent`` against a live daphne.

tests/agui_client/run.mjs runs a calculator prompt on a new thread, a second prompt on that thread, and a streamed
prompt it aborts; the client's own schema validation and event verification check every event, and any warning it
prints fails the test. The site is the example site in demo mode (anonymous, session cookie and CSRF token).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.livedaphne import LiveDaphne, live_daphne
from tests.livesettings import agentapp_settings

pytestmark = pytest.mark.slow

CLIENT_DIR = Path(__file__).resolve().parent / "agui_client"
NPM_TIMEOUT = 300
RUN_TIMEOUT = 120


@pytest.fixture(scope="session")
def agui_client() -> Path:
    """The client's directory with its pinned packages installed (``npm ci`` on a fresh clone)."""
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        pytest.fail("node and npm are needed to run the AG-UI client test")
    if not (CLIENT_DIR / "node_modules" / "@ag-ui" / "client").is_dir():
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=CLIENT_DIR,
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT,
            check=False,
        )
        if done.returncode != 0:
            pytest.fail(f"npm ci failed:\n{done.stdout}\n{done.stderr}")
    return CLIENT_DIR


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveDaphne]:
    with live_daphne(tmp_path_factory.mktemp("agui-client"), {"AGENTAPP_OFFLINE_TPS": "300"}) as live:
        yield live
    output = live.output()
    assert "Traceback" not in output and " ERROR " not in output, output


@pytest.fixture(scope="module")
def approving_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveDaphne]:
    """The example site where every calculator call waits for a human's approval."""
    tmp_dir = tmp_path_factory.mktemp("agui-approval")
    env = {"AGENTAPP_OFFLINE_TPS": "300", **agentapp_settings(tmp_dir, APPROVAL_TOOLS=["calculator"])}
    with live_daphne(tmp_dir, env) as live:
        yield live
    output = live.output()
    assert "Traceback" not in output and " ERROR " not in output, output


# How long a hung-up run may take to be cancelled and stored.
SETTLE_SECONDS = 10


def run_client(client_dir: Path, server: LiveDaphne, scenario: str = "chat") -> dict[str, Any]:
    done = subprocess.run(
        [shutil.which("node") or "node", "run.mjs", server.url, scenario],
        cwd=client_dir,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{server.output()}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def settled(api: httpx.Client, path: str) -> dict[str, Any]:
    """The conversation at ``path`` once none of its runs is running (a deadline-bounded poll of the API)."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        conversation = api.get(path).json()
        if all(run["status"] != "running" for run in conversation["runs"]) or time.monotonic() > deadline:
            return conversation
        time.sleep(0.05)  # poll interval, not synchronization: the loop re-checks the condition


def kinds(events: list[dict[str, Any]]) -> list[str]:
    return [event["type"] for event in events]


def text_of(events: list[dict[str, Any]]) -> str:
    return "".join(event["delta"] for event in events if event["type"] == "TEXT_MESSAGE_CONTENT")


def test_http_agent_streams_tool_using_answers_and_its_runs_are_saved(agui_client: Path, server: LiveDaphne) -> None:
    seen = run_client(agui_client, server)
    assert seen["warnings"] == []  # the client's validation stripped or refused nothing

    first, second, aborted = seen["first"], seen["second"], seen["aborted"]
    assert first["failed"] is None and second["failed"] is None
    events = first["events"]
    assert kinds(events)[:2] == ["RUN_STARTED", "MESSAGES_SNAPSHOT"] and kinds(events)[-1] == "RUN_FINISHED"
    assert events[0]["threadId"] == seen["threadId"] and events[-1]["outcome"] == {"type": "success"}
    calls = [event for event in events if event["type"].startswith("TOOL_CALL")]
    assert kinds(calls) == ["TOOL_CALL_START", "TOOL_CALL_ARGS", "TOOL_CALL_END", "TOOL_CALL_RESULT"]
    assert calls[0]["toolCallName"] == "calculator" and json.loads(calls[1]["delta"]) == {"expression": "2+3"}
    assert calls[3]["content"] == "5"
    assert text_of(events) == "2+3 = 5."
    # The client built its messages from the events: the prompt, the tool call, its result and the answer.
    messages = first["messages"]
    assert [message["role"] for message in messages] == ["user", "assistant", "tool", "assistant"]
    assert messages[1]["toolCalls"][0]["function"]["name"] == "calculator"
    assert (messages[2]["content"], messages[3]["content"]) == ("5", "2+3 = 5.")

    # The second run continues the thread: the snapshot holds the stored first turn, then two calculator calls.
    events = second["events"]
    snapshot = events[1]["messages"]
    assert [message["role"] for message in snapshot] == ["user", "assistant", "tool", "assistant", "user"]
    assert snapshot[0]["content"] == "What is 2+3?" and snapshot[-1]["content"] == "Multiply 6 by 7, then add 10"
    assert [event["content"] for event in events if event["type"] == "TOOL_CALL_RESULT"] == ["42", "52"]
    assert text_of(events) == "6 * 7 = 42, then 42 + 10 = 52."

    # Aborting the request (the client hanging up) cancelled the run; what streamed before is saved.
    assert kinds(aborted["events"])[:2] == ["RUN_STARTED", "MESSAGES_SNAPSHOT"] and text_of(aborted["events"])
    cookies = {"sessionid": seen["session"]}
    with httpx.Client(base_url=server.url, cookies=cookies, timeout=10) as api:
        # The server learns of the hang-up and cancels at the run's next safe point: look until the run has ended.
        stopped = settled(api, f"/api/conversations/{aborted['events'][0]['threadId']}/")
        thread = api.get(f"/api/conversations/{seen['threadId']}/").json()
    assert [run["status"] for run in stopped["runs"]] == ["cancelled"]
    assert sorted(run["status"] for run in thread["runs"]) == ["completed", "completed"]
    results = [result for message in thread["messages"] for result in message["tool_results"]]
    assert [(r["tool_name"], r["status"], r["content"]) for r in results] == [
        ("calculator", "success", [{"text": "5"}]),
        ("calculator", "success", [{"text": "42"}]),
        ("calculator", "success", [{"text": "52"}]),
    ]


def test_an_approval_is_an_interrupt_the_client_resumes(agui_client: Path, approving_server: LiveDaphne) -> None:
    seen = run_client(agui_client, approving_server, "approval")
    assert seen["warnings"] == []
    paused, resumed = seen["paused"], seen["resumed"]
    assert paused["failed"] is None and resumed["failed"] is None
    outcome = paused["events"][-1]["outcome"]
    assert outcome["type"] == "interrupt" and seen["pending"] == outcome["interrupts"]  # the client holds them
    (interrupt,) = outcome["interrupts"]
    assert (interrupt["reason"], interrupt["metadata"]["agentapp"]) == (
        "tool_call",
        {"tool": "calculator", "input": {"expression": "2+3"}},
    )
    events = resumed["events"]
    assert events[0]["threadId"] == seen["threadId"] and events[-1]["outcome"] == {"type": "success"}
    results = [event for event in events if event["type"] == "TOOL_CALL_RESULT"]
    assert [(r["toolCallId"], r["content"]) for r in results] == [(interrupt["toolCallId"], "5")]
    assert text_of(events) == "2+3 = 5."


def test_a_frontend_tool_is_run_by_the_client_and_its_result_stored(agui_client: Path, server: LiveDaphne) -> None:
    seen = run_client(agui_client, server, "frontend")
    assert seen["warnings"] == []
    asked, continued = seen["asked"], seen["continued"]
    assert asked["failed"] is None and continued["failed"] is None
    calls = [event for event in asked["events"] if event["type"].startswith("TOOL_CALL")]
    assert kinds(calls) == ["TOOL_CALL_START", "TOOL_CALL_ARGS", "TOOL_CALL_END"]
    assert asked["events"][-1]["outcome"] == {"type": "success"}
    (ran,) = seen["ran"]  # the client found the call without a result in its messages, and ran it
    assert (ran["id"], ran["name"], ran["content"]) == (
        calls[0]["toolCallId"],
        "change_background",
        "The background is blue.",
    )

    events = continued["events"]
    results = [event for event in events if event["type"] == "TOOL_CALL_RESULT"]
    assert [(r["toolCallId"], r["content"]) for r in results] == [(ran["id"], "The background is blue.")]
    assert text_of(events) == "change_background returned: The background is blue."
    assert [message["role"] for message in continued["messages"]] == ["user", "assistant", "tool", "assistant"]
    with httpx.Client(base_url=server.url, cookies={"sessionid": seen["session"]}, timeout=10) as api:
        thread = api.get(f"/api/conversations/{seen['threadId']}/").json()
    # The result is stored as the server's own tools' results are: a ToolResult row of the result's message.
    stored = [
        (message["role"], result["tool_name"], result["status"], result["content"])
        for message in thread["messages"]
        for result in message["tool_results"]
    ]
    assert stored == [("user", "change_background", "success", [{"text": "The background is blue."}])]


def test_a_client_joins_a_run_in_progress_and_a_thread_at_rest(agui_client: Path, server: LiveDaphne) -> None:
    seen = run_client(agui_client, server, "reconnect")
    assert seen["warnings"] == []
    asked, joined, rest = seen["asked"], seen["joined"], seen["rest"]
    assert asked["failed"] is None
    run_id = asked["events"][0]["metadata"]["agentapp"]["run_id"]
    events = joined["events"]
    assert kinds(events)[:3] == ["RUN_STARTED", "MESSAGES_SNAPSHOT", "STATE_SNAPSHOT"]
    assert events[0]["runId"] == run_id and events[-1]["type"] == "RUN_FINISHED"
    assert len(text_of(asked["events"]).split()) == 1000 and text_of(events) == text_of(asked["events"])
    assert [message["role"] for message in joined["messages"]] == ["user", "assistant"]

    assert kinds(rest["events"]) == ["RUN_STARTED", "MESSAGES_SNAPSHOT", "STATE_SNAPSHOT", "RUN_FINISHED"]
    contents = [(message["role"], message.get("content")) for message in joined["messages"]]
    assert [(message["role"], message.get("content")) for message in rest["messages"]] == contents
    assert rest["state"] == {}
