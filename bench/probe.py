"""One measurement of benchmark 4 or 5 on its own, for A/B runs (``python bench/probe.py concurrency memory 300``).

``concurrency in-process N`` runs benchmark 4's baseline (a), N agents in this process, instead of a server.

Run it from the root of the tree under test (a git worktree of another commit, for example): the servers it starts
serve that tree's code. It prints the main figures and writes no report.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

ROOT = Path.cwd()
sys.path[:] = [str(ROOT)] + [entry for entry in sys.path if Path(entry or ".").resolve() != ROOT / "bench"]

from bench import concurrency, fanout  # noqa: E402
from bench.servers import ServerPool  # noqa: E402

FIGURES = (
    "completed", "finished", "errors", "elapsed_s", "cpu_s", "first_token_p50_ms", "lateness_p50_ms", "lateness_p99_ms",
    "added_p50_ms", "added_p99_ms", "added_max_ms",
)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("benchmark", choices=("concurrency", "fanout"))
    parser.add_argument("layer", help="memory, redis or in-process (concurrency); core or pubsub (fanout)")
    parser.add_argument("count", type=int, help="N conversations (concurrency) or M watchers (fanout)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, ServerPool(Path(tmp)) as pool:
        if args.benchmark == "concurrency" and args.layer == "in-process":
            result = asyncio.run(concurrency.measure_baseline(args.count, print))
        elif args.benchmark == "concurrency":
            result = asyncio.run(concurrency.measure_one(pool, args.layer, args.count, print))
        else:
            result = asyncio.run(fanout.measure(pool, [args.layer], [args.count], print))["results"][0]
    print({key: value for key, value in result.items() if key in FIGURES or key.startswith("latency_p")})


if __name__ == "__main__":
    main()
