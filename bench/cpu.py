"""CPU seconds used by a process between two points: less sensitive to a busy machine than wall time."""

from __future__ import annotations

import time

import psutil


class CpuMeter:
    """Reads user+system CPU seconds of a server process (by pid) or of this process (pid None)."""

    def __init__(self, pid: int | None = None) -> None:
        self._process = psutil.Process(pid) if pid is not None else None

    def read(self) -> float:
        if self._process is None:
            return time.process_time()
        times = self._process.cpu_times()
        return times.user + times.system

    def rss(self) -> int:
        """Resident set size in bytes of the measured process."""
        process = self._process or psutil.Process()
        return process.memory_info().rss
