"""The one place agentapp reads its settings: the ``AGENTAPP`` dict, merged over documented defaults."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

# What AGENTAPP["IF_BUSY"] (and a prompt's ``if_busy``) may say.
IF_BUSY_POLICIES = ("reject", "enqueue", "interrupt")

DEFAULTS: dict[str, Any] = {
    # Dotted path of a callable ``factory(conversation, user) -> strands.Agent``.
    "AGENT_FACTORY": "agentapp.agents.build_default_agent",
    # Model of the default factory: "offline" (deterministic, no network), "bedrock", "openai" (any OpenAI-compatible
    # server with a base_url), "anthropic", or the dotted path of a callable(**MODEL_OPTIONS) returning a strands Model.
    "MODEL": "offline",
    # Model id given to the provider as ``model_id``; None: the provider's default (see docs/settings.md).
    "MODEL_ID": None,
    # Keyword arguments for the provider's Strands model class (client_args, params, max_tokens, ...); they win.
    "MODEL_OPTIONS": {},
    # Keyword arguments for strands' ``ModelRetryStrategy`` (throttling retries of the default agent, any provider).
    "MODEL_RETRY": {},
    # Bedrock model id and region, used when MODEL is "bedrock".
    "BEDROCK_MODEL_ID": "us.anthropic.claude-sonnet-4-20250514-v1:0",
    "BEDROCK_REGION": None,
    # Endpoint boto3 sends Bedrock Runtime requests to (a VPC endpoint, a proxy, a test fake); None: AWS's own.
    "BEDROCK_ENDPOINT_URL": None,
    # Keyword arguments for the boto3 client's ``botocore.config.Config`` (retries, timeouts); None: strands' own.
    "BEDROCK_CLIENT_CONFIG": None,
    # Keyword arguments for strands' ``ModelRetryStrategy`` (throttling retries of the default agent on Bedrock).
    "BEDROCK_RETRY": {},
    # Extra keyword arguments for BedrockModel; they win over the keys above.
    "BEDROCK_OPTIONS": {},
    # Offline model pacing: tokens per second (0 streams with no delay).
    "OFFLINE_TOKENS_PER_SECOND": 0,
    # System prompt of the default agent.
    "SYSTEM_PROMPT": "You are a helpful assistant. Use the calculator for arithmetic.",
    # Hosts the default agent's http_get tool may fetch from: "host" (ports 80/443) or "host:port"; empty: none.
    "HTTP_TOOL_ALLOWED_HOSTS": [],
    # Time limit of one calculator call, in seconds; past it its worker process is killed and the call fails.
    "TOOL_CPU_SECONDS": 2,
    # Worker processes that run calculator calls (started on first use, shared by the threads of a process).
    "TOOL_WORKERS": 2,
    # Largest accepted prompt, in characters.
    "MAX_PROMPT_CHARS": 16_000,
    # Largest accepted client frame, in bytes (text) or any binary frame.
    "MAX_FRAME_BYTES": 64_000,
    # Largest WebSocket message agentapp.server's daphne reads (above MAX_FRAME_BYTES); past it: close code 1009.
    "SERVER_MAX_MESSAGE_BYTES": 1_048_576,
    # Deepest nesting of arrays and objects in client JSON (frames, SSE and API bodies); deeper gets ``too_deep``.
    "MAX_JSON_DEPTH": 32,
    # Whether anonymous users may open conversations (their own, bound to the session).
    "ALLOW_ANONYMOUS": False,
    # Stored messages a prompt reads for an agent whose conversation manager has no sliding window (a summarizing one
    # reads those after its summary, at most this many); 0: all of them.
    "MAX_HISTORY_MESSAGES": 500,
    # How many messages of history the ``conversation`` frame carries on connect.
    "HISTORY_FRAME_MESSAGES": 200,
    # Window in seconds within which text deltas are merged before a group broadcast.
    "BROADCAST_WINDOW_SECONDS": 0.03,
    # Longest wait for one channel-layer call (a group send, a replay); a layer that hangs (Redis away) is skipped.
    "BROADCAST_SEND_TIMEOUT_SECONDS": 1.0,
    # Pause between attempts to reach a channel layer that failed: resending a run's frames, rejoining a group.
    "BROADCAST_RETRY_SECONDS": 0.5,
    # How long a connection waits for the replay of a run in progress before going on without it.
    "SYNC_TIMEOUT_SECONDS": 2.0,
    # How long a finished run's frames stay in the memory of the process that ran it, for late joiners.
    "RUN_LOG_KEEP_SECONDS": 30,
    # Frames waiting to be written to one socket; past this the socket is closed as a slow consumer.
    "SOCKET_QUEUE_FRAMES": 1000,
    # Longest a socket's writes wait for the server's full write buffer to drain before it is closed as a slow consumer.
    "SOCKET_WRITE_STALL_SECONDS": 30,
    # Unsent bytes the kernel may hold per WebSocket (TCP_NOTSENT_LOWAT, set by agentapp.server); 0: the OS default.
    "SERVER_SEND_LOWAT_BYTES": 131_072,
    # Wall-clock limit of one run, in seconds; a run over it is stopped and ends ``failed``.
    "RUN_TIME_LIMIT_SECONDS": 600,
    # A running run whose process has not renewed its lease for this long died with it: the next process to touch
    # the conversation ends it ``interrupted``. The owner renews every quarter of it.
    "RUN_LEASE_SECONDS": 10,
    # Streamed assistant text is saved at most this long after it was sent, so a crash loses about this much.
    "PARTIAL_SAVE_SECONDS": 1.0,
    # Seconds between a process's presence heartbeats; a process silent for 2.5 of them is no longer counted.
    "PRESENCE_HEARTBEAT_SECONDS": 30,
    # Seconds between keep-alive comments on an idle Server-Sent Events stream (proxies close silent ones).
    "SSE_KEEPALIVE_SECONDS": 15,
    # Names of tools whose every call waits for a human's approval (besides tools marked ``requires_approval``).
    "APPROVAL_TOOLS": [],
    # Runs a logged-in user may start per minute, over all their conversations (``rate_limited``); 0: no limit.
    "RUNS_PER_USER_PER_MINUTE": 30,
    # Runs one server process streams at once; a prompt past it gets ``server_busy``. 0: no limit.
    "MAX_CONCURRENT_RUNS": 100,
    # Whether a run goes on when the socket that started it closes (True) or is cancelled (False).
    "RUNS_CONTINUE_ON_DISCONNECT": False,
    # The channel worker processes (``manage.py agentapp_worker``) take runs from; None: each web process runs the
    # agents of its own prompts (see docs/deployment.md).
    "WORKER_CHANNEL": None,
    # What a prompt sent while its conversation runs (or queues) a prompt does, unless it says: "reject" (``busy``),
    # "enqueue" (it runs after) or "interrupt" (the run going on is cancelled, then it runs).
    "IF_BUSY": "reject",
    # Queued prompts one conversation may hold; past it a prompt gets ``queue_full``.
    "MAX_QUEUED_RUNS": 10,
    # Runs one worker process runs at once; the others wait queued.
    "WORKER_CONCURRENCY": 20,
    # Seconds a worker told to stop (SIGTERM, SIGINT) lets its runs finish before it cancels them; it takes no new one.
    "WORKER_DRAIN_SECONDS": 25.0,
    # How often each worker ends runs whose process died and starts queued runs no worker took.
    "WORKER_SWEEP_SECONDS": 2.0,
    # New conversations one user (or anonymous session) may start per hour (``too_many_conversations``); 0: no limit.
    "CONVERSATIONS_PER_HOUR": 60,
    # Client frames one connection may send at once; past it they are refused (``too_many_frames``), see pacing.py.
    "CLIENT_FRAME_BURST": 30,
    # Client frames per second one connection may send on average, once its burst is spent.
    "CLIENT_FRAMES_PER_SECOND": 5,
    # Longest time the cleanup of a closed socket may take (presence, the run's save, leaving the group).
    "DISCONNECT_TIMEOUT_SECONDS": 5.0,
    # Prices per million tokens by model id: {"model-id": {"input": 3, "output": 15, "cache_read": 0.3,
    # "cache_write": 3.75}} (any kind left out costs 0); a run's cost is stored at its end (see docs/usage.md).
    "PRICING": {},
    # Longest comment a feedback may carry, in characters.
    "FEEDBACK_COMMENT_MAX_CHARS": 2000,
    # Dotted path of ``callable(conversation, first_prompt, first_answer) -> str`` titling a conversation after its
    # first answer, outside the run (e.g. "agentapp.titles.offline_title"); None: the first prompt's start.
    "TITLE_GENERATOR": None,
    # Largest file the attachment upload takes, in bytes (Bedrock's limit of a document block is 4.5 MB).
    "ATTACHMENT_MAX_BYTES": 4_500_000,
    # Largest image, in bytes (Bedrock's limit of an image block is 3.75 MB).
    "ATTACHMENT_MAX_IMAGE_BYTES": 3_750_000,
    # MIME types an upload may have, as its bytes show them (agentapp.sniffing), not as the client says.
    "ATTACHMENT_TYPES": [
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/webp",
        "application/pdf",
        "text/plain",
        "text/csv",
        "text/markdown",
    ],
    # Files one user (or anonymous session) may upload per hour, over all conversations (HTTP 429
    # ``rate_limited``); 0: no limit.
    "ATTACHMENTS_PER_HOUR": 60,
    # Bytes one user (or anonymous session) may upload per hour, over all conversations; 0: no limit.
    "ATTACHMENT_BYTES_PER_HOUR": 100_000_000,
    # Attachments one prompt may carry.
    "MAX_PROMPT_ATTACHMENTS": 5,
    # PostgreSQL text search configuration of conversation search ("simple": no stemming, no stop words).
    "SEARCH_CONFIG": "simple",
    # Longest search query (the API's ``q``), in characters.
    "SEARCH_MAX_CHARS": 200,
}


class AppSettings:
    """Attribute access to agentapp settings, user values over ``DEFAULTS``."""

    def __init__(self) -> None:
        self._cache: dict[str, Any] | None = None

    def _merged(self) -> dict[str, Any]:
        if not settings.configured:
            # Outside a Django project (the tools in a plain Strands script): the documented defaults, not cached.
            return DEFAULTS
        if self._cache is None:
            user = getattr(settings, "AGENTAPP", {}) or {}
            unknown = set(user) - set(DEFAULTS)
            if unknown:
                from django.core.exceptions import ImproperlyConfigured

                raise ImproperlyConfigured(f"Unknown AGENTAPP settings: {sorted(unknown)}")
            if user.get("IF_BUSY", DEFAULTS["IF_BUSY"]) not in IF_BUSY_POLICIES:
                from django.core.exceptions import ImproperlyConfigured

                raise ImproperlyConfigured(f"AGENTAPP['IF_BUSY'] must be one of {list(IF_BUSY_POLICIES)}")
            self._cache = {**DEFAULTS, **user}
        return self._cache

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._merged()[name]
        except KeyError:
            raise AttributeError(f"No AGENTAPP setting {name!r}") from None

    def reload(self) -> None:
        """Forget cached values so the next access reads settings again."""
        self._cache = None


app_settings = AppSettings()


@receiver(setting_changed)
def _reload_on_change(*, setting: str, **kwargs: Any) -> None:
    if setting == "AGENTAPP":
        app_settings.reload()
