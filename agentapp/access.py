"""Who may open which conversation: the one authorization check every entry point goes through.

A connection without a conversation id gets a fresh one that is not stored: its row is written at the first
prompt (``store_new``), so connecting costs no row. A fresh id carries a MAC of the user (or anonymous session)
it was made for, so that owner may reopen it before it is stored (a reload, a second tab) and nobody else can.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.crypto import constant_time_compare, salted_hmac

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
# Error code of a new conversation over ``CONVERSATIONS_PER_HOUR`` (an ``error`` frame, or HTTP 429); the socket is
# not closed for it, so its close code is never used.
ERR_TOO_MANY_CONVERSATIONS = "too_many_conversations"
TOO_MANY_CONVERSATIONS = Denied(
    ERR_TOO_MANY_CONVERSATIONS, CLOSE_FORBIDDEN, "You started too many conversations in the last hour; try later."
)
# Salt of the MAC that binds a fresh conversation id to its owner.
_FRESH_ID_SALT = "agentapp.access.fresh_conversation_id"


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


### Fresh conversations, stored at their first prompt ###


def _owner_mac(user: Any, session_key: str | None, nonce: bytes) -> bytes:
    owner = f"user:{user.pk}" if is_authenticated(user) else f"session:{session_key or ''}"
    return salted_hmac(_FRESH_ID_SALT, owner.encode() + nonce, algorithm="sha256").digest()[:8]


def _fresh_id(user: Any, session_key: str | None, nonce: bytes) -> uuid.UUID:
    """The version-4 UUID made of ``nonce`` (8 bytes, version bits set) and its owner's MAC."""
    nonce = uuid.UUID(bytes=nonce + bytes(8), version=4).bytes[:8]
    return uuid.UUID(bytes=nonce + _owner_mac(user, session_key, nonce), version=4)


def fresh_conversation(user: Any, session_key: str | None, conversation_id: Any | None = None) -> Conversation | None:
    """A new, unsaved conversation of this user or session: with a new id, or with ``conversation_id`` if that is one
    made for them (None otherwise)."""
    if conversation_id is None:
        pk = _fresh_id(user, session_key, os.urandom(8))
    else:
        try:
            pk = conversation_id if isinstance(conversation_id, uuid.UUID) else uuid.UUID(str(conversation_id))
        except ValueError:
            return None
        if not constant_time_compare(_fresh_id(user, session_key, pk.bytes[:8]).bytes, pk.bytes):
            return None
    if is_authenticated(user):
        return Conversation(pk=pk, owner=user)
    return Conversation(pk=pk, session_key=session_key or "")


def is_stored(conversation: Conversation) -> bool:
    """Whether the conversation has its row (a fresh one gets it at its first prompt)."""
    return not conversation._state.adding


def store_new(conversation: Conversation) -> Denied | None:
    """Write a fresh conversation's row, unless its owner started ``CONVERSATIONS_PER_HOUR`` in the last hour.

    Stored already (or meanwhile, by another connection of its owner): nothing to do. Runs in the database thread.
    """
    if is_stored(conversation):
        return None
    limit = app_settings.CONVERSATIONS_PER_HOUR
    if limit:
        if conversation.owner_id is not None:
            owned = Conversation.objects.filter(owner_id=conversation.owner_id)
        else:
            owned = Conversation.objects.filter(owner__isnull=True, session_key=conversation.session_key)
        since = timezone.now() - timedelta(hours=1)
        if owned.filter(created_at__gte=since).count() >= limit:
            return TOO_MANY_CONVERSATIONS
    try:
        with transaction.atomic():
            conversation.save(force_insert=True)
    except IntegrityError:
        if not Conversation.objects.filter(pk=conversation.pk).exists():
            raise
        conversation._state.adding = False  # another connection of the same owner stored it first
    return None


### Opening ###


def find_conversation(conversation_id: Any, user: Any, session_key: str | None) -> Conversation | None:
    """The stored conversation with this id, or the fresh one it names if made for this user; None otherwise."""
    try:
        conversation = Conversation.objects.filter(pk=conversation_id).first()
    except (ValidationError, ValueError):
        return None
    return conversation if conversation is not None else fresh_conversation(user, session_key, conversation_id)


def open_with_role(user: Any, session_key: str | None, conversation_id: Any | None) -> Opened | Denied:
    """The conversation this user may use and their role (a fresh, unsaved one when no id is given), or why not."""
    if not is_authenticated(user) and not app_settings.ALLOW_ANONYMOUS:
        return LOGIN_REQUIRED
    if not is_authenticated(user) and not session_key:
        return LOGIN_REQUIRED
    if conversation_id is None:
        return Opened(fresh_conversation(user, session_key), OWNER)
    conversation = find_conversation(conversation_id, user, session_key)
    if conversation is None:
        return NOT_FOUND
    role = role_of(conversation, user, session_key)
    if role is None:
        return FORBIDDEN
    return Opened(conversation, role)


def open_stored(user: Any, session_key: str | None, conversation_id: Any) -> Conversation | Denied:
    """Like ``open_conversation`` for reading and deleting: a fresh id that has no row yet is ``not_found``, and
    nothing is stored (a read never creates a conversation, nor brings a deleted one back)."""
    opened = open_with_role(user, session_key, conversation_id)
    if isinstance(opened, Denied):
        return opened
    return opened.conversation if is_stored(opened.conversation) else NOT_FOUND


def open_conversation(user: Any, session_key: str | None, conversation_id: Any | None) -> Conversation | Denied:
    """Like ``open_with_role``, for HTTP callers that need only the conversation: a fresh one is stored (or refused
    with ``TOO_MANY_CONVERSATIONS``)."""
    opened = open_with_role(user, session_key, conversation_id)
    if isinstance(opened, Denied):
        return opened
    return store_new(opened.conversation) or opened.conversation
