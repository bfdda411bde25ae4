"""Server processes under test, each on a free loopback port, started on demand and always stopped.

A ``ServerPool`` is a context manager: whatever happens inside it, every process it started is terminated
(then killed if it lingers) on the way out.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
START_TIMEOUT = 45.0
STOP_TIMEOUT = 10.0
MIGRATE_TIMEOUT = 180.0
REDIS_URL = "redis://127.0.0.1:6379/2"
POSTGRES_URL = "postgres://postgres@127.0.0.1:5432/agentapp_bench"
# Settings of benchmark 4's paced servers: the example site's, with the agent of bench/stamped.py, whose text
# deltas are their emit times (project/asgi.py only sets DJANGO_SETTINGS_MODULE when it is unset).
STAMPED_SETTINGS = "bench.settings_stamped"
# Settings of benchmark 1's per-delta agentapp case: the example site's, with the socket outbox merging nothing.
UNMERGED_SETTINGS = "bench.settings_unmerged"
# The database both fan-out processes share (dropped and recreated once per harness run).
FANOUT_POSTGRES_URL = "postgres://postgres@127.0.0.1:5432/agentapp_bench_fanout"
# AGENTAPP_CHANNEL_LAYER values of project/settings.py: channels_redis's core and pub/sub layers.
FANOUT_LAYERS = ("core", "pubsub")
# Benchmark 8: the database its processes share, and the channel its web process rings and its worker listens on.
WORKERS_POSTGRES_URL = "postgres://postgres@127.0.0.1:5432/agentapp_bench_workers"
WORKER_CHANNEL = "agentapp.runs"
# Messages channels_redis's core layer holds for one process's channels (its default, 100, is shared by all of them:
# with workers every frame of every run reaches the web process through it, and past 100 waiting frames it drops).
WORKERS_LAYER_CAPACITY = 100_000
# Inherited variables that would change what a server does; each server sets its own.
_SCRUBBED = (
    "DATABASE_URL",
    "REDIS_URL",
    "AGENTAPP_CHANNEL_LAYER",
    "AGENTAPP_OFFLINE_TPS",
    "AGENTAPP_DEMO",
    "AGENTAPP_MAX_CONCURRENT_RUNS",
    "BENCH_BARE_TPS",
    "BENCH_FANOUT_LAYER",
)


class BenchError(RuntimeError):
    """The harness could not do what a benchmark needs (a server did not start, a service is down)."""


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def base_env(**extra: str) -> dict[str, str]:
    """This process's environment without the variables a server must not inherit, plus ``extra`` (which may
    name another ``DJANGO_SETTINGS_MODULE``)."""
    env = {key: value for key, value in os.environ.items() if key not in _SCRUBBED}
    env.update(PYTHONUNBUFFERED="1", DJANGO_SETTINGS_MODULE="project.settings")
    env.update(extra)
    return env


### Databases ###


def migrate(database_url: str) -> None:
    """Run ``manage.py migrate`` against ``database_url``, raising BenchError with its output on failure."""
    done = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput"],
        cwd=ROOT,
        env=base_env(DATABASE_URL=database_url, DJANGO_DEBUG="0"),
        capture_output=True,
        text=True,
        timeout=MIGRATE_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"migrate {database_url} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")


def fresh_sqlite(template: Path, target: Path) -> str:
    """Copy the migrated template SQLite file to ``target`` and return its URL."""
    shutil.copyfile(template, target)
    return f"sqlite:///{target}"


def fresh_postgres(url: str = POSTGRES_URL) -> str:
    """Drop and recreate the benchmark PostgreSQL database, migrate it, and return its URL."""
    import psycopg
    from psycopg import sql

    name = url.rsplit("/", 1)[1]
    maintenance = url.rsplit("/", 1)[0].replace("postgres://", "postgresql://", 1) + "/postgres"
    try:
        with psycopg.connect(maintenance, autocommit=True, connect_timeout=5) as connection:
            connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.Error as exc:
        raise BenchError(f"PostgreSQL at {maintenance} is required and not usable: {exc}") from exc
    migrate(url)
    return url


def require_redis(url: str = REDIS_URL) -> None:
    """Fail loudly when the Redis server the Redis-layer case needs is not answering."""
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        raise BenchError(f"Redis at {url} is required and not reachable: {exc}") from exc


### Processes ###


@dataclass
class Server:
    """One server process: its command (``{port}`` filled in), environment overrides and log file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    # Text shown differently by command() (another server's port, say), as {text: shown instead}.
    placeholders: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def command(self) -> str:
        """The command line as a person would type it, with the overriding variables in front."""
        shown = {key: value for key, value in self.env.items() if key not in ("PYTHONUNBUFFERED",)}
        words = [f"{key}={value}" for key, value in shown.items()]
        words += [Path(self.argv[0]).name, *self.argv[1:]]
        shown_text = " ".join(words)
        for text, placeholder in self.placeholders.items():
            shown_text = shown_text.replace(text, placeholder)
        return shown_text.replace(str(self.port), "<port>")

    def start(self) -> None:
        """Launch the process with its output going to the log file."""
        with self.log.open("wb") as output:
            self.process = subprocess.Popen(
                self.argv, cwd=ROOT, env=base_env(**self.env), stdout=output, stderr=subprocess.STDOUT
            )

    def wait_ready(self) -> None:
        """Poll until the port accepts connections; raise BenchError if the process dies or is too slow."""
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"{self.name} exited with {self.process.returncode}:\n{self.output()}")
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)  # poll interval; the loop re-checks the condition
        raise BenchError(f"{self.name} did not listen on {self.port} within {START_TIMEOUT:g}s:\n{self.output()}")

    def stop(self) -> None:
        """Terminate the process, killing it if it does not exit promptly."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT)

    def output(self) -> str:
        """The last lines the server printed."""
        text = self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-40:])


def daphne(name: str, app: str, env: Mapping[str, str], workdir: Path) -> Server:
    """A plain daphne server for the ASGI application at ``app`` (the bare Channels baseline)."""
    port = free_port()
    argv = [str(BIN / "daphne"), "-b", HOST, "-p", str(port), app]
    return Server(name, argv, dict(env), workdir / f"{name}.log", port=port)


def agentapp_server(name: str, app: str, env: Mapping[str, str], workdir: Path) -> Server:
    """Daphne as agentapp serves it (``python -m agentapp.server``: its message limit and write backpressure)."""
    port = free_port()
    argv = [sys.executable, "-m", "agentapp.server", "-b", HOST, "-p", str(port), app]
    return Server(name, argv, dict(env), workdir / f"{name}.log", port=port)


def redis_server(name: str, workdir: Path) -> Server:
    """A Redis server of the harness's own (no persistence), so that its command statistics count only us."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchError("redis-server is not installed; the fan-out benchmark starts a Redis of its own")
    port = free_port()
    argv = [binary, "--bind", HOST, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(workdir)]
    return Server(name, argv, {}, workdir / f"{name}.log", port=port)


