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


@dataclass(frozen=True)
class Goal:
    """One target: what agentapp measured, the anchor measured in the same run, their ratio, and the verdict."""

    target: str
    measured: str
    anchor: str
    ratio: str
    status: str


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
        where = "harness process" if summary["server"] is None else "server process"
        frames = summary.get("frames_median", math.nan)
        text = (
            f"{_num(summary['tokens_per_second_median'])} tok/s median of {summary['runs']} "
            f"({_x(summary['ratio_to_a'])} a, {_x(summary['ratio_to_b'])} b); "
            f"{_num(summary.get('frames_per_second_median'))} frames/s, {_num(frames)} frames "
            f"({_num(summary.get('data_frames_median'))} with text) per answer; "
            f"CPU {_num(summary['server_cpu_ms_median'])} ms/answer = "
            f"{_num(summary.get('server_cpu_us_per_token'), 1)} µs/token ({where}){errors}"
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


def agui_rows(result: dict[str, Any], command: str) -> list[Row]:
    """Benchmark 6: AG-UI beside the WebSocket on one server (a comparison, no target)."""
    errors = f"; {len(result['errors'])} failed runs" if result["errors"] else ""

    def text(summary: dict[str, Any]) -> str:
        first = summary["first_token"]
        return (
            f"{_num(summary['tokens_per_second_median'])} tok/s median of {summary['stream_runs']} "
            f"({_num(summary['text_frames_median'])} text frames per answer); first token p50 "
            f"{_num(first['p50_ms'], 2)} ms, p99 {_num(first['p99_ms'], 2)} ms ({first['runs']} runs)"
        )

    benchmark = "6. AG-UI beside the WebSocket"
    return [
        Row(benchmark, "(d) agentapp over WebSocket [server `agentapp`]", text(result["websocket"]), command),
        Row(benchmark, "agentapp over AG-UI, POST agui/ [server `agentapp`]", text(result["agui"]), command),
        Row(
            benchmark,
            "AG-UI / WebSocket",
            f"{_x(result['tokens_per_second_ratio'])} tokens/s; first token "
            f"{result['first_token_overhead_p50_ms']:+.2f} ms p50{errors}",
            command,
        ),
    ]


def history_rows(result: dict[str, Any], command: str) -> list[Row]:
    rows = []
    for size, summary in result["results"].items():
        text = (
            f"first token p50 {_num(summary['p50_ms'], 2)} ms, p99 {_num(summary['p99_ms'], 2)} ms "
            f"({summary['runs']} runs, each on a conversation of its own); opening it (the conversation frame) "
            f"p50 {_num(summary['open_p50_ms'], 1)} ms"
        )
        case = f"{int(size):,} stored message{'' if int(size) == 1 else 's'} [server `agentapp-history`]"
        rows.append(Row("3b. time to first token by history length", case, text, command))
    return rows


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
        f"(ideal {_num(item['ideal_s'], 1)} s); {_num(item.get('frames'))} data frames; "
        f"CPU server/client {_num(item['server_cpu_s'], 1)}/{_num(item['client_cpu_s'], 1)} s, "
        f"server {_num(item.get('server_cpu_us_per_token'), 1)} µs/token; RSS 0/idle/streaming "
        f"{_num(item['rss_zero_mb'], 1)}/{_num(item['rss_idle_mb'], 1)}/{_num(item['rss_streaming_max_mb'], 1)} MB "
        f"= {_num(item['rss_per_idle_connection_kb'], 1)} KB per idle connection"
    )


def _bare_text(item: dict[str, Any]) -> str:
    return (
        _answers_text(item) + f"all done in {_num(item['elapsed_s'], 2)} s (ideal {_num(item['ideal_s'], 1)} s); "
        f"{_num(item['frames'])} data frames; CPU server/client {_num(item['server_cpu_s'], 1)}/"
        f"{_num(item['client_cpu_s'], 1)} s, server {_num(item['server_cpu_us_per_token'], 1)} µs/token"
    )


