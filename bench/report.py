"""Turning results into the printed table, the targets with met/not met, and ``docs/benchmarks.md``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

NOT_MEASURED = "not measured yet"
# Status of a Targets row that compares two figures and judges nothing.
COMPARISON = "comparison, no target"


@dataclass(frozen=True)
class Row:
    """One line of the results table, with the command that produced it."""

    benchmark: str
    case: str
    result: str
    command: str


def _num(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.{digits}f}"


def _x(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}x"


def command_for(mode: str, only: str) -> str:
    """The command that reproduces one benchmark's rows."""
    return f".venv/bin/python bench/run.py --{mode} --only {only}"


### Rows ###


def streaming_rows(result: dict[str, Any], command: str) -> list[Row]:
    rows = []
    for case, summary in result["cases"].items():
        errors = f"; {len(summary['errors'])} failed runs" if summary["errors"] else ""
        text = (
            f"{_num(summary['tokens_per_second_median'])} tok/s median of {summary['runs']} "
            f"({_x(summary['ratio_to_a'])} a, {_x(summary['ratio_to_b'])} b); "
            f"CPU {_num(summary['server_cpu_ms_median'])} ms/answer "
            f"({'harness process' if summary['server'] is None else 'server process'}){errors}"
        )
        server = f" [server `{summary['server']}`]" if summary["server"] else ""
        rows.append(Row("1. streaming, 2,000 tokens", f"({case}) {summary['label']}{server}", text, command))
    return rows


def writes_rows(result: dict[str, Any], command: str) -> list[Row]:
    rows = []
    for database, measured in result.items():
        if "error" in measured:
            rows.append(Row("2. writes per run", database, f"FAILED: {measured['error']}", command))
            continue
        for tokens, sample in measured["results"].items():
            verbs = ", ".join(f"{verb} {count}" for verb, count in sample["by_verb"].items())
            text = (
                f"{'/'.join(map(str, sample['statements']))} statements ({verbs}); "
                f"{'/'.join(map(str, sample['connections']))} connections opened; "
                f"DB time {_num(sample['db_ms_median'], 1)} ms; run {_num(sample['wall_ms_median'], 1)} ms "
                f"(median of {sample['runs']})"
            )
            rows.append(Row("2. writes per run", f"{database}, {int(tokens):,} tokens", text, command))
    return rows


def ttft_rows(result: dict[str, Any], command: str) -> list[Row]:
    def text(summary: dict[str, Any]) -> str:
        return f"p50 {_num(summary['p50_ms'], 2)} ms, p99 {_num(summary['p99_ms'], 2)} ms ({summary['runs']} runs)"

    return [
        Row("3. time to first token", "(a) stream_async in process", text(result["a"]), command),
        Row(
            "3. time to first token",
            "(d) agentapp over WebSocket [server `agentapp`]",
            text(result["agentapp"]),
            command,
        ),
        Row(
            "3. time to first token",
            "overhead (d) - (a)",
            f"p50 {_num(result['overhead_p50_ms'], 2)} ms, p99 {_num(result['overhead_p99_ms'], 2)} ms",
            command,
        ),
    ]


def _answers_text(item: dict[str, Any]) -> str:
    """Completed answers, errors, lateness and first token of one concurrency row."""
    return (
        f"{item['completed']}/{item['n']} completed, {item['errors']} errors; "
        f"lateness p50/p99 {_num(item['lateness_p50_ms'], 1)}/{_num(item['lateness_p99_ms'], 1)} ms; "
        f"first token p50/p99 {_num(item['first_token_p50_ms'], 1)}/{_num(item['first_token_p99_ms'], 1)} ms; "
    )


def _baseline_text(item: dict[str, Any]) -> str:
    return (
        _answers_text(item) + f"all done in {_num(item['elapsed_s'], 2)} s (ideal {_num(item['ideal_s'], 1)} s); "
        f"CPU {_num(item['cpu_s'], 1)} s (harness process)"
    )


