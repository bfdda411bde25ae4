"""Tests of the default tools: the safe calculator and the allowlisted http_get."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
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


def test_check_allowed_accepts_exact_host() -> None:
    _check_allowed("https://Allowed.Example:8443/page?q=1", ["allowed.example"])


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
    assert await _fetch(f"{server_url}/", ["127.0.0.1"]) == "HTTP 200\nhello"


@pytest.mark.asyncio
async def test_fetch_truncates_body(server_url: str) -> None:
    assert await _fetch(f"{server_url}/big", ["127.0.0.1"]) == "HTTP 200\n" + "x" * 4000


@pytest.mark.asyncio
async def test_fetch_does_not_follow_redirects(server_url: str) -> None:
    assert await _fetch(f"{server_url}/redirect", ["127.0.0.1"]) == "HTTP 302\n"


@pytest.mark.asyncio
async def test_http_get_through_an_agent(server_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tools, "app_settings", SimpleNamespace(HTTP_TOOL_ALLOWED_HOSTS=["127.0.0.1"]))
    agent = Agent(model=OfflineModel(), tools=[http_get], callback_handler=None)

    ok = await agent.invoke_async(f'Call http_get with {{"url": "{server_url}/"}}')
    refused = await agent.invoke_async('Call http_get with {"url": "http://example.com/"}')

    assert str(ok).strip() == "http_get returned: HTTP 200\nhello"
    assert str(refused).strip() == (
        "http_get failed: Error: PermissionError - host 'example.com' is not in AGENTAPP['HTTP_TOOL_ALLOWED_HOSTS']"
    )
