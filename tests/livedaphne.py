"""Real daphne processes serving the example site on free ports, for tests that drive them from outside.

A server gets a database of its own (a file SQLite DB, or a fresh PostgreSQL database when the test
session's ``DATABASE_URL`` names PostgreSQL), migrated before it starts; pytest-django's test database is
not involved. ``live_cluster`` starts several servers sharing one fresh PostgreSQL database, and
``live_socket`` talks to them over real WebSockets.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
START_TIMEOUT = 30
MIGRATE_TIMEOUT = 180
STOP_TIMEOUT = 10
POSTGRES_SCHEMES = ("postgres://", "postgresql://", "pgsql://")


@dataclass(frozen=True)
class LiveDaphne:
    """A running server: its base URL and the file its output goes to."""

    url: str
    log: Path
    pid: int = 0  # the server process, for tests that kill it

    def output(self) -> str:
        """Everything the server printed so far."""
        return self.log.read_text(encoding="utf-8", errors="replace")


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


### Databases ###


def postgres_url() -> str:
    """The PostgreSQL server for tests that need one: the session's ``DATABASE_URL`` when it is PostgreSQL."""
    session_url = os.environ.get("DATABASE_URL", "")
    if session_url.startswith(POSTGRES_SCHEMES):
        return session_url
    return os.environ.get("AGENTAPP_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")


@contextmanager
def postgres_database(prefix: str = "agentapp_live") -> Iterator[str]:
    """The URL of a fresh PostgreSQL database, dropped on exit."""
    import psycopg
    from psycopg import sql

    parts = urlsplit(postgres_url())
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(3)}"
    maintenance = urlunsplit(parts._replace(scheme="postgresql", path="/postgres"))
    with psycopg.connect(maintenance, autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(maintenance, autocommit=True) as connection:
            connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextmanager
def own_database(tmp_dir: Path) -> Iterator[str]:
    """A database URL for the server alone; a PostgreSQL database made here is dropped on exit."""
    if not os.environ.get("DATABASE_URL", "").startswith(POSTGRES_SCHEMES):
        yield f"sqlite:///{tmp_dir / 'live.sqlite3'}"
        return
    with postgres_database() as url:
        yield url


### Servers ###


def wait_for_port(port: int, server: subprocess.Popen[bytes], log: Path) -> None:
    """Poll until the server accepts connections; fail if it exits or START_TIMEOUT passes."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"daphne exited with {server.returncode}:\n{log.read_text(errors='replace')}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)  # poll interval, not synchronization: the loop re-checks the condition
    pytest.fail(f"daphne did not listen on {port} within {START_TIMEOUT}s:\n{log.read_text(errors='replace')}")


def stop(server: subprocess.Popen[bytes]) -> None:
    """Terminate the server, killing it if it does not exit promptly."""
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=STOP_TIMEOUT)


def server_env(database_url: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a server process, and of manage.py commands against its database."""
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "DATABASE_URL": database_url,
        "DJANGO_DEBUG": "1",
        "AGENTAPP_MODEL": "offline",
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }


def manage(environment: Mapping[str, str], *args: str) -> str:
    """Run a manage.py command and return its output; fail the test if it fails."""
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=dict(environment),
        capture_output=True,
        text=True,
        timeout=MIGRATE_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"manage.py {args[0]} exited with {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done.stdout


@contextmanager
def serve(environment: Mapping[str, str], log: Path) -> Iterator[LiveDaphne]:
    """Serve ``project.asgi:application`` with agentapp's daphne (``python -m agentapp.server``) on a free port.

    The database is migrated already.
    """
    port = free_port()
    with log.open("wb") as output:
        server = subprocess.Popen(
            [sys.executable, "-m", "agentapp.server", "-b", HOST, "-p", str(port), "project.asgi:application"],
            cwd=ROOT,
            env=dict(environment),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port, server, log)
        yield LiveDaphne(url=f"http://{HOST}:{port}", log=log, pid=server.pid)
    finally:
        stop(server)


@contextmanager
def live_daphne(tmp_dir: Path, env: Mapping[str, str] | None = None) -> Iterator[LiveDaphne]:
    """Migrate a database of its own, serve ``project.asgi:application`` with daphne, stop it on exit."""
    with own_database(tmp_dir) as database_url:
        environment = server_env(database_url, env)
        manage(environment, "migrate", "--noinput")
        with serve(environment, tmp_dir / "daphne.log") as live:
            yield live


### Several servers on one database ###

# Run by ``manage.py shell``: users with logged-in sessions, and a conversation shared with some of them.
SEED_SCRIPT = """
import json, os
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.sessions.backends.db import SessionStore
from agentapp.models import Conversation, ConversationMember

spec = json.loads(os.environ["AGENTAPP_TEST_SEED"])
seeded = {"users": {}, "conversation": None}
for name in spec["users"]:
    user = get_user_model().objects.create_user(name, password=None)
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    seeded["users"][name] = {"id": user.pk, "session": session.session_key}
if spec["owner"]:
    conversation = Conversation.objects.create(owner_id=seeded["users"][spec["owner"]]["id"])
    for name, role in spec["members"].items():
        ConversationMember.objects.create(conversation=conversation, user_id=seeded["users"][name]["id"], role=role)
    seeded["conversation"] = str(conversation.pk)
print(json.dumps(seeded))
"""


