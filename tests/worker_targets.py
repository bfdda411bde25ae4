"""Functions the tool worker process runs in tests: echoes, failures, and one that spins until it is killed.

The worker imports this module by name (``tests.worker_targets``), so it imports nothing of the test suite.
"""

from __future__ import annotations

import os
import socket
from typing import Any

# Port on 127.0.0.1 that ``spin_calculation`` reports to before spinning (set before the worker starts).
SPIN_PORT_ENV = "AGENTAPP_TEST_SPIN_PORT"


def echo(*args: Any) -> tuple[Any, ...]:
    """Return the arguments, with the worker's process id."""
    return (os.getpid(), *args)


def fail(message: str) -> None:
    """Raise a ValueError carrying ``message``."""
    raise ValueError(message)


def exit_now(code: int) -> None:
    """End the worker process at once, as a crash would."""
    os._exit(code)


def unpicklable() -> Any:
    """Return a value that cannot be sent back to the caller."""
    return lambda: None


def spin(port: int) -> None:
    """Tell the test listening on ``port`` that the call started, then burn CPU forever, holding the GIL."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(str(os.getpid()).encode())
    while True:
        pass


def spin_calculation(expression: str) -> str:
    """Stand in for the calculator's evaluator: spin, reporting to the port in ``SPIN_PORT_ENV``."""
    spin(int(os.environ[SPIN_PORT_ENV]))
    return expression