def concurrency_rows(result: dict[str, Any], command: str) -> list[Row]:
    """Per N: the in-process baseline (a), the bare consumer, then each layer."""
    benchmark = "4. concurrency, 50 tok/s, 200 tokens"
    baselines = {item["n"]: item for item in result.get("baselines", [])}
    bare = {item["n"]: item for item in result.get("bare", [])}
    counts = sorted({*baselines, *bare, *(item["n"] for item in result["results"])})
    rows = []
    for n in counts:
        if n in baselines:
            case = f"(a) Strands stream_async in process, N={n:,} [harness process]"
            rows.append(Row(benchmark, case, _baseline_text(baselines[n]), command))
        if n in bare:
            case = f"bare consumer, merged, N={n:,} [server `{bare[n]['server_name']}`]"
            rows.append(Row(benchmark, case, _bare_text(bare[n]), command))
        for item in result["results"]:
            if item["n"] == n:
                case = f"{item['layer']} layer, N={n:,} [server `{item['server_name']}`]"
                rows.append(Row(benchmark, case, _layer_text(item), command))
    return rows


def _fanout_text(item: dict[str, Any]) -> str:
    """Delivery, CPU and timings of one fan-out measurement (agentapp's or the bare anchor's)."""
    cpu = "/".join(_num(value, 1) for value in item["server_cpu_s"])
    p50s, p99s = item["latency_p50_by_server_ms"], item["latency_p99_by_server_ms"]
    others = ", ".join(f"{index + 1}: {_num(p50s[index], 1)}/{_num(p99s[index], 1)}" for index in range(1, len(p99s)))
    return (
        f"{item['finished']}/{item['m']} watchers got the end, {item['errors']} errors, "
        f"{item['missing_frames']} frames missing; delivery latency p50/p99/max "
        f"{_num(item['latency_p50_ms'], 1)}/{_num(item['latency_p99_ms'], 1)}/{_num(item['latency_max_ms'], 1)} ms "
        f"(watchers on process 1: {_num(p50s[0], 1)}/{_num(p99s[0], 1)} ms; on {others} ms) "
        f"over {item['samples']:,} frames (origin {item['origin_frames']} frames); "
        f"CPU servers {cpu} s = {_num(item.get('cpu_us_per_watcher_frame'), 1)} µs per watcher-frame "
        f"({_num(item.get('watcher_frames'))} watcher-frames), client {_num(item['client_cpu_s'], 1)} s; "
        f"answer done for all in {_num(item['elapsed_s'], 2)} s (ideal {_num(item['ideal_s'], 1)} s); "
        f"{item['m']:,} watchers connected in {_num(item['connect_s'], 1)} s, servers quiet after "
        f"{_num(item['settle_s'], 1)} s more"
    )


def fanout_rows(result: dict[str, Any], command: str) -> list[Row]:
    rows = []
    for item in result["results"]:
        top = ", ".join(f"{name} {calls:,}" for name, calls in list(item["redis_by_command"].items())[:4])
        text = _fanout_text(item) + (
            f"; Redis {item['redis_calls']:,} calls per run ({top}; {_num(item['redis_usec'] / 1000, 1)} ms in Redis; "
            f"idle {_num(item['redis_idle_calls_per_s'], 1)} calls/s)"
        )
        servers = ", ".join(f"`{name}`" for name in item["servers"])
        case = f"agentapp, {item['layer']} layer, M={item['m']:,} [servers {servers}]"
        processes = item.get("processes", 2)
        rows.append(Row(f"5. fan-out, {processes} processes, 50 tok/s, 200 tokens", case, text, command))
    for item in result.get("bare", []):
        servers = ", ".join(f"`{name}`" for name in item["servers"])
        case = f"bare group_send, {item['layer']} layer, M={item['m']:,} [servers {servers}]"
        rows.append(
            Row(f"5. fan-out, {item['processes']} processes, 50 tok/s, 200 tokens", case, _fanout_text(item), command)
        )
    return rows


WORKER_ARRANGEMENTS = {
    "inprocess": "(a) in process: 1 web process runs the agents",
    "workers": "(b) workers: 1 web process + 1 worker runs the agents",
}
KINDS = ("unpaced", "paced")


