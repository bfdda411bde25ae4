"""A Strands ``SessionRepository`` on the ORM, so agents run outside Channels share the WebSocket path's rows.

Use it from a management command or a worker::

    agent = Agent(model=..., tools=[...], session_manager=session_manager_for(conversation.pk))
    agent("Calculate 2+2")
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from django.db import IntegrityError, close_old_connections, transaction
from django.utils import timezone
from strands.agent.conversation_manager import SlidingWindowConversationManager
from strands.session.repository_session_manager import RepositorySessionManager
from strands.session.session_repository import SessionRepository
from strands.types.exceptions import SessionException
from strands.types.session import Session, SessionAgent, SessionMessage, SessionType

from .attachments import expand
from .models import AgentState, Conversation, Message, ToolResult
from .protocol import from_storable, to_storable, tool_results_in
from .recorder import TITLE_CHARS
from .transcript import write_message

T = TypeVar("T")

### ORM calls from inside an event loop ###

# Strands calls the repository synchronously from hooks running in the agent's event loop thread, where
# Django refuses ORM calls; there the work goes to this one thread and the caller waits for it.
_orm_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agentapp-session-orm")


def _in_orm_thread(work: Callable[[], T]) -> T:
    close_old_connections()
    try:
        return work()
    finally:
        close_old_connections()


def run_orm(work: Callable[[], T]) -> T:
    """Run ``work`` here when no event loop runs in this thread, else in the ORM thread, and return its result."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return work()
    return _orm_thread.submit(_in_orm_thread, work).result()


### Row <-> Strands conversions ###


def _conversation_pk(session_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(session_id))
    except ValueError:
        raise SessionException(f"session_id must be a conversation UUID, not {session_id!r}") from None


def _session_message(row: Message) -> SessionMessage:
    created = row.created_at.isoformat()
    # A prompt's attachment references become their image and document blocks again (agentapp.attachments).
    message = {"role": row.role, "content": expand(from_storable(row.content), row.conversation_id)}
    return SessionMessage(message=message, message_id=row.position, created_at=created, updated_at=created)


def _tool_calls_before(conversation_pk: uuid.UUID, position: int) -> dict[str, dict[str, Any]]:
    """Name and input of each toolUse in the nearest assistant message before ``position``."""
    content = (
        Message.objects.filter(conversation_id=conversation_pk, role=Message.Role.ASSISTANT, position__lt=position)
        .order_by("-position")
        .values_list("content", flat=True)
        .first()
    )
    return {
        str(block["toolUse"].get("toolUseId", "")): {
            "name": str(block["toolUse"].get("name", "")),
            "input": block["toolUse"].get("input", {}),
        }
        for block in content or []
        if isinstance(block, Mapping) and isinstance(block.get("toolUse"), Mapping)
    }


def _first_text(message: Mapping[str, Any]) -> str:
    texts = [block["text"] for block in message.get("content") or [] if isinstance(block, Mapping) and "text" in block]
    return " ".join(text for text in texts if isinstance(text, str)).strip()


### The repository ###


