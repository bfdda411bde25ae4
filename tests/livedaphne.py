"""A real daphne process serving the example site on a free port, for tests that drive it from outside.

The server gets a database of its own (a file SQLite DB, or a fresh PostgreSQL database when the test
session's ``DATABASE_URL`` names PostgreSQL), migrated before it starts; pytest-django's test database is
not involved.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
START_TIMEOUT = 30
MIGRATE_TIMEOUT = 180
STOP_TIMEOUT = 10


@dataclass(frozen=True)
class LiveDaphne:
    """A running server: its base URL and the file its output goes to."""

    url: str
    log: Path

    def output(self) -> str:
        """Everything the server printed so far."""
        return self.log.read_text(encoding="utf-8", errors="replace")


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


@contextmanager
def own_database(tmp_dir: Path) -> Iterator[str]:
    """A database URL for the server alone; a PostgreSQL database made here is dropped on exit."""
    session_url = os.environ.get("DATABASE_URL", "")
    if not session_url.startswith(("postgres://", "postgresql://", "pgsql://")):
        yield f"sqlite:///{tmp_dir / 'live.sqlite3'}"
        return
    import psycopg
    from psycopg import sql

    parts = urlsplit(session_url)
    name = f"agentapp_live_{os.getpid()}_{secrets.token_hex(3)}"
    maintenance = urlunsplit(parts._replace(scheme="postgresql", path="/postgres"))
    with psycopg.connect(maintenance, autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(maintenance, autocommit=True) as connection:
            connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


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


@contextmanager
def live_daphne(tmp_dir: Path, env: Mapping[str, str] | None = None) -> Iterator[LiveDaphne]:
    """Migrate a database of its own, serve ``project.asgi:application`` with daphne, stop it on exit."""
    daphne = BIN / "daphne"
    if not daphne.exists():
        pytest.fail(f"{daphne} is missing: install requirements.txt into this virtualenv")
    with own_database(tmp_dir) as database_url:
        server_env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "project.settings",
            "DATABASE_URL": database_url,
            "DJANGO_DEBUG": "1",
            "AGENTAPP_MODEL": "offline",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        migrate = subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput"],
            cwd=ROOT,
            env=server_env,
            capture_output=True,
            text=True,
            timeout=MIGRATE_TIMEOUT,
            check=False,
        )
        if migrate.returncode != 0:
            pytest.fail(f"migrate exited with {migrate.returncode}:\n{migrate.stdout}\n{migrate.stderr}")
        port = free_port()
        log = tmp_dir / "daphne.log"
        with log.open("wb") as output:
            server = subprocess.Popen(
                [str(daphne), "-b", HOST, "-p", str(port), "project.asgi:application"],
                cwd=ROOT,
                env=server_env,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_for_port(port, server, log)
            yield LiveDaphne(url=f"http://{HOST}:{port}", log=log)
        finally:
            stop(server)
