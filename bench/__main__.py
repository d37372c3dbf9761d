"""``make bench``: run A/B/C/D side by side, and F (what Temporal alone costs a batch), print a
table, save JSON and a PNG plot.

python -m bench [--sizes 10000 100000] [--large] [--models echo iris] [--high-throughput]
                [--parquet-sizes 100000] [--s3-plan-files 1000] [--no-per-record]
                [--pairs 7] [--large-pairs 3] [--out bench/results]

The Parquet case (``bench/parquet_case.py``): iris records as a Parquet file in, Parquet out,
A, B and D (``--large`` adds 1,000,000 rows). A takes the Arrow path there (iris is columnar),
so B sends Arrow too (``arrow_case.run_b_arrow``), its setting picked at each size among
``arrow_case.B_SETTINGS`` (A's own bodies among them). B's setting for JSON Lines is picked at
each size among the sweep's best two and the project's own (``harness.pick_direct``). Then the plan of
``--s3-plan-files`` small files on moto's S3 server, timed and its requests counted
(``bench/s3_plan.py``).

A and B run as ``--pairs`` pairs per size (``--large-pairs`` at 1M), in alternating order (A B,
B A, A B, ...): on two shared cores one run moves by ±15%, so each ratio is the median of the
pairs' ratios. A short batch moves most and costs least to repeat, so it gets the most pairs.
"F/B" (sizes whose shards run in one wave) is F's time as a share of B's: what Temporal alone
adds to a batch of that size, however little the worker spends.
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import services
from bench import arrow_case, harness, parquet_case, s3_plan
from services.local.ray_serve import LocalRayServe, ensure_token
from services.local.temporal_dev import TemporalDevServer


def machine() -> dict[str, Any]:
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        # what else ran: on two shared cores, other processes' load moves every figure
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


LARGE = 1_000_000
# Where a run writes its JSON, PNG and Markdown table: bench/results/ in the repository (ignored by
# git), wherever the bench is started from. docs/ keeps only the one run docs/performance.md cites.
RESULTS = Path(__file__).resolve().parent / "results"


async def run_all(
    env: harness.BenchEnv,
    sizes: list[int],
    models: list[str],
    large: bool,
    pairs: int = 7,
    large_pairs: int = 3,
    parquet_sizes: list[int] | None = None,
    s3_plan_files: int = 0,
    per_record: bool = True,
) -> dict[str, Any]:
    results: dict[str, Any] = {
        "machine": machine(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "runs": [],
        "sweeps": {},
        "picks": [],
    }

    def add(kind: str, model: str, figures: dict[str, Any]) -> None:
        row = {"kind": kind, "model": model, **figures}
        results["runs"].append(row)
        print(json.dumps(row), flush=True)

    async def side_by_side(
        model: str,
        n: int,
        trials: list[dict],
        a: harness.DirectRun,
        b: harness.DirectRun,
        fmt: str,
        settings: list[harness.Setting] | None = None,
    ) -> None:
        """B's setting picked at ``n`` (among ``settings``, or the sweep's candidates), then the
        A/B pairs in alternating order."""
        settings = settings or harness.candidates(trials)
        (micro_batch, concurrency), picks = await harness.pick_direct(b, n, settings)
        results["picks"].append(
            {"model": model, "format": fmt, "records": n, "candidates": settings,
             "picked": [micro_batch, concurrency], "trials": picks}
        )  # fmt: skip
        print(f"# {model} {fmt} {n}: B at micro_batch={micro_batch} concurrency={concurrency}", flush=True)
        for pair in range(large_pairs if n >= LARGE else pairs):
            for kind in "AB" if pair % 2 == 0 else "BA":
                figures = await (a(n, 0, 0) if kind == "A" else b(n, micro_batch, concurrency))
                add(kind, model, {**figures, "pair": pair})

    async def sweep(model: str) -> list[dict]:
        if model not in results["sweeps"]:
            micro_batch, concurrency, trials = await harness.sweep_direct(env, model)
            results["sweeps"][model] = trials
            print(f"# {model}: sweep's best micro_batch={micro_batch} concurrency={concurrency}", flush=True)
        return results["sweeps"][model]

    def warm_up(model: str) -> Path:
        name = f"{model}-{harness.WARM_UP_RECORDS}.jsonl"
        return harness.make_dataset(env.workdir / "data" / name, harness.WARM_UP_RECORDS, model)

    for model in models:
        trials = await sweep(model)
        model_sizes = sizes + ([LARGE] if large and model == "echo" else [])
        for n in model_sizes:
            await side_by_side(
                model, n, trials,
                lambda n, _mb, _c, model=model: harness.run_project(env, n, model, warm_up=warm_up(model)),
                lambda n, mb, conc, model=model: harness.run_direct(env, n, model, mb, conc),
                "jsonl",
            )  # fmt: skip
            add("D", model, await asyncio.to_thread(harness.run_ray_data, env, n, model))
    parquet_sizes = list(parquet_sizes or [])
    if large and parquet_sizes and LARGE not in parquet_sizes:
        parquet_sizes.append(LARGE)

    for n in parquet_sizes:
        # A sends Arrow here (iris has a columnar predict; the Arrow path), so B does too: a B
        # sending JSON bodies would be no upper bound (A/B 3.7-4.8 in a run that did, 13:44).
        await side_by_side(
            parquet_case.MODEL, n, [],
            lambda n, _mb, _c: parquet_case.run_project(env, n),
            lambda n, mb, conc: arrow_case.run_b_arrow(env, n, mb, conc),
            "parquet",
            settings=arrow_case.B_SETTINGS,
        )  # fmt: skip
        add("D", parquet_case.MODEL, await asyncio.to_thread(parquet_case.run_ray_data, env, n))
    if s3_plan_files:
        results["s3_plan"] = await asyncio.to_thread(s3_plan.measure, s3_plan_files)
        print(json.dumps({"s3_plan": results["s3_plan"]}), flush=True)
    for n in (1000, 2000, 10_000) if per_record else ():
        add("C", "echo", await asyncio.to_thread(harness.run_per_record, env, n, 90 if n > 2000 else 600))
    # F: the workflow's shape at each size with no-op activities, and (0) the least any batch costs.
    for n in [0, *sorted({r["records"] for r in results["runs"] if r["kind"] == "A"})]:
        add("F", "noop", await asyncio.to_thread(harness.run_floor, env, n))
    return results


def case(row: dict[str, Any]) -> str:
    """A run's model, and its input format when that is not JSON Lines: ``iris/parquet``."""
    fmt = row.get("format", "jsonl")
    return row["model"] if fmt == "jsonl" else f"{row['model']}/{fmt}"