class WorkerProcess(Server):
    """A ``manage.py agentapp_worker`` process: it listens on a channel, not on its port (which stays unused)."""

    def wait_ready(self) -> None:
        """Raise BenchError if the process already exited; a first run shows that it takes work."""
        assert self.process is not None
        if self.process.poll() is not None:
            raise BenchError(f"{self.name} exited with {self.process.returncode}:\n{self.output()}")


def agentapp_worker(name: str, env: Mapping[str, str], workdir: Path) -> WorkerProcess:
    """A worker process running agents of queued prompts (``python manage.py agentapp_worker``)."""
    return WorkerProcess(name, [sys.executable, "manage.py", "agentapp_worker"], dict(env), workdir / f"{name}.log")


def settings_module(workdir: Path, name: str, capacity: int | None = None, **agentapp: Any) -> dict[str, str]:
    """Environment selecting a settings module written to ``workdir``: the example site's, ``agentapp`` merged into
    its ``AGENTAPP`` and, if given, ``capacity`` in its channel layer's config."""
    text = f"from project.settings import *  # noqa: F403\n\nAGENTAPP = {{**AGENTAPP, **{agentapp!r}}}  # noqa: F405\n"
    if capacity is not None:
        text += f'CHANNEL_LAYERS["default"]["CONFIG"]["capacity"] = {capacity}  # noqa: F405\n'
    target = workdir / f"{name}.py"
    if not target.exists() or target.read_text(encoding="utf-8") != text:  # never rewritten under a process reading it
        target.write_text(text, encoding="utf-8")
    path = os.pathsep.join(filter(None, [str(workdir), os.environ.get("PYTHONPATH")]))
    return {"DJANGO_SETTINGS_MODULE": name, "PYTHONPATH": path}


