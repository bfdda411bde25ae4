"""A connection opening its conversation: authorized, accepted, in its room, sent its ``conversation`` frame first.

The conversation is read once the connection joined its group, so a frame sent after the read is sure to arrive; a
connection opened mid-run holds that frame until the run's frames so far came (``agentapp.following``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from channels.db import database_sync_to_async

from . import protocol, queueing, runlog, submitting
from .access import FORBIDDEN, Denied, is_authenticated, is_stored, open_with_role, role_of
from .broadcast import group_name
from .conf import app_settings
from .dbwork import db_call
from .feedback import listing as feedback_listing
from .following import Watch, resume_point
from .hub import hub_for
from .presence import Presence, wants_presence
from .recorder import pending_approval

if TYPE_CHECKING:
    from .consumers import AgentConsumer


async def open_connection(consumer: AgentConsumer) -> None:
    """Authorize the user, join the conversation's room, then send its history (and any run in progress)."""
    consumer.user = consumer.scope.get("user")
    session_key = await _session_key(consumer.scope)
    conversation_id = consumer.scope.get("url_route", {}).get("kwargs", {}).get("conversation_id")
    opened = await db_call(open_with_role)(consumer.user, session_key, conversation_id)
    await consumer.accept()
    consumer.sender.open(consumer.scope)
    if isinstance(opened, Denied):
        await consumer.send_frame(protocol.error_frame(None, opened.code, opened.message))
        await consumer.close(code=opened.close_code)
        return
    consumer.conversation, consumer.role = opened.conversation, opened.role
    consumer.conversation_id = str(opened.conversation.pk)
    consumer.group = group_name(consumer.conversation_id)
    if consumer.channel_layer is not None:
        # Join before reading the history: a frame sent after the read is then sure to arrive.
        consumer.room = await hub_for(consumer.channel_layer).join(consumer.conversation_id, consumer)
    # A fresh conversation has no row yet, so nothing to read: no database hop.
    args = (consumer.conversation, consumer.user, session_key, consumer.role)
    opened_now = await db_call(read)(*args) if is_stored(consumer.conversation) else read(*args)
    if opened_now is None:
        # Removed (or the conversation deleted) between the access check and joining the group: the announcement
        # of it went out before this connection listened, so it is applied here.
        await consumer.send_frame(protocol.error_frame(None, FORBIDDEN.code, FORBIDDEN.message))
        await consumer.close(code=FORBIDDEN.close_code)
        consumer.role = None  # nothing more is forwarded; disconnect leaves the group
        return
    await _greet(consumer, opened_now)


async def _greet(consumer: AgentConsumer, opening: Opening) -> None:
    """Send the ``conversation`` frame (held mid-run until the run's frames came), count the connection in, and
    send the frames a resume point in its URL asks for."""
    consumer.role = opening.role
    consumer.watch = watch = Watch(consumer, opening.settled_runs())
    refused: list[dict[str, Any]] = []
    try:
        resume = resume_point(consumer.scope)
    except protocol.ProtocolError as error:
        resume = None
        refused.append(protocol.error_frame(consumer.conversation_id, error.code, error.message))
    # Started with no await before the conversation frame is sent or held below, so its frames come after it.
    consumer.presence = Presence(
        consumer.channel_layer,
        consumer.group,
        consumer.channel_name,
        consumer.conversation_id,
        (lambda frame: watch.deliver([frame])) if wants_presence(consumer.scope) else None,
    )
    consumer.presence.start()
    if opening.active_run_id is not None and consumer.channel_layer is not None:
        await watch.open_mid_run(opening.hello, resume, refused, opening.origin or None)
        return
    await watch.deliver([opening.hello, *refused])
    if opening.hello["queued"] and opening.hello["pending_approval"] is None and consumer.channel_layer is not None:
        # Prompts wait with nothing going on: the process whose run would have started them died.
        consumer.spawn(submitting.start_waiting(consumer.channel_layer, consumer.conversation_id), "agentapp-queue")
    for run_id in opening.ended:  # runs whose process died, ended by this connection: the others are told
        await consumer.cancels.announce_dead(run_id)
    if resume is not None:
        await consumer.resume_run(*resume)


async def _session_key(scope: dict[str, Any]) -> str | None:
    """The anonymous visitor's session key (saved first if anonymous use is allowed); None for a signed-in user."""
    session = scope.get("session")
    if session is None or is_authenticated(scope.get("user")):
        return None
    if not session.session_key and app_settings.ALLOW_ANONYMOUS:
        await database_sync_to_async(session.save)()
    return session.session_key


@dataclass
class Opening:
    """The conversation as a connection first sees it, and the runs whose process died that reading it ended."""

    role: str
    hello: dict[str, Any]
    ended: list[str] = field(default_factory=list)
    # The channel of the worker running the run in progress, which answers replay requests ("": ask the group).
    origin: str = ""

    @property
    def active_run_id(self) -> str | None:
        """The run in progress, if any."""
        active = self.hello["active_run"]
        return active["run_id"] if active else None

    def settled_runs(self) -> set[str]:
        """The runs whose frames are all in the history already (every one but the run in progress)."""
        active = self.active_run_id
        return {m["run_id"] for m in self.hello["messages"] if m["run_id"] and m["run_id"] != active}


def read(conversation: Any, user: Any, session_key: str | None, role: str) -> Opening | None:
    """Read a conversation once the connection joined its group, in one database hop (a fresh one reads nothing).

    The role is read again (a change made before the join was announced to a group the connection was not in yet):
    None when it may no longer open the conversation at all.
    """
    ended: list[str] = []
    history: list[dict[str, Any]] = []
    active, pending, feedback, queued, origin = None, None, [], [], ""
    if is_stored(conversation):
        role = role_of(conversation, user, session_key)
        if role is None or not type(conversation).objects.filter(pk=conversation.pk).exists():
            return None
        history, active = runlog.snapshot(conversation.pk, app_settings.HISTORY_FRAME_MESSAGES, ended)
        origin = active.pop("origin", "") if active else ""
        queued = queueing.waiting_in(conversation.pk)
        pending = pending_approval(conversation.pk)
        # Feedback on messages before the first one the frame carries is left out.
        feedback = feedback_listing(conversation.pk, history[0]["position"] if history else 0)
    hello = {
        "type": protocol.CONVERSATION,
        "conversation_id": str(conversation.pk),
        "title": conversation.title,
        "role": role,
        "messages": history,
        "active_run": active,
        "pending_approval": {"run_id": pending["run_id"], "interrupts": pending["interrupts"]} if pending else None,
        "feedback": feedback,
        "queued": queued,
    }
    return Opening(role, hello, ended, origin)