def workers_rows(result: dict[str, Any], command: str) -> list[Row]:
    """Benchmark 8: the same prompts in process and on a worker, on PostgreSQL and Redis (a comparison, no target)."""
    benchmark = "8. runs on workers vs in process (PostgreSQL, Redis core layer)"
    rows = []
    for arrangement, label in WORKER_ARRANGEMENTS.items():
        unpaced, paced = (", ".join(f"`{name}`" for name in result["servers"][kind][arrangement]) for kind in KINDS)
        starts, first = result["starts"][arrangement], result["first_token"][arrangement]
        queued = (
            f"; run_queued p50/p99 {_num(starts['queued_p50_ms'], 1)}/{_num(starts['queued_p99_ms'], 1)} ms"
            if arrangement == "workers"
            else ""
        )
        rows.append(
            Row(
                benchmark,
                f"{label}, {starts['n']:,} prompts at once, one conversation each [{unpaced}]",
                f"{_num(starts['runs_per_s'], 1)} runs started/s ({starts['started']}/{starts['n']} started, "
                f"{starts['errors']} errors); run_started after the first send p50/p99 "
                f"{_num(starts['started_p50_ms'], 1)}/{_num(starts['started_p99_ms'], 1)} ms{queued}",
                command,
            )
        )
        rows.append(
            Row(
                benchmark,
                f"{label}, sequential prompts `{result['hello_prompt']}` [{unpaced}]",
                f"first token p50 {_num(first['p50_ms'], 2)} ms, p99 {_num(first['p99_ms'], 2)} ms "
                f"({first['runs']} runs, interleaved with the other arrangement's)",
                command,
            )
        )
        item = result["streaming"][arrangement]
        worker = f", worker {_num(item['worker_cpu_s'], 1)} s" if arrangement == "workers" else ""
        rows.append(
            Row(
                benchmark,
                f"{label}, {item['n']:,} sockets each streaming {result['tokens']} tokens at "
                f"{result['tokens_per_second']} tok/s [{paced}]",
                f"CPU web process {_num(item['web_cpu_s'], 1)} s ({_num(item['web_cpu_us_per_token'], 1)} µs/token, "
                f"{_num(item['web_cpu_s'] / item['frames'] * 1e6 if item['frames'] else math.nan)} µs/frame)"
                f"{worker}, client {_num(item['client_cpu_s'], 1)} s; {_num(item['frames_per_s'])} frames/s, "
                f"{_num(item['tokens_per_s'])} tok/s delivered ({_num(item['frames'])} frames, "
                f"{_num(item['data_frames'])} with text); {item['completed']}/{item['n']} completed, "
                f"{item['errors']} errors; first token p50/p99 {_num(item['first_token_p50_ms'], 1)}/"
                f"{_num(item['first_token_p99_ms'], 1)} ms; all done in {_num(item['elapsed_s'], 2)} s "
                f"(ideal {_num(item['ideal_s'], 1)} s)",
                command,
            )
        )
    ratios = result["ratios"]
    rows.append(
        Row(
            benchmark,
            "(b) / (a), same harness run",
            f"runs started/s {_x(ratios['runs_per_s'])}; run_started p50 {_x(ratios['started_p50'])}, p99 "
            f"{_x(ratios['started_p99'])}; first token p50 {_x(ratios['first_token_p50'])}, p99 "
            f"{_x(ratios['first_token_p99'])}; web process CPU while streaming {_x(ratios['web_cpu_s'])} "
            f"({_x(ratios.get('web_cpu_us_per_token'))} per token); "
            f"frames/s {_x(ratios['frames_per_s'])}; tokens/s {_x(ratios['tokens_per_s'])}. With workers every "
            "asker first gets run_queued and then its run's frames through the conversation's group",
            command,
        )
    )
    return rows


### Targets ###


def _status(ok: bool | None) -> str:
    return NOT_MEASURED if ok is None else ("met" if ok else "not met")


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _ratio_goal(
    target: str, ours: float, anchor: float, shown: tuple[str, str], limit: float, at_least: bool, note: str = ""
) -> Goal:
    """A target on ``ours / anchor`` (at least ``limit`` if ``at_least``, else at most); ``note`` marks a stand-in."""
    value = math.nan if _missing(ours) or _missing(anchor) or not anchor else ours / anchor
    ok = None if math.isnan(value) or note else (value >= limit if at_least else value <= limit)
    sign = ">=" if at_least else "<="
    measured = f"{NOT_MEASURED}; {note}: {shown[0]}" if note else shown[0]
    return Goal(target, measured, shown[1], f"{_x(value)} (target {sign} {limit:g}x)", _status(ok))


def _at(items: list[dict[str, Any]], key: str, size: int) -> tuple[dict[str, Any] | None, str]:
    """The item measured at ``size`` (by ``key``), else the largest one with a note saying it stands in."""
    exact = next((item for item in items if item[key] == size), None)
    if exact is not None or not items:
        return exact, ""
    largest = max(items, key=lambda item: item[key])
    return largest, f"at {key.upper()}={largest[key]:,} instead of {size:,}"


