"""``promtool test rules``: each alert fires on the situation it describes and not on a healthy
one. Scenarios are written here; the expected annotations are rendered from the rules file, so
only behaviour is asserted twice, not text."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from services import constants as c
from services import metrics as m
from tests.helpers.promql import RULES_FILE, rules
from tests.helpers.promtool import promtool

W = m.WORKER_JOB
BAD_JSON = 'stage="parse",reason="malformed_json"'
FAILED_RUN = m.SCHEDULE_LAST_RUN_FAILED.prom


def _buckets(name: str, labels: str, counts: dict[str, str]) -> list[dict]:
    return [{"series": f'{name}{{{labels},le="{le}"}}', "values": v} for le, v in counts.items()]


# alert -> (input series, [(eval time, expected alert label sets)])
SCENARIOS: dict[str, tuple[list[dict], list[tuple[str, list[dict]]]]] = {
    "BatchInferenceBatchStalled": (
        [
            {
                "series": f'{m.BATCH_RECORDS.prom}{{workflow_id="stuck",state="total",instance="w1"}}',
                "values": "1000x60",
            },
            {
                "series": f'{m.BATCH_RECORDS.prom}{{workflow_id="stuck",state="succeeded",instance="w1"}}',
                "values": "500x60",
            },
            {
                "series": f'{m.BATCH_RECORDS.prom}{{workflow_id="stuck",state="failed",instance="w1"}}',
                "values": "0x60",
            },
            {"series": f'{m.BATCH_ELAPSED.prom}{{workflow_id="stuck",instance="w1"}}', "values": "600+60x60"},
            {
                "series": f'{m.BATCH_RECORDS.prom}{{workflow_id="moving",state="total",instance="w1"}}',
                "values": "1000x60",
            },
            {
                "series": f'{m.BATCH_RECORDS.prom}{{workflow_id="moving",state="succeeded",instance="w1"}}',
                "values": "0+10x60",
            },
            {
                "series": f'{m.BATCH_RECORDS.prom}{{workflow_id="moving",state="failed",instance="w1"}}',
                "values": "0x60",
            },
            {
                "series": f'{m.BATCH_ELAPSED.prom}{{workflow_id="moving",instance="w1"}}',
                "values": "600+60x60",
            },
        ],
        [("15m", []), ("45m", [{"workflow_id": "stuck"}])],
    ),
    "BatchInferenceNoRecordsProcessed": (
        [{"series": f'{m.BATCHES_RUNNING.prom}{{instance="w1"}}', "values": "1x40"}],
        [("3m", []), ("20m", [{}])],
    ),
    "BatchInferenceRecordErrorRatioHigh": (
        [
            {
                "series": f'{m.RECORDS.prom}{{model="iris",outcome="succeeded",stage="",reason=""}}',
                "values": "0+100x40",
            },
            {
                "series": f'{m.RECORDS.prom}{{model="iris",outcome="failed",{BAD_JSON}}}',
                "values": "0+5x40",
            },
            {
                "series": f'{m.RECORDS.prom}{{model="echo",outcome="succeeded",stage="",reason=""}}',
                "values": "0+100x40",
            },
            {
                "series": f'{m.RECORDS.prom}{{model="echo",outcome="failed",{BAD_JSON}}}',
                "values": "0x40",
            },
        ],
        [("25m", [{"model": "iris"}])],
    ),
    "BatchInferenceBatchFailed": (
        [
            # A worker whose first failed batch creates the series at 1, and one that counts up.
            {
                "series": f'{m.BATCHES_FINISHED.prom}{{model="iris",status="failed",instance="w1"}}',
                "values": "_x5 1x30",
            },
            {
                "series": f'{m.BATCHES_FINISHED.prom}{{model="echo",status="failed",instance="w2"}}',
                "values": "0x10 1x30",
            },
            {
                "series": f'{m.BATCHES_FINISHED.prom}{{model="echo",status="completed",instance="w2"}}',
                "values": "0+1x40",
            },
        ],
        [
            ("3m", []),
            ("8m", [{"model": "iris"}]),
            ("12m", [{"model": "iris"}, {"model": "echo"}]),
            ("35m", []),
        ],
    ),
    "BatchInferenceScheduledRunFailed": (
        [
            # Two workers report the same schedules; "nightly"'s run fails at 10m, a later one
            # completes at 30m; "hourly" never fails.
            *(
                {
                    "series": f'{FAILED_RUN}{{{m.SCHEDULE_ID}="nightly",instance="{w}"}}',
                    "values": "0x10 1x20 0x10",
                }
                for w in ("w1", "w2")
            ),
            {
                "series": f'{FAILED_RUN}{{{m.SCHEDULE_ID}="hourly",instance="w1"}}',
                "values": "0x40",
            },
        ],
        [("5m", []), ("15m", [{m.SCHEDULE_ID: "nightly"}]), ("35m", [])],
    ),
    "BatchInferenceServeErrorsHigh": (
        [
            {
                "series": f'{m.RAY_HTTP_REQUESTS.prom}{{application="{c.SERVE_APP_NAME}",status_code="200"}}',
                "values": "0+100x30",
            },
            {
                "series": f'{m.RAY_HTTP_REQUESTS.prom}{{application="{c.SERVE_APP_NAME}",status_code="503"}}',
                "values": "0+10x30",
            },
        ],
        [("15m", [{"application": c.SERVE_APP_NAME}])],
    ),
    "BatchInferenceServeUnavailableToWorkers": (
        [
            {"series": f'{m.SERVE_REQUESTS.prom}{{model="iris",code="200"}}', "values": "0+100x30"},
            {
                "series": f'{m.SERVE_REQUESTS.prom}{{model="iris",code="connection_error"}}',
                "values": "0+20x30",
            },
        ],
        [("15m", [{}])],
    ),
    "BatchInferenceBatchWaitingForServe": (
        [
            # "paused" waits from 6m to 21m (the gauge counts its seconds), then resumes;
            # "blip" waits 2 minutes; "fine" never waits.
            {
                "series": f'{m.BATCH_WAITING_FOR_SERVE.prom}{{workflow_id="paused",instance="w1"}}',
                "values": "0x5 60+60x15 0x10",
            },
            {
                "series": f'{m.BATCH_WAITING_FOR_SERVE.prom}{{workflow_id="blip",instance="w1"}}',
                "values": "0x5 60 120 0x20",
            },
            {
                "series": f'{m.BATCH_WAITING_FOR_SERVE.prom}{{workflow_id="fine",instance="w1"}}',
                "values": "0x30",
            },
        ],
        [("8m", []), ("13m", [{m.WORKFLOW_ID: "paused"}]), ("28m", [])],
    ),
    "BatchInferenceWorkerMissing": (
        [{"series": f'up{{job="{W}",instance="a"}}', "values": "1x5 0x20"}],
        [("4m", []), ("15m", [{}])],
    ),
    "BatchInferenceWorkerDown": (
        [
            {"series": f'up{{job="{W}",instance="a"}}', "values": "0x20"},
            {"series": f'up{{job="{W}",instance="b"}}', "values": "1x20"},
        ],
        [("10m", [{"job": W, "instance": "a"}])],
    ),
    "BatchInferenceActivityScheduleToStartHigh": (
        _buckets(
            m.TEMPORAL_ACT_SCHEDULE_TO_START.bucket,
            'namespace="default",task_queue="q"',
            {"100": "0x30", "1000": "0x30", "10000": "0+1x30", "100000": "0+10x30", "+Inf": "0+10x30"},
        ),
        [("25m", [{"namespace": "default", "task_queue": "q"}])],
    ),
    "BatchInferenceWorkflowScheduleToStartHigh": (
        _buckets(
            m.TEMPORAL_WF_SCHEDULE_TO_START.bucket,
            'namespace="default",task_queue="q"',
            {"100": "0+1x30", "5000": "0+1x30", "10000": "0+10x30", "+Inf": "0+10x30"},
        ),
        [("25m", [{"namespace": "default", "task_queue": "q"}])],
    ),
}


def _render(template: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*\$labels\.(\w+)\s*\}\}", lambda g: labels.get(g.group(1), ""), template)


def test_every_alert_has_a_scenario() -> None:
    assert set(SCENARIOS) == {r["alert"] for r in rules()}


def test_promtool_test_rules(tmp_path: Path) -> None:
    by_name = {r["alert"]: r for r in rules()}
    tests = []
    for alert, (series, checks) in SCENARIOS.items():
        rule = by_name[alert]
        assert "$value" not in str(rule["annotations"]), "keep annotations testable: no $value"
        tests.append(
            {
                "name": alert,
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [
                    {
                        "eval_time": at,
                        "alertname": alert,
                        "exp_alerts": [
                            {
                                "exp_labels": {**labels, **rule["labels"]},
                                "exp_annotations": {
                                    k: _render(v, labels) for k, v in rule["annotations"].items()
                                },
                            }
                            for labels in expected
                        ],
                    }
                    for at, expected in checks
                ],
            }
        )
    test_file = tmp_path / "rules-test.yaml"
    test_file.write_text(
        yaml.safe_dump({"rule_files": [str(RULES_FILE)], "evaluation_interval": "1m", "tests": tests})
    )
    out = subprocess.run([promtool(), "test", "rules", str(test_file)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-3000:]
