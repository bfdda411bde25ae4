"""Durable conversations: each prompt is a Run, each Strands message a Message, each tool result a ToolResult."""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver


class Conversation(models.Model):
    """A thread of messages between users and one agent, owned by a user or an anonymous session."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="agent_conversations"
    )
    # Set for conversations opened anonymously (demo mode): the Django session that owns them.
    session_key = models.CharField(max_length=64, blank=True, default="", db_index=True)
    title = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at"]
        indexes = [models.Index(fields=["owner", "-updated_at"], name="agentapp_conv_owner_upd")]

    def __str__(self) -> str:
        return self.title or str(self.id)


class Run(models.Model):
    """One prompt to one result: its status, stop reason, usage and timing."""

    class Status(models.TextChoices):
        RUNNING = "running"
        COMPLETED = "completed"
        CANCELLED = "cancelled"
        FAILED = "failed"
        INTERRUPTED = "interrupted"
        # Paused on a tool call that needs a human's approval (see agentapp.approvals); answered by a new run.
        AWAITING_APPROVAL = "awaiting_approval"
        # Stored, not started yet: behind another run of its conversation, or waiting for a worker (agentapp.queueing).
        QUEUED = "queued"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="runs")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    prompt = models.TextField()
    status = models.CharField(max_length=32, choices=Status.choices, default=Status.RUNNING)
    stop_reason = models.CharField(max_length=64, blank=True, default="")
    # The model's id (its Strands config ``model_id``) and every token kind it reported (agentapp.usage).
    model_id = models.CharField(max_length=200, blank=True, default="", db_index=True)
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    total_tokens = models.PositiveIntegerField(default=0)
    cache_read_input_tokens = models.PositiveIntegerField(default=0)
    cache_write_input_tokens = models.PositiveIntegerField(default=0)
    # What the tokens cost by the ``PRICING`` setting at the run's end; None when the model has no price there.
    cost = models.DecimalField(max_digits=16, decimal_places=8, null=True, blank=True)
    usage = models.JSONField(default=dict, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    # The validated object of an agent with a structured output model, as JSON (the ``result`` frame's).
    structured_output = models.JSONField(null=True, blank=True, default=None)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    started_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Renewed by the process running the run (agentapp.leases); a running run not renewed for
    # ``RUN_LEASE_SECONDS`` died with its process and is ended ``interrupted`` by the next process to look.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # While awaiting approval: the unanswered interrupts as sent in the ``interrupt`` frame, and the Strands
    # interrupt state (``approvals.export_state``) any process restores to resume. Cleared once answered.
    interrupts = models.JSONField(default=list, blank=True)
    interrupt_state = models.JSONField(default=dict, blank=True)
    # The answers given to this run's interrupts, with the user who gave them, or how the wait ended.
    decisions = models.JSONField(default=dict, blank=True)
    # The paused run this run resumed, for a run started by an ``interrupt_response``.
    resumed_from = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    # When a queued run was queued (None for a run started at once), and the channel of the worker process that
    # claimed it (cancels and replay requests go there; empty for a run of a web process).
    queued_at = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(max_length=200, blank=True, default="")
    # The ids of a queued prompt's attachments, read when the run starts (agentapp.attachments).
    attachment_ids = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["started_at"]
        indexes = [
            models.Index(fields=["conversation", "started_at"], name="agentapp_run_conv_started"),
            # The run in progress, or waiting for approval, of one conversation: read by every prompt and connect, so
            # its cost must not grow with the conversation's runs (the second index is the one SQLite picks for both).
            models.Index(fields=["conversation", "status"], name="agentapp_run_conv_status"),
            models.Index(
                fields=["conversation"],
                condition=models.Q(status__in=["running", "awaiting_approval"]),
                name="agentapp_run_conv_open",
            ),
            models.Index(fields=["status"], name="agentapp_run_status"),
            models.Index(fields=["user", "started_at"], name="agentapp_run_user_started"),
        ]

    def __str__(self) -> str:
        return f"{self.prompt[:40]} ({self.status})"


class RunStep(models.Model):
    """One node execution of a multi-agent run (a Strands Swarm or Graph): which node, how it ended, its result."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="steps")
    # The order the nodes finished in, from 0.
    position = models.PositiveIntegerField()
    # A Swarm's agent name or a Graph's node id, and Strands' node type ("agent", "swarm", "graph").
    node_id = models.CharField(max_length=200)
    node_type = models.CharField(max_length=32, blank=True, default="")
    # Strands' node status: completed, failed, interrupted, or cancelled.
    status = models.CharField(max_length=32)
    # The node's final text, and its result as Strands serializes it (``NodeResult.to_dict``, JSON-safe).
    text = models.TextField(blank=True, default="")
    result = models.JSONField(default=dict, blank=True)
    execution_time_ms = models.PositiveIntegerField(default=0)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["run", "position"]
        constraints = [models.UniqueConstraint(fields=["run", "position"], name="agentapp_runstep_run_position")]

    def __str__(self) -> str:
        return f"{self.node_id} ({self.status})"


