"""Checks over a run's frames as a client got them, where a ``data`` frame may carry merged deltas."""

from __future__ import annotations

from typing import Any


def deltas(frames: list[dict[str, Any]]) -> int:
    """Text deltas carried by the ``data`` frames: a merged one carries ``seq_first``..``seq``."""
    return sum(frame["seq"] - frame.get("seq_first", frame["seq"]) + 1 for frame in frames if frame["type"] == "data")


def assert_contiguous(frames: list[dict[str, Any]], start: int = 0) -> None:
    """Every seq from ``start`` covered once, in order: each frame starts right after the previous one."""
    expected = start
    for item in frames:
        assert item.get("seq_first", item["seq"]) == expected, (expected, item)
        expected = item["seq"] + 1
