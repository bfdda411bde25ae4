"""Searching a user's conversations by title and message text: PostgreSQL full-text, a plain match elsewhere.

Nothing is indexed: the match is computed on the fly over the caller's own conversations and those shared with
them, so a search costs a scan of their titles and messages (fine for thousands of messages a user, see
docs/api.md). On PostgreSQL the text is ``to_tsvector(SEARCH_CONFIG, ...)`` matched by ``websearch_to_tsquery``
(whole words, ``"quoted phrases"``, ``-excluded``); ``django.contrib.postgres`` need not be installed. On SQLite
each word must appear in the title or in one message's strings (``LIKE``, case-insensitive for ASCII only).
"""

from __future__ import annotations

import re
from typing import Any

from django.db import connection
from django.db.models import BooleanField, Exists, F, Func, OuterRef, Q, QuerySet, Value

from .access import is_authenticated
from .conf import app_settings
from .models import Conversation, ConversationMember, Message

_WORDS = re.compile(r"\S+")
# Words of a plain (non-PostgreSQL) search; more are ignored, so a query costs a bounded number of LIKEs.
PLAIN_MAX_WORDS = 8


def searchable_conversations(user: Any, session_key: str | None) -> QuerySet[Conversation]:
    """What a caller may search: the conversations they own and, for a logged-in user, those shared with them."""
    if is_authenticated(user):
        shared = ConversationMember.objects.filter(user_id=user.pk).values("conversation_id")
        return Conversation.objects.filter(Q(owner_id=user.pk) | Q(pk__in=shared))
    if not session_key:
        return Conversation.objects.none()
    return Conversation.objects.filter(owner__isnull=True, session_key=session_key)


def uses_full_text() -> bool:
    """Whether searches use PostgreSQL full-text search (the default database is PostgreSQL)."""
    return connection.vendor == "postgresql"


def search(conversations: QuerySet[Conversation], query: str) -> QuerySet[Conversation]:
    """The conversations among ``conversations`` whose title or a message's text matches ``query``."""
    if uses_full_text():
        return _full_text(conversations, query)
    return _plain(conversations, query)


### PostgreSQL ###


class _JsonWords(Func):
    """``to_tsvector(config, jsonb)``: the words of every string value of a JSON document (keys left out)."""

    template = "to_tsvector(%(expressions)s)"
    arg_joiner = "::regconfig, "


def _full_text(conversations: QuerySet[Conversation], query: str) -> QuerySet[Conversation]:
    # Imported here: the module needs psycopg, and agentapp runs on SQLite without it.
    from django.contrib.postgres.search import SearchQuery, SearchVector, SearchVectorField

    config = app_settings.SEARCH_CONFIG
    matched = SearchQuery(query, config=config, search_type="websearch")
    in_messages = (
        Message.objects.filter(conversation=OuterRef("pk"))
        .annotate(words=_JsonWords(Value(config), "content", output_field=SearchVectorField()))
        .filter(words=matched)
    )
    return conversations.annotate(title_words=SearchVector("title", config=config)).filter(
        Q(title_words=matched) | Exists(in_messages)
    )


### Elsewhere ###


class _JsonStringLike(Func):
    """SQLite: whether a string value of the JSON document (keys left out, decoded) is ``LIKE`` the pattern."""

    output_field = BooleanField()

    def as_sql(self, compiler: Any, connection: Any, **extra: Any) -> tuple[str, tuple[Any, ...]]:
        document, document_params = compiler.compile(self.source_expressions[0])
        pattern, pattern_params = compiler.compile(self.source_expressions[1])
        sql = (
            f"EXISTS (SELECT 1 FROM json_tree({document}) AS node "
            f"WHERE node.type = 'text' AND node.value LIKE {pattern} ESCAPE '\\')"
        )
        return sql, (*document_params, *pattern_params)


def _like_pattern(word: str) -> str:
    return "%" + word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _plain(conversations: QuerySet[Conversation], query: str) -> QuerySet[Conversation]:
    words = _WORDS.findall(query)[:PLAIN_MAX_WORDS]
    if not words:
        return conversations.none()
    for word in words:
        if connection.vendor == "sqlite":
            strings = _JsonStringLike(F("content"), Value(_like_pattern(word)))
            in_messages = Message.objects.filter(strings, conversation=OuterRef("pk"))
        else:
            in_messages = Message.objects.filter(conversation=OuterRef("pk"), content__icontains=word)
        conversations = conversations.filter(Q(title__icontains=word) | Exists(in_messages))
    return conversations
