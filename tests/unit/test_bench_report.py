"""The benchmark's report: A/B is the median of paired runs' ratios, each pair run side by side."""

from __future__ import annotations

from bench.__main__ import markdown, ratios, table


def run(kind: str, rps: float, pair: int, n: int = 1000, model: str = "echo") -> dict:
    return {"kind": kind, "model": model, "records": n, "records_per_s": rps, "pair": pair}


def test_ab_is_the_median_of_the_pairs_ratios_with_their_range():
    runs = [
        run("A", 90, 0), run("B", 100, 0),  # 0.9
        run("B", 100, 1), run("A", 50, 1),  # 0.5: a slow moment for A alone
        run("A", 95, 2), run("B", 100, 2),  # 0.95
        run("D", 45, 0), run("C", 10, 0, n=2000),
    ]  # fmt: skip
    (row,) = ratios({"runs": runs})
    assert row["A/B"] == 0.9 and row["A/B range"] == "0.500-0.950 (3 pairs)"
    assert row["A_rps"] == 90 and row["A/D"] == 2.0 and row["A/C(2k)"] == 9.0
    assert "| A | echo | 1,000 | 1 | 50 |" in markdown({"runs": runs})
    assert "A/B=0.9" in table({"runs": runs})


def test_a_run_that_failed_has_no_ratio():
    runs = [run("A", 90, 0), {"kind": "B", "model": "echo", "records": 1000, "error": "boom", "pair": 0}]
    assert "A/B" not in ratios({"runs": runs})[0]


def test_f_over_b_is_temporals_floor_as_a_share_of_each_b_run():
    runs = [
        run("A", 900, 0), run("B", 1000, 0),  # B: 1.0 s for 1,000 records
        run("B", 500, 1), run("A", 400, 1),  # B: 2.0 s
        run("B", 250, 2), run("A", 200, 2),  # B: 4.0 s
        {"kind": "F", "model": "noop", "records": 1000, "seconds": 1.0, "shards": 4, "window": 4,
         "median_ms": 1000.0, "min_ms": 900.0, "max_ms": 1100.0, "floor_runs": 15, "first_ms": 1500.0},
        {"kind": "F", "model": "noop", "records": 5000, "seconds": 9.0, "shards": 4, "window": 4},  # not n
    ]  # fmt: skip
    (row,) = ratios({"runs": runs})
    assert row["F/B"] == 0.5  # the median of 1/1, 1/2 and 1/4
    assert "4 no-op shards: median 1000.0 ms (900.0-1100.0, 15 runs)" in markdown({"runs": runs})


def test_no_f_over_b_where_shards_run_in_several_waves():
    """Then a shard's end overlaps the others' work in A, and F's time is not all on its path."""
    runs = [run("A", 900, 0), run("B", 1000, 0), {"kind": "F", "model": "noop", "records": 1000,
            "seconds": 0.3, "shards": 20, "window": 4}]  # fmt: skip
    assert "F/B" not in ratios({"runs": runs})[0]