def _layer_text(item: dict[str, Any]) -> str:
    return (
        f"added latency (model emit to client receive) p50/p99 {_num(item.get('added_p50_ms'), 1)}/"
        f"{_num(item.get('added_p99_ms'), 1)} ms (max {_num(item.get('added_max_ms'), 1)}); "
        + _answers_text(item)
        + f"gap p50/p99 {_num(item['gap_p50_ms'], 1)}/{_num(item['gap_p99_ms'], 1)} ms (ideal 20); "
        f"{_num(item['throughput_tokens_per_s'])} tok/s, all done in {_num(item['elapsed_s'], 2)} s "
        f"(ideal {_num(item['ideal_s'], 1)} s); CPU server/client {_num(item['server_cpu_s'], 1)}/"
        f"{_num(item['client_cpu_s'], 1)} s; RSS 0/idle/streaming "
        f"{_num(item['rss_zero_mb'], 1)}/{_num(item['rss_idle_mb'], 1)}/{_num(item['rss_streaming_max_mb'], 1)} MB "
        f"= {_num(item['rss_per_idle_connection_kb'], 1)} KB per idle connection"
    )


def concurrency_rows(result: dict[str, Any], command: str) -> list[Row]:
    """Per N: the in-process baseline (a), then each layer."""
    benchmark = "4. concurrency, 50 tok/s, 200 tokens"
    baselines = {item["n"]: item for item in result.get("baselines", [])}
    counts = sorted({*baselines, *(item["n"] for item in result["results"])})
    rows = []
    for n in counts:
        if n in baselines:
            case = f"(a) Strands stream_async in process, N={n:,} [harness process]"
            rows.append(Row(benchmark, case, _baseline_text(baselines[n]), command))
        for item in result["results"]:
            if item["n"] == n:
                case = f"{item['layer']} layer, N={n:,} [server `{item['server_name']}`]"
                rows.append(Row(benchmark, case, _layer_text(item), command))
    return rows


def fanout_rows(result: dict[str, Any], command: str) -> list[Row]:
    rows = []
    for item in result["results"]:
        top = ", ".join(f"{name} {calls:,}" for name, calls in list(item["redis_by_command"].items())[:4])
        cpu = "/".join(_num(value, 1) for value in item["server_cpu_s"])
        p50s, p99s = item["latency_p50_by_server_ms"], item["latency_p99_by_server_ms"]
        text = (
            f"{item['finished']}/{item['m']} watchers got run_finished, {item['errors']} errors, "
            f"{item['missing_frames']} frames missing; delivery latency p50/p99/max "
            f"{_num(item['latency_p50_ms'], 1)}/{_num(item['latency_p99_ms'], 1)}/{_num(item['latency_max_ms'], 1)} ms "
            f"(watchers on process 1: {_num(p50s[0], 1)}/{_num(p99s[0], 1)} ms, on 2: "
            f"{_num(p50s[-1], 1)}/{_num(p99s[-1], 1)} ms) "
            f"over {item['samples']:,} frames (origin {item['origin_frames']} frames, a watcher median "
            f"{item['watcher_frames_median']}); Redis {item['redis_calls']:,} calls per run ({top}; "
            f"{_num(item['redis_usec'] / 1000, 1)} ms in Redis; "
            f"idle {_num(item['redis_idle_calls_per_s'], 1)} calls/s); "
            f"answer done for all in {_num(item['elapsed_s'], 2)} s (ideal {_num(item['ideal_s'], 1)} s); "
            f"CPU servers 1/2 {cpu} s, client {_num(item['client_cpu_s'], 1)} s; "
            f"{item['m']:,} watchers connected in {_num(item['connect_s'], 1)} s, servers quiet after "
            f"{_num(item['settle_s'], 1)} s more"
        )
        case = f"{item['layer']} layer, M={item['m']:,} [servers `{item['servers'][0]}`, `{item['servers'][1]}`]"
        rows.append(Row("5. fan-out, 2 processes, 50 tok/s, 200 tokens", case, text, command))
    return rows


### Targets ###


def _status(ok: bool | None) -> str:
    return NOT_MEASURED if ok is None else ("met" if ok else "not met")


def _lateness_against_a(item: dict[str, Any], baselines: dict[int, dict[str, Any]]) -> str:
    """An N's lateness p99 next to the in-process baseline's at the same N."""
    ours = item["lateness_p99_ms"]
    base = baselines.get(item["n"], {}).get("lateness_p99_ms", math.nan)
    difference = "n/a" if math.isnan(ours - base) else f"{ours - base:+,.1f}"
    return f"{_num(ours, 1)} ms vs {_num(base, 1)} ms for (a) at N={item['n']:,} ({difference} ms)"


