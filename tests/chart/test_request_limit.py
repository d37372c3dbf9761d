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


def test_the_chart_renders_the_file_value_or_its_own() -> None:
    assert app_args()["max_request_bytes"] == c.SERVE_MAX_REQUEST_BYTES
    args = app_args({"serve": {"maxRequestBytes": 33554432}})
    assert args["max_request_bytes"] == 33554432 and isinstance(args["max_request_bytes"], int)
    assert AppArgs.model_validate(args).max_request_bytes == 33554432


@pytest.mark.parametrize("bad", [100, "8MiB", 1.5])
def test_values_schema_refuses_what_is_not_a_byte_count(bad) -> None:
    with pytest.raises(Exception, match="maxRequestBytes"):
        render({"serve": {"maxRequestBytes": bad}})


def test_the_arrow_row_limit_is_rendered_from_the_file_or_the_value() -> None:
    (app,) = yaml.safe_load(SERVE_CONFIG.read_text())["applications"]
    default = AppArgs.model_fields["max_arrow_rows_per_request"].default
    assert app["args"]["max_arrow_rows_per_request"] == default
    assert chart_values()["serve"]["maxArrowRowsPerRequest"] is None, "null: the Serve config's value"
    assert app_args()["max_arrow_rows_per_request"] == default
    args = app_args({"serve": {"maxArrowRowsPerRequest": 4096}})
    assert args["max_arrow_rows_per_request"] == 4096 and isinstance(args["max_arrow_rows_per_request"], int)
    assert AppArgs.model_validate(args).max_arrow_rows_per_request == 4096


@pytest.mark.parametrize("bad", [0, "16k", 1.5])
def test_values_schema_refuses_what_is_not_a_row_count(bad) -> None:
    with pytest.raises(Exception, match="maxArrowRowsPerRequest"):
        render({"serve": {"maxArrowRowsPerRequest": bad}})
