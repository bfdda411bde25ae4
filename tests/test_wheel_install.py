"""The wheel outside this repository: a fresh venv and a ``startproject`` site configured only as README says.

The site is served by daphne from that venv; an ordinary user logs in at /accounts/login/ over HTTP and chats over a
real WebSocket, so this proves the packaged app (migrations, templates, routing, the login template) works without
the example ``project`` package or anything in this checkout. The core install leaves the extras out, and a setting
that needs one fails with the pip command to run.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.frames import assert_contiguous

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
HOST = "127.0.0.1"
FRAME_TIMEOUT = 15
RUN_DEADLINE = 60
SERVER_START_TIMEOUT = 30
REQUIRED_IN_WHEEL = (
    "agentapp/migrations/0001_initial.py",
    "agentapp/templates/agentapp/chat.html",
    "agentapp/templates/registration/login.html",
    "agentapp/urls/page.py",
)
# Extras the core install leaves out (README step 1).
NOT_IN_CORE_INSTALL = ("channels_redis", "redis")
# A fenced python block preceded by "<!-- wheel test: append to PATH -->" or "<!-- wheel test: write PATH -->".
README_BLOCK_RE = re.compile(r"<!-- wheel test: (append to|write) (\S+) -->\s*```python\n(.*?)```", re.DOTALL)

# README step 5: an ordinary user; the test logs in as them through /accounts/login/, as a browser would.
USERNAME = "ada"
PASSWORD = "wheel-test-password"
USER_SCRIPT = f"""
from django.contrib.auth.models import User
user = User.objects.create_user({USERNAME!r}, password={PASSWORD!r})
assert not user.is_staff and not user.is_superuser
"""
# A settings module naming the Redis layer, which the core install (no ``redis`` extra) cannot serve.
REDIS_SETTINGS = """
from mysite.settings import *  # noqa: F403

CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": ["redis://x"]}}}
"""
MISSING_EXTRA = "needs the channels_redis package, which is not installed: pip install 'agentapp[redis]'."

ISOLATION_SCRIPT = """
import importlib.util, json, sys
import agentapp
print(json.dumps({
    "agentapp": agentapp.__file__,
    "project_importable": importlib.util.find_spec("project") is not None,
    "missing": [name for name in ("channels_redis", "redis") if importlib.util.find_spec(name) is None],
    "sys_path": sys.path,
}))
"""

### Subprocesses in a clean environment ###


def clean_env(venv: Path) -> dict[str, str]:
    """This process's environment without anything pointing at the checkout, its venv or its settings."""
    dropped_prefixes = ("PYTHON", "DJANGO_", "AGENTAPP_", "VIRTUAL_ENV")
    dropped = {"DATABASE_URL", "REDIS_URL", "BEDROCK_MODEL_ID", "AWS_REGION"}
    env = {
        key: value for key, value in os.environ.items() if key not in dropped and not key.startswith(dropped_prefixes)
    }
    path = [entry for entry in env.get("PATH", "").split(os.pathsep) if entry and not entry.startswith(str(ROOT))]
    env["PATH"] = os.pathsep.join([str(venv / "bin"), *path])
    return env


def run(command: list[str], cwd: Path, env: dict[str, str], timeout: float) -> str:
    """Run a command to completion within ``timeout`` seconds and return its stdout; fail with its output."""
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{command} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


class Timings:
    """Wall-clock time of each step, printed at the end."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, float]] = []

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.steps.append((name, time.monotonic() - started))

    def report(self) -> str:
        return "\n".join(f"  {name:<28} {seconds:6.1f}s" for name, seconds in self.steps)


### Building and installing ###


def build_wheel(work: Path, env: dict[str, str]) -> Path:
    """Build the wheel from a copy of the package sources, so the checkout gets no build/ or egg-info."""
    source = work / "source"
    source.mkdir()
    shutil.copy2(ROOT / "pyproject.toml", source)
    shutil.copy2(README, source)
    shutil.copytree(ROOT / "agentapp", source / "agentapp", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = work / "dist"
    run([sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(source)], work, env, timeout=180)
    wheels = list(dist.glob("agentapp-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def readme_blocks() -> list[tuple[str, str, str]]:
    """The (action, path, code) blocks README marks for this test."""
    blocks = README_BLOCK_RE.findall(README.read_text(encoding="utf-8"))
    assert {path for _, path, _ in blocks} == {"mysite/settings.py", "mysite/asgi.py", "mysite/urls.py"}, blocks
    return blocks


def apply_readme(site: Path) -> None:
    """Apply README's settings, asgi and urls blocks to a fresh ``startproject`` site, and nothing else."""
    for action, path, code in readme_blocks():
        target = site / path
        assert target.is_file(), f"startproject did not create {path}"
        if action == "write":
            target.write_text(code, encoding="utf-8")
        else:
            target.write_text(target.read_text(encoding="utf-8") + "\n" + code, encoding="utf-8")


