"""Tools of the default agent: a safe calculator and an allowlisted HTTP GET."""

from __future__ import annotations

import ast
import asyncio
import math
import operator
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

import httpx
from strands import tool

from agentapp.conf import app_settings

### Calculator ###

MAX_EXPRESSION_CHARS = 200
MAX_EXPONENT = 1000
# Results and intermediate values beyond this magnitude are refused, so big-integer work stays cheap.
MAX_MAGNITUDE = 10**300

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_NAMES = {"pi": math.pi, "e": math.e}
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "sqrt": math.sqrt, "sin": math.sin, "cos": math.cos, "tan": math.tan, "log": math.log,
    "log10": math.log10, "exp": math.exp, "abs": abs, "round": round, "floor": math.floor, "ceil": math.ceil,
}  # fmt: skip


class CalculatorError(ValueError):
    """An expression the calculator refuses or cannot evaluate; Strands reports it as "Error: <message>"."""


def _checked(value: Any) -> float:
    """Return ``value`` if it is a finite number of acceptable magnitude, else raise."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CalculatorError(f"result {value!r} is not a real number")
    if isinstance(value, float) and not math.isfinite(value):
        raise CalculatorError("result is not finite")
    if abs(value) > MAX_MAGNITUDE:
        raise CalculatorError("result is too large")
    return value


def _power(base: float, exponent: float) -> float:
    """Raise ``base`` to ``exponent``, refusing exponents and results too large to compute cheaply."""
    if abs(exponent) > MAX_EXPONENT:
        raise CalculatorError(f"exponent {exponent} is too large (limit {MAX_EXPONENT})")
    if abs(base) > 1 and exponent > 0 and exponent * math.log10(abs(base)) > math.log10(MAX_MAGNITUDE):
        raise CalculatorError("result is too large")
    return operator.pow(base, exponent)


def _evaluate(node: ast.AST) -> float:
    """Evaluate an allowlisted expression node."""
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        return _checked(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow):
            return _checked(_power(left, right))
        return _checked(_BINARY[type(node.op)](left, right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _checked(_UNARY[type(node.op)](_evaluate(node.operand)))
    if isinstance(node, ast.Name):
        if node.id not in _NAMES:
            raise CalculatorError(f"name {node.id!r} is not allowed")
        return _NAMES[node.id]
    if isinstance(node, ast.Call):
        name = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
        if name not in _FUNCTIONS or node.keywords or len(node.args) > 2:
            raise CalculatorError(f"function call {name}(...) is not allowed")
        args = [_evaluate(arg) for arg in node.args]
        try:
            return _checked(_FUNCTIONS[name](*args))
        except (ValueError, TypeError) as exc:
            if isinstance(exc, CalculatorError):
                raise
            shown = ", ".join(_format(arg) for arg in args)
            raise CalculatorError(f"{name}({shown}) is undefined ({exc})") from None
    raise CalculatorError(f"{type(node).__name__} is not allowed in an expression")


def _format(value: float) -> str:
    """Format a number for display, integral values without ".0"."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value) if isinstance(value, int) else repr(value)


def evaluate(expression: str) -> str:
    """Evaluate an arithmetic expression safely and return the formatted result."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"expression is longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise CalculatorError(f"invalid expression {expression!r}") from None
    try:
        return _format(_evaluate(tree))
    except ZeroDivisionError:
        raise CalculatorError("division by zero") from None
    except OverflowError:
        raise CalculatorError("result is too large") from None


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression and return the result.

    Args:
        expression: Numbers, + - * / // % **, parentheses, pi, e and sqrt, sin, cos, tan, log, log10, exp,
            abs, round, floor, ceil. For example "15 * 23" or "sqrt(2) * pi".
    """
    return evaluate(expression)


### HTTP ###

HTTP_TIMEOUT_SECONDS = 10
MAX_BODY_CHARS = 4000


def _check_allowed(url: str, allowed_hosts: Iterable[str]) -> None:
    """Raise PermissionError unless ``url`` is http(s) and its host is exactly one of ``allowed_hosts``."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise PermissionError(f"only http and https URLs may be fetched, not {url!r}")
    host = parts.hostname or ""
    if host not in {allowed.lower() for allowed in allowed_hosts}:
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
        url: An http or https URL on one of the hosts this site allows.
    """
    return await _fetch(url, app_settings.HTTP_TOOL_ALLOWED_HOSTS)


DEFAULT_TOOLS = [calculator, http_get]