def ratios(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per model and size: A's median records/s, and A/B as the median of the pairs' ratios
    (with the lowest and highest), A/D, A/C(2k)."""
    runs = results["runs"]
    rows = []
    for model, n in sorted({(case(r), r["records"]) for r in runs if r["kind"] == "A"}):

        def rps(kind: str, model: str = model, n: int = n) -> dict[int, float]:
            return {
                r.get("pair", 0): r["records_per_s"]
                for r in runs
                if (r["kind"], case(r), r["records"]) == (kind, model, n) and r.get("records_per_s")
            }

        a, b = rps("A"), rps("B")
        row: dict[str, Any] = {"model": model, "records": n, "A_rps": round(statistics.median(a.values()))}
        if b:
            row["B_rps"] = round(statistics.median(b.values()))
        for kind in "AB":
            cpu = [
                r["cpu_s"]
                for r in runs
                if (r["kind"], case(r), r["records"]) == (kind, model, n) and "cpu_s" in r
            ]
            if cpu:
                row[f"{kind}_cpu_s"] = round(statistics.median(cpu), 2)
        rss = [
            r["worker_peak_rss_mb"]
            for r in runs
            if (r["kind"], case(r), r["records"]) == ("A", model, n) and "worker_peak_rss_mb" in r
        ]
        if rss:
            row["A_peak_rss_mb"] = f"{min(rss)}-{max(rss)}" if min(rss) != max(rss) else rss[0]
        pair_ratios = sorted(a[p] / b[p] for p in a if p in b)
        if pair_ratios:
            row["A/B"] = round(statistics.median(pair_ratios), 3)
            if len(pair_ratios) > 1:
                row["A/B range"] = f"{pair_ratios[0]:.3f}-{pair_ratios[-1]:.3f} ({len(pair_ratios)} pairs)"
        if d := rps("D"):
            row["D_rps"] = round(statistics.median(d.values()))
            row["A/D"] = round(row["A_rps"] / row["D_rps"], 3)
        if c2k := rps("C", "echo", 2000):
            row["A/C(2k)"] = round(row["A_rps"] / statistics.median(c2k.values()), 1)
        floor = [r for r in runs if (r["kind"], r["records"]) == ("F", n) and r.get("seconds")]
        if floor and b and floor[-1]["shards"] <= floor[-1]["window"]:
            # Shards in one wave: all of F's time is on the batch's path (start, the wave's end,
            # the summary); in several waves a shard's end overlaps the others' work.
            row["F/B"] = round(statistics.median(floor[-1]["seconds"] * rate / n for rate in b.values()), 3)
        rows.append(row)
    return rows


def floor_note(row: dict[str, Any]) -> str:
    if row["kind"] != "F" or "median_ms" not in row:
        return ""
    shape = f"{row['shards']} no-op shards" if row.get("local_activities", True) else "1 activity alone"
    return (
        f"{shape}: median {row['median_ms']} ms ({row['min_ms']}-{row['max_ms']}, "
        f"{row['floor_runs']} runs), a fresh worker's first {row['first_ms']} ms"
    )


def table(results: dict[str, Any]) -> str:
    cols = [
        ("kind", 4), ("model", 12), ("records", 8), ("pair", 4), ("records_per_s", 9), ("seconds", 8),
        ("p50_batch_ms", 8), ("p99_batch_ms", 8), ("cpu_s", 6), ("worker_peak_rss_mb", 9), ("ray_pss_mb", 9),
        ("runs", 4), ("history_events_max_run", 10), ("history_events_per_1k", 9),
    ]  # fmt: skip
    lines = [" ".join(name[:width].rjust(width) for name, width in cols)]
    for row in results["runs"]:
        cells = []
        for name, width in cols:
            value = case(row) if name == "model" else row.get(name, "")
            cells.append(str(value if value is not None else "")[:width].rjust(width))
        note = row.get("error") or row.get("skipped") or floor_note(row)
        lines.append(" ".join(cells) + (f"  {note[:120]}" if note else ""))
    lines.append("")
    for r in ratios(results):
        lines.append("  ".join(f"{k}={v}" for k, v in r.items()))
    if note := s3_plan_note(results):
        lines.append(note)
    return "\n".join(lines)


def s3_plan_note(results: dict[str, Any]) -> str:
    """One line on the plan of many small files on moto's S3 server, if it ran."""
    plan = results.get("s3_plan")
    if not plan:
        return ""
    if plan.get("error"):
        return f"S3 plan of {plan['files']} files fails: {plan['error']}"
    return (
        f"S3 plan of {plan['files']:,} files ({plan['records']:,} records): median {plan['seconds']} s "
        f"({plan['seconds_min']}-{plan['seconds_max']}, {plan['runs']} runs; "
        f"planner CPU {plan['cpu_seconds']} s), "
        f"listing alone {plan['list_seconds']} s; "
        f"S3 requests per plan: {plan['requests']} ({plan['requests_by_kind']})"
    )


def markdown(results: dict[str, Any]) -> str:
    """The table and ratios as Markdown, as docs/performance.md shows them."""

    def num(value: Any) -> str:
        return f"{value:,}" if isinstance(value, int) else ("" if value is None else str(value))

    lines = [
        "| run | model | records | pair | records/s | s | p50 / p99 ms per request | worker peak RSS MB "
        "| Ray PSS MB | runs | events (max run) | events / 1k |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in results["runs"]:
        latency = ""
        if r.get("p50_batch_ms") is not None:
            latency = f"{r['p50_batch_ms']} / {r['p99_batch_ms']} ({r.get('micro_batch')}"
            latency += f" x {r['concurrency']})" if r.get("concurrency") else " per request)"
        events = r.get("history_events_max_run") or r.get("history_events")
        cells = [
            r["kind"], case(r), num(r["records"]), num(r.get("pair")), num(r.get("records_per_s")),
            num(r.get("seconds")),
            latency, num(r.get("worker_peak_rss_mb")), num(r.get("ray_pss_mb")), num(r.get("runs")),
            num(events), num(r.get("history_events_per_1k")),
        ]  # fmt: skip
        if r.get("error"):
            cells[4] = f"fails: {r['error']}"
        elif note := floor_note(r):
            cells[6] = note
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for r in ratios(results):
        lines.append("- " + ", ".join(f"{k} {num(v)}" for k, v in r.items()))
    if note := s3_plan_note(results):
        lines.append(f"- {note}")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    rows = [r for r in results["runs"] if r.get("records_per_s")]
    labels = [
        f"{r['kind']} {case(r)} {r['records'] // 1000}k" + (f" #{r['pair']}" if "pair" in r else "")
        for r in rows
    ]
    fig, ax = plt.subplots(figsize=(max(6, len(rows) * 0.6), 4))
    colors = {"A": "tab:blue", "B": "tab:green", "C": "tab:red", "D": "tab:orange"}  # F: no records/s
    ax.bar(labels, [r["records_per_s"] for r in rows], color=[colors[r["kind"]] for r in rows])
    ax.set_ylabel("records/s")
    ax.set_yscale("log")
    ax.set_title("A project, B direct client, C activity/record, D Ray Data")
    plt.setp(ax.get_xticklabels(), rotation=60, ha="right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--models", nargs="*", default=["echo", "iris"], help="JSON Lines cases; none: skip them")
    p.add_argument("--large", action="store_true", help="add 1,000,000 records (echo, and the Parquet case)")
    p.add_argument(
        "--parquet-sizes",
        type=int,
        nargs="*",
        default=[100_000],
        help="rows of the Parquet case (iris, Parquet in and out); none: skip it",
    )
    p.add_argument(
        "--per-record",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run C, one activity per record (1k, 2k, 10k; ~3 minutes)",
    )
    p.add_argument(
        "--s3-plan-files",
        type=int,
        default=1000,
        help="small files to plan on moto's S3 server (0: skip)",
    )
    p.add_argument("--pairs", type=int, default=7, help="A/B pairs per size (ratios are their median)")
    p.add_argument("--large-pairs", type=int, default=3, help="A/B pairs at 1,000,000 records")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON, PNG and Markdown")
    p.add_argument(
        "--high-throughput",
        action="store_true",
        help="run Serve in Ray's high-throughput mode (HAProxy ingress) for every run",
    )
    args = p.parse_args()
    # As the worker image has (pip compiles what it installs): without it, and with
    # PYTHONDONTWRITEBYTECODE set, every workflow run compiles workflows.py again in its sandbox.
    compileall.compile_dir(Path(services.__file__).parent, quiet=1)

    # A SIGTERM ends the run through the finally below, which stops the servers it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    state = Path(tempfile.mkdtemp(prefix="bench-"))
    token = ensure_token(state / "serve-token")
    temporal = TemporalDevServer.on_free_ports(state / "temporal")
    serve = LocalRayServe.on_free_ports(state, token, high_throughput=args.high_throughput)
    try:
        temporal.start()
        serve.start()
        env = harness.BenchEnv.for_stack(temporal.address, serve, token, state)
        run = run_all(
            env, args.sizes, args.models, args.large, args.pairs, args.large_pairs,
            args.parquet_sizes, args.s3_plan_files, args.per_record,
        )  # fmt: skip
        results = asyncio.run(run)
    finally:
        serve.stop()
        temporal.stop()
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["serve_mode"] = "high-throughput (HAProxy)" if args.high_throughput else "default proxy"
    results["ratios"] = ratios(results)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (args.out / f"bench-{stamp}.json").write_text(json.dumps(results, indent=2))
    plot(results, args.out / f"bench-{stamp}.png")
    (args.out / f"bench-{stamp}.md").write_text(markdown(results) + "\n")
    print(table(results))
    print(f"\nsaved {args.out}/bench-{stamp}.json, .png and .md")


if __name__ == "__main__":
    main()