@dataclass(frozen=True)
class LiveCluster:
    """Several servers sharing one database (and whatever channel layer their environment names)."""

    servers: list[LiveDaphne]
    environment: dict[str, str]

    def seed(self, users: list[str], owner: str | None = None, members: Mapping[str, str] | None = None) -> Any:
        """Create users with sessions, and a conversation of ``owner`` shared with ``members`` (name -> role).

        Returns ``{"users": {name: {"id", "session"}}, "conversation": id or None}``.
        """
        spec = {"users": users, "owner": owner, "members": dict(members or {})}
        output = manage({**self.environment, "AGENTAPP_TEST_SEED": json.dumps(spec)}, "shell", "-c", SEED_SCRIPT)
        return json.loads(output.strip().splitlines()[-1])


@contextmanager
def live_cluster(tmp_dir: Path, count: int, env: Mapping[str, str]) -> Iterator[LiveCluster]:
    """``count`` daphne processes on one fresh, migrated PostgreSQL database, dropped when they stop."""
    with postgres_database("agentapp_cluster") as database_url:
        environment = server_env(database_url, env)
        manage(environment, "migrate", "--noinput")
        with ExitStack() as stack:
            servers = [stack.enter_context(serve(environment, tmp_dir / f"daphne-{n}.log")) for n in range(count)]
            yield LiveCluster(servers, environment)


def redis_pair(tmp_dir: Path) -> Iterator[LiveCluster]:
    """Two servers on Redis and one PostgreSQL database, the offline model at 300 tokens/s; on the way out, both
    logs are checked for tracebacks and errors (a module fixture's body: ``yield from redis_pair(...)``)."""
    from tests.conftest import REDIS_URL, require_redis

    require_redis()
    env = {"REDIS_URL": REDIS_URL, "AGENTAPP_DEMO": "0", "AGENTAPP_OFFLINE_TPS": "300"}
    with live_cluster(tmp_dir, 2, env) as live:
        yield live
    for server in live.servers:
        output = server.output()
        assert "Traceback" not in output and " ERROR " not in output, output


@asynccontextmanager
async def http_client(server: LiveDaphne, session_key: str, timeout: float = 15) -> AsyncIterator[Any]:
    """A logged-in httpx client holding the CSRF cookie, sending the token and the site's Origin with each request."""
    import httpx

    async with httpx.AsyncClient(base_url=server.url, cookies={"sessionid": session_key}, timeout=timeout) as client:
        (await client.get("/api/conversations/")).raise_for_status()
        client.headers.update({"X-CSRFToken": client.cookies["csrftoken"], "Origin": server.url})
        yield client


### Real WebSocket clients ###

RECEIVE_TIMEOUT = 15


class LiveSocket:
    """One WebSocket connection to a live server, speaking the agentapp protocol."""

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection

    async def receive(self, timeout: float = RECEIVE_TIMEOUT) -> dict[str, Any]:
        """The next frame; fails the test after ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            raw = await self.connection.recv()
        frame = json.loads(raw)
        assert isinstance(frame, dict), raw
        return frame

    async def hello(self) -> dict[str, Any]:
        """The ``conversation`` frame, failing the test on anything else."""
        frame = await self.receive()
        assert frame["type"] == "conversation", frame
        return frame

    async def prompt(self, text: str) -> None:
        await self.connection.send(json.dumps({"type": "prompt", "prompt": text}))

    async def until(self, done: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]]:
        """Receive frames until ``done(frames so far)`` is true; return them."""
        frames: list[dict[str, Any]] = []
        while not frames or not done(frames):
            frames.append(await self.receive())
        return frames

    async def until_finished(self) -> list[dict[str, Any]]:
        """Receive frames up to and including ``run_finished``."""
        return await self.until(lambda frames: frames[-1]["type"] == "run_finished")

    async def close_code(self, timeout: float = RECEIVE_TIMEOUT) -> int | None:
        """Wait for the server to close the connection and return its close code."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    await self.connection.recv()
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None


@asynccontextmanager
async def live_socket(server: LiveDaphne, path: str, session_key: str | None = None) -> AsyncIterator[LiveSocket]:
    """A WebSocket to ``path`` on the server, sending the site's Origin and a session cookie."""
    url = server.url.replace("http://", "ws://", 1) + path
    headers = {"Cookie": f"sessionid={session_key}"} if session_key else {}
    async with connect(url, origin=server.url, additional_headers=headers, max_size=None) as connection:
        yield LiveSocket(connection)
