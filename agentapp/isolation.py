"""Run CPU-bound tool work in worker processes that a time limit can really stop.

A thread cannot be killed, and one long C call (a big-integer power) holds the GIL of the whole server process, so
a time limit on a thread or an await cannot stop it. ``WorkerPool.run`` instead sends the call to a small persistent
child process (started lazily with ``python -m agentapp.isolation``, never forked from the server) and waits for its
answer; past the limit the child is killed and reaped, a new one is started on the next call, and ``ToolTimeout`` is
raised. ``run`` blocks its calling thread (Strands runs sync tools with ``asyncio.to_thread``) and is thread-safe.
"""

from __future__ import annotations

import atexit
import importlib
import os
import pickle
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

# How long a worker asked to stop may take to exit before it is killed.
_STOP_TIMEOUT_SECONDS = 2.0


class ToolTimeout(TimeoutError):
    """A call ran past its time limit and its worker was killed (or, as ``WorkersBusy``, never got one)."""


class WorkersBusy(ToolTimeout):
    """Every worker stayed busy for as long as the call could have run."""


class WorkerFailed(RuntimeError):
    """The worker process died during a call, or could not return its result."""


def target_name(func: Callable[..., Any]) -> str:
    """Return ``module:qualname`` of a module-level function, the form a worker imports it by."""
    module, qualname = getattr(func, "__module__", None), getattr(func, "__qualname__", "")
    if not module or module == "__main__" or "<" in qualname:
        raise ValueError(f"{func!r} is not an importable module-level function")
    return f"{module}:{qualname}"


def _resolve(target: str) -> Callable[..., Any]:
    """Import the function named ``module:qualname``."""
    module, _, qualname = target.partition(":")
    value: Any = importlib.import_module(module)
    for part in qualname.split("."):
        value = getattr(value, part)
    return value


def _child_env() -> dict[str, str]:
    """The server's environment, with its import path, so a worker imports the same modules."""
    paths = [path or os.getcwd() for path in sys.path]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


class _Worker:
    """One child process, answering calls sent over a pair of pipes, one at a time."""

    def __init__(self) -> None:
        to_child, requests = os.pipe()
        replies, from_child = os.pipe()
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "agentapp.isolation", str(to_child), str(from_child)],
                pass_fds=(to_child, from_child),
                stdin=subprocess.DEVNULL,
                env=_child_env(),
            )
        except BaseException:
            for fd in (requests, replies):
                os.close(fd)
            raise
        finally:
            os.close(to_child)
            os.close(from_child)
        self._requests = Connection(requests, readable=False)
        self._replies = Connection(replies, writable=False)

    def call(self, target: str, args: Sequence[Any], seconds: float) -> Any:
        """Run ``target(*args)`` in the worker and return its result, raising what it raised."""
        try:
            self._requests.send((target, tuple(args)))
            answered = self._replies.poll(seconds)
            reply = self._replies.recv_bytes() if answered else b""
        except (EOFError, OSError):
            try:
                code = self.process.wait(_STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                code = None
            raise WorkerFailed(f"the tool worker process exited (code {code})") from None
        if not answered:
            raise ToolTimeout(f"stopped after {seconds:g} s")
        try:
            ok, value = pickle.loads(reply)
        except Exception as exc:
            raise WorkerFailed(f"the result could not be read: {type(exc).__name__}: {exc}") from None
        if not ok:
            raise value
        return value

    def stop(self, kill: bool = False) -> None:
        """End the process: close its request pipe so it exits, or kill it; either way reap it."""
        self._requests.close()
        self._replies.close()
        if kill:
            self.process.kill()
        try:
            self.process.wait(_STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class WorkerPool:
    """Up to ``workers`` persistent worker processes, started on demand, shared by the threads of one process."""

    def __init__(self) -> None:
        self._forget()
        # A forked copy of the server must not use (or stop) its parent's workers; it starts its own.
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        """Start with no workers and a fresh lock."""
        self._lock = threading.Condition()
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()

    def run(self, func: Callable[..., Any], *args: Any, seconds: float, workers: int = 2) -> Any:
        """Return ``func(*args)`` computed in a worker; raise ``ToolTimeout`` past ``seconds`` (the worker dies)."""
        target = target_name(func)
        worker = self._acquire(seconds, max(1, workers))
        try:
            value = worker.call(target, args, seconds)
        except (ToolTimeout, WorkerFailed, KeyboardInterrupt):
            self._discard(worker)
            raise
        except BaseException:
            self._release(worker)
            raise
        self._release(worker)
        return value

    def pids(self) -> list[int]:
        """Process ids of the live workers, busy or idle."""
        with self._lock:
            return sorted(worker.process.pid for worker in self._all)

    def shutdown(self) -> None:
        """Stop every worker: idle ones exit; busy ones are killed, and their callers get ``WorkerFailed``."""
        with self._lock:
            idle, busy = list(self._idle), self._all.difference(self._idle)
            self._all.clear()
            self._idle.clear()
            self._lock.notify_all()
        for worker in idle:
            worker.stop()
        for worker in busy:
            # Only the process: its pipes belong to the thread waiting on them, which cleans up.
            worker.process.kill()

    def _acquire(self, seconds: float, workers: int) -> _Worker:
        """Take an idle worker, start one if fewer than ``workers`` run, or wait up to ``seconds`` for one."""
        with self._lock:
            if not self._lock.wait_for(lambda: self._idle or len(self._all) < workers, seconds):
                raise WorkersBusy(f"no tool worker became free within {seconds:g} s")
            if self._idle:
                return self._idle.pop()
            worker = _Worker()
            self._all.add(worker)
            return worker

    def _release(self, worker: _Worker) -> None:
        """Give a healthy worker back (a worker removed by ``shutdown`` meanwhile is stopped instead)."""
        with self._lock:
            kept = worker in self._all
            if kept:
                self._idle.append(worker)
                self._lock.notify()
        if not kept:
            worker.stop()

    def _discard(self, worker: _Worker) -> None:
        """Kill and reap a worker whose state is unknown; the next call starts a fresh one."""
        with self._lock:
            self._all.discard(worker)
            self._lock.notify()
        worker.stop(kill=True)


default_pool = WorkerPool()
atexit.register(default_pool.shutdown)

### Worker process ###


def _serve(requests: Connection, replies: Connection) -> None:
    """Answer ``(target, args)`` requests with ``(True, result)`` or ``(False, exception)`` until the pipe closes."""
    while True:
        try:
            target, args = requests.recv()
        except (EOFError, OSError):
            return
        try:
            reply: tuple[bool, Any] = (True, _resolve(target)(*args))
        except Exception as exc:
            reply = (False, exc)
        try:
            replies.send(reply)
        except OSError:
            return  # the server is gone (killed mid-call): nobody waits for the answer
        except Exception as exc:
            try:
                replies.send((False, WorkerFailed(f"the result could not be sent back: {type(exc).__name__}: {exc}")))
            except OSError:
                return


if __name__ == "__main__":
    # Ctrl-C in a terminal reaches the whole process group, and a service manager's SIGTERM often the whole control
    # group; the server decides when its workers stop (a draining worker's runs still call tools).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Serve from the imported module, so exceptions pickle as agentapp.isolation's, not __main__'s.
    from agentapp.isolation import _serve

    _serve(Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False))
