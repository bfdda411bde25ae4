"""The calculator's evaluator: arithmetic over an allowlisted grammar, every step's cost bounded before it runs.

Each value is an int or a float of magnitude at most ``MAX_MAGNITUDE`` (about 1000 bits), and each operation is
refused *before* it runs when its inputs could make it expensive (a power, a product of big integers, ``round`` with
many digits). So no expression of ``MAX_EXPRESSION_CHARS`` characters takes more than microseconds of big-integer
work. This module imports only the standard library: the tool worker process (``agentapp.isolation``) loads it fast.
"""

from __future__ import annotations

import ast
import math
import operator
import warnings
from collections.abc import Callable
from typing import Any

MAX_EXPRESSION_CHARS = 200
# Deepest nesting of the syntax tree (parentheses, unary signs, calls).
MAX_DEPTH = 50
MAX_EXPONENT = 1000
# Results and intermediate values beyond this magnitude are refused, so big-integer work stays cheap.
MAX_MAGNITUDE = 10**300
MAX_BITS = MAX_MAGNITUDE.bit_length()
# Largest ``ndigits`` of ``round(x, ndigits)`` either way: past the range of a float, rounding changes nothing.
MAX_ROUND_DIGITS = 308


class CalculatorError(ValueError):
    """An expression the calculator refuses or cannot evaluate; Strands reports it as "Error: <message>"."""


Number = int | float

### Operations, each bounded before it runs ###


def _too_large() -> CalculatorError:
    return CalculatorError("result is too large")


def _multiply(left: Number, right: Number) -> Number:
    """Multiply, refusing a product of integers whose size alone is past the limit."""
    if isinstance(left, int) and isinstance(right, int) and left.bit_length() + right.bit_length() > MAX_BITS + 1:
        raise _too_large()
    return left * right


def _power(base: Number, exponent: Number) -> Number:
    """Raise ``base`` to ``exponent``, refusing exponents and results too large to compute cheaply."""
    if abs(exponent) > MAX_EXPONENT:
        raise CalculatorError(f"exponent {exponent} is too large (limit {MAX_EXPONENT})")
    if abs(base) > 1 and exponent > 0 and exponent * math.log10(abs(base)) > math.log10(MAX_MAGNITUDE):
        raise _too_large()
    return operator.pow(base, exponent)


def _round(number: Number, ndigits: Number | None = None) -> Number:
    """``round`` with an integral ``ndigits`` of at most ``MAX_ROUND_DIGITS`` either way (``10**-ndigits`` is built)."""
    if ndigits is None:
        return round(number)
    if not isinstance(ndigits, int):
        raise CalculatorError(f"round's ndigits must be a whole number, not {_format(ndigits)}")
    if abs(ndigits) > MAX_ROUND_DIGITS:
        raise CalculatorError(f"round's ndigits must be between -{MAX_ROUND_DIGITS} and {MAX_ROUND_DIGITS}")
    return round(number, ndigits)


def _cbrt(number: Number) -> Number:
    """Cube root, exact for perfect cubes (``math.cbrt(27)`` is 3.0000000000000004)."""
    root = math.cbrt(number)
    near = round(root)
    return near if near**3 == number else root


# Sums, quotients and remainders of values within MAX_MAGNITUDE cost microseconds; their results are checked after.
_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: _multiply,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: _power,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_NAMES = {"pi": math.pi, "e": math.e}
# math's functions convert an int argument (at most MAX_MAGNITUDE) to a float, or take its logarithm exactly.
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "sqrt": math.sqrt, "cbrt": _cbrt, "sin": math.sin, "cos": math.cos, "tan": math.tan, "log": math.log,
    "log10": math.log10, "exp": math.exp, "abs": abs, "round": _round, "floor": math.floor, "ceil": math.ceil,
}  # fmt: skip

### Evaluation ###


def _checked(value: Any) -> Number:
    """Return ``value`` if it is a finite number of acceptable magnitude, else raise."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CalculatorError(f"result {value!r} is not a real number")
    if isinstance(value, float) and not math.isfinite(value):
        raise CalculatorError("result is not finite")
    if abs(value) > MAX_MAGNITUDE:
        raise _too_large()
    return value


def _evaluate(node: ast.AST, depth: int = 0) -> Number:
    """Evaluate an allowlisted expression node."""
    if depth > MAX_DEPTH:
        raise CalculatorError(f"expression is nested more than {MAX_DEPTH} levels deep")
    if isinstance(node, ast.Expression):
        return _evaluate(node.body, depth + 1)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        return _checked(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left, depth + 1), _evaluate(node.right, depth + 1)
        return _checked(_BINARY[type(node.op)](left, right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _checked(_UNARY[type(node.op)](_evaluate(node.operand, depth + 1)))
    if isinstance(node, ast.Name):
        if node.id not in _NAMES:
            raise CalculatorError(f"name {node.id!r} is not allowed")
        return _NAMES[node.id]
    if isinstance(node, ast.Call):
        name = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
        if name not in _FUNCTIONS or node.keywords or len(node.args) > 2:
            raise CalculatorError(f"function call {name}(...) is not allowed")
        args = [_evaluate(arg, depth + 1) for arg in node.args]
        try:
            return _checked(_FUNCTIONS[name](*args))
        except (ValueError, TypeError) as exc:
            if isinstance(exc, CalculatorError):
                raise
            shown = ", ".join(_format(arg) for arg in args)
            raise CalculatorError(f"{name}({shown}) is undefined ({exc})") from None
    raise CalculatorError(f"{type(node).__name__} is not allowed in an expression")


def _format(value: Number) -> str:
    """Format a number for display, integral values without ".0" (floats only where every digit is exact)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return str(value) if isinstance(value, int) else repr(value)


def evaluate(expression: str) -> str:
    """Evaluate an arithmetic expression safely and return the formatted result."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"expression is longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        with warnings.catch_warnings():
            # "1if 1else 0" and the like: the parser warns, then the evaluator refuses them anyway.
            warnings.simplefilter("ignore", SyntaxWarning)
            tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError):
        # ValueError: a NUL byte, or an integer literal past Python's int-to-string digit limit.
        raise CalculatorError(f"invalid expression {expression!r}") from None
    except (RecursionError, MemoryError):
        raise CalculatorError(f"expression is nested more than {MAX_DEPTH} levels deep") from None
    try:
        return _format(_evaluate(tree))
    except ZeroDivisionError:
        raise CalculatorError("division by zero") from None
    except OverflowError:
        raise _too_large() from None