class Message(models.Model):
    """One Strands message (role and content blocks) at its position in a conversation."""

    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    run = models.ForeignKey(Run, null=True, blank=True, on_delete=models.SET_NULL, related_name="messages")
    position = models.PositiveIntegerField()
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.JSONField(default=list)
    # True for assistant text cut short by a cancel, disconnect or failure, or saved while it still streams.
    partial = models.BooleanField(default=False)
    # True when text had to change to be stored: NUL characters and lone surrogates became U+FFFD.
    altered = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["conversation", "position"]
        constraints = [
            models.UniqueConstraint(fields=["conversation", "position"], name="agentapp_message_position_unique")
        ]

    def __str__(self) -> str:
        return f"#{self.position} {self.role}"


class ToolResult(models.Model):
    """The result of one tool call, linked to the user-role message that carried it to the model."""

    class Status(models.TextChoices):
        SUCCESS = "success"
        ERROR = "error"

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="tool_results")
    run = models.ForeignKey(Run, null=True, blank=True, on_delete=models.SET_NULL, related_name="tool_results")
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="tool_results")
    tool_use_id = models.CharField(max_length=128)
    tool_name = models.CharField(max_length=128, blank=True, default="")
    tool_input = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices)
    content = models.JSONField(default=list)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [
            models.Index(fields=["tool_name", "status"], name="agentapp_toolres_name_status"),
            models.Index(fields=["conversation", "tool_use_id"], name="agentapp_toolres_conv_use"),
        ]

    def __str__(self) -> str:
        return f"{self.tool_name} {self.status}"


class AgentState(models.Model):
    """A Strands agent's saved state in a conversation (``strands.types.session.SessionAgent`` minus its messages).

    Written after each run of a prompt (``preparing.Memory``) and by ``session.DjangoSessionRepository``.
    """

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="agent_states")
    agent_id = models.CharField(max_length=128)
    # SessionAgent.to_dict() without agent_id and timestamps: state, conversation_manager_state, _internal_state.
    # conversation_manager_state["removed_message_count"] is the position of the first message the manager keeps.
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["conversation", "agent_id"], name="agentapp_agentstate_conv_agent_unique")
        ]

    def __str__(self) -> str:
        return f"{self.agent_id} in {self.conversation_id}"


class ConversationMember(models.Model):
    """A user the owner shares a conversation with: a member may prompt and cancel, a viewer only watches."""

    class Role(models.TextChoices):
        MEMBER = "member"
        VIEWER = "viewer"

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="members")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="agent_memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.VIEWER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["conversation", "created_at"]
        constraints = [
            models.UniqueConstraint(fields=["conversation", "user"], name="agentapp_member_conv_user_unique")
        ]

    def __str__(self) -> str:
        return f"{self.user} ({self.role}) in {self.conversation}"

    def clean(self) -> None:
        """Only a user's conversation is shared, and never with its owner."""
        conversation = getattr(self, "conversation", None)
        if conversation is None:
            return
        if conversation.owner_id is None:
            raise ValidationError({"conversation": "Anonymous conversations cannot be shared."})
        if conversation.owner_id == self.user_id:
            raise ValidationError({"user": "The owner already has every right to the conversation."})


class UsageReport(Run):
    """Runs seen as usage: the admin's usage page (tokens and cost per day, model and user) lists this proxy."""

    class Meta:
        proxy = True
        verbose_name = "usage"
        verbose_name_plural = "usage"


