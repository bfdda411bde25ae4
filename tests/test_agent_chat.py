"""The agent_chat management command streams a run in the terminal, saves it, and ends cleanly on Ctrl-C.

Ctrl-C asks the run to stop at Strands' next safe point: it is saved ``cancelled`` with its partial text.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from agentapp.models import Conversation, Message, Run, ToolResult
from tests.livedaphne import ROOT, manage, own_database, server_env

# How long the interrupted command may take to start, stream and stop (a hang fails the test, it is not timed).
COMMAND_TIMEOUT = 60
PROMPT = "Tell me everything you can do, slowly."

# Run by ``manage.py shell`` after the interrupted command: what it saved.
SAVED_SCRIPT = """
import json
from agentapp.models import Conversation, Message, Run
run = Run.objects.get()
print(json.dumps({
    "status": run.status,
    "owner": Conversation.objects.get().owner.username,
    "partial": list(Message.objects.filter(role="assistant").values_list("partial", flat=True)),
}))
"""


@pytest.mark.django_db(transaction=True)
def test_agent_chat_streams_and_saves(offline_instant):
    ada = get_user_model().objects.create_user("ada")
    out = StringIO()
    call_command("agent_chat", "Calculate 15 * 23 and then add 100", "--user", "ada", stdout=out)
    text = out.getvalue()
    assert "[tool] calculator {'expression': '15 * 23'}" in text
    assert "[success] calculator: 445" in text
    assert "[run completed] stop reason: end_turn" in text
    run = Run.objects.get()
    assert run.status == Run.Status.COMPLETED
    assert run.conversation.owner == ada
    assert list(ToolResult.objects.values_list("status", flat=True)) == ["success", "success"]


@pytest.mark.django_db(transaction=True)
def test_agent_chat_continues_a_conversation_with_json_frames(offline_instant):
    ada = get_user_model().objects.create_user("ada")
    call_command("agent_chat", "Calculate 2+2", "--user", "ada", stdout=StringIO())
    conversation = Conversation.objects.get()
    out = StringIO()
    call_command("agent_chat", "Hello", "--conversation", str(conversation.pk), "--json", stdout=out)
    frames = [json.loads(line) for line in out.getvalue().splitlines()]
    assert frames[0]["type"] == "run_started"
    assert frames[-1] == {**frames[-1], "type": "run_finished", "status": "completed"}
    assert [frame["seq"] for frame in frames] == list(range(len(frames)))
    assert list(Run.objects.filter(conversation=conversation).values_list("user_id", flat=True)) == [ada.pk] * 2
    roles = list(Message.objects.filter(conversation=conversation).values_list("role", flat=True))
    assert roles == ["user", "assistant", "user", "assistant", "user", "assistant"]


@pytest.mark.django_db(transaction=True)
def test_agent_chat_refuses_unknown_conversation(offline_instant):
    with pytest.raises(CommandError, match="No conversation"):
        call_command("agent_chat", "Hello", "--conversation", "00000000-0000-0000-0000-000000000000")


@pytest.mark.django_db(transaction=True)
def test_agent_chat_refuses_an_ownerless_conversation_unless_asked(offline_instant):
    with pytest.raises(CommandError, match="--user USERNAME"):
        call_command("agent_chat", "Calculate 2+2", stdout=StringIO())
    assert not Conversation.objects.exists()
    with pytest.raises(CommandError, match="No user 'nobody'"):
        call_command("agent_chat", "Calculate 2+2", "--user", "nobody", stdout=StringIO())
    assert not Conversation.objects.exists()

    call_command("agent_chat", "Calculate 2+2", "--no-owner", stdout=StringIO())
    assert Conversation.objects.get().owner is None
    assert Run.objects.get().status == Run.Status.COMPLETED


def test_ctrl_c_saves_the_run_and_exits_130_without_a_traceback(tmp_path: Path) -> None:
    with own_database(tmp_path) as database_url:
        # A slow offline model, so the run is still streaming when the signal comes.
        environment = server_env(database_url, {"AGENTAPP_OFFLINE_TPS": "4"})
        manage(environment, "migrate", "--noinput")
        manage(
            environment,
            "shell",
            "-c",
            "from django.contrib.auth import get_user_model as g; g().objects.create_user('ada')",
        )
        command = subprocess.Popen(
            [sys.executable, "manage.py", "agent_chat", PROMPT, "--user", "ada"],
            cwd=ROOT,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert command.stdout is not None
            started = command.stdout.readline().decode()
            assert started.startswith("conversation "), started
            first_text = command.stdout.read1(1)  # the first streamed text: the run is stored and under way
            assert first_text, "the command ended before streaming any text"
            command.send_signal(signal.SIGINT)
            rest, errors = command.communicate(timeout=COMMAND_TIMEOUT)
        finally:
            if command.poll() is None:
                command.kill()
                command.wait(timeout=COMMAND_TIMEOUT)
        error_text = errors.decode()
        assert command.returncode == 130, (command.returncode, error_text)
        assert "Traceback" not in error_text and "KeyboardInterrupt" not in error_text, error_text
        assert error_text.strip().splitlines() == [error_text.strip()], error_text
        assert "Interrupted: run " in error_text and "saved as cancelled" in error_text, error_text
        assert "Traceback" not in rest.decode()

        saved = json.loads(manage(environment, "shell", "-c", SAVED_SCRIPT).strip().splitlines()[-1])
    assert saved["status"] == Run.Status.CANCELLED
    assert saved["owner"] == "ada"
    assert saved["partial"] == [True], "the text streamed before Ctrl-C is saved, marked partial"


@pytest.mark.django_db(transaction=True)
def test_agent_chat_runs_a_swarm_node_by_node(offline_instant, settings):
    settings.AGENTAPP = {**settings.AGENTAPP, "AGENT_FACTORY": "tests.multiagent_agents.swarm"}
    get_user_model().objects.create_user("ada")
    out = StringIO()
    call_command("agent_chat", "Hand off to writer", "--user", "ada", "--json", stdout=out)
    frames = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [frame["node"] for frame in frames if frame["type"] == "node_started"] == ["researcher", "writer"]
    assert frames[-1]["type"] == "run_finished" and frames[-1]["status"] == "completed"
    run = Run.objects.get()
    assert list(run.steps.values_list("node_id", flat=True)) == ["researcher", "writer"]
