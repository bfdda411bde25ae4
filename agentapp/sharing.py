"""Sharing a conversation: who its members are, adding and removing them, and telling live connections.

The owner shares a conversation with other users as ``member`` (prompt and cancel) or ``viewer`` (watch
only). Anonymous conversations are never shared. A change reaches the user's open connections at once
through the conversation's channel-layer group: a removed user is disconnected, a new role applies.
"""

from __future__ import annotations

import logging
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import transaction

from .broadcast import tell_group_on_commit
from .messages import access_message, deleted_message
from .models import Conversation, ConversationMember
from .storable import storable_text

logger = logging.getLogger(__name__)

ROLES = tuple(ConversationMember.Role.values)


class SharingError(Exception):
    """A sharing request that cannot be done; ``code`` is machine-readable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def member_entry(member: ConversationMember) -> dict[str, Any]:
    """A membership as the sharing API shows it."""
    return {
        "user_id": member.user_id,
        "username": member.user.get_username(),
        "role": member.role,
        "created": member.created_at.isoformat(),
    }


def members_of(conversation: Conversation) -> list[dict[str, Any]]:
    """Everyone the conversation is shared with, oldest first."""
    rows = ConversationMember.objects.filter(conversation=conversation).select_related("user").order_by("created_at")
    return [member_entry(member) for member in rows]


def share(conversation: Conversation, username: str, role: str) -> tuple[ConversationMember, bool]:
    """Share with a user by username, or change their role; return the membership and whether it is new."""
    if role not in ROLES:
        raise SharingError("invalid_role", f"The role must be one of {list(ROLES)}.")
    if storable_text(username) != username:  # NUL or a lone surrogate: no stored username has one
        raise SharingError("unknown_user", "No user has this username.")
    user = get_user_model().objects.filter(**{get_user_model().USERNAME_FIELD: username}).first()
    if user is None:
        raise SharingError("unknown_user", "No user has this username.")
    with transaction.atomic():
        member = ConversationMember.objects.select_for_update().filter(conversation=conversation, user=user).first()
        created = member is None
        if member is None:
            member = ConversationMember(conversation=conversation, user=user, role=role)
        elif member.role == role:
            return member, False
        member.role = role
        try:
            member.full_clean(validate_unique=False, validate_constraints=False)
        except ValidationError as exc:
            raise SharingError("invalid_member", " ".join(exc.messages)) from None
        member.save()
    return member, created


def unshare(conversation: Conversation, user_id: int) -> bool:
    """Stop sharing with a user; False when they were not a member."""
    member = ConversationMember.objects.filter(conversation=conversation, user_id=user_id).first()
    if member is None:
        return False
    member.delete()
    return True


### Telling live connections ###


def announce_role(conversation_id: Any, user_id: Any, role: str | None) -> None:
    """After the transaction commits, tell the conversation's connections the user's new role (None: removed)."""
    tell_group_on_commit(conversation_id, access_message(user_id, role), "a role change")


def announce_deleted(conversation_id: Any) -> None:
    """After the transaction commits, tell the conversation's connections that it is gone (they close, 4404)."""
    tell_group_on_commit(conversation_id, deleted_message(), "its deletion")