class Quota(models.Model):
    """A token and/or cost budget per period for one user, or for each member of a group (agentapp.quotas)."""

    class Period(models.TextChoices):
        DAY = "day"
        WEEK = "week"
        MONTH = "month"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="agent_quotas"
    )
    group = models.ForeignKey(
        "auth.Group", null=True, blank=True, on_delete=models.CASCADE, related_name="agent_quotas"
    )
    period = models.CharField(max_length=8, choices=Period.choices, default=Period.DAY)
    max_tokens = models.PositiveBigIntegerField(null=True, blank=True, help_text="Total tokens per period; empty: any.")
    max_cost = models.DecimalField(
        max_digits=16, decimal_places=8, null=True, blank=True, help_text="Cost per period (PRICING units); empty: any."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["user", "group", "period"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(user__isnull=False, group__isnull=True)
                | models.Q(user__isnull=True, group__isnull=False),
                name="agentapp_quota_user_xor_group",
            ),
            models.CheckConstraint(
                condition=models.Q(max_tokens__isnull=False) | models.Q(max_cost__isnull=False),
                name="agentapp_quota_has_a_limit",
            ),
        ]

    def __str__(self) -> str:
        limits = [
            f"{self.max_tokens} tokens" if self.max_tokens is not None else "",
            f"cost {self.max_cost}" if self.max_cost is not None else "",
        ]
        return f"{self.user or self.group} per {self.period}: {', '.join(limit for limit in limits if limit)}"

    def clean(self) -> None:
        """A quota names a user or a group (not both) and sets at least one limit."""
        if (self.user_id is None) == (self.group_id is None):
            raise ValidationError("Choose a user or a group, not both.")
        if self.max_tokens is None and self.max_cost is None:
            raise ValidationError("Set a token limit, a cost limit or both.")


class Feedback(models.Model):
    """A user's thumbs up or down, with an optional comment, on one assistant message (one per user per message)."""

    class Rating(models.TextChoices):
        UP = "up"
        DOWN = "down"

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="feedback")
    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="feedback")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="agent_feedback"
    )
    # The anonymous owner's session (demo mode), when there is no user.
    session_key = models.CharField(max_length=64, blank=True, default="")
    rating = models.CharField(max_length=8, choices=Rating.choices)
    comment = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["message", "user"], condition=models.Q(user__isnull=False), name="agentapp_feedback_user_unique"
            ),
            models.UniqueConstraint(
                fields=["message", "session_key"],
                condition=models.Q(user__isnull=True),
                name="agentapp_feedback_session_unique",
            ),
        ]
        indexes = [models.Index(fields=["rating", "-updated_at"], name="agentapp_feedback_rating")]

    def __str__(self) -> str:
        return f"{self.rating} on #{self.message.position} by {self.user or 'anonymous'}"


def _attachment_path(instance: Attachment, filename: str) -> str:
    # The stored name is the attachment's id: the client's name is kept in ``original_name`` only.
    return f"agentapp/attachments/{instance.conversation_id}/{instance.id}"


class Attachment(models.Model):
    """A file uploaded into a conversation for a prompt: kept in Django's storage, given to the model as a block."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="attachments")
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="agent_attachments"
    )
    # The anonymous uploader's session (demo mode), when there is no user.
    session_key = models.CharField(max_length=64, blank=True, default="")
    file = models.FileField(upload_to=_attachment_path, max_length=255)
    original_name = models.CharField(max_length=255)
    # Sniffed from the file's first bytes (agentapp.attachments), never taken from the client.
    mime_type = models.CharField(max_length=100)
    size = models.PositiveIntegerField()
    sha256 = models.CharField(max_length=64)
    # Pixel size of an image, read from its header; None for documents.
    width = models.PositiveIntegerField(null=True, blank=True)
    height = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at"]
        indexes = [models.Index(fields=["conversation", "created_at"], name="agentapp_attach_conv_created")]

    def __str__(self) -> str:
        return f"{self.original_name} ({self.mime_type})"


@receiver(post_delete, sender=Conversation)
def _conversation_deleted(sender: type, instance: Conversation, **kwargs: Any) -> None:
    # Its live connections are closed with not_found (see agentapp.sharing), whoever deleted it (API, admin, code).
    from .sharing import announce_deleted

    announce_deleted(instance.pk)


@receiver(post_delete, sender=Attachment)
def _attachment_deleted(sender: type, instance: Attachment, **kwargs: Any) -> None:
    # The file goes with its row (deleted with its conversation too); a stored message's reference then reads "gone".
    if instance.file:
        instance.file.delete(save=False)


@receiver(post_save, sender=ConversationMember)
@receiver(post_delete, sender=ConversationMember)
def _membership_changed(sender: type, instance: ConversationMember, **kwargs: Any) -> None:
    # Live connections of this user follow the change (a removed user is disconnected); see agentapp.sharing.
    from .sharing import announce_role

    role = None if kwargs.get("signal") is post_delete else instance.role
    announce_role(instance.conversation_id, instance.user_id, role)
