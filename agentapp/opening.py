"""What a connection reads when it opens a conversation, and the ``conversation`` frame it sends first."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import protocol, runlog
from .access import is_stored, role_of
from .conf import app_settings
from .feedback import listing as feedback_listing
from .recorder import pending_approval


@dataclass
class Opening:
    """The conversation as a connection first sees it, and the runs whose process died that reading it ended."""

    role: str
    hello: dict[str, Any]
    ended: list[str] = field(default_factory=list)

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
    active, pending, feedback = None, None, []
    if is_stored(conversation):
        role = role_of(conversation, user, session_key)
        if role is None or not type(conversation).objects.filter(pk=conversation.pk).exists():
            return None
        history, active = runlog.snapshot(conversation.pk, app_settings.HISTORY_FRAME_MESSAGES, ended)
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
    }
    return Opening(role, hello, ended)
