"""Text every database can store: NUL characters and lone surrogates become U+FFFD, and the change is reported.

PostgreSQL refuses NUL in text and JSON columns, and no database driver encodes a lone surrogate as UTF-8. A
prompt, a tool result or a model's answer may carry either, so everything a run stores passes through here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

REPLACEMENT = "\ufffd"
_UNSTORABLE_RE = re.compile("[\x00\ud800-\udfff]")


def _clean_str(text: str) -> tuple[str, bool]:
    if text.isascii():
        if "\x00" not in text:
            return text, False
        return text.replace("\x00", REPLACEMENT), True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _UNSTORABLE_RE.sub(REPLACEMENT, text), True
    if "\x00" not in text:
        return text, False
    return text.replace("\x00", REPLACEMENT), True


def storable(value: Any) -> tuple[Any, bool]:
    """``value`` with every string (keys too) made storable, and whether anything had to change."""
    if isinstance(value, str):
        return _clean_str(value)
    if isinstance(value, Mapping):
        changed = False
        cleaned: dict[Any, Any] = {}
        for key, item in value.items():
            if isinstance(key, str):
                key, key_changed = _clean_str(key)
                changed |= key_changed
            cleaned[key], item_changed = storable(item)
            changed |= item_changed
        return (cleaned, True) if changed else (value, False)
    if isinstance(value, list | tuple):
        items = [storable(item) for item in value]
        if any(item_changed for _, item_changed in items):
            return [item for item, _ in items], True
        return value, False
    return value, False


def storable_text(text: str) -> str:
    """``text`` made storable."""
    return _clean_str(text)[0]
