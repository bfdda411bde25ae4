"""The admin: conversations, runs, messages and tool results as a read-only audit log; sharing is editable."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from django.contrib import admin
from django.db.models import Count, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from . import admin_usage  # noqa: F401  (registers the usage page)
from .models import (
    AgentState,
    Attachment,
    Conversation,
    ConversationMember,
    Feedback,
    Message,
    Quota,
    Run,
    RunStep,
    ToolResult,
)

# Titles longer than this are cut in change lists (the full title shows on hover), so the other columns stay in view.
LIST_TITLE_CHARS = 60


def truncated(text: str, limit: int = LIST_TITLE_CHARS) -> SafeString | str:
    """``text`` as is when short, else its first ``limit`` characters and an ellipsis, with the whole in a tooltip."""
    if len(text) <= limit:
        return text
    return format_html('<span title="{}">{}…</span>', text, text[: limit - 1].rstrip())


### Read-only bases ###


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows may be viewed, never added, changed or deleted: they record what happened."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ReadOnlyInline(admin.TabularInline):
    """A view-only inline: no add, change or delete."""

    extra = 0
    can_delete = False
    show_change_link = True

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return list(self.fields or [])

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


### The transcript ###


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def _result_text(content: Any) -> str:
    """The text and JSON items of a toolResult's content, one per line."""
    pieces = []
    for item in content if isinstance(content, list) else []:
        if isinstance(item, Mapping) and isinstance(item.get("text"), str):
            pieces.append(item["text"])
        else:
            pieces.append(_json(item.get("json", item) if isinstance(item, Mapping) else item))
    return "\n".join(pieces)


def render_block(block: Any, tool_names: Mapping[str, str]) -> SafeString:
    """One content block as escaped HTML: text, a tool call and its input, a tool result and its status."""
    pre = '<pre style="white-space: pre-wrap; margin: 0.25em 0">{}</pre>'
    if not isinstance(block, Mapping):
        return format_html(pre, _json(block))
    if isinstance(block.get("text"), str):
        return format_html(pre, block["text"])
    if isinstance(block.get("toolUse"), Mapping):
        use = block["toolUse"]
        return format_html(
            '<div class="agentapp-tool-use">Tool call <strong>{}</strong> <code>{}</code>' + pre + "</div>",
            use.get("name", ""),
            use.get("toolUseId", ""),
            _json(use.get("input", {})),
        )
    if isinstance(block.get("toolResult"), Mapping):
        result = block["toolResult"]
        tool_use_id = str(result.get("toolUseId", ""))
        status = str(result.get("status", ""))
        return format_html(
            '<div class="agentapp-tool-result">Tool result of <strong>{}</strong> <code>{}</code>: '
            '<span class="agentapp-status-{}">{}</span>' + pre + "</div>",
            tool_names.get(tool_use_id, ""),
            tool_use_id,
            status,
            status,
            _result_text(result.get("content")),
        )
    if isinstance(block.get("attachment"), Mapping):
        ref = block["attachment"]
        return format_html(
            '<div class="agentapp-attachment">Attachment <strong>{}</strong> ({}, {} bytes)</div>',
            ref.get("name", ""),
            ref.get("mime_type", ""),
            ref.get("size", ""),
        )
    if isinstance(block.get("reasoningContent"), Mapping):
        text = block["reasoningContent"].get("reasoningText", {}).get("text", "")
        return format_html('<div class="agentapp-reasoning"><em>Reasoning</em>' + pre + "</div>", text)
    return format_html(pre, _json(block))


def render_transcript(conversation: Conversation) -> SafeString:
    """Every message of the conversation in order, as an escaped HTML table."""
    tool_names = dict(
        ToolResult.objects.filter(conversation=conversation).values_list("tool_use_id", "tool_name").order_by()
    )
    rows = Message.objects.filter(conversation=conversation).order_by("position")
    if not rows:
        return format_html("<p>{}</p>", "No messages.")
    body = format_html_join(
        "",
        '<tr><td>{}</td><td>{}{}</td><td style="width: 100%">{}</td></tr>',
        (
            (
                row.position,
                row.role,
                format_html(' <em class="agentapp-partial">{}</em>', "(partial)") if row.partial else "",
                format_html_join("", "{}", ((render_block(block, tool_names),) for block in row.content or [])),
            )
            for row in rows
        ),
    )
    return format_html(
        '<table class="agentapp-transcript"><thead><tr><th>#</th><th>Role</th><th>Content</th></tr></thead>'
        "<tbody>{}</tbody></table>",
        body,
    )


