"""Tests of the default tools: the safe calculator and the allowlisted http_get."""

from __future__ import annotations

import math
import os
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from django.core.exceptions import ImproperlyConfigured
from strands import Agent

from agentapp import tools
from agentapp.offline_model import OfflineModel
from agentapp.tools import CalculatorError, _check_allowed, _fetch, calculator, evaluate, http_get

### Calculator ###


@pytest.mark.parametrize(
    ("expression", "result"),
    [
        ("2+2", "4"),
        ("7 - 10", "-3"),
        ("6 * 7", "42"),
        ("7 / 2", "3.5"),
        ("50 / 2", "25"),
        ("7 // 2", "3"),
        ("7 % 4", "3"),
        ("2 ** 10", "1024"),
        ("-(3)", "-3"),
        ("+4", "4"),
        ("(1 + 2) * 3", "9"),
        ("pi", repr(math.pi)),
        ("e", repr(math.e)),
        ("sqrt(16)", "4"),
        ("sin(0)", "0"),
        ("cos(0)", "1"),
        ("tan(0)", "0"),
        ("log(e)", "1"),
        ("log(8, 2)", "3"),
        ("log10(1000)", "3"),
        ("exp(0)", "1"),
        ("abs(-2.5)", "2.5"),
        ("round(2.567, 2)", "2.57"),
        ("floor(2.7)", "2"),
        ("ceil(2.1)", "3"),
    ],
)
def test_calculator_allowed(expression: str, result: str) -> None:
    assert calculator(expression) == result


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("sqrt(-1)", r"sqrt\(-1\) is undefined \(math domain error\)"),
        ("1/0", "division by zero"),
        ("5 % 0", "division by zero"),
        ("__import__('os')", r"function call __import__\(...\) is not allowed"),
        ("9**9**9", "exponent 387420489 is too large"),
        ("10 ** 400", "result is too large"),
        ("1e999", "result is not finite"),
        ("(1).real", "Attribute is not allowed"),
        ("math.pi", "Attribute is not allowed"),
        ("().__class__", "Attribute is not allowed"),
        ("x + 1", "name 'x' is not allowed"),
        ("True + 1", "Constant is not allowed"),
        ("2 +", "invalid expression"),
        ("1+" * 100 + "1", "longer than 200 characters"),
        ("(-8) ** 0.5", "not a real number"),
    ],
)
def test_calculator_refuses(expression: str, message: str) -> None:
    with pytest.raises(CalculatorError, match=message):
        evaluate(expression)


@pytest.mark.asyncio
async def test_calculator_error_reaches_strands_as_error_result() -> None:
    agent = Agent(model=OfflineModel(), tools=[calculator], callback_handler=None)
    await agent.invoke_async("Calculate 1/0")

    result = agent.messages[2]["content"][0]["toolResult"]
    assert result["status"] == "error"
    assert result["content"] == [{"text": "Error: division by zero"}]


### http_get ###


class _Handler(BaseHTTPRequestHandler):
    """Serves a short page, a long page and a redirect to another host."""

    def do_GET(self) -> None:
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "http://elsewhere.invalid/")
            body = b""
        else:
            self.send_response(200)
            body = b"x" * 10_000 if self.path == "/big" else b"hello"
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/",
        "https://sub.allowed.example/",
        "http://allowed.example@evil.example/",
        "ftp://allowed.example/",
        "file:///etc/passwd",
        "allowed.example/page",
    ],
)
def test_check_allowed_refuses(url: str) -> None:
    with pytest.raises(PermissionError):
        _check_allowed(url, ["allowed.example"])


def test_check_allowed_accepts_exact_host_and_port() -> None:
    _check_allowed("https://Allowed.Example:8443/page?q=1", ["allowed.example:8443"])


