"""``manage.py agentapp_worker``: Channels' ``runworker`` on the ``WORKER_CHANNEL`` channel, sweeping from its start
and draining its runs when told to stop (SIGTERM or SIGINT; a second signal cancels them at once)."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from channels.management.commands.runworker import Command as RunWorkerCommand
from channels.worker import Worker
from django.core.management import CommandError

from agentapp.conf import app_settings
from agentapp.workers import WAKE_MESSAGE_TYPE, drain

logger = logging.getLogger(__name__)

# How long a worker waits before listening again after the channel layer failed, doubled up to the maximum.
LISTEN_RETRY_SECONDS = 0.5
LISTEN_RETRY_MAX_SECONDS = 5.0


class SweepingWorker(Worker):
    """A Channels worker whose consumers start at once (a plain one starts each at its channel's first message),
    so queued runs are taken even when no prompt rings; that outlives a channel layer going away (Redis
    restarting): its runs and sweeps go on, and it listens again once the layer is back; and that, told to stop,
    takes no more runs and lets its own finish for ``WORKER_DRAIN_SECONDS`` before it cancels them and exits."""

    async def handle(self) -> None:
        stop, at_once = asyncio.Event(), asyncio.Event()

        def told_to_stop() -> None:
            (at_once if stop.is_set() else stop).set()

        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, told_to_stop)
        for channel in self.channels:
            queue = self.get_or_create_application_instance(channel, {"type": "channel", "channel": channel})
            queue.put_nowait({"type": WAKE_MESSAGE_TYPE})
        listeners = [asyncio.ensure_future(self.listener(channel)) for channel in self.channels]
        await stop.wait()
        for listener in listeners:  # no more doorbells: the consumers' own channels (cancels, replays) stay open
            listener.cancel()
        grace = app_settings.WORKER_DRAIN_SECONDS
        logger.info("agentapp: the worker takes no more runs and lets its runs finish (up to %gs)", grace)
        cancelled = await drain(grace, at_once)
        logger.info("agentapp: the worker stopped (%d runs cancelled)", cancelled)

    async def listener(self, channel: str) -> None:
        """Listen on ``channel``, again and again after the layer failed (a plain worker exits then)."""
        pause = LISTEN_RETRY_SECONDS
        while True:
            try:
                await super().listener(channel)
            except Exception as exc:  # the layer's own errors (redis.ConnectionError) included
                logger.warning("agentapp: the worker lost the channel layer (%r); listening again in %gs", exc, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, LISTEN_RETRY_MAX_SECONDS)


class Command(RunWorkerCommand):
    help = "Run agents of queued prompts: a Channels worker on the WORKER_CHANNEL channel (see docs/deployment.md)."
    worker_class = SweepingWorker

    def add_arguments(self, parser: Any) -> None:
        super().add_arguments(parser)
        for action in parser._actions:
            if action.dest == "channels":
                action.nargs = "*"

    def handle(self, *args: Any, **options: Any) -> None:
        channel = app_settings.WORKER_CHANNEL
        if not options.get("channels"):
            if not channel:
                raise CommandError("Set AGENTAPP['WORKER_CHANNEL'] (see docs/deployment.md) or name the channels.")
            options["channels"] = [channel]
        super().handle(*args, **options)