### Conversations ###


class AnonymousFilter(admin.SimpleListFilter):
    """Conversations opened without an account (bound to a Django session) or owned by a user."""

    title = "anonymous"
    parameter_name = "anonymous"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Yes"), ("no", "No")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() in ("yes", "no"):
            return queryset.filter(owner__isnull=self.value() == "yes")
        return queryset


class RunInline(ReadOnlyInline):
    model = Run
    fields = ("prompt", "status", "stop_reason", "total_tokens", "latency_ms", "started_at", "finished_at")


class MessageInline(ReadOnlyInline):
    model = Message
    fields = ("position", "role", "partial", "altered", "content", "run", "created_at")


class ToolResultInline(ReadOnlyInline):
    model = ToolResult
    fields = ("tool_name", "tool_use_id", "status", "tool_input", "content", "duration_ms", "run", "created_at")


class MemberInline(ReadOnlyInline):
    """Who the conversation is shared with; added and removed on the members' own admin pages."""

    model = ConversationMember
    fields = ("user", "role", "created_at")
    verbose_name = "member"


@admin.register(Conversation)
class ConversationAdmin(ReadOnlyAdmin):
    """Conversations with their run count and last activity; the change page shows the transcript."""

    list_display = ("title_display", "owner_name", "run_count", "updated_at", "created_at")
    list_filter = ("created_at", "updated_at", AnonymousFilter)
    search_fields = ("title", "owner__username")
    list_select_related = ("owner",)
    fields = readonly_fields = (
        "id",
        "title",
        "owner",
        "session_key",
        "created_at",
        "updated_at",
        "sharing",
        "transcript",
    )
    inlines = (MemberInline, RunInline, MessageInline, ToolResultInline)

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).annotate(run_count=Count("runs"))

    @admin.display(description="Title", ordering="title")
    def title_display(self, obj: Conversation) -> SafeString | str:
        return truncated(str(obj))

    @admin.display(description="Owner", ordering="owner__username", empty_value="anonymous")
    def owner_name(self, obj: Conversation) -> Any:
        return obj.owner

    @admin.display(description="Runs", ordering="run_count")
    def run_count(self, obj: Conversation) -> int:
        return obj.run_count

    @admin.display(description="Transcript")
    def transcript(self, obj: Conversation) -> SafeString:
        return render_transcript(obj)

    @admin.display(description="Sharing")
    def sharing(self, obj: Conversation) -> SafeString | str:
        if obj.owner_id is None:
            return "Anonymous conversations cannot be shared."
        url = reverse("admin:agentapp_conversationmember_add") + f"?conversation={obj.pk}"
        return format_html('<a href="{}">Share with a user</a>', url)


class ConversationColumn:
    """A change list column with a row's conversation, its title truncated."""

    @admin.display(description="Conversation", ordering="conversation__title")
    def conversation_title(self, obj: Any) -> SafeString | str:
        return truncated(str(obj.conversation))


### Sharing ###


@admin.register(ConversationMember)
class ConversationMemberAdmin(ConversationColumn, admin.ModelAdmin):
    """Memberships: staff with the model permissions add and delete them; to change a role, delete and add."""

    list_display = ("user", "role", "conversation_title", "created_at")
    ordering = ("-created_at",)
    list_filter = ("role",)
    search_fields = ("user__username", "conversation__title")
    list_select_related = ("user", "conversation")
    raw_id_fields = ("conversation", "user")
    fields = ("conversation", "user", "role")

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


### Runs, messages, tool results, agent state ###

# Change lists show the newest rows first, as conversations do; the models' own ordering (oldest first, which the
# transcript and history code relies on) is left alone.


@admin.register(Run)
class RunAdmin(ConversationColumn, ReadOnlyAdmin):
    """Runs with their outcome, token usage and timing, newest first."""

    ordering = ("-started_at",)
    list_display = (
        "__str__",
        "conversation_title",
        "status",
        "pending_approval",
        "stop_reason",
        "model_id",
        "input_tokens",
        "output_tokens",
        "cache_read_input_tokens",
        "cache_write_input_tokens",
        "total_tokens",
        "cost",
        "latency_ms",
        "started_at",
        "finished_at",
    )
    list_filter = ("status", "model_id", "started_at")
    search_fields = ("prompt",)
    list_select_related = ("conversation",)

    @admin.display(description="Pending approval")
    def pending_approval(self, run: Run) -> str:
        """The tool calls a run awaiting approval waits on (filter by status "awaiting_approval" to list them)."""
        return ", ".join(f"{item.get('tool') or item.get('name')}({item.get('input')})" for item in run.interrupts)


