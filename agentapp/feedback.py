"""Feedback: a thumbs up or down, with an optional comment, by one user on one assistant message.

Given from the socket (a ``feedback`` client frame), the API or the page (which uses the socket); stored as one
``Feedback`` row per user and message, changed in place when given again and deleted when taken back (rating
null). Every change goes to the conversation's connections as a ``feedback`` frame; the ``conversation`` frame
carries the feedback on the messages it holds, so a reconnecting client sees it too.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from channels.db import database_sync_to_async
from django.db import transaction

from . import protocol
from .access import is_authenticated
from .broadcast import layer_call, tell_group_on_commit
from .messages import feedback_message
from .models import Feedback, Message

if TYPE_CHECKING:
    from .consumers import AgentConsumer

logger = logging.getLogger(__name__)


class FeedbackError(Exception):
    """Feedback that cannot be stored; ``code`` is the error code for the client."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def entry(row: Feedback | None, position: int, user: Any) -> dict[str, Any]:
    """A feedback in wire form; ``row`` None is feedback taken back (rating null)."""
    return {
        "position": position,
        "rating": row.rating if row is not None else None,
        "comment": row.comment if row is not None else "",
        "user_id": user.pk if user is not None else None,
        "user": user.get_username() if user is not None else "anonymous",
        "updated": row.updated_at.isoformat() if row is not None else None,
    }


def give(
    conversation_id: Any, position: int, user: Any, session_key: str | None, rating: str | None, comment: str
) -> dict[str, Any]:
    """Store (or change, or with ``rating`` None take back) the caller's feedback on an assistant message.

    ``user`` is a logged-in user, or None for the anonymous owner named by ``session_key``. Raises FeedbackError
    ``unknown_message`` when no assistant message of the conversation has this position.
    """
    user = user if is_authenticated(user) else None
    if user is None and not session_key:
        raise FeedbackError(protocol.ERR_LOGIN_REQUIRED, "Log in to give feedback.")
    message = (
        Message.objects.filter(conversation_id=conversation_id, position=position, role=Message.Role.ASSISTANT)
        .only("pk")
        .first()
    )
    if message is None:
        raise FeedbackError(
            protocol.ERR_UNKNOWN_MESSAGE, "No assistant message of this conversation has this position."
        )
    who = {"user": user} if user is not None else {"user": None, "session_key": session_key}
    with transaction.atomic():
        if rating is None:
            Feedback.objects.filter(message=message, **who).delete()
            return entry(None, position, user)
        row, _ = Feedback.objects.update_or_create(
            message=message, **who, defaults={"conversation_id": conversation_id, "rating": rating, "comment": comment}
        )
    return entry(row, position, user)


def listing(conversation_id: Any, from_position: int = 0) -> list[dict[str, Any]]:
    """The feedback on the conversation's messages from ``from_position`` on, by position then oldest first."""
    rows = (
        Feedback.objects.filter(conversation_id=conversation_id, message__position__gte=from_position)
        .select_related("user", "message")
        .order_by("message__position", "created_at", "pk")
    )
    return [entry(row, row.message.position, row.user) for row in rows]


def feedback_frame(conversation_id: str, given: dict[str, Any]) -> dict[str, Any]:
    """The ``feedback`` frame telling connections of a feedback given, changed or taken back."""
    return {"type": protocol.FEEDBACK, "conversation_id": conversation_id, "feedback": given}


### From the socket ###


async def on_frame(consumer: AgentConsumer, frame: protocol.ClientFrame) -> None:
    """Store a ``feedback`` client frame, then send the ``feedback`` frame to this socket and the group."""
    user = consumer.user if is_authenticated(consumer.user) else None
    session = consumer.scope.get("session")
    session_key = session.session_key if user is None and session is not None else None
    try:
        given = await database_sync_to_async(give)(
            consumer.conversation_id, frame.position, user, session_key, frame.rating, frame.comment
        )
    except FeedbackError as refused:
        await consumer.send_error(refused.code, refused.message)
        return
    out = feedback_frame(consumer.conversation_id, given)
    await consumer.deliver([out])
    if consumer.channel_layer is not None:
        message = feedback_message(out, consumer.channel_name)
        await layer_call(consumer.channel_layer.group_send(consumer.group, message), "group_send")


### From a view ###


def announce(conversation_id: str, given: dict[str, Any]) -> None:
    """After the transaction commits, send the ``feedback`` frame to every connection of the conversation."""
    message = feedback_message(feedback_frame(conversation_id, given), None)
    tell_group_on_commit(conversation_id, message, "feedback")