def _stream_goals(stream: dict[str, Any] | None) -> list[Goal]:
    """Benchmark 1: agentapp against the bare consumer and FastAPI, under each merge policy."""
    policies = ("merged", "one frame per delta")
    ok = bool(stream) and "error" not in stream and "same_policy" in stream
    out = []
    for policy in policies:
        names = (
            f"1. streaming ({policy}, persistence on): agentapp tokens/s >= 0.8x the bare consumer's",
            f"1. streaming ({policy}, persistence on): agentapp server CPU per token <= 1.25x the bare consumer's",
            f"1. streaming ({policy}): agentapp tokens/s >= 1.0x the seed's FastAPI stream",
        )
        if not ok or policy not in stream["same_policy"]:
            out += [Goal(name, NOT_MEASURED, NOT_MEASURED, "n/a", NOT_MEASURED) for name in names]
            continue
        ours, bare, fastapi = (stream["cases"][case] for case in stream["same_policy"][policy]["cases"])

        def speed(summary: dict[str, Any]) -> str:
            return (
                f"({summary['case']}) {_num(summary['tokens_per_second_median'])} tok/s, "
                f"{_num(summary['frames_median'])} frames"
            )

        def cpu(summary: dict[str, Any]) -> str:
            return f"({summary['case']}) {_num(summary['server_cpu_us_per_token'], 1)} µs/token"

        key, per_token = "tokens_per_second_median", "server_cpu_us_per_token"
        out.append(_ratio_goal(names[0], ours[key], bare[key], (speed(ours), speed(bare)), 0.8, True))
        out.append(_ratio_goal(names[1], ours[per_token], bare[per_token], (cpu(ours), cpu(bare)), 1.25, False))
        out.append(_ratio_goal(names[2], ours[key], fastapi[key], (speed(ours), speed(fastapi)), 1.0, True))
    return out


def _history_goal(history: dict[str, Any] | None) -> Goal:
    """Benchmark 3b: time to first token after 10,000 stored messages against after 1."""
    target = "3b. time to first token flat in history length: p50 after 10,000 stored messages within 1.2x of after 1"
    if not history or "error" in history or "10000" not in history["results"] or "1" not in history["results"]:
        return Goal(target, NOT_MEASURED, NOT_MEASURED, "n/a", NOT_MEASURED)
    results = history["results"]
    others = ", ".join(f"{int(size):,}: {_num(results[size]['p50_ms'], 1)} ms" for size in results if size != "1")
    return _ratio_goal(
        target,
        results["10000"]["p50_ms"],
        results["1"]["p50_ms"],
        (f"p50 after {others}", f"p50 after 1: {_num(results['1']['p50_ms'], 1)} ms"),
        1.2,
        False,
    )


def _first_token_goal(layer: str, n: int, item: dict[str, Any] | None, note: str, base: dict[str, Any] | None) -> Goal:
    """First-token p99 of N prompts at once against Strands in process at the same N (within 1 s at 500)."""
    judged = n == 500
    target = (
        f"4. {n:,} prompts at once on one process ({layer} layer): first-token p99 within 1 s of Strands in process"
        if judged
        else f"4. {n:,} prompts at once on one process ({layer} layer): first-token p99 against Strands in process"
    )
    if item is None or base is None:
        return Goal(target, NOT_MEASURED, NOT_MEASURED, "n/a", NOT_MEASURED if judged else COMPARISON)
    ours, anchor = item["first_token_p99_ms"], base["first_token_p99_ms"]
    difference = ours - anchor
    measured = f"p99 {_num(ours, 1)} ms at N={item['n']:,}"
    if note:
        measured = f"{NOT_MEASURED}; {note}: {measured}"
    ok = None if note or math.isnan(difference) else difference <= 1000
    status = _status(ok) if judged else COMPARISON
    return Goal(target, measured, f"(a) p99 {_num(anchor, 1)} ms at N={base['n']:,}", f"{difference:+,.1f} ms", status)


