"""Who may open which conversation: the one authorization check every entry point goes through."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ValidationError

from .conf import app_settings
from .models import Conversation
from .protocol import (
    CLOSE_FORBIDDEN,
    CLOSE_LOGIN_REQUIRED,
    CLOSE_NOT_FOUND,
    ERR_FORBIDDEN,
    ERR_LOGIN_REQUIRED,
    ERR_NOT_FOUND,
)


@dataclass(frozen=True)
class Denied:
    """Why a connection is refused: the error code for the frame and the WebSocket close code."""

    code: str
    close_code: int
    message: str


LOGIN_REQUIRED = Denied(ERR_LOGIN_REQUIRED, CLOSE_LOGIN_REQUIRED, "Log in to talk to the agent.")
NOT_FOUND = Denied(ERR_NOT_FOUND, CLOSE_NOT_FOUND, "No such conversation.")
FORBIDDEN = Denied(ERR_FORBIDDEN, CLOSE_FORBIDDEN, "You may not open this conversation.")


def is_authenticated(user: Any) -> bool:
    """True for a logged-in user (AnonymousUser and a missing user are not)."""
    return bool(user is not None and getattr(user, "is_authenticated", False))


def may_open(conversation: Conversation, user: Any, session_key: str | None) -> bool:
    """The owner opens their conversation; an anonymous owner is its Django session."""
    if is_authenticated(user):
        return conversation.owner_id == user.pk
    return conversation.owner_id is None and bool(session_key) and conversation.session_key == session_key


def open_conversation(user: Any, session_key: str | None, conversation_id: Any | None) -> Conversation | Denied:
    """Fetch (or create, when no id is given) the conversation this user may use, or say why not."""
    if not is_authenticated(user) and not app_settings.ALLOW_ANONYMOUS:
        return LOGIN_REQUIRED
    if not is_authenticated(user) and not session_key:
        return LOGIN_REQUIRED
    if conversation_id is None:
        if is_authenticated(user):
            return Conversation.objects.create(owner=user)
        return Conversation.objects.create(session_key=session_key or "")
    try:
        conversation = Conversation.objects.get(pk=conversation_id)
    except (Conversation.DoesNotExist, ValidationError, ValueError):
        return NOT_FOUND
    if not may_open(conversation, user, session_key):
        return FORBIDDEN
    return conversation