### The server ###


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, server: subprocess.Popen[Any], log: Path) -> None:
    """Poll until the server accepts connections; fail if it exits or the timeout passes."""
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        assert server.poll() is None, f"daphne exited with {server.returncode}:\n{log.read_text()}"
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)  # poll interval, not synchronization: the loop re-checks the condition
    pytest.fail(f"daphne did not listen on {port} within {SERVER_START_TIMEOUT}s:\n{log.read_text()}")


def stop(server: subprocess.Popen[Any]) -> None:
    """Terminate daphne, killing it if it does not exit promptly."""
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)


def http_request(
    port: int, method: str, path: str, cookie: str | None, body: str | None = None
) -> tuple[int, dict[str, str], list[str], str]:
    """One request: its status, headers, Set-Cookie values and body."""
    connection = http.client.HTTPConnection(HOST, port, timeout=FRAME_TIMEOUT)
    headers = {"Cookie": cookie} if cookie else {}
    if body is not None:
        headers.update({"Content-Type": "application/x-www-form-urlencoded", "Origin": f"http://{HOST}:{port}"})
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        cookies = response.headers.get_all("Set-Cookie") or []
        text = response.read().decode("utf-8", errors="replace")
        return response.status, dict(response.getheaders()), cookies, text
    finally:
        connection.close()


def http_get(port: int, path: str, cookie: str | None) -> tuple[int, str]:
    status, _, _, body = http_request(port, "GET", path, cookie)
    return status, body


def cookie_value(set_cookies: list[str], name: str) -> str:
    """The value a Set-Cookie header gives ``name``; fails the test without one."""
    for header in set_cookies:
        key, _, rest = header.partition("=")
        if key.strip() == name:
            return rest.split(";", 1)[0]
    pytest.fail(f"no {name} cookie in {set_cookies}")


def log_in(port: int) -> str:
    """Log in as the ordinary user through /accounts/login/ as README says, and return the Cookie header to send."""
    status, headers, _, _ = http_request(port, "GET", "/agent/", None)
    assert status == 302 and headers["Location"] == "/accounts/login/?next=/agent/", (status, headers)
    status, _, set_cookies, form = http_request(port, "GET", headers["Location"], None)
    assert status == 200 and 'name="username"' in form and 'name="password"' in form, (status, form[:500])
    csrf_cookie = cookie_value(set_cookies, "csrftoken")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form)
    assert token, form[:500]
    body = urlencode({"csrfmiddlewaretoken": token[1], "username": USERNAME, "password": PASSWORD, "next": "/agent/"})
    status, headers, set_cookies, page = http_request(
        port, "POST", "/accounts/login/", f"csrftoken={csrf_cookie}", body
    )
    assert status == 302 and headers["Location"] == "/agent/", (status, headers, page[:500])
    return f"sessionid={cookie_value(set_cookies, 'sessionid')}"


### The WebSocket ###


def open_socket(port: int, path: str, cookie: str | None) -> ClientConnection:
    return connect(
        f"ws://{HOST}:{port}{path}",
        origin=f"http://{HOST}:{port}",
        additional_headers={"Cookie": cookie} if cookie else {},
        open_timeout=FRAME_TIMEOUT,
        close_timeout=5,
    )


def receive(ws: ClientConnection) -> dict[str, Any]:
    frame = json.loads(ws.recv(timeout=FRAME_TIMEOUT))
    assert isinstance(frame, dict), frame
    return frame


def until_finished(ws: ClientConnection) -> list[dict[str, Any]]:
    """Frames up to and including ``run_finished``, within RUN_DEADLINE seconds."""
    deadline = time.monotonic() + RUN_DEADLINE
    frames = [receive(ws)]
    while frames[-1]["type"] != "run_finished":
        assert time.monotonic() < deadline, f"no run_finished within {RUN_DEADLINE}s: {frames}"
        frames.append(receive(ws))
    return frames


