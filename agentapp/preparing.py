"""Getting a connection's agent ready for a run: built off the database thread, given only the history it keeps.

Channels runs every ``database_sync_to_async`` call of a process on one thread, so an agent build there (a factory,
a model client) would hold up every other run's start. The history read there is O(window): the agent's
conversation manager state (where its kept messages start, a summary) and ``agent.state`` are saved after each
run (``Memory``), and a prompt restores them and reads only the stored turns the manager keeps.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

from channels.db import DatabaseSyncToAsync
from strands import Agent
from strands.agent.state import AgentState as StrandsState
from strands.hooks import AfterInvocationEvent, HookProvider, HookRegistry, MessageAddedEvent
from strands.types.content import Message as StrandsMessage
from strands.types.session import SessionAgent

from .agenthooks import attached
from .agents import build_agent
from .approvals import restore_state
from .conf import app_settings
from .dbwork import db_call
from .history import Window, tail_rows, window_of
from .models import AgentState
from .storable import storable

logger = logging.getLogger(__name__)

# An ASGI scope key: a callable a transport puts in its connection's scope, given the agent that connection builds
# before its first run (``agentapp.agui`` puts the client's declared tools there).
SCOPE_EXTEND_AGENT = "agentapp.extend_agent"
# Strands keeps a message's ``tracking_id`` through copies (a prompt joined to the last message is one).
_TRACKED = "tracking_id" in getattr(StrandsMessage, "__annotations__", {})


def history_window(agent: Agent) -> int | None:
    """How many stored messages a prompt reads: the agent's sliding window, else ``MAX_HISTORY_MESSAGES`` (0: all).

    ``window_size`` is the public size of Strands' ``SlidingWindowConversationManager`` (the default manager).
    """
    return _sliding_window(agent) or app_settings.MAX_HISTORY_MESSAGES or None


def _sliding_window(agent: Agent) -> int | None:
    window = getattr(getattr(agent, "conversation_manager", None), "window_size", None)
    return window if isinstance(window, int) and not isinstance(window, bool) and window > 0 else None


async def build_off_thread(conversation: Any, user: Any, extend: Callable[[Agent], None] | None = None) -> Agent:
    """Build the conversation's agent in a worker thread of its own (not the database thread every query shares).

    ``extend``, the connection's ``SCOPE_EXTEND_AGENT``, then adapts it (``agentapp.agui`` adds the client's tools).
    """
    build = DatabaseSyncToAsync(build_agent, thread_sensitive=False)
    agent = await build(conversation, user, [])
    if extend is not None:
        extend(agent)
    return agent


def extension_of(host: Any) -> Callable[[Agent], None] | None:
    """What the connection's ASGI scope asks to do to the agent it builds (``SCOPE_EXTEND_AGENT``), if anything."""
    return getattr(host, "scope", {}).get(SCOPE_EXTEND_AGENT)


def give_history(agent: Agent, conversation_id: Any, resume_state: dict[str, Any] | None) -> Agent:
    """Give the agent its saved memory, the stored history it keeps and the paused run's interrupt state.

    Runs in the database thread: two queries however long the conversation (a turn longer than the window is read
    back to its prompt). A sliding window reads the newest rows first, and its saved state only if there are rows;
    another manager reads its saved state first, then only the rows from where its kept messages start.
    """
    memory = memory_of(agent)
    limit = history_window(agent)
    if _sliding_window(agent):
        tail = tail_rows(conversation_id, limit)
        saved = read_agent_data(conversation_id, agent.agent_id) if tail else None
        prepend, start = memory.restore(agent, saved)
    else:
        saved = read_agent_data(conversation_id, agent.agent_id)
        prepend, start = memory.restore(agent, saved)
        tail = tail_rows(conversation_id, limit, start)
    window = window_of(conversation_id, tail, limit, start, summarized=bool(prepend))
    manager = agent.conversation_manager
    first = window.positions[0] if window.positions else window.end
    if manager.removed_message_count != first:
        # As Strands' own session manager leaves it: the count of stored messages before the first one kept.
        manager.restore_from_session({**manager.get_state(), "removed_message_count": first})
    agent.messages = [*prepend, *window.messages]
    memory.follow(agent, conversation_id, window, saved)
    # A resume continues from the paused run's saved interrupt state; a prompt starts from none.
    restore_state(agent, resume_state)
    return agent


### Saved agent state (AgentState rows) ###


def read_agent_data(conversation_id: Any, agent_id: str) -> dict[str, Any] | None:
    """The agent's saved data in the conversation, as stored (see ``agent_data``), or None."""
    row = AgentState.objects.filter(conversation_id=conversation_id, agent_id=agent_id).values_list("data").first()
    return row[0] if row is not None and isinstance(row[0], dict) else None


def _decoded(data: dict[str, Any]) -> SessionAgent | None:
    """Saved data as a ``SessionAgent`` (bytes decoded), or None when it is not one."""
    try:
        return SessionAgent.from_dict({"state": {}, "conversation_manager_state": {}, **data, "agent_id": "agent"})
    except (TypeError, ValueError, KeyError):
        return None


def agent_data(agent: Agent, start: int, saved: dict[str, Any] | None) -> dict[str, Any]:
    """What is stored for the agent: ``agent.state`` and its manager's state, kept messages starting at ``start``.

    The layout is ``SessionAgent.to_dict()``'s without ids and timestamps, as ``DjangoSessionRepository`` writes it,
    so either path restores the other's agents. Keys saved by the other path (``_internal_state``) are kept.
    """
    manager_state = {**agent.conversation_manager.get_state(), "removed_message_count": start}
    encoded = SessionAgent(agent_id=agent.agent_id, state=agent.state.get(), conversation_manager_state=manager_state)
    data = encoded.to_dict()
    kept = {key: value for key, value in (saved or {}).items() if key not in ("state", "conversation_manager_state")}
    kept.update(state=data["state"], conversation_manager_state=data["conversation_manager_state"])
    return storable(kept)[0]


