"""An attached image and document reach Bedrock's ConverseStream request as Bedrock expects them."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from agentapp import attachments, protocol
from agentapp.models import Conversation
from tests import attachment_files as files
from tests.test_bedrock_wire import aws_env, bedrock, fake, user  # noqa: F401  (fixtures)
from tests.wsclient import Client


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_image_block_reaches_converse_stream(bedrock, user, settings: Any, tmp_path: Path):  # noqa: F811
    settings.MEDIA_ROOT = str(tmp_path / "media")

    @sync_to_async
    def prepared() -> tuple[str, list[dict[str, Any]]]:
        conversation = Conversation.objects.create(owner=user)
        stored = [
            attachments.store(conversation, user, "", "cat.png", files.png(4, 3)),
            attachments.store(conversation, user, "", "notes.md", b"# Notes\nTwo plus two.\n"),
        ]
        return str(conversation.pk), [attachments.reference(attachment) for attachment in stored]

    conversation_id, refs = await prepared()
    client = Client(f"/ws/agent/{conversation_id}/", user=user)
    await client.hello()
    await client.send({"type": "prompt", "prompt": "What is 2+2?", "attachments": [ref["id"] for ref in refs]})
    frames = await client.until_finished()
    await client.close()
    assert frames[-1]["status"] == protocol.STATUS_COMPLETED, frames
    first = bedrock.requests[0]["body"]["messages"][0]
    assert first["role"] == "user"
    assert first["content"][0] == {"text": "What is 2+2?"}
    image = first["content"][1]["image"]
    assert image["format"] == "png"
    assert base64.b64decode(image["source"]["bytes"]) == files.png(4, 3)
    document = first["content"][2]["document"]
    assert (document["format"], document["name"]) == ("md", "notes")
    assert base64.b64decode(document["source"]["bytes"]) == b"# Notes\nTwo plus two.\n"
    # The tool round after it sends the history again: the blocks are still there, read back from the store.
    again = bedrock.requests[-1]["body"]["messages"][0]["content"]
    assert base64.b64decode(again[1]["image"]["source"]["bytes"]) == files.png(4, 3)
