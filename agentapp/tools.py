"""Tools of the default agent: a safe calculator and an allowlisted HTTP GET."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

import httpx
from django.core.exceptions import ImproperlyConfigured
from strands import tool

from agentapp.calculator import MAX_EXPRESSION_CHARS, CalculatorError, evaluate
from agentapp.conf import app_settings
from agentapp.isolation import ToolTimeout, WorkerFailed, WorkersBusy, default_pool

__all__ = ["DEFAULT_TOOLS", "MAX_EXPRESSION_CHARS", "CalculatorError", "calculator", "evaluate", "http_get"]

### Calculator ###


# The function the calculator's worker process runs; tests point it at a deliberately slow one.
EVALUATOR: Callable[[str], str] = evaluate


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression and return the result.

    Args:
        expression: Numbers, + - * / // % **, parentheses, pi, e and sqrt, cbrt, sin, cos, tan, log, log10,
            exp, abs, round, floor, ceil. For example "15 * 23" or "sqrt(2) * pi".
    """
    # Strands runs this sync tool in a thread; the work itself runs in a worker process that the limit can kill.
    seconds = app_settings.TOOL_CPU_SECONDS
    try:
        return default_pool.run(EVALUATOR, expression, seconds=seconds, workers=app_settings.TOOL_WORKERS)
    except WorkersBusy as exc:
        raise CalculatorError(f"too many calculations at once: {exc}") from None
    except ToolTimeout:
        raise CalculatorError(f"the calculation took longer than {seconds:g} s and was stopped") from None
    except WorkerFailed as exc:
        raise CalculatorError(f"the calculation failed: {exc}") from None


### HTTP ###

HTTP_TIMEOUT_SECONDS = 10
MAX_BODY_CHARS = 4000


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _allowed_origins(allowed_hosts: Iterable[str]) -> set[tuple[str, int | None]]:
    """Parse ``HTTP_TOOL_ALLOWED_HOSTS``: ``"host"`` (port None: the scheme's default port) or ``"host:port"``."""
    origins: set[tuple[str, int | None]] = set()
    for entry in allowed_hosts:
        host, port = entry.strip().lower(), None
        if host.startswith("["):  # "[::1]" or "[::1]:8080"
            host, _, rest = host[1:].partition("]")
            port = rest.removeprefix(":") or None
        elif host.count(":") == 1:
            host, port = host.split(":")
        if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
            raise ImproperlyConfigured(f"AGENTAPP['HTTP_TOOL_ALLOWED_HOSTS'] entry {entry!r} has an invalid port")
        origins.add((host, None if port is None else int(port)))
    return origins


def _check_allowed(url: str, allowed_hosts: Iterable[str]) -> None:
    """Raise PermissionError unless ``url`` is http(s), has no user info, and its host and port are allowed.

    The URL is read with httpx's parser, the one the request uses, and must read the same with the standard one.
    """
    try:
        parsed, parts = httpx.URL(url), urlsplit(url)
        std_port = _DEFAULT_PORTS.get(parts.scheme) if parts.port is None else parts.port
        standard = (parts.scheme, (parts.hostname or "").lower(), std_port)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise PermissionError(f"invalid URL {url!r}: {exc}") from None
    scheme = parsed.scheme
    if scheme not in _DEFAULT_PORTS:
        raise PermissionError(f"only http and https URLs may be fetched, not {url!r}")
    if parsed.userinfo or "@" in parts.netloc:
        raise PermissionError("URLs with a user name or password are not allowed")
    host, port = parsed.host.lower(), _DEFAULT_PORTS[scheme] if parsed.port is None else parsed.port
    if (scheme, host, port) != standard:
        raise PermissionError(f"URL {url!r} is ambiguous")
    if not 0 < port < 65536:
        raise PermissionError(f"invalid port {port} in {url!r}")
    origins = _allowed_origins(allowed_hosts)
    if (host, port) in origins or (port == _DEFAULT_PORTS[scheme] and (host, None) in origins):
        return
    if any(allowed == host for allowed, _ in origins):
        raise PermissionError(f"port {port} of host {host!r} is not in AGENTAPP['HTTP_TOOL_ALLOWED_HOSTS']")
    raise PermissionError(f"host {host!r} is not in AGENTAPP['HTTP_TOOL_ALLOWED_HOSTS']")


async def _fetch(url: str, allowed_hosts: Iterable[str]) -> str:
    """Fetch ``url`` if its host is allowed, returning "HTTP <status>" and the start of the body."""
    _check_allowed(url, allowed_hosts)
    body = b""
    try:
        async with (
            asyncio.timeout(HTTP_TIMEOUT_SECONDS),
            httpx.AsyncClient(timeout=HTTP_TIMEOUT_SECONDS, follow_redirects=False) as client,
            client.stream("GET", url) as response,
        ):
            # Four bytes per character covers any UTF-8 text; stop reading past that.
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) >= MAX_BODY_CHARS * 4:
                    break
    except TimeoutError:
        raise TimeoutError(f"{url} did not answer within {HTTP_TIMEOUT_SECONDS} s") from None
    text = body.decode(response.encoding or "utf-8", errors="replace")
    return f"HTTP {response.status_code}\n{text[:MAX_BODY_CHARS]}"


@tool
async def http_get(url: str) -> str:
    """Fetch a web page with GET and return its status and the start of its body; redirects are not followed.

    Args:
        url: An http or https URL on one of the hosts (and ports) this site allows.
    """
    return await _fetch(url, app_settings.HTTP_TOOL_ALLOWED_HOSTS)


DEFAULT_TOOLS = [calculator, http_get]