def save_agent_data(conversation_id: Any, agent_id: str, data: dict[str, Any]) -> None:
    """Store the agent's data in its AgentState row, created when missing, in one statement (database thread)."""
    AgentState.objects.bulk_create(
        [AgentState(conversation_id=conversation_id, agent_id=agent_id, data=data)],
        update_conflicts=True,
        unique_fields=["conversation", "agent_id"],
        update_fields=["data", "updated_at"],
    )


def _without_count(manager_state: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in manager_state.items() if key != "removed_message_count"}


### The hook ###


class Memory(HookProvider):
    """Saves an agent's conversation-manager state and ``agent.state`` when a run ends (``AfterInvocationEvent``).

    It knows the stored position of each message of the agent: those ``give_history`` read, then those the run
    appends (the recorder stores them in the same order). The saved ``removed_message_count`` is the position of
    the first message the manager still keeps, so the next prompt reads from there, after the summary if any.
    """

    def __init__(self) -> None:
        self.conversation_id: Any = None
        self.saved: dict[str, Any] | None = None
        self.next_position = 0
        self.appended = False
        # With no saved row: the manager's state at the start (but its count), what nobody needs saved.
        self.fresh: dict[str, Any] | None = None
        self._positions: dict[str, int] = {}
        self._objects: dict[int, tuple[dict[str, Any], int]] = {}

    def register_hooks(self, registry: HookRegistry, **kwargs: Any) -> None:
        """Follow appended messages and save when a run ends."""
        registry.add_callback(MessageAddedEvent, self._on_message_added)
        registry.add_callback(AfterInvocationEvent, self._on_after_invocation)

    def restore(self, agent: Agent, saved: dict[str, Any] | None) -> tuple[list[dict[str, Any]], int]:
        """Restore ``agent.state`` and the manager; return the messages to prepend and where the kept ones start."""
        session_agent = None if saved is None else _decoded(saved)
        if session_agent is None:
            return [], 0
        agent.state = StrandsState(session_agent.state or {})
        if not session_agent.conversation_manager_state:
            return [], 0
        manager = agent.conversation_manager
        try:
            prepend = manager.restore_from_session(dict(session_agent.conversation_manager_state)) or []
        except (ValueError, KeyError, TypeError):
            # Saved by another kind of manager (the factory changed): this one starts over.
            logger.info("agentapp: the saved conversation manager state does not fit %s", type(manager).__name__)
            return [], 0
        return list(prepend), max(0, int(manager.removed_message_count))

    def follow(self, agent: Agent, conversation_id: Any, window: Window, saved: dict[str, Any] | None) -> None:
        """Start a run: know the stored position of each message read (database thread)."""
        self.conversation_id = conversation_id
        self.saved = saved
        self.fresh = None if saved is not None else _without_count(agent.conversation_manager.get_state())
        self.next_position = window.end
        self.appended = False
        self._positions.clear()
        self._objects.clear()
        for message, position in zip(window.messages, window.positions, strict=True):
            if _TRACKED:
                message.setdefault("tracking_id", str(uuid.uuid4()))
            self._know(message, position)

    def _know(self, message: dict[str, Any], position: int) -> None:
        tracking_id = message.get("tracking_id")
        if tracking_id:
            self._positions[tracking_id] = position
        self._objects[id(message)] = (message, position)

    def position_of(self, message: dict[str, Any]) -> int | None:
        """The stored position of one of the agent's messages; None for one never stored (a summary)."""
        known = self._objects.get(id(message))
        if known is not None and known[0] is message:
            return known[1]
        tracking_id = message.get("tracking_id")
        return self._positions.get(tracking_id) if tracking_id else None

    def data(self, agent: Agent) -> dict[str, Any] | None:
        """The data to save now (the manager keeps the stored messages from the first it holds); None: nothing new.

        An agent with no saved row, an empty ``agent.state`` and a manager holding nothing but its count (a sliding
        window) needs no row: its window is read again from the newest messages.
        """
        manager_state = agent.conversation_manager.get_state()
        if self.saved is None and not agent.state.get() and _without_count(manager_state) == self.fresh:
            return None
        kept = [position for message in agent.messages if (position := self.position_of(message)) is not None]
        data = agent_data(agent, min(kept) if kept else self.next_position, self.saved)
        return None if data == self.saved else data

    def _on_message_added(self, event: MessageAddedEvent) -> None:
        if not self.appended and event.message.get("role") != "user":
            # The prompt's row was stored, but the prompt joined the history's last message.
            self.next_position += 1
        self.appended = True
        self._know(event.message, self.next_position)
        self.next_position += 1

    async def _on_after_invocation(self, event: AfterInvocationEvent) -> None:
        if self.conversation_id is None:
            return
        data = self.data(event.agent)
        if data is None:
            return
        try:
            await db_call(save_agent_data)(self.conversation_id, event.agent.agent_id, data)
        except Exception:
            logger.exception("agentapp: could not save the state of the agent of %s", self.conversation_id)
            return
        self.saved = data


def memory_of(agent: Agent) -> Memory:
    """The agent's ``Memory`` hook, added to it the first time."""
    return attached(agent, Memory)