@pytest.mark.parametrize(
    ("url", "allowed", "message"),
    [
        ("http://allowed.example:8080/", ["allowed.example"], "port 8080 of host 'allowed.example' is not in"),
        ("http://allowed.example:443/", ["allowed.example"], "port 443 of host"),
        ("https://allowed.example:80/", ["allowed.example"], "port 80 of host"),
        ("http://allowed.example:22/", ["allowed.example:8080"], "port 22 of host"),
        ("http://allowed.example/", ["allowed.example:8080"], "port 80 of host"),
        ("https://allowed.example/", ["allowed.example:8080"], "port 443 of host"),
        ("http://[::1]:8080/", ["[::1]"], "port 8080 of host '::1'"),
        ("http://127.0.0.1:6379/", ["127.0.0.1:8000"], "port 6379 of host"),
        ("http://allowed.example:99999/", ["allowed.example"], "invalid"),
        ("http://allowed.example:0/", ["allowed.example"], "port 0"),
        ("http://user@allowed.example/", ["allowed.example"], "user name or password"),
        ("http://user:secret@allowed.example:8080/", ["allowed.example:8080"], "user name or password"),
        ("http://:@allowed.example/", ["allowed.example"], "user name or password"),
        ("http://allowed.example\\@evil.example/", ["allowed.example"], "user name or password"),
        ("http://evil.example#@allowed.example/", ["allowed.example"], "'evil.example' is not in"),
        ("gopher://allowed.example:70/", ["allowed.example:70"], "only http and https"),
        ("ws://allowed.example/", ["allowed.example"], "only http and https"),
        ("file://allowed.example/etc/passwd", ["allowed.example"], "only http and https"),
        ("javascript:alert(1)", ["allowed.example"], "only http and https"),
    ],
)
def test_check_allowed_refuses_ports_user_info_and_schemes(url: str, allowed: list[str], message: str) -> None:
    with pytest.raises(PermissionError, match=re.escape(message) if "'" in message else message):
        _check_allowed(url, allowed)


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("http://allowed.example/", ["allowed.example"]),
        ("https://allowed.example/", ["allowed.example"]),
        ("http://allowed.example:80/page", ["allowed.example"]),
        ("https://allowed.example:443/page", ["allowed.example"]),
        ("http://allowed.example:8080/", ["allowed.example:8080"]),
        ("https://allowed.example:8080/", ["allowed.example:8080"]),
        ("HTTP://ALLOWED.EXAMPLE:8080/", ["Allowed.Example:8080"]),
        ("http://[::1]:8080/", ["[::1]:8080"]),
        ("http://[::1]/", ["[::1]"]),
        ("http://127.0.0.1:8000/", ["other.example", "127.0.0.1:8000"]),
    ],
)
def test_check_allowed_accepts_default_ports_and_listed_ones(url: str, allowed: list[str]) -> None:
    _check_allowed(url, allowed)


@pytest.mark.parametrize("entry", ["allowed.example:http", "allowed.example:0", "allowed.example:70000", "[::1]:x"])
def test_an_invalid_allowed_entry_is_a_configuration_error(entry: str) -> None:
    with pytest.raises(ImproperlyConfigured, match="invalid port"):
        _check_allowed("http://allowed.example/", [entry])