@admin.register(RunStep)
class RunStepAdmin(ReadOnlyAdmin):
    """The node executions of multi-agent runs (a Swarm or a Graph), newest run first, in order within a run."""

    ordering = ("-run__started_at", "position")
    list_display = ("node_id", "node_type", "status", "run", "position", "execution_time_ms", "started_at")
    list_filter = ("status", "node_type")
    search_fields = ("node_id", "text")
    list_select_related = ("run",)


@admin.register(Message)
class MessageAdmin(ConversationColumn, ReadOnlyAdmin):
    """Stored Strands messages, newest first."""

    ordering = ("-created_at", "-position")
    list_display = ("__str__", "conversation_title", "role", "partial", "altered", "run", "created_at")
    list_filter = ("role", "partial", "altered")
    list_select_related = ("conversation", "run")


@admin.register(ToolResult)
class ToolResultAdmin(ConversationColumn, ReadOnlyAdmin):
    """Tool results by tool and status, for finding failing tools, newest first."""

    ordering = ("-created_at", "-id")
    list_display = ("tool_name", "status", "conversation_title", "run", "duration_ms", "created_at")
    list_filter = ("tool_name", "status")
    search_fields = ("tool_use_id",)
    list_select_related = ("conversation", "run")


@admin.register(AgentState)
class AgentStateAdmin(ConversationColumn, ReadOnlyAdmin):
    """Agent state saved by the ORM session repository (``agentapp.session``), last updated first."""

    ordering = ("-updated_at",)
    list_display = ("agent_id", "conversation_title", "updated_at")
    search_fields = ("agent_id",)
    list_select_related = ("conversation",)


@admin.register(Attachment)
class AttachmentAdmin(ConversationColumn, ReadOnlyAdmin):
    """Uploaded files by type and size, newest first; the file itself is opened through the access-checked API."""

    ordering = ("-created_at",)
    list_display = ("original_name", "mime_type", "size", "dimensions", "owner", "conversation_title", "created_at")
    list_filter = ("mime_type",)
    search_fields = ("original_name", "sha256")
    list_select_related = ("conversation", "owner")

    @admin.display(description="Pixels")
    def dimensions(self, obj: Attachment) -> str:
        return f"{obj.width}x{obj.height}" if obj.width is not None else ""


### Quotas and feedback ###


@admin.register(Quota)
class QuotaAdmin(admin.ModelAdmin):
    """Token and cost budgets per user or group and period (agentapp.quotas); staff add, change and delete them."""

    list_display = ("__str__", "user", "group", "period", "max_tokens", "max_cost", "created_at")
    list_filter = ("period", "group")
    search_fields = ("user__username", "group__name")
    list_select_related = ("user", "group")
    raw_id_fields = ("user",)
    fields = ("user", "group", "period", "max_tokens", "max_cost")


class UserOrAnonymous:
    """A change list column with the row's user, or "anonymous"."""

    @admin.display(description="User", ordering="user__username", empty_value="anonymous")
    def user_name(self, obj: Any) -> Any:
        return obj.user


@admin.register(Feedback)
class FeedbackAdmin(UserOrAnonymous, ConversationColumn, ReadOnlyAdmin):
    """Thumbs up and down on assistant messages, filterable by rating, date and model; newest first."""

    ordering = ("-updated_at",)
    list_display = ("rating", "comment_display", "user_name", "conversation_title", "position", "updated_at")
    list_filter = ("rating", "updated_at", "message__run__model_id")
    search_fields = ("comment", "user__username", "conversation__title")
    list_select_related = ("user", "conversation", "message")
    fields = readonly_fields = ("conversation", "message", "position", "user", "rating", "comment", "answer")

    @admin.display(description="Comment", ordering="comment")
    def comment_display(self, obj: Feedback) -> SafeString | str:
        return truncated(obj.comment)

    @admin.display(description="Message", ordering="message__position")
    def position(self, obj: Feedback) -> int:
        return obj.message.position

    @admin.display(description="Answer")
    def answer(self, obj: Feedback) -> SafeString:
        return format_html_join("", "{}", ((render_block(block, {}),) for block in obj.message.content or []))
