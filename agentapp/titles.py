"""Conversation titles: a checked rename told to every open page, and the optional title generator hook.

A rename (``PATCH`` on the API) is made storable, bounded and broadcast to the conversation's group as a ``title``
frame. With ``TITLE_GENERATOR`` set, a conversation's first completed run is followed by a task, outside the run's
stream, that asks the generator for a title; it replaces the automatic title (the first prompt's start) unless a
user renamed the conversation meanwhile. A failing generator is logged and changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from typing import Any

from asgiref.sync import async_to_sync, sync_to_async
from django.db import connection, transaction
from django.utils import timezone
from django.utils.module_loading import import_string

from . import protocol
from .broadcast import tell_group
from .conf import app_settings
from .messages import title_message
from .models import Conversation, Message, Run
from .recorder import TITLE_CHARS
from .storable import storable_text

logger = logging.getLogger(__name__)

TITLE_MAX_CHARS: int = Conversation._meta.get_field("title").max_length  # type: ignore[assignment]
TITLE = protocol.TITLE  # the frame a connection gets for a new title: {"type": "title", "conversation_id", "title"}
ERR_INVALID_TITLE = "invalid_title"
# Words of the prompt the offline generator keeps.
OFFLINE_TITLE_WORDS = 6

_SPACE = re.compile(r"\s+")
_WORD = re.compile(r"[^\W_]+(?:['\u2019.-][^\W_]+)*")
# Background title tasks, kept referenced until they end (the event loop holds only weak references).
_tasks: set[asyncio.Task[Any]] = set()


class TitleError(ValueError):
    """A title that cannot be set; ``message`` says why."""

    code = ERR_INVALID_TITLE

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def normalize(text: str) -> str:
    """``text`` made storable, with runs of whitespace (newlines too) as one space and no space at either end."""
    return _SPACE.sub(" ", storable_text(text)).strip()


def clean_title(value: Any) -> str:
    """A title given by a user: a non-blank string of at most ``TITLE_MAX_CHARS`` once normalized, or TitleError."""
    if not isinstance(value, str):
        raise TitleError("title must be a string.")
    title = normalize(value)
    if not title:
        raise TitleError("title must not be blank.")
    if len(title) > TITLE_MAX_CHARS:
        raise TitleError(f"title must be at most {TITLE_MAX_CHARS} characters.")
    return title


### Renaming ###


def title_frame(conversation_id: Any, title: str) -> dict[str, Any]:
    """The ``title`` frame open connections get when the conversation is renamed."""
    return {"type": TITLE, "conversation_id": str(conversation_id), "title": title}


def rename(conversation: Conversation, title: str) -> None:
    """Give the conversation a (clean) title and, once committed, tell its open connections."""
    conversation.title = title
    conversation.updated_at = timezone.now()
    Conversation.objects.filter(pk=conversation.pk).update(title=title, updated_at=conversation.updated_at)
    transaction.on_commit(lambda: async_to_sync(announce)(conversation.pk, title))


async def announce(conversation_id: Any, title: str) -> None:
    """Send the new title to the conversation's group; a layer that fails is logged (the title is saved anyway)."""
    message = title_message(title_frame(conversation_id, title))
    await tell_group(conversation_id, message, "a new title")


### The generator hook ###


def offline_title(conversation: Conversation, first_prompt: str, first_answer: str) -> str:
    """A deterministic title from the first prompt's first words (the answer is not used), for the offline model."""
    words = _WORD.findall(first_prompt)[:OFFLINE_TITLE_WORDS]
    title = " ".join(words) or "Conversation"
    return title[:1].upper() + title[1:]


def generator() -> Callable[[Conversation, str, str], str] | None:
    """The callable ``TITLE_GENERATOR`` names, or None when it is not set."""
    path = app_settings.TITLE_GENERATOR
    return import_string(path) if path else None


def _text(content: Any) -> str:
    return "\n".join(
        block["text"] for block in content or [] if isinstance(block, dict) and isinstance(block.get("text"), str)
    )


def generate_title(conversation_id: Any, run_id: Any) -> str | None:
    """Ask the generator for a title after the conversation's first answer; the title set, or None (nothing done).

    The title is written only over the automatic one, so a user's rename (before or during the call) wins.
    """
    try:
        make = generator()
        conversation = Conversation.objects.filter(pk=conversation_id).first()
        run = Run.objects.filter(pk=run_id, conversation_id=conversation_id).first()
        if make is None or conversation is None or run is None:
            return None
        earlier = Run.objects.filter(conversation_id=conversation_id, status=Run.Status.COMPLETED)
        if earlier.exclude(pk__in=[run.pk, run.resumed_from_id]).filter(started_at__lte=run.started_at).exists():
            return None  # not the first answer
        first = Run.objects.filter(conversation_id=conversation_id).order_by("started_at").first()
        prompt = first.prompt if first is not None else run.prompt
        answer = Message.objects.filter(run=run, role=Message.Role.ASSISTANT).order_by("-position").first()
        made = make(conversation, prompt, _text(answer.content) if answer is not None else "")
        title = normalize(made)[:TITLE_MAX_CHARS].strip() if isinstance(made, str) else ""
        if not title:
            return None
        if not Conversation.objects.filter(pk=conversation_id, title__in=automatic_titles(prompt)).update(title=title):
            return None  # renamed by a user meanwhile
        return title
    except Exception:
        logger.exception("agentapp: the title generator failed for %s", conversation_id)
        return None


def automatic_titles(prompt: str) -> list[str]:
    """The titles a conversation has before anyone renames it: none yet, or the recorder's cut of its first prompt."""
    return ["", prompt[:TITLE_CHARS]]


def _generate_in_own_thread(conversation_id: str, run_id: str) -> str | None:
    """``generate_title`` in a worker thread of its own (a slow generator holds up no query), closing its connection."""
    try:
        return generate_title(conversation_id, run_id)
    finally:
        connection.close()


async def _generate_and_announce(conversation_id: str, run_id: str) -> None:
    title = await sync_to_async(_generate_in_own_thread, thread_sensitive=False)(conversation_id, run_id)
    if title:
        await announce(conversation_id, title)


def after_run(conversation_id: str, run_id: str, status: str) -> asyncio.Task[None] | None:
    """After a run ended ``status``: start the title task when a generator is set and the run completed."""
    if status != Run.Status.COMPLETED or not app_settings.TITLE_GENERATOR:
        return None
    task = asyncio.create_task(_generate_and_announce(conversation_id, run_id), name=f"agentapp-title-{run_id}")
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return task


def pending() -> set[asyncio.Task[None]]:
    """The title tasks still running (a test or a shutdown may wait for them)."""
    return set(_tasks)