def _concurrency_goals(concurrency: dict[str, Any] | None) -> list[Goal]:
    """Benchmark 4's targets per layer."""
    ok = bool(concurrency) and "error" not in concurrency
    measured = concurrency.get("results", []) if ok else []
    baselines = {item["n"]: item for item in concurrency.get("baselines", [])} if ok else {}
    bare = {item["n"]: item for item in concurrency.get("bare", [])} if ok else {}
    out: list[Goal] = []
    for layer in sorted({item["layer"] for item in measured}) or ["memory", "redis"]:
        ours = [item for item in measured if item["layer"] == layer]
        for n in (500, 1000):
            item, note = _at(ours, "n", n)
            out.append(_first_token_goal(layer, n, item, note, baselines.get(item["n"]) if item else None))
        for n in (100, 500):
            target = f"4. {n:,} paced conversations ({layer} layer): server CPU per token <= 1.5x the bare consumer's"
            item, note = _at(ours, "n", n)
            anchor = bare.get(item["n"]) if item else None
            if item is None or anchor is None:
                out.append(Goal(target, NOT_MEASURED, NOT_MEASURED, "n/a", NOT_MEASURED))
                continue
            shown = (
                f"{_num(item['server_cpu_us_per_token'], 1)} µs/token at N={item['n']:,}",
                f"bare consumer {_num(anchor['server_cpu_us_per_token'], 1)} µs/token at N={anchor['n']:,}",
            )
            key = "server_cpu_us_per_token"
            out.append(_ratio_goal(target, item[key], anchor[key], shown, 1.5, False, note))
        at_scale, note = _at(ours, "n", 1000)
        checks = (
            ("p99 added latency (model emit to client receive) < 100 ms", "added_p99_ms", lambda v: v < 100, 1, " ms"),
            ("zero errors", "errors", lambda v: v == 0, 0, " errors"),
            ("< 100 KB RSS per idle connection", "rss_per_idle_connection_kb", lambda v: v < 100, 1, " KB"),
        )
        for name, key, test, digits, unit in checks:
            target = f"4. 1,000 paced conversations ({layer} layer): {name}"
            if at_scale is None or key not in at_scale:
                out.append(Goal(target, NOT_MEASURED, "-", "-", NOT_MEASURED))
                continue
            value = f"{_num(at_scale[key], digits)}{unit} at N={at_scale['n']:,}"
            shown = f"{NOT_MEASURED}; {note}: {value}" if note else value
            out.append(Goal(target, shown, "-", "-", NOT_MEASURED if note else _status(test(at_scale[key]))))
        target = f"4. 1,000 paced conversations ({layer} layer): lateness p99 against Strands in process (a)"
        base = baselines.get(at_scale["n"]) if at_scale else None
        if at_scale is None or base is None:
            out.append(Goal(target, NOT_MEASURED, NOT_MEASURED, "n/a", COMPARISON))
        else:
            ours_ms, base_ms = at_scale["lateness_p99_ms"], base["lateness_p99_ms"]
            shown = f"{_num(ours_ms, 1)} ms at N={at_scale['n']:,}"
            out.append(
                Goal(
                    target,
                    f"{NOT_MEASURED}; {note}: {shown}" if note else shown,
                    f"(a) {_num(base_ms, 1)} ms at N={base['n']:,}",
                    f"{ours_ms - base_ms:+,.1f} ms",
                    COMPARISON,
                )
            )
    return out


