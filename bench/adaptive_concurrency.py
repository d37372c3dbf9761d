"""Adaptive concurrency (issue 20) side by side: the worker's adaptive in-flight limit against fixed
limits, under overload and at normal load, in one run.

Starts its own Temporal dev server and local Ray Serve (``local_stack``); each run is A (the
project end to end, its worker in a process of its own: ``harness.run_project``), and counts
come from the worker's own ``batch_inference_serve_requests`` by status.

- Normal load (the shared Serve config): pairs of A with the adaptive limit, A with it off
  (``SERVE_ADAPTIVE_CONCURRENCY=false``: the fixed limits only) and B (the direct client at the
  project's own setting), in rotating order; ratios are medians of the pairs'.
- Overload: the echo deployment redeployed to hold only ``--ongoing`` + ``--queued`` requests
  (Ray's ``max_queued_requests``; past that 503 with ``Retry-After``). Fixed limits swept over
  ``tuning.max_in_flight`` (per shard; ``max_concurrent_shards`` shards) against the adaptive
  limit at the largest of them (one setting per ``--adaptive`` variant: the limiter's own env
  settings, e.g. ``SERVE_CONCURRENCY_BOUNDED_CUTS=false``; each runs at normal load too), each
  setting ``--rounds`` times in alternating order, at each batch size of ``--overload-records``
  (a short batch measures the start, where a fresh worker finds Serve's limit; a long one the
  steady state). Reported per size: requests refused (429/503) as % of those sent, records/s,
  and each adaptive variant's records/s over the best fixed setting's (faster runs, medians,
  and run by run within a round).
- ``--duel N``: after a size's sweep, N more pairs of runs at that size: the best fixed setting
  by the sweep's medians against each adaptive variant, in alternating order. The sweep picks
  the best of several noisy settings, so its own runs flatter the winner (the largest of four
  medians of three runs sits above the best setting's true rate); the duel's runs take no part
  in the pick, so their ratios are a fair estimate, reported as the geometric mean of the pairs
  with a 95% confidence interval (Student's t on the log ratios).
- ``--warm-up N``: each run's worker first runs N records untimed with the run's own settings
  (under overload: against the overloaded Serve), as a worker deployed for days has: the timed
  batch then starts at the limit the worker has learnt. Without it every timed batch pays a
  fresh worker's start (the worst case).

    .venv/bin/python -m bench.adaptive_concurrency [--records 100000] [--overload-records 50000 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from scipy import stats

from bench import harness
from bench.__main__ import RESULTS, machine
from bench.local_stack import local_stack, stop_on_sigterm
from services import constants as c
from services import metrics as m

MODEL = "echo"
FIXED = {c.ENV_SERVE_ADAPTIVE_CONCURRENCY: "false"}
ADAPTIVE = {c.ENV_SERVE_ADAPTIVE_CONCURRENCY: "true"}
REFUSED = ("429", "503")
# What an adaptive variant may set (--adaptive): the limiter's settings the worker reads.
VARIANT_ENV = (c.ENV_SERVE_CONCURRENCY_BOUNDED_CUTS, c.ENV_SERVE_CONCURRENCY_SLOW_START_GROWTH)
DEFAULTS = "defaults"
# An overload run's phase: the sweep picks the best fixed setting, the duel measures against it.
SWEEP, DUEL = "sweep", "duel"
Setting = tuple[str, int, str | None]  # kind, max_in_flight per shard, adaptive variant


def variant_env(variant: str) -> dict[str, str]:
    """``--adaptive``'s ``NAME=VALUE[,NAME=VALUE]`` (or ``defaults``: none) as the worker's env."""
    if variant == DEFAULTS:
        return {}
    env = dict(item.split("=", 1) for item in variant.split(","))
    unknown = set(env) - set(VARIANT_ENV)
    if unknown:
        raise ValueError(f"not an adaptive setting: {sorted(unknown)}; one of {VARIANT_ENV}")
    return env


def variant_arg(text: str) -> str:
    try:
        variant_env(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def gauges(metrics_text: str) -> tuple[float | None, float | None]:
    """The worker's concurrency limit and its requests in flight (summed over models)."""
    from prometheus_client.parser import text_string_to_metric_families

    limit, in_flight = None, None
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == m.SERVE_CONCURRENCY_LIMIT.prom:
                limit = sample.value
            elif sample.name == m.SERVE_IN_FLIGHT.prom:
                in_flight = (in_flight or 0.0) + sample.value
    return limit, in_flight


