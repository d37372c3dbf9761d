"""serve.maxRequestBytes and serve.maxArrowRowsPerRequest: the Serve ingress's body and Arrow
row limits from the chart, one default each (the Serve config's; the byte limit's is
services/constants.py's) and the workers' byte default below it."""

from __future__ import annotations

import pytest
import yaml

from services import constants as c
from services.local.ray_serve import SERVE_CONFIG
from services.serve.app import AppArgs
from services.worker.contracts import Tuning
from tests.helpers.k8s import chart_values, find, render


def app_args(values: dict | None = None) -> dict:
    config = yaml.safe_load(find(render(values), "RayService")["spec"]["serveConfigV2"])
    (app,) = config["applications"]
    return app["args"]


def test_one_default_and_the_workers_stay_below_it() -> None:
    (app,) = yaml.safe_load(SERVE_CONFIG.read_text())["applications"]
    assert app["args"]["max_request_bytes"] == c.SERVE_MAX_REQUEST_BYTES
    assert AppArgs.model_fields["max_request_bytes"].default == c.SERVE_MAX_REQUEST_BYTES
    assert chart_values()["serve"]["maxRequestBytes"] is None, "null: the Serve config's value"
    assert Tuning().max_request_bytes < c.SERVE_MAX_REQUEST_BYTES


# (chart value, the application's arg, a value to set, values the schema refuses)
LIMITS = [
    ("maxRequestBytes", "max_request_bytes", 33554432, [100, "8MiB", 1.5]),
    ("maxArrowRowsPerRequest", "max_arrow_rows_per_request", 4096, [0, "16k", 1.5]),
]


@pytest.mark.parametrize(("value", "arg", "override", "_"), LIMITS, ids=[limit[0] for limit in LIMITS])
def test_the_chart_renders_the_file_value_or_its_own(value: str, arg: str, override: int, _) -> None:
    (app,) = yaml.safe_load(SERVE_CONFIG.read_text())["applications"]
    default = AppArgs.model_fields[arg].default
    assert app["args"][arg] == default, "the Serve config says what the app would take anyway"
    assert chart_values()["serve"][value] is None, "null: the Serve config's value"
    assert app_args()[arg] == default
    args = app_args({"serve": {value: override}})
    assert args[arg] == override and isinstance(args[arg], int)
    assert getattr(AppArgs.model_validate(args), arg) == override


@pytest.mark.parametrize(("value", "bad"), [(limit[0], bad) for limit in LIMITS for bad in limit[3]], ids=str)
def test_values_schema_refuses_what_is_not_a_count(value: str, bad) -> None:
    with pytest.raises(Exception, match=value):
        render({"serve": {value: bad}})