class DjangoSessionRepository(SessionRepository):
    """Strands sessions stored as agentapp rows: a session is a Conversation, a message a Message at its position.

    Messages carry no agent id, so every agent id reads and writes the conversation's one list of messages
    (one agent per conversation), the same list the WebSocket path writes. Agent state lives in AgentState, which
    the WebSocket path writes too (``preparing.Memory``): an agent here continues the memory of the prompts there.
    Only role and content are stored: a message's ``tracking_id`` and ``metadata`` are not kept.
    Runs of this path write no Run row, so they do not take the conversation's busy lock.
    """

    def __init__(self, owner: Any = None, conversation_manager_state: dict[str, Any] | None = None) -> None:
        """``owner`` owns conversations this repository creates; ``conversation_manager_state`` restores agents.

        A conversation written by the WebSocket path has messages but no saved agent; its agents are restored
        with ``conversation_manager_state`` (by default a fresh SlidingWindowConversationManager's, Strands'
        default). Pass ``YourManager().get_state()`` when the agent uses another conversation manager.
        """
        self.owner = owner
        self.conversation_manager_state = conversation_manager_state

    ### Sessions ###

    def create_session(self, session: Session, **kwargs: Any) -> Session:
        """Create the session's Conversation if it does not exist yet."""
        pk = _conversation_pk(session.session_id)

        def work() -> Session:
            owner_id = getattr(self.owner, "pk", self.owner)
            conversation, _ = Conversation.objects.get_or_create(pk=pk, defaults={"owner_id": owner_id})
            return self._session(conversation)

        return run_orm(work)

    def read_session(self, session_id: str, **kwargs: Any) -> Session | None:
        """The session of an existing Conversation, or None."""
        pk = _conversation_pk(session_id)

        def work() -> Session | None:
            conversation = Conversation.objects.filter(pk=pk).first()
            return None if conversation is None else self._session(conversation)

        return run_orm(work)

    @staticmethod
    def _session(conversation: Conversation) -> Session:
        return Session(
            session_id=str(conversation.pk),
            session_type=SessionType.AGENT,
            created_at=conversation.created_at.isoformat(),
            updated_at=conversation.updated_at.isoformat(),
        )

    ### Agents ###

    def create_agent(self, session_id: str, session_agent: SessionAgent, **kwargs: Any) -> None:
        """Save a new agent's state (an existing one is overwritten)."""
        self.update_agent(session_id, session_agent)

    def read_agent(self, session_id: str, agent_id: str, **kwargs: Any) -> SessionAgent | None:
        """The agent's saved state; a fresh one if only the WebSocket path has written to the conversation."""
        pk = _conversation_pk(session_id)

        def work() -> SessionAgent | None:
            row = AgentState.objects.filter(conversation_id=pk, agent_id=agent_id).first()
            if row is not None:
                data = {**row.data, "agent_id": agent_id}
                return SessionAgent.from_dict(
                    {**data, "created_at": row.created_at.isoformat(), "updated_at": row.updated_at.isoformat()}
                )
            if not Message.objects.filter(conversation_id=pk).exists():
                return None
            state = self.conversation_manager_state or SlidingWindowConversationManager().get_state()
            return SessionAgent(agent_id=agent_id, state={}, conversation_manager_state=dict(state))

        return run_orm(work)

    def update_agent(self, session_id: str, session_agent: SessionAgent, **kwargs: Any) -> None:
        """Save the agent's state, creating its row when missing."""
        pk = _conversation_pk(session_id)
        data = session_agent.to_dict()
        for key in ("agent_id", "created_at", "updated_at"):
            data.pop(key, None)

        def work() -> None:
            if not Conversation.objects.filter(pk=pk).exists():
                raise SessionException(f"Session {session_id} does not exist")
            AgentState.objects.update_or_create(
                conversation_id=pk, agent_id=session_agent.agent_id, defaults={"data": data}
            )

        run_orm(work)

    ### Messages ###

    def create_message(self, session_id: str, agent_id: str, session_message: SessionMessage, **kwargs: Any) -> None:
        """Insert the message at position ``message_id``, with ToolResult rows for its toolResult blocks."""
        pk = _conversation_pk(session_id)
        message = session_message.to_message()
        position = session_message.message_id

        def work() -> None:
            with transaction.atomic():
                calls = _tool_calls_before(pk, position) if any(tool_results_in(message)) else {}
                write_message(pk, None, position, message, False, calls)
                Conversation.objects.filter(pk=pk).update(updated_at=timezone.now())
                title = _first_text(message) if message.get("role") == "user" else ""
                if title:
                    Conversation.objects.filter(pk=pk, title="").update(title=title[:TITLE_CHARS])

        try:
            run_orm(work)
        except IntegrityError as exc:
            raise SessionException(
                f"Message {position} of session {session_id} already exists; another writer appended to it"
            ) from exc

    def read_message(self, session_id: str, agent_id: str, message_id: int, **kwargs: Any) -> SessionMessage | None:
        """The message at position ``message_id``, or None."""
        pk = _conversation_pk(session_id)

        def work() -> SessionMessage | None:
            row = Message.objects.filter(conversation_id=pk, position=message_id).first()
            return None if row is None else _session_message(row)

        return run_orm(work)

    def update_message(self, session_id: str, agent_id: str, session_message: SessionMessage, **kwargs: Any) -> None:
        """Replace a message's content (a redaction); its ToolResult rows follow the new content."""
        pk = _conversation_pk(session_id)
        message = session_message.to_message()
        results = {str(result.get("toolUseId", "")): result for result in tool_results_in(message)}

        def work() -> None:
            with transaction.atomic():
                row = Message.objects.filter(conversation_id=pk, position=session_message.message_id).first()
                if row is None:
                    raise SessionException(f"Message {session_message.message_id} does not exist")
                row.content = to_storable(list(message.get("content") or []))
                row.save(update_fields=["content"])
                for stored in row.tool_results.all():
                    result = results.get(stored.tool_use_id)
                    if result is None:
                        stored.delete()
                        continue
                    stored.content = to_storable(list(result.get("content") or []))
                    stored.status = (
                        ToolResult.Status.ERROR if result.get("status") == "error" else ToolResult.Status.SUCCESS
                    )
                    stored.save(update_fields=["content", "status"])

        run_orm(work)

    def list_messages(
        self, session_id: str, agent_id: str, limit: int | None = None, offset: int = 0, **kwargs: Any
    ) -> list[SessionMessage]:
        """The conversation's messages in position order, skipping ``offset`` and keeping at most ``limit``."""
        pk = _conversation_pk(session_id)

        def work() -> list[SessionMessage]:
            rows = Message.objects.filter(conversation_id=pk).order_by("position")
            rows = rows[offset : offset + limit] if limit is not None else rows[offset:]
            return [_session_message(row) for row in rows]

        return run_orm(work)


def session_manager_for(conversation_id: Any, owner: Any = None, **kwargs: Any) -> RepositorySessionManager:
    """A Strands session manager on the conversation's rows (created, owned by ``owner``, if missing)."""
    return RepositorySessionManager(
        session_id=str(conversation_id), session_repository=DjangoSessionRepository(owner=owner), **kwargs
    )