async def sample_gauges(
    env: harness.BenchEnv, every_s: float, timed: asyncio.Event, into: list[tuple[float, float]]
) -> None:
    """The worker's (limit, in flight) every ``every_s`` from the timed batch's start until
    cancelled: what the limit did over the batch."""
    await timed.wait()
    async with httpx.AsyncClient(timeout=1) as http:
        while True:
            await asyncio.sleep(every_s)
            try:
                text = (await http.get(env.worker_metrics_url)).text
            except httpx.HTTPError:
                continue
            limit, in_flight = gauges(text)
            if limit is not None and in_flight is not None:
                into.append((limit, in_flight))


async def run_sampled(env: harness.BenchEnv, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """``harness.run_project`` with the worker's limit and in-flight gauges sampled meanwhile."""
    samples: list[tuple[float, float]] = []
    timed = asyncio.Event()
    sampler = asyncio.create_task(sample_gauges(env, 0.25, timed, samples))
    try:
        figures = await harness.run_project(env, *args, timed=timed, **kwargs)
    finally:
        sampler.cancel()
    if samples:
        limits, in_flight = [x for x, _ in samples], [y for _, y in samples]
        figures["limit_median"] = statistics.median(limits)
        figures["limit_range"] = [min(limits), max(limits)]
        figures["in_flight_median"] = statistics.median(in_flight)
        # every 4th sample (one a second): the limit's course over the batch
        figures["limit_per_s"] = limits[::4]
    return figures


def refusals(figures: dict[str, Any]) -> dict[str, Any]:
    sent = sum(figures["serve_requests"].values())
    refused = sum(figures["serve_requests"].get(code, 0) for code in REFUSED)
    return {"sent": sent, "refused": refused, "refused_pct": round(100 * refused / sent, 2) if sent else None}


async def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    results["settings"] = {k: v for k, v in vars(args).items() if k != "out"}
    normal: list[dict[str, Any]] = []
    overload: list[dict[str, Any]] = []

    def add(rows: list[dict[str, Any]], row: dict[str, Any]) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)

    async with local_stack(work) as (temporal, serve):
        env = harness.BenchEnv.for_stack(temporal.address, serve, serve.token_file, work)
        micro_batch, concurrency = harness.project_setting()
        warm_up = None
        if args.warm_up:
            warm_up = harness.make_dataset(
                work / "data" / f"warm-up-{args.warm_up}.jsonl", args.warm_up, MODEL
            )
        # Each adaptive variant at normal load too: one may change how a batch starts there.
        kinds: list[tuple[str, str | None]] = [("adaptive", v) for v in args.adaptive]
        kinds += [("fixed", None), ("B", None)]
        for pair in range(args.pairs):
            turn = pair % len(kinds)
            for kind, variant in kinds[turn:] + kinds[:turn]:
                if kind == "B":
                    figures = await harness.run_direct(env, args.records, MODEL, micro_batch, concurrency)
                else:
                    worker_env = {**ADAPTIVE, **variant_env(variant)} if variant else FIXED
                    figures = await run_sampled(
                        env, args.records, MODEL, worker_env=worker_env, warm_up=warm_up
                    )
                    figures.update(refusals(figures))
                row = {"load": "normal", "kind": kind, "pair": pair}
                if variant is not None:
                    row["variant"] = variant
                add(normal, {**row, **figures})

        config = serve.overloaded_config(MODEL, args.ongoing, args.queued, args.retry_after)
        await asyncio.to_thread(serve.deploy, config)
        settings: list[Setting] = [("fixed", mif, None) for mif in args.sweep]
        settings += [("adaptive", max(args.sweep), v) for v in args.adaptive]

        async def overload_run(n: int, setting: Setting, phase: str, rnd: int) -> None:
            kind, max_in_flight, variant = setting
            tuning = {
                "micro_batch_size": args.overload_micro_batch,
                "max_in_flight": max_in_flight,
                "max_concurrent_shards": args.shards,
            }
            worker_env = FIXED
            if kind == "adaptive":
                worker_env = {**ADAPTIVE, **variant_env(variant or DEFAULTS)}
            figures = await run_sampled(env, n, MODEL, worker_env=worker_env, tuning=tuning, warm_up=warm_up)
            row = {
                "load": "overload",
                "phase": phase,
                "kind": kind,
                "max_in_flight": max_in_flight,
                "round": rnd,
            }
            if variant is not None:
                row["variant"] = variant
            add(overload, {**row, **figures, **refusals(figures)})

        for n in args.overload_records:
            for rnd in range(args.rounds):
                for setting in settings if rnd % 2 == 0 else settings[::-1]:
                    await overload_run(n, setting, SWEEP, rnd)
            if not args.duel:
                continue
            sweep = [r for r in overload if (r["records"], r["phase"], r["kind"]) == (n, SWEEP, "fixed")]
            best: Setting = ("fixed", best_fixed_by_median(sweep)[0], None)
            duel = [best, *(s for s in settings if s[0] == "adaptive")]
            for rnd in range(args.duel):
                for setting in duel if rnd % 2 == 0 else duel[::-1]:
                    await overload_run(n, setting, DUEL, rnd)
    results["normal"], results["overload"] = normal, overload
    results["summary"] = summary(normal, overload)
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return results