def _fanout_goals(fanout: dict[str, Any] | None) -> list[Goal]:
    """Benchmark 5's targets per layer: p99 and CPU per watcher-frame at 1,000 on two processes, 5,000 on four."""
    ok = bool(fanout) and "error" not in fanout
    items = fanout.get("results", []) if ok else []
    bare_items = fanout.get("bare", []) if ok else []
    out: list[Goal] = []
    for layer in sorted({item["layer"] for item in items}) or ["core", "pubsub"]:
        two = [item for item in items if item["layer"] == layer and item.get("processes", 2) == 2]
        wide = [item for item in items if item["layer"] == layer and item.get("processes", 2) == 4]
        bare = {item["m"]: item for item in bare_items if item["layer"] == layer}
        item, note = _at(two, "m", 1000)
        anchor = bare.get(item["m"]) if item else None
        target = f"5. 1,000 watchers over two processes ({layer} layer): p99 delivery < 100 ms"
        if item is None:
            out.append(Goal(target, NOT_MEASURED, NOT_MEASURED, "n/a", NOT_MEASURED))
        else:
            p99s = "/".join(_num(value, 1) for value in item["latency_p99_by_server_ms"])
            shown = f"p99 {_num(item['latency_p99_ms'], 1)} ms ({p99s} by process), {item['errors']} errors"
            ours_ms = item["latency_p99_ms"]
            passed = None if note else ours_ms < 100 and item["errors"] == 0
            anchor_ms = anchor["latency_p99_ms"] if anchor else math.nan
            out.append(
                Goal(
                    target,
                    f"{NOT_MEASURED}; {note}: {shown}" if note else shown,
                    f"bare group_send p99 {_num(anchor_ms, 1)} ms" if anchor else NOT_MEASURED,
                    f"{_x(ours_ms / anchor_ms)} the bare p99" if anchor and anchor_ms else "n/a",
                    _status(passed),
                )
            )
        target = f"5. 1,000 watchers over two processes ({layer} layer): CPU per watcher-frame <= 2x a bare group_send"
        if item is None or anchor is None:
            out.append(Goal(target, NOT_MEASURED, NOT_MEASURED, "n/a", NOT_MEASURED))
        else:
            key = "cpu_us_per_watcher_frame"
            shown = (
                f"{_num(item[key], 1)} µs at M={item['m']:,}",
                f"bare {_num(anchor[key], 1)} µs at M={anchor['m']:,}",
            )
            out.append(_ratio_goal(target, item[key], anchor[key], shown, 2.0, False, note))
        item, note = _at(wide, "m", 5000)
        target = f"5. 5,000 watchers over four processes ({layer} layer, full mode only): measured and reported"
        if item is None:
            out.append(Goal(target, NOT_MEASURED, "-", "-", NOT_MEASURED))
        else:
            shown = (
                f"p99 {_num(item['latency_p99_ms'], 1)} ms, {item['finished']:,}/{item['m']:,} finished, "
                f"{item['errors']} errors, {_num(item['cpu_us_per_watcher_frame'], 1)} µs per watcher-frame"
            )
            passed = None if note else item["errors"] == 0
            out.append(Goal(target, f"{NOT_MEASURED}; {note}: {shown}" if note else shown, "-", "-", _status(passed)))
    return out


def _writes_goals(writes: dict[str, Any] | None) -> list[Goal]:
    """Benchmark 2: the statements of a run do not grow with its answer."""
    out: list[Goal] = []
    if writes:
        for database, measured_db in writes.items():
            name = f"2. statements per run independent of token count ({database})"
            if "error" in measured_db:
                out.append(Goal(name, NOT_MEASURED + " (failed)", "-", "-", NOT_MEASURED))
                continue
            counts = {tokens: sample["statements"] for tokens, sample in measured_db["results"].items()}
            flat = {count for values in counts.values() for count in values}
            shown = ", ".join(
                f"{int(tokens):,} tokens: {'/'.join(map(str, values))}" for tokens, values in counts.items()
            )
            out.append(Goal(name, shown, "-", "-", _status(len(flat) == 1 and len(counts) > 1)))
    else:
        out.append(Goal("2. statements per run independent of token count", NOT_MEASURED, "-", "-", NOT_MEASURED))
    return out


def targets(results: dict[str, Any]) -> list[Goal]:
    """Every target with its measured value, the anchor of the same run, their ratio, and met / not met."""
    out = _stream_goals(results.get("stream"))
    out += _writes_goals(results.get("writes"))
    ttft = results.get("ttft")
    if ttft and "error" not in ttft and not math.isnan(ttft["overhead_p50_ms"]):
        value = ttft["overhead_p50_ms"]
        shown = f"agentapp p50 {_num(ttft['agentapp']['p50_ms'], 2)} ms"
        anchor = f"(a) p50 {_num(ttft['a']['p50_ms'], 2)} ms"
        out.append(Goal("3. TTFT overhead < 5 ms p50", shown, anchor, f"{value:+.2f} ms", _status(value < 5)))
    else:
        out.append(Goal("3. TTFT overhead < 5 ms p50", NOT_MEASURED, NOT_MEASURED, "n/a", NOT_MEASURED))
    out.append(_history_goal(results.get("history")))
    out += _concurrency_goals(results.get("concurrency"))
    out += _fanout_goals(results.get("fanout"))
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
    goals: list[Goal],
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
    parts += [
        "",
        "## Targets",
        "",
        "Each target beside its anchor, measured in the same run; the ratio (or difference) is what is judged.",
        "",
        "| Target | Measured | Anchor | Ratio | Status |",
        "| --- | --- | --- | --- | --- |",
    ]
    parts += [f"| {_md(g.target)} | {_md(g.measured)} | {_md(g.anchor)} | {_md(g.ratio)} | {g.status} |" for g in goals]
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
