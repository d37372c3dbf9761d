"""``bench/adaptive_concurrency.py``'s arithmetic on runs made up here: each overload batch size
summed up apart, the best fixed setting by its faster run and by its median, and the worker's
gauges read from the text its own metrics registry writes (the runs themselves need the local
stack: ``python -m bench.adaptive_concurrency``)."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, Gauge, generate_latest

from bench.adaptive_concurrency import (
    best_fixed_by_median,
    gauges,
    geometric_mean_interval,
    markdown,
    summary,
    variant_env,
)
from services import constants as c
from services import metrics as m

UNBOUNDED = f"{c.ENV_SERVE_CONCURRENCY_BOUNDED_CUTS}=false"


def run(
    kind: str,
    mif: int,
    records: int,
    rate: int,
    refused_pct: float,
    rnd: int = 0,
    variant: str = "defaults",
    phase: str = "sweep",
) -> dict:
    row = {
        "load": "overload", "phase": phase, "kind": kind, "max_in_flight": mif, "round": rnd,
        "records": records, "records_per_s": rate, "seconds": round(records / rate, 2),
        "refused_pct": refused_pct,
    }  # fmt: skip
    return row | {"variant": variant} if kind == "adaptive" else row


def test_each_size_and_each_adaptive_variant_is_judged_apart_by_faster_run_and_by_median():
    overload = [
        # 50k: fixed 4 has the single fastest run, fixed 2 the best median
        run("fixed", 2, 50_000, 7_000, 0.0),
        run("fixed", 2, 50_000, 7_200, 0.4, 1),
        run("fixed", 2, 50_000, 7_100, 0.0, 2),
        run("fixed", 4, 50_000, 8_000, 3.0),
        run("fixed", 4, 50_000, 5_000, 2.0, 1),
        run("fixed", 4, 50_000, 5_500, 2.5, 2),
        run("adaptive", 4, 50_000, 6_800, 1.0),
        run("adaptive", 4, 50_000, 7_100, 1.5, 1),
        run("adaptive", 4, 50_000, 6_900, 0.5, 2),
        # another variant, one round only
        run("adaptive", 4, 50_000, 3_600, 0.1, 1, variant=UNBOUNDED),
        # 200k: one setting each way
        run("fixed", 4, 200_000, 6_000, 5.0),
        run("adaptive", 4, 200_000, 6_600, 0.7),
    ]
    normal = [
        {"load": "normal", "kind": kind, "pair": 0, "records": 100_000, "records_per_s": rate, "seconds": 2.0}
        for kind, rate in (("adaptive", 50_000), ("fixed", 40_000), ("B", 50_000))
    ]
    for row in normal[:2]:
        row["refused_pct"] = 0.0
    normal.append({**normal[0], "variant": UNBOUNDED, "records_per_s": 20_000})
    out = summary(normal, overload)
    assert out["normal adaptive/fixed"] == 1.25
    assert out[f"normal adaptive {UNBOUNDED}/fixed"] == 0.5
    assert out[f"normal A/B adaptive {UNBOUNDED}"] == 0.4
    assert out["normal refused % (max)"] == {"adaptive": 0.0, f"adaptive {UNBOUNDED}": 0.0, "fixed": 0.0}
    short, long = out["overload"]
    assert short["records"] == 50_000 and long["records"] == 200_000
    assert short["best fixed"] == {"max_in_flight": 4, "records_per_s": 8_000}
    assert short["best fixed by median"] == {"max_in_flight": 2, "records_per_s": 7_100}
    variants = {a["variant"]: a for a in short["adaptive"]}
    defaults, without = variants.pop("defaults"), variants.pop(UNBOUNDED)
    assert not variants
    assert defaults["records/s / best fixed, faster runs"] == round(7_100 / 8_000, 3)
    assert defaults["records/s / best fixed, medians"] == round(6_900 / 7_100, 3)
    # round by round against the best fixed setting by median (fixed 2): 6800/7000, 7100/7200, 6900/7100
    assert defaults["records/s / best fixed, run by run"] == [0.971, 0.972, 0.986]
    assert defaults["records/s / best fixed, run by run (median)"] == 0.972
    assert without["records/s / best fixed, run by run"] == [0.5]  # 3600/7200, its one round
    assert (defaults["refused % (max)"], without["refused % (max)"]) == (1.5, 0.1)
    assert short["refused % fixed at the same cap (max)"] == 3.0
    assert long["adaptive"][0]["records/s / best fixed, faster runs"] == 1.1
    text = markdown({"normal": normal, "overload": overload, "summary": out})
    assert "overload 200,000 records, adaptive (defaults) records/s / best fixed, faster runs: 1.1" in text
    assert f"| overload | sweep | adaptive | 4 | {UNBOUNDED} | 50,000 | 3,600 |" in text


def test_the_duel_measures_against_the_sweeps_pick_on_runs_of_its_own():
    sweep = [
        run("fixed", 2, 50_000, 7_000, 0.0),
        run("fixed", 4, 50_000, 9_000, 5.0),  # the sweep's winner, by a lucky moment
        run("adaptive", 4, 50_000, 6_000, 0.2),
    ]
    duel = [
        run("fixed", 4, 50_000, 8_000, 5.0, 0, phase="duel"),
        run("adaptive", 4, 50_000, 8_000, 0.4, 0, phase="duel"),
        run("adaptive", 4, 50_000, 6_400, 0.3, 1, phase="duel"),
        run("fixed", 4, 50_000, 6_400, 4.0, 1, phase="duel"),
        run("fixed", 4, 50_000, 7_000, 4.5, 2, phase="duel"),
        run("adaptive", 4, 50_000, 7_700, 0.1, 2, phase="duel"),
    ]
    (size,) = summary([], sweep + duel)["overload"]
    # the sweep's figures leave the duel's runs out
    assert size["best fixed by median"] == {"max_in_flight": 4, "records_per_s": 9_000}
    assert size["adaptive"][0]["records/s / best fixed, run by run"] == [round(6_000 / 9_000, 3)]
    (defaults,) = size["duel"]
    assert defaults["fixed max_in_flight"] == 4 and defaults["pairs"] == 3
    assert defaults["records/s / fixed, pair by pair"] == [1.0, 1.0, 1.1]
    assert defaults["records/s / fixed, geometric mean"] == round(1.1 ** (1 / 3), 3)
    low, high = defaults["95% interval"]
    assert low < 1.0 < 1.1 < high
    assert (defaults["refused % (max), adaptive"], defaults["refused % (max), fixed"]) == (0.4, 5.0)
    text = markdown({"normal": [], "overload": sweep + duel, "summary": summary([], sweep + duel)})
    assert "overload 50,000 records, duel, adaptive (defaults) pairs: 3" in text
    assert "records, duel: [" not in text  # each figure on a line of its own, not the raw list


def test_the_interval_narrows_with_more_pairs_and_is_students_t():
    mean, (low, high) = geometric_mean_interval([0.9, 1.1])
    assert mean == pytest.approx(math.sqrt(0.99))
    # two pairs: t(0.975, 1) = 12.706 times the logs' standard deviation (|d| sqrt(2), d either
    # log's distance from their mean) over sqrt(2)
    half = 12.706 * abs(math.log(0.9) - math.log(mean))
    assert math.log(high / mean) == pytest.approx(half, rel=1e-3)
    assert math.log(mean / low) == pytest.approx(half, rel=1e-3)
    _, (low8, high8) = geometric_mean_interval([0.9, 1.1] * 4)
    assert low < low8 < 1 < high8 < high
    assert geometric_mean_interval([1.0]) == (1.0, None)


def test_the_best_fixed_setting_is_the_highest_median():
    runs = [run("fixed", 2, 1, rate, 0, rnd) for rnd, rate in enumerate((5, 6, 7))]
    runs += [run("fixed", 4, 1, rate, 0, rnd) for rnd, rate in enumerate((9, 1, 2))]
    assert best_fixed_by_median(runs) == (2, 6)


def test_a_variant_sets_only_the_limiters_own_settings():
    assert variant_env("defaults") == {}
    assert variant_env(UNBOUNDED) == {c.ENV_SERVE_CONCURRENCY_BOUNDED_CUTS: "false"}
    both = f"{c.ENV_SERVE_CONCURRENCY_SLOW_START_GROWTH}=1,{c.ENV_SERVE_CONCURRENCY_BOUNDED_CUTS}=false"
    assert variant_env(both) == {
        c.ENV_SERVE_CONCURRENCY_SLOW_START_GROWTH: "1",
        c.ENV_SERVE_CONCURRENCY_BOUNDED_CUTS: "false",
    }
    with pytest.raises(ValueError, match="SERVE_URL"):
        variant_env("SERVE_URL=http://elsewhere")


def test_gauges_read_the_limit_and_the_requests_in_flight_of_every_model():
    registry = CollectorRegistry()
    limit = Gauge(m.SERVE_CONCURRENCY_LIMIT.name, "limit", registry=registry)
    in_flight = Gauge(m.SERVE_IN_FLIGHT.name, "in flight", m.SERVE_IN_FLIGHT.labels, registry=registry)
    assert gauges(generate_latest(registry).decode()) == (0.0, None)
    limit.set(12)
    in_flight.labels("echo").set(7)
    in_flight.labels("iris").set(2)
    assert gauges(generate_latest(registry).decode()) == (12.0, 9.0)