def _concurrency_targets(concurrency: dict[str, Any] | None) -> list[tuple[str, str, str]]:
    """Benchmark 4's targets per layer, at N=1,000 (or what the largest N measured showed)."""
    ok = bool(concurrency) and "error" not in concurrency
    measured = concurrency.get("results", []) if ok else []
    baselines = {item["n"]: item for item in concurrency.get("baselines", [])} if ok else {}
    checks = (
        (
            "p99 added latency (model emit to client receive) < 100 ms",
            "added_p99_ms",
            lambda v: v < 100,
            1,
            " ms p99 emit to receive",
        ),
        ("zero errors", "errors", lambda v: v == 0, 0, " errors"),
        ("< 100 KB RSS per idle connection", "rss_per_idle_connection_kb", lambda v: v < 100, 1, " KB"),
    )
    out: list[tuple[str, str, str]] = []
    for layer in sorted({item["layer"] for item in measured}) or ["memory"]:
        ours = [item for item in measured if item["layer"] == layer]
        at_scale = next((item for item in ours if item["n"] >= 1000), None)
        largest = max(ours, key=lambda item: item["n"], default=None)
        for name, key, test, digits, unit in checks:
            target = f"1,000 paced conversations ({layer} layer): {name}"
            if at_scale is not None and key in at_scale:
                value = at_scale[key]
                out.append((target, f"{_num(value, digits)}{unit} at N={at_scale['n']:,}", _status(test(value))))
            elif largest is not None and key in largest:
                shown = f"{NOT_MEASURED} at N=1,000; N={largest['n']:,}: {_num(largest[key], digits)}{unit}"
                out.append((target, shown, NOT_MEASURED))
            else:
                out.append((target, NOT_MEASURED, NOT_MEASURED))
        name = f"1,000 paced conversations ({layer} layer): lateness p99 against Strands in process (a)"
        if at_scale is not None:
            out.append((name, _lateness_against_a(at_scale, baselines), COMPARISON))
        elif largest is not None:
            out.append((name, f"{NOT_MEASURED} at N=1,000; {_lateness_against_a(largest, baselines)}", COMPARISON))
        else:
            out.append((name, NOT_MEASURED, COMPARISON))
    return out


