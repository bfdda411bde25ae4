"""Stored conversations of a given length for the history benchmark, written straight into the database.

Runs in a process of its own (``python -m bench.seed --database-url URL --session KEY --count R --messages N ...``),
since Django's settings are per process, and prints the new conversation ids per N as JSON. Each conversation belongs
to the anonymous session ``KEY`` and holds N messages shaped as real runs store them (``agentapp/transcript.py``):
turns of a user prompt and an assistant answer, each turn with its completed ``Run`` row, positions 0..N-1, content
encoded with ``agentapp.protocol.to_storable``. With N odd, the first message is an assistant greeting, so that
the history always ends with an answer and a new prompt starts a turn of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import uuid
from typing import Any

from bench.servers import ROOT, BenchError, base_env

SUBPROCESS_TIMEOUT = 600.0
BATCH = 2_000
PROMPT = "What is the weather like on the coast in spring?"
ANSWER = (
    "Spring on the coast is usually mild and changeable: cool mornings, sunny afternoons and a fresh breeze "
    "from the sea, with a shower now and then. Bring a light jacket and check the forecast before you go."
)
GREETING = "Hello! Ask me anything, or give me some arithmetic to do."


def seed(session_key: str, messages: int, count: int) -> list[str]:
    """Create ``count`` conversations of ``messages`` messages each; return their ids."""
    from django.db import transaction
    from django.utils import timezone

    from agentapp.models import Conversation, Message, Run
    from agentapp.protocol import to_storable

    now = timezone.now()
    conversations = [
        Conversation(pk=uuid.uuid4(), session_key=session_key, title=f"{messages} messages") for _ in range(count)
    ]
    runs: list[Run] = []
    rows: list[Message] = []
    for conversation in conversations:
        position = 0
        if messages % 2:
            content = to_storable([{"text": GREETING}])
            rows.append(Message(conversation=conversation, position=0, role="assistant", content=content))
            position = 1
        while position < messages:
            run = Run(pk=uuid.uuid4(), conversation=conversation, prompt=PROMPT, status="completed", finished_at=now)
            runs.append(run)
            for role, text in (("user", PROMPT), ("assistant", ANSWER)):
                content: Any = to_storable([{"text": text}])
                rows.append(Message(conversation=conversation, run=run, position=position, role=role, content=content))
                position += 1
    with transaction.atomic():
        Conversation.objects.bulk_create(conversations, batch_size=BATCH)
        Run.objects.bulk_create(runs, batch_size=BATCH)
        Message.objects.bulk_create(rows, batch_size=BATCH)
    return [str(conversation.pk) for conversation in conversations]


def main() -> None:
    """Command line: seed the database in ``--database-url`` and print the conversation ids as JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--session", required=True)
    parser.add_argument("--messages", type=int, nargs="+", required=True)
    parser.add_argument("--count", type=int, default=1)
    args = parser.parse_args()
    os.environ["DATABASE_URL"] = args.database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    os.environ["DJANGO_DEBUG"] = "0"
    import django

    django.setup()
    print(json.dumps({str(size): seed(args.session, size, args.count) for size in args.messages}))


def conversations(database_url: str, session_key: str, sizes: list[int], count: int) -> dict[int, list[str]]:
    """Run this module in a subprocess; returns the ids of the conversations it stored, per number of messages."""
    argv = [sys.executable, "-m", "bench.seed", "--database-url", database_url, "--session", session_key]
    done = subprocess.run(
        [*argv, "--count", str(count), "--messages", *map(str, sizes)],
        cwd=ROOT,
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"bench.seed exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return {int(size): ids for size, ids in json.loads(done.stdout.strip().splitlines()[-1]).items()}


if __name__ == "__main__":
    main()
