"""A prompt with attachments over a real socket: the model gets image and document blocks, the store references."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from strands import Agent

from agentapp import attachments, protocol
from agentapp.history import load_messages
from agentapp.models import Attachment, Conversation, Message, Run
from agentapp.offline_model import OfflineModel
from tests import attachment_files as files
from tests.wsclient import Client, streamed_text

# Every ``messages`` list a RecordingModel was called with, oldest first.
MODEL_CALLS: list[list[dict[str, Any]]] = []


class RecordingModel(OfflineModel):
    """The offline model, keeping a copy of what it is given on each call."""

    def stream(self, messages: Any, *args: Any, **kwargs: Any) -> Any:
        MODEL_CALLS.append(copy.deepcopy(messages))
        return super().stream(messages, *args, **kwargs)


def recording_factory(conversation: Any, user: Any) -> Agent:
    return Agent(model=RecordingModel(), callback_handler=None)


@pytest.fixture
def setup(settings: Any, tmp_path: Path) -> Path:
    settings.MEDIA_ROOT = str(tmp_path / "media")
    settings.AGENTAPP = {
        **getattr(settings, "AGENTAPP", {}),
        "AGENT_FACTORY": "tests.test_attachments_ws.recording_factory",
        "OFFLINE_TOKENS_PER_SECOND": 0,
    }
    MODEL_CALLS.clear()
    return tmp_path / "media"


@pytest.fixture
def people(db: Any) -> dict[str, Any]:
    make = get_user_model().objects.create_user
    return {name: make(name, password="x") for name in ("owner", "stranger")}


@sync_to_async
def uploaded(conversation_id: str, user: Any, name: str, data: bytes) -> dict[str, Any]:
    conversation = Conversation.objects.get(pk=conversation_id)
    return attachments.reference(attachments.store(conversation, user, "", name, data))


@sync_to_async
def new_conversation(user: Any) -> str:
    return str(Conversation.objects.create(owner=user).pk)


@sync_to_async
def rows(conversation_id: str) -> list[dict[str, Any]]:
    return list(Message.objects.filter(conversation_id=conversation_id).order_by("position").values())


def of_type(frames: list[dict[str, Any]], frame_type: str) -> list[dict[str, Any]]:
    return [frame for frame in frames if frame["type"] == frame_type]


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_prompt_with_image_and_pdf(setup, people):
    owner = people["owner"]
    conversation_id = await new_conversation(owner)
    image = await uploaded(conversation_id, owner, "cat.png", files.png(4, 3))
    document = await uploaded(conversation_id, owner, "Q3 report (final).pdf", files.PDF)
    client = Client(f"/ws/agent/{conversation_id}/", user=owner)
    await client.hello()
    await client.send({"type": "prompt", "prompt": "What are these?", "attachments": [image["id"], document["id"]]})
    frames = await client.until_finished()
    [started] = of_type(frames, protocol.RUN_STARTED)
    assert started["attachments"] == [image, document]
    assert image["url"] == f"/api/attachments/{image['id']}/"
    text = streamed_text(frames)
    assert f"an image (png, {len(files.png(4, 3))} bytes, 4x3 pixels)" in text
    assert f'a document "Q3 report (final)" (pdf, {len(files.PDF)} bytes)' in text
    assert frames[-1]["status"] == protocol.STATUS_COMPLETED
    # The model was given the bytes as Strands blocks, next to the text.
    given = MODEL_CALLS[0][-1]["content"]
    assert given[0] == {"text": "What are these?"}
    assert given[1] == {"image": {"format": "png", "source": {"bytes": files.png(4, 3)}}}
    assert given[2] == {"document": {"format": "pdf", "name": "Q3 report (final)", "source": {"bytes": files.PDF}}}
    # The store keeps references, never bytes; the wire never carried bytes either.
    stored = await rows(conversation_id)
    assert stored[0]["content"] == [
        {"text": "What are these?"},
        {"attachment": image},
        {"attachment": document},
    ]
    assert "__agentapp_bytes__" not in json.dumps([row["content"] for row in stored])
    assert all('"bytes"' not in raw for raw in client.raw)
    await client.close()

    # Reconnect: the history shows them; the next prompt gives the model the files again.
    again = Client(f"/ws/agent/{conversation_id}/", user=owner)
    hello = await again.hello()
    assert hello["messages"][0]["content"][1:] == [{"attachment": image}, {"attachment": document}]
    await again.prompt("And now?")
    frames = await again.until_finished()
    assert frames[-1]["status"] == protocol.STATUS_COMPLETED
    assert "I was given" not in streamed_text(frames)  # it describes the files of the prompt that carried them
    history = MODEL_CALLS[-1]
    assert history[0]["content"][1] == {"image": {"format": "png", "source": {"bytes": files.png(4, 3)}}}
    assert history[0]["content"][2]["document"]["source"]["bytes"] == files.PDF
    await again.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_history_says_when_a_file_is_gone(setup, people):
    owner = people["owner"]
    conversation_id = await new_conversation(owner)
    image = await uploaded(conversation_id, owner, "cat.png", files.png())
    client = Client(f"/ws/agent/{conversation_id}/", user=owner)
    await client.hello()
    await client.send({"type": "prompt", "prompt": "Look", "attachments": [image["id"]]})
    await client.until_finished()
    await client.close()
    await sync_to_async(lambda: Attachment.objects.get(pk=image["id"]).delete())()
    history = await sync_to_async(load_messages)(conversation_id)
    assert history[0]["content"] == [{"text": "Look"}, {"text": "[Attachment cat.png is no longer available.]"}]


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_stranger_cannot_attach_anothers_file(setup, people):
    owner_conversation = await new_conversation(people["owner"])
    image = await uploaded(owner_conversation, people["owner"], "cat.png", files.png())
    stranger_conversation = await new_conversation(people["stranger"])
    client = Client(f"/ws/agent/{stranger_conversation}/", user=people["stranger"])
    await client.hello()
    await client.send({"type": "prompt", "prompt": "Whose cat?", "attachments": [image["id"]]})
    error = await client.receive()
    assert error["type"] == protocol.ERROR and error["code"] == protocol.ERR_UNKNOWN_ATTACHMENT, error
    await client.close()
    assert not await Run.objects.filter(conversation_id=stranger_conversation).aexists()
    assert not await Message.objects.filter(conversation_id=stranger_conversation).aexists()
    assert MODEL_CALLS == []


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("ids", "code"),
    [
        (["not-a-uuid"], protocol.ERR_INVALID_FRAME),
        ("one", protocol.ERR_INVALID_FRAME),
        ([f"00000000-0000-4000-8000-00000000000{n}" for n in range(6)], protocol.ERR_TOO_MANY_ATTACHMENTS),
        (["00000000-0000-4000-8000-000000000000"], protocol.ERR_UNKNOWN_ATTACHMENT),
    ],
)
async def test_bad_attachment_lists_are_refused(setup, people, ids, code):
    conversation_id = await new_conversation(people["owner"])
    client = Client(f"/ws/agent/{conversation_id}/", user=people["owner"])
    await client.hello()
    await client.send({"type": "prompt", "prompt": "Hi", "attachments": ids})
    error = await client.receive()
    assert error["type"] == protocol.ERROR and error["code"] == code, error
    assert error["message"]
    await client.close()
    assert not await Run.objects.filter(conversation_id=conversation_id).aexists()