def summary(normal: list[dict[str, Any]], overload: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    by_pair: dict[int, dict[str, float]] = {}
    for r in normal:
        by_pair.setdefault(r["pair"], {})[normal_label(r)] = r["records_per_s"]
    adaptive = sorted({normal_label(r) for r in normal if r["kind"] == "adaptive"})
    for kind in [*adaptive, "fixed"]:
        ratios = sorted(p[kind] / p["B"] for p in by_pair.values() if kind in p and "B" in p)
        if ratios:
            out[f"normal A/B {kind}"] = round(statistics.median(ratios), 3)
            out[f"normal A/B {kind} range"] = f"{ratios[0]:.3f}-{ratios[-1]:.3f} ({len(ratios)} pairs)"
    for kind in adaptive:
        same = sorted(p[kind] / p["fixed"] for p in by_pair.values() if {kind, "fixed"} <= p.keys())
        if same:
            out[f"normal {kind}/fixed"] = round(statistics.median(same), 3)
    if normal:
        out["normal refused % (max)"] = {
            kind: max((r["refused_pct"] or 0) for r in normal if normal_label(r) == kind)
            for kind in [*adaptive, "fixed"]
        }
    out["overload"] = []
    for n in sorted({r["records"] for r in overload}):
        size = [r for r in overload if r["records"] == n]
        row = overload_summary(n, [r for r in size if r["phase"] == SWEEP])
        duel = [r for r in size if r["phase"] == DUEL]
        if duel:
            row["duel"] = duel_summary(duel)
        out["overload"].append(row)
    return out


def best_fixed_by_median(runs: list[dict[str, Any]]) -> tuple[int, float]:
    """The fixed ``max_in_flight`` with the highest median records/s over ``runs``, and that median."""
    rates: dict[int, list[float]] = {}
    for r in runs:
        rates.setdefault(r["max_in_flight"], []).append(r["records_per_s"])
    return max(((mif, statistics.median(x)) for mif, x in rates.items()), key=lambda pair: pair[1])


def geometric_mean_interval(
    ratios: list[float], confidence: float = 0.95
) -> tuple[float, tuple[float, float] | None]:
    """The geometric mean of ``ratios`` and its confidence interval: Student's t on the logs (the
    ratios of paired runs are roughly log-normal: the machine's load scales both runs of a pair);
    no interval from a single ratio."""
    logs = [math.log(x) for x in ratios]
    mean = statistics.fmean(logs)
    if len(logs) < 2:
        return math.exp(mean), None
    half = stats.t.ppf((1 + confidence) / 2, len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
    return math.exp(mean), (math.exp(mean - half), math.exp(mean + half))


def duel_summary(duel: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each adaptive variant against the fixed setting of its duel, pair by pair (same round)."""
    fixed = {r["round"]: r for r in duel if r["kind"] == "fixed"}
    mif = next(iter(fixed.values()))["max_in_flight"]
    out = []
    adaptive = [r for r in duel if r["kind"] == "adaptive" and r["round"] in fixed]
    for variant in sorted({r["variant"] for r in adaptive}):
        mine = [r for r in adaptive if r["variant"] == variant]
        ratios = [r["records_per_s"] / fixed[r["round"]]["records_per_s"] for r in mine]
        mean, interval = geometric_mean_interval(ratios)
        out.append(
            {
                "variant": variant,
                "fixed max_in_flight": mif,
                "pairs": len(ratios),
                "records/s / fixed, geometric mean": round(mean, 3),
                "95% interval": [round(x, 3) for x in interval] if interval else None,
                "records/s / fixed, pair by pair": [round(x, 3) for x in ratios],
                "records/s median, adaptive": statistics.median(r["records_per_s"] for r in mine),
                "records/s median, fixed": statistics.median(r["records_per_s"] for r in fixed.values()),
                "refused % (max), adaptive": max(r["refused_pct"] for r in mine),
                "refused % (max), fixed": max(r["refused_pct"] for r in fixed.values()),
            }
        )
    return out


def normal_label(r: dict[str, Any]) -> str:
    """A normal-load run's name in the summary: its kind, and an adaptive run's variant."""
    return f"{r['kind']} {r['variant']}" if r.get("variant") else r["kind"]


def setting_of(r: dict[str, Any]) -> tuple[str, int, int]:
    """A run's setting: kind, max_in_flight and (adaptive) variant; "" for fixed runs."""
    return r["kind"], r["max_in_flight"], r.get("variant", "")


def overload_summary(n: int, overload: list[dict[str, Any]]) -> dict[str, Any]:
    """One batch size's overload runs: each setting by its faster run, each adaptive setting
    (one per variant) against the best fixed one."""
    best: dict[tuple[str, int, int], dict[str, Any]] = {}
    for r in overload:
        key = setting_of(r)
        if key not in best or r["records_per_s"] > best[key]["records_per_s"]:
            best[key] = r
    rows = []
    for (kind, mif, variant), r in sorted(best.items()):
        runs = [x for x in overload if setting_of(x) == (kind, mif, variant)]
        row = {"kind": kind, "max_in_flight": mif}
        if variant:
            row["variant"] = variant
        row |= {
            "records_per_s": r["records_per_s"],
            "records_per_s_runs": [x["records_per_s"] for x in runs],
            "refused_pct": [x["refused_pct"] for x in runs],
            "seconds": [x["seconds"] for x in runs],
            "limit_median_runs": [x.get("limit_median") for x in runs],
        }
        rows.append(row)
    out: dict[str, Any] = {"records": n, "settings": rows}
    fixed = [row for row in rows if row["kind"] == "fixed"]
    adaptive = [row for row in rows if row["kind"] == "adaptive"]
    if not (fixed and adaptive):
        return out
    top = max(fixed, key=lambda row: row["records_per_s"])
    out["best fixed"] = {"max_in_flight": top["max_in_flight"], "records_per_s": top["records_per_s"]}
    # By medians too: each setting's faster run flatters whichever had the luckier moment.
    mif, median = best_fixed_by_median([r for r in overload if r["kind"] == "fixed"])
    out["best fixed by median"] = {"max_in_flight": mif, "records_per_s": median}
    # And round by round: a run beside the other in time shares the machine's load of the
    # moment, which moved single runs by 2x on the shared machine.
    rates = {(*setting_of(r), r["round"]): r["records_per_s"] for r in overload}
    same_cap = next(row for row in fixed if row["max_in_flight"] == adaptive[0]["max_in_flight"])
    out["refused % fixed at the same cap (max)"] = max(same_cap["refused_pct"])
    out["adaptive"] = []
    for row in adaptive:
        key = ("adaptive", row["max_in_flight"], row["variant"])
        same_round = sorted(
            rate / rates[("fixed", mif, "", rnd)]
            for (*setting, rnd), rate in rates.items()
            if tuple(setting) == key and ("fixed", mif, "", rnd) in rates
        )
        out["adaptive"].append(
            {
                "variant": row["variant"],
                "records/s / best fixed, faster runs": round(row["records_per_s"] / top["records_per_s"], 3),
                "records/s / best fixed, medians": round(
                    statistics.median(row["records_per_s_runs"])
                    / out["best fixed by median"]["records_per_s"],
                    3,
                ),
                "records/s / best fixed, run by run (median)": round(statistics.median(same_round), 3),
                "records/s / best fixed, run by run": [round(x, 3) for x in same_round],
                "refused % (max)": max(row["refused_pct"]),
            }
        )
    return out


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "| load | phase | run | max_in_flight | variant | records | records/s | s | requests sent "
        "| refused (429/503) | refused % |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["normal"] + results["overload"]:
        cells = [
            r["load"], r.get("phase", ""), r["kind"], str(r.get("max_in_flight", "")), r.get("variant", ""),
            f"{r['records']:,}",
            f"{r['records_per_s']:,}", str(r["seconds"]), str(r.get("sent", "")),
            str(r.get("refused", "")), str(r.get("refused_pct", "")),
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for key, value in results["summary"].items():
        if key != "overload":
            lines.append(f"- {key}: {value}")
    for size in results["summary"]["overload"]:
        for key, value in size.items():
            if key not in ("records", "settings", "adaptive", "duel"):
                lines.append(f"- overload {size['records']:,} records, {key}: {value}")
        for part, name in (("adaptive", "adaptive"), ("duel", "duel, adaptive")):
            for variant in size.get(part, []):
                for key, value in variant.items():
                    if key != "variant":
                        where = f"overload {size['records']:,} records, {name} ({variant['variant']})"
                        lines.append(f"- {where} {key}: {value}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.adaptive_concurrency", description=__doc__)
    p.add_argument("--records", type=int, default=100_000, help="records per run at normal load")
    p.add_argument("--pairs", type=int, default=3, help="rounds of (adaptive, fixed, B) at normal load")
    p.add_argument(
        "--overload-records",
        type=int,
        nargs="+",
        default=[50_000, 200_000],
        help="batch sizes under overload",
    )
    p.add_argument("--overload-micro-batch", type=int, default=100, help="records per request under overload")
    p.add_argument("--shards", type=int, default=4, help="max_concurrent_shards under overload")
    p.add_argument("--sweep", type=int, nargs="+", default=[1, 2, 4, 8], help="fixed max_in_flight per shard")
    p.add_argument(
        "--adaptive",
        nargs="+",
        default=[DEFAULTS],
        type=variant_arg,
        help=f"adaptive settings to run side by side, each {DEFAULTS!r} or NAME=VALUE[,NAME=VALUE] "
        f"of {', '.join(VARIANT_ENV)}",
    )
    p.add_argument("--rounds", type=int, default=2, help="runs of each overload setting in the sweep")
    p.add_argument(
        "--duel",
        type=int,
        default=0,
        help="pairs of runs per size after the sweep: the sweep's best fixed setting against each "
        "adaptive variant (0: none)",
    )
    p.add_argument(
        "--warm-up",
        type=int,
        default=0,
        help="records each run's worker first runs untimed with the same settings, as a long-lived "
        "worker has (0: none, a fresh worker per timed batch)",
    )
    p.add_argument("--ongoing", type=int, default=4, help="echo's max_ongoing_requests under overload")
    p.add_argument("--queued", type=int, default=4, help="echo's max_queued_requests under overload")
    p.add_argument("--retry-after", type=int, default=1, help="Serve's Retry-After under overload, s")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    if args.duel and args.rounds < 1:
        p.error("--duel needs a sweep to pick its fixed setting: --rounds 1 or more")
    stop_on_sigterm()
    work = Path(tempfile.mkdtemp(prefix="bench-adaptive-"))
    results = asyncio.run(run(args, work))
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (args.out / f"adaptive-{stamp}.json").write_text(json.dumps(results, indent=2))
    (args.out / f"adaptive-{stamp}.md").write_text(markdown(results) + "\n")
    print(markdown(results))
    print(json.dumps(results["summary"], indent=2))
    print(f"\nsaved {args.out}/adaptive-{stamp}.json and .md")


if __name__ == "__main__":
    main()