def check_site(port: int, cookie: str) -> None:
    """The chat page as the logged-in user, the anonymous socket refused, one calculator run, the stored history."""
    status, body = http_get(port, "/agent/", cookie)
    assert status == 200 and 'id="transcript"' in body and 'data-authenticated="1"' in body, (status, body[:500])

    with open_socket(port, "/ws/agent/", None) as anonymous:
        refused = receive(anonymous)
        assert refused["type"] == "error" and refused["code"] == "login_required", refused
        with pytest.raises(ConnectionClosed) as closed:
            anonymous.recv(timeout=FRAME_TIMEOUT)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401

    with open_socket(port, "/ws/agent/", cookie) as ws:
        hello = receive(ws)
        assert hello["type"] == "conversation" and hello["messages"] == [], hello
        ws.send(json.dumps({"type": "prompt", "prompt": "Calculate 2+2"}))
        frames = until_finished(ws)

    types = [frame["type"] for frame in frames]
    assert types[0] == "run_started" and types[-2:] == ["result", "run_finished"], types
    assert_contiguous(frames)
    tool_results = [frame["tool_result"] for frame in frames if frame["type"] == "tool_result"]
    assert len(tool_results) == 1, tool_results
    assert tool_results[0]["name"] == "calculator" and tool_results[0]["status"] == "success"
    assert "4" in " ".join(item.get("text", "") for item in tool_results[0]["content"])
    assert frames[-2]["result"]["stop_reason"] == "end_turn"
    assert frames[-1]["status"] == "completed"

    conversation_id = hello["conversation_id"]
    with open_socket(port, f"/ws/agent/{conversation_id}/", cookie) as again:
        history = receive(again)
    assert history["type"] == "conversation" and history["conversation_id"] == conversation_id
    assert [message["role"] for message in history["messages"]] == ["user", "assistant", "user", "assistant"]
    assert history["messages"][0]["content"] == [{"text": "Calculate 2+2"}]
    assert "4" in "".join(block.get("text", "") for block in history["messages"][-1]["content"])


### The test ###


@pytest.mark.slow
def test_wheel_serves_a_fresh_startproject_site(tmp_path: Path) -> None:
    timings = Timings()
    venv = tmp_path / "venv"
    python = str(venv / "bin" / "python")
    env = clean_env(venv)
    site = tmp_path / "site"
    site.mkdir()
    server: subprocess.Popen[Any] | None = None
    log = tmp_path / "daphne.log"
    try:
        with timings.step("build wheel"):
            wheel = build_wheel(tmp_path, env)
        names = zipfile.ZipFile(wheel).namelist()
        for required in REQUIRED_IN_WHEEL:
            assert required in names, f"{required} missing from {wheel.name}"
        assert not [name for name in names if name.startswith(("project/", "tests/"))], names

        with timings.step("create venv"):
            run([sys.executable, "-m", "venv", str(venv)], tmp_path, env, timeout=120)
        with timings.step("pip install wheel"):
            run([python, "-m", "pip", "install", "--quiet", str(wheel)], tmp_path, env, timeout=600)

        isolation = json.loads(run([python, "-c", ISOLATION_SCRIPT], tmp_path, env, timeout=60))
        assert Path(isolation["agentapp"]).is_relative_to(venv), isolation["agentapp"]
        assert not isolation["project_importable"]
        assert not [entry for entry in isolation["sys_path"] if entry.startswith(str(ROOT))], isolation["sys_path"]
        assert isolation["missing"] == list(NOT_IN_CORE_INSTALL), isolation

        with timings.step("startproject + migrate"):
            run([str(venv / "bin" / "django-admin"), "startproject", "mysite", str(site)], tmp_path, env, timeout=60)
            apply_readme(site)
            run([python, "manage.py", "migrate", "--noinput"], site, env, timeout=120)
            run([python, "manage.py", "shell", "-c", USER_SCRIPT], site, env, timeout=60)

        (site / "mysite" / "redis_settings.py").write_text(REDIS_SETTINGS, encoding="utf-8")
        refused = subprocess.run(
            [python, "manage.py", "check", "--settings", "mysite.redis_settings"],
            cwd=site,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert refused.returncode != 0 and MISSING_EXTRA in refused.stderr, (refused.returncode, refused.stderr)

        port = free_port()
        with timings.step("start daphne"), log.open("w") as log_file:
            server = subprocess.Popen(
                [str(venv / "bin" / "daphne"), "-b", HOST, "-p", str(port), "mysite.asgi:application"],
                cwd=site,
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
            wait_for_port(port, server, log)
        with timings.step("log in, chat over WebSocket"):
            check_site(port, log_in(port))
    finally:
        if server is not None:
            stop(server)
        print(f"\nwheel install test timings:\n{timings.report()}")
        if log.exists():
            print(f"daphne log (last lines):\n{log.read_text()[-3000:]}")
