"""Getting a connection's agent ready for a run: built off the database thread, given only the history it keeps.

Channels runs every ``database_sync_to_async`` call of a process on one thread, so an agent build there (a factory,
a model client) would hold up every other run's start. The history read there is O(window): the agent's
conversation manager keeps a sliding window, and only the stored turns that fit in it are read.
"""

from __future__ import annotations

from typing import Any

from channels.db import DatabaseSyncToAsync
from strands import Agent

from .agents import build_agent
from .approvals import restore_state
from .conf import app_settings
from .history import load_messages


def history_window(agent: Agent) -> int | None:
    """How many stored messages a prompt reads: the agent's sliding window, else ``MAX_HISTORY_MESSAGES`` (0: all).

    ``window_size`` is the public size of Strands' ``SlidingWindowConversationManager`` (the default manager).
    """
    window = getattr(getattr(agent, "conversation_manager", None), "window_size", None)
    if isinstance(window, int) and not isinstance(window, bool) and window > 0:
        return window
    return app_settings.MAX_HISTORY_MESSAGES or None


async def build_off_thread(conversation: Any, user: Any) -> Agent:
    """Build the conversation's agent in a worker thread of its own (not the database thread every query shares)."""
    build = DatabaseSyncToAsync(build_agent, thread_sensitive=False)
    return await build(conversation, user, [])


def give_history(agent: Agent, conversation_id: Any, resume_state: dict[str, Any] | None) -> Agent:
    """Give the agent the stored history its window holds and the paused run's interrupt state (database thread)."""
    agent.messages = load_messages(conversation_id, history_window(agent))
    # A resume continues from the paused run's saved interrupt state; a prompt starts from none.
    restore_state(agent, resume_state)
    return agent
