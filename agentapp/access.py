"""Who may open which conversation: the one authorization check every entry point goes through."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ValidationError

from .conf import app_settings
from .models import Conversation, ConversationMember
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


@dataclass(frozen=True)
class Opened:
    """A conversation the user may use, and their role in it."""

    conversation: Conversation
    role: str


# The owner's role; members and viewers are ``ConversationMember.Role`` values.
OWNER = "owner"

LOGIN_REQUIRED = Denied(ERR_LOGIN_REQUIRED, CLOSE_LOGIN_REQUIRED, "Log in to talk to the agent.")
NOT_FOUND = Denied(ERR_NOT_FOUND, CLOSE_NOT_FOUND, "No such conversation.")
FORBIDDEN = Denied(ERR_FORBIDDEN, CLOSE_FORBIDDEN, "You may not open this conversation.")


def is_authenticated(user: Any) -> bool:
    """True for a logged-in user (AnonymousUser and a missing user are not)."""
    return bool(user is not None and getattr(user, "is_authenticated", False))


def role_of(conversation: Conversation, user: Any, session_key: str | None) -> str | None:
    """The user's role in the conversation: ``owner``, ``member``, ``viewer``, or None for no access at all.

    An anonymous owner is the Django session that opened the conversation; anonymous users are never members.
    """
    if is_authenticated(user):
        if conversation.owner_id == user.pk:
            return OWNER
        return (
            ConversationMember.objects.filter(conversation=conversation, user_id=user.pk)
            .values_list("role", flat=True)
            .first()
        )
    if conversation.owner_id is None and bool(session_key) and conversation.session_key == session_key:
        return OWNER
    return None


def may_open(conversation: Conversation, user: Any, session_key: str | None) -> bool:
    """Whether the user (or anonymous session) may see the conversation at all."""
    return role_of(conversation, user, session_key) is not None


def may_prompt(role: str | None) -> bool:
    """Whether a role may send prompts and cancel runs (viewers may not)."""
    return role in (OWNER, ConversationMember.Role.MEMBER)


def open_with_role(user: Any, session_key: str | None, conversation_id: Any | None) -> Opened | Denied:
    """Fetch (or create, when no id is given) the conversation this user may use and their role, or say why not."""
    if not is_authenticated(user) and not app_settings.ALLOW_ANONYMOUS:
        return LOGIN_REQUIRED
    if not is_authenticated(user) and not session_key:
        return LOGIN_REQUIRED
    if conversation_id is None:
        if is_authenticated(user):
            return Opened(Conversation.objects.create(owner=user), OWNER)
        return Opened(Conversation.objects.create(session_key=session_key or ""), OWNER)
    try:
        conversation = Conversation.objects.get(pk=conversation_id)
    except (Conversation.DoesNotExist, ValidationError, ValueError):
        return NOT_FOUND
    role = role_of(conversation, user, session_key)
    if role is None:
        return FORBIDDEN
    return Opened(conversation, role)


def open_conversation(user: Any, session_key: str | None, conversation_id: Any | None) -> Conversation | Denied:
    """Like ``open_with_role``, for callers that need only the conversation."""
    opened = open_with_role(user, session_key, conversation_id)
    return opened if isinstance(opened, Denied) else opened.conversation