class _CountingHandler(BaseHTTPRequestHandler):
    """Records every request path on its server; ``/redirect?to=URL`` answers 302 to URL."""

    def do_GET(self) -> None:
        self.server.paths.append(self.path)  # type: ignore[attr-defined]
        target = parse_qs(urlsplit(self.path).query).get("to")
        self.send_response(302 if target else 200)
        if target:
            self.send_header("Location", target[0])
        body = b"" if target else b"counted"
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def counting_servers() -> Iterator[list[ThreadingHTTPServer]]:
    """Two local servers on two ports, each recording the requests it gets in ``paths``."""
    servers = []
    for _ in range(2):
        server = ThreadingHTTPServer(("127.0.0.1", 0), _CountingHandler)
        server.paths = []  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    yield servers
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.asyncio
async def test_a_bare_host_allows_no_other_port(counting_servers: list[ThreadingHTTPServer], settings: Any) -> None:
    port = counting_servers[0].server_address[1]
    settings.AGENTAPP = {**getattr(settings, "AGENTAPP", {}), "HTTP_TOOL_ALLOWED_HOSTS": ["127.0.0.1"]}
    agent = Agent(model=OfflineModel(), tools=[http_get], callback_handler=None)

    refused = await agent.invoke_async(f'Call http_get with {{"url": "http://127.0.0.1:{port}/secret"}}')

    assert str(refused).strip() == (
        f"http_get failed: Error: PermissionError - port {port} of host '127.0.0.1' is not in "
        "AGENTAPP['HTTP_TOOL_ALLOWED_HOSTS']"
    )
    assert counting_servers[0].paths == []  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_a_listed_port_is_fetched_and_its_redirects_are_not_followed(
    counting_servers: list[ThreadingHTTPServer],
) -> None:
    allowed, other = (server.server_address[1] for server in counting_servers)
    hosts = [f"127.0.0.1:{allowed}"]

    page = await _fetch(f"http://127.0.0.1:{allowed}/page", hosts)
    redirected = await _fetch(f"http://127.0.0.1:{allowed}/redirect?to=http://127.0.0.1:{other}/", hosts)
    same_origin = await _fetch(f"http://127.0.0.1:{allowed}/redirect?to=/page", hosts)

    assert (page, redirected, same_origin) == ("HTTP 200\ncounted", "HTTP 302\n", "HTTP 302\n")
    assert counting_servers[0].paths == [  # type: ignore[attr-defined]
        "/page",
        f"/redirect?to=http://127.0.0.1:{other}/",
        "/redirect?to=/page",
    ]
    assert counting_servers[1].paths == []  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_http_get_refuses_before_any_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tools, "app_settings", SimpleNamespace(HTTP_TOOL_ALLOWED_HOSTS=["allowed.example"]))

    def no_client(*args: object, **kwargs: object) -> None:
        raise AssertionError("no HTTP client may be created for a refused URL")

    monkeypatch.setattr(tools.httpx, "AsyncClient", no_client)
    with pytest.raises(PermissionError, match=r"'example\.com' is not in"):
        await http_get("http://example.com/")


@pytest.mark.asyncio
async def test_fetch_allowed_host(server_url: str) -> None:
    assert await _fetch(f"{server_url}/", [server_url.removeprefix("http://")]) == "HTTP 200\nhello"


@pytest.mark.asyncio
async def test_fetch_truncates_body(server_url: str) -> None:
    assert await _fetch(f"{server_url}/big", [server_url.removeprefix("http://")]) == "HTTP 200\n" + "x" * 4000


@pytest.mark.asyncio
async def test_fetch_does_not_follow_redirects(server_url: str) -> None:
    assert await _fetch(f"{server_url}/redirect", [server_url.removeprefix("http://")]) == "HTTP 302\n"


@pytest.mark.asyncio
async def test_http_get_through_an_agent(server_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        tools, "app_settings", SimpleNamespace(HTTP_TOOL_ALLOWED_HOSTS=[server_url.removeprefix("http://")])
    )
    agent = Agent(model=OfflineModel(), tools=[http_get], callback_handler=None)

    ok = await agent.invoke_async(f'Call http_get with {{"url": "{server_url}/"}}')
    refused = await agent.invoke_async('Call http_get with {"url": "http://example.com/"}')

    assert str(ok).strip() == "http_get returned: HTTP 200\nhello"
    assert str(refused).strip() == (
        "http_get failed: Error: PermissionError - host 'example.com' is not in AGENTAPP['HTTP_TOOL_ALLOWED_HOSTS']"
    )


def test_the_calculator_works_outside_a_django_project():
    """A plain Strands script (the benchmarks' baseline) uses the tools with agentapp's documented defaults."""
    import subprocess
    import sys

    env = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}
    script = "from agentapp.tools import calculator; print(calculator(expression='6*7'))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "42"