def uvicorn(name: str, app: str, workdir: Path) -> Server:
    """A uvicorn server (one process, no access log) for the ASGI application at ``app``."""
    port = free_port()
    argv = [str(BIN / "uvicorn"), app, "--host", HOST, "--port", str(port), "--no-access-log", "--log-level", "warning"]
    return Server(name, argv, {}, workdir / f"{name}.log", port=port)


class ServerPool:
    """Builds servers by name on first use and stops every one of them on exit."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.servers: dict[str, Server] = {}
        self._template: Path | None = None
        self._fanout_database: str | None = None
        self._workers_database: str | None = None

    def __enter__(self) -> ServerPool:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop_all()

    def stop_all(self) -> None:
        """Stop every server started so far (each one even if another fails to stop)."""
        errors = []
        for server in self.servers.values():
            try:
                server.stop()
            except Exception as exc:  # keep stopping the others
                errors.append(f"{server.name}: {exc}")
        if errors:
            raise BenchError("could not stop: " + "; ".join(errors))

    def stop(self, name: str) -> None:
        """Stop one server now (it stays listed, so its command can still be reported)."""
        self.servers[name].stop()

    def sqlite_url(self, name: str) -> str:
        """A migrated SQLite file of the server's own (one migration, copied per server)."""
        if self._template is None:
            template = self.workdir / "template.sqlite3"
            migrate(f"sqlite:///{template}")
            self._template = template
        return fresh_sqlite(self._template, self.workdir / f"{name}.sqlite3")

    def _build(self, name: str) -> Server:
        # One anonymous session opens every conversation of a benchmark: no hourly cap on them.
        agentapp_env = {
            "AGENTAPP_DEMO": "1",
            "DJANGO_DEBUG": "0",
            "AGENTAPP_OFFLINE_TPS": "0",
            "AGENTAPP_CONVERSATIONS_PER_HOUR": "0",
        }
        if name == "fastapi":
            return uvicorn(name, "bench.fastapi_app:app", self.workdir)
        if name == "bare":
            return daphne(name, "bench.bare_consumer:application", {}, self.workdir)
        if name.startswith("bare-paced-"):  # bare-paced-<n>: benchmark 4's anchor, the model at 50 tokens/s
            return daphne(name, "bench.bare_consumer:application", {"BENCH_BARE_TPS": "50"}, self.workdir)
        if name.startswith("bare-fanout-"):  # bare-fanout-<core|pubsub>-<i>: benchmark 5's group_send anchor
            layer = name.split("-")[2]
            (redis,) = self.get("redis-fanout")
            env = {"BENCH_FANOUT_LAYER": layer, "REDIS_URL": f"redis://{HOST}:{redis.port}/1", "BENCH_BARE_TPS": "50"}
            server = daphne(name, "bench.bare_fanout:application", env, self.workdir)
            server.placeholders[f":{redis.port}/"] = ":<redis-port>/"
            return server
        if name == "agentapp":
            env = {"DATABASE_URL": self.sqlite_url(name), **agentapp_env}
            return agentapp_server(name, "project.asgi:application", env, self.workdir)
        if name == "agentapp-unmerged":
            env = {"DJANGO_SETTINGS_MODULE": UNMERGED_SETTINGS, "DATABASE_URL": self.sqlite_url(name), **agentapp_env}
            return agentapp_server(name, "project.asgi:application", env, self.workdir)
        if name == "agentapp-history":
            env = {"DATABASE_URL": self.sqlite_url(name), **agentapp_env}
            return agentapp_server(name, "project.asgi:application", env, self.workdir)
        if name == "agentapp-redis":
            require_redis()
            env = {"DATABASE_URL": self.sqlite_url(name), "REDIS_URL": REDIS_URL, **agentapp_env}
            return agentapp_server(name, "project.asgi:application", env, self.workdir)
        if name.startswith("agentapp-paced-"):  # agentapp-paced-<memory|redis>-<n>
            # Capacity is what is measured: the per-process limit on runs (100 by default) is lifted.
            env = {
                "DJANGO_SETTINGS_MODULE": STAMPED_SETTINGS,
                "DATABASE_URL": self.sqlite_url(name),
                **agentapp_env,
                "AGENTAPP_OFFLINE_TPS": "50",
                "AGENTAPP_MAX_CONCURRENT_RUNS": "0",
            }
            if name.startswith("agentapp-paced-redis"):
                require_redis()
                env["REDIS_URL"] = REDIS_URL
            return agentapp_server(name, "project.asgi:application", env, self.workdir)
        if name == "redis-fanout":
            return redis_server(name, self.workdir)
        if name.startswith("agentapp-fanout-"):  # agentapp-fanout-<core|pubsub>-<1..4>: one cluster per layer
            layer = name.split("-")[2]
            if layer not in FANOUT_LAYERS:
                raise BenchError(f"no channel layer {layer!r} (one of {', '.join(FANOUT_LAYERS)})")
            if self._fanout_database is None:
                self._fanout_database = fresh_postgres(FANOUT_POSTGRES_URL)
            (redis,) = self.get("redis-fanout")
            env = {
                "DATABASE_URL": self._fanout_database,
                **agentapp_env,
                "AGENTAPP_OFFLINE_TPS": "50",
                "REDIS_URL": f"redis://{HOST}:{redis.port}/0",
                "AGENTAPP_CHANNEL_LAYER": layer,
            }
            server = agentapp_server(name, "project.asgi:application", env, self.workdir)
            server.placeholders[f":{redis.port}/"] = ":<redis-port>/"
            return server
        if name.startswith("agentapp-workers-"):  # agentapp-workers-<inprocess|web|worker>-<tokens per second>
            return self._workers_server(name, agentapp_env)
        raise BenchError(f"no server named {name!r}")

    def _workers_server(self, name: str, agentapp_env: dict[str, str]) -> Server:
        """Benchmark 8's processes on one PostgreSQL database and the Redis core layer: an in-process web process,
        or a web process ringing WORKER_CHANNEL and its worker; settings differ only in WORKER_CHANNEL."""
        _, _, role, tps = name.split("-")
        if role not in ("inprocess", "web", "worker"):
            raise BenchError(f"no server named {name!r}")
        require_redis()
        if self._workers_database is None:
            self._workers_database = fresh_postgres(WORKERS_POSTGRES_URL)
        # Capacity is what is measured: neither the web process's nor the worker's limit on runs applies.
        values: dict[str, Any] = {"WORKER_CONCURRENCY": 100_000}
        if role != "inprocess":
            values["WORKER_CHANNEL"] = WORKER_CHANNEL
        module = f"settings_{'inprocess' if role == 'inprocess' else 'workers'}"
        env = {
            "DATABASE_URL": self._workers_database,
            "REDIS_URL": REDIS_URL,
            **agentapp_env,
            "AGENTAPP_OFFLINE_TPS": tps,
            "AGENTAPP_MAX_CONCURRENT_RUNS": "0",
            **settings_module(self.workdir, module, WORKERS_LAYER_CAPACITY, **values),
        }
        if role == "worker":
            return agentapp_worker(name, env, self.workdir)
        return agentapp_server(name, "project.asgi:application", env, self.workdir)

    def get(self, *names: str) -> list[Server]:
        """The named servers, started in parallel if they are not running yet."""
        fresh = []
        for name in names:
            if name not in self.servers:
                self.servers[name] = self._build(name)
                fresh.append(self.servers[name])
        for server in fresh:
            server.start()
        for server in fresh:
            server.wait_ready()
        return [self.servers[name] for name in names]
