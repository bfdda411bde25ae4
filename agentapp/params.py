"""Strict query parameters for agentapp's HTTP views: one value each, ASCII digits in a range, known words only.

Every refusal is a ``ParameterError`` with the code ``invalid_parameter``; the views answer it with a 400 in the
API's error shape. Parameters a view does not know are ignored. ``docs/api.md`` and ``docs/sse.md`` give the range
of each parameter.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from django.core.exceptions import TooManyFieldsSent
from django.http import HttpRequest, QueryDict

ERR_INVALID_PARAMETER = "invalid_parameter"

_DIGITS = re.compile(r"[0-9]+")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]{32}")


class ParameterError(Exception):
    """A query parameter that cannot be accepted; ``message`` says which and what is allowed."""

    code = ERR_INVALID_PARAMETER

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def query(request: HttpRequest) -> QueryDict:
    """The request's query parameters; too many of them (Django's ``DATA_UPLOAD_MAX_NUMBER_FIELDS``) is a refusal."""
    try:
        return request.GET
    except TooManyFieldsSent:
        raise ParameterError("Too many query parameters.") from None


def single(params: QueryDict, name: str) -> str | None:
    """The one value of ``name``, or None when absent; a parameter given twice is refused, never guessed."""
    values = params.getlist(name)
    if not values:
        return None
    if len(values) > 1:
        raise ParameterError(f"{name} may be given only once.")
    return values[0]


def integer(params: QueryDict, name: str, default: int, low: int, high: int) -> int:
    """``name`` as a decimal integer of ASCII digits only (no sign, space or exponent) from ``low`` to ``high``."""
    value = single(params, name)
    if value is None:
        return default
    if len(value) > len(str(high)) or not _DIGITS.fullmatch(value) or not low <= int(value) <= high:
        raise ParameterError(f"{name} must be an integer from {low} to {high}, in ASCII digits.")
    return int(value)


def choice(params: QueryDict, name: str, choices: Sequence[str], default: str | None = None) -> str | None:
    """``name``, which must be exactly one of ``choices``."""
    value = single(params, name)
    if value is None:
        return default
    if value not in choices:
        raise ParameterError(f"{name} must be one of {', '.join(choices)}.")
    return value


def canonical_uuid(value: str) -> str | None:
    """The UUID in ``value`` as lowercase hyphenated text, or None unless it is 32 hex digits (hyphens optional)."""
    if not _UUID.fullmatch(value):
        return None
    digits = value.replace("-", "").lower()
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"