def targets(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(target, measured, met / not met / not measured yet), computed from the numbers."""
    out: list[tuple[str, str, str]] = []
    stream = results.get("stream")
    d_over_c = stream.get("d_over_c") if stream and "error" not in stream else None
    d_over_b = stream.get("d_over_b") if stream and "error" not in stream else None
    for name, value, floor in (
        ("(d) >= 0.8x (c) tokens/s", d_over_c, 0.8),
        ("(d) >= 1.0x (b) tokens/s", d_over_b, 1.0),
    ):
        missing = value is None or math.isnan(value)
        out.append((name, NOT_MEASURED if missing else _x(value), _status(None if missing else value >= floor)))

    out += _concurrency_targets(results.get("concurrency"))

    fanout = results.get("fanout")
    fanned = fanout.get("results", []) if fanout and "error" not in fanout else []
    for layer in sorted({item["layer"] for item in fanned}) or ["core", "pubsub"]:
        target = f"Fan-out to 1,000 watchers over two processes with p99 under 100 ms ({layer} layer)"
        ours = [item for item in fanned if item["layer"] == layer]
        at_scale = next((item for item in ours if item["m"] >= 1000), None)
        largest = max(ours, key=lambda item: item["m"], default=None)

        def shown(item: dict[str, Any]) -> str:
            return (
                f"p99 {_num(item['latency_p99_ms'], 1)} ms at M={item['m']:,}, "
                f"{item['finished']}/{item['m']} finished, {item['errors']} errors"
            )

        if at_scale is not None:
            ok = at_scale["latency_p99_ms"] < 100 and at_scale["errors"] == 0
            out.append((target, shown(at_scale), _status(ok)))
        elif largest is not None:
            out.append((target, f"{NOT_MEASURED} at M=1,000; {shown(largest)}", NOT_MEASURED))
        else:
            out.append((target, NOT_MEASURED, NOT_MEASURED))

    writes = results.get("writes")
    if writes:
        for database, measured_db in writes.items():
            name = f"statements per run independent of token count ({database})"
            if "error" in measured_db:
                out.append((name, NOT_MEASURED + " (failed)", NOT_MEASURED))
                continue
            counts = {tokens: sample["statements"] for tokens, sample in measured_db["results"].items()}
            flat = {count for values in counts.values() for count in values}
            shown = ", ".join(
                f"{int(tokens):,} tokens: {'/'.join(map(str, values))}" for tokens, values in counts.items()
            )
            out.append((name, shown, _status(len(flat) == 1 and len(counts) > 1)))
    else:
        out.append(("statements per run independent of token count", NOT_MEASURED, NOT_MEASURED))

    ttft = results.get("ttft")
    if ttft and "error" not in ttft and not math.isnan(ttft["overhead_p50_ms"]):
        value = ttft["overhead_p50_ms"]
        out.append(("TTFT overhead < 5 ms p50", f"{_num(value, 2)} ms", _status(value < 5)))
    else:
        out.append(("TTFT overhead < 5 ms p50", NOT_MEASURED, NOT_MEASURED))
    return out


### Output ###


def text_table(rows: list[Row]) -> str:
    """A plain-text table for the terminal."""
    lines = []
    for row in rows:
        lines.append(f"{row.benchmark} | {row.case}\n    {row.result}\n    $ {row.command}")
    return "\n".join(lines)


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(
    mode: str,
    info: dict[str, Any],
    rows: list[Row],
    goals: list[tuple[str, str, str]],
    servers: dict[str, str],
    failures: list[str],
    method: str,
) -> str:
    """The whole of ``docs/benchmarks.md``."""
    parts = [
        "# Benchmarks",
        "",
        f"Generated by `.venv/bin/python bench/run.py --{mode}` on {info['date']} in {info['duration_s']:.0f} s. "
        "Regenerate with `make bench` (full, under 15 minutes) or `make bench-quick` (smoke run, under 2 minutes, "
        "written to `artifacts/benchmarks-quick.md`).",
        "",
    ]
    busiest = max(float(info["load_start"].split()[0]), float(info["load_end"].split()[0]))
    if busiest > 1.0:
        parts += [
            f"> **Busy machine.** The 1-minute load average reached {busiest:.2f} on {info['nproc']} CPUs: other "
            "work shared the cores, so wall-time numbers are noisy (the CPU-time columns less so).",
            "",
        ]
    if mode == "quick":
        parts += [
            "> **Quick run.** Few repetitions and small N: these numbers only show that every benchmark works. "
            "Do not quote them; run `make bench` on an idle machine.",
            "",
        ]
    parts += [
        "## Machine",
        "",
        f"- CPUs (`nproc`): {info['nproc']}",
        f"- Load average at start / end: {info['load_start']} / {info['load_end']} "
        "(anything else running on the machine makes every number noisier)",
        f"- Python {info['python']}",
        f"- PostgreSQL: {info['postgres']}",
        f"- Redis: {info['redis']}",
        f"- Packages: {', '.join(f'{name} {version}' for name, version in info['packages'].items())}",
        "",
        "`free -h`:",
        "",
        "```",
        info["free"],
        "```",
        "",
        "## Results",
        "",
        "| Benchmark | Case | Result | Command |",
        "| --- | --- | --- | --- |",
    ]
    parts += [f"| {_md(r.benchmark)} | {_md(r.case)} | {_md(r.result)} | `{r.command}` |" for r in rows]
    if failures:
        parts += ["", "**Benchmarks that failed in this run:**", ""] + [f"- {_md(failure)}" for failure in failures]
    parts += ["", "## Targets", "", "| Target | Measured | Status |", "| --- | --- | --- |"]
    parts += [f"| {_md(name)} | {_md(measured)} | {status} |" for name, measured, status in goals]
    parts += [
        "",
        "## Servers",
        "",
        "Each server runs on a free port on 127.0.0.1, started and stopped by the harness.",
        "",
    ]
    parts += ["| Name | Command |", "| --- | --- |"]
    parts += [f"| `{name}` | `{command}` |" for name, command in servers.items()]
    parts += ["", method.strip(), ""]
    return "\n".join(parts)
