"""What the CLI and the worker say about a user's mistake: one line, what to do, no traceback.

The same cases run as a user would (subprocesses against real servers) in
tests/integration/test_cli_errors.py; these pin the pieces: ``--set`` keys and values, a
failure's one line, the worker's log filter, the model check, free ports, the ``list`` table.
"""

from __future__ import annotations

import io
import itertools
import logging
import socket
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError

from services import constants as c
from services.batches_cli import BatchRow, age, table
from services.cli import main as cli_main
from services.cli_errors import failure_line, split_settings, tuning_from
from services.errors import BadSetting, Failure, PortInUse
from services.local.ports import check_free, next_free_port, port_free
from services.worker.contracts import Tuning
from services.worker.expected_failures import SDK_ACTIVITY_FAILURE, SDK_ERROR_KEY, ExpectedFailureFilter
from services.worker.manifests import DataSpec
from services.worker.model_check import UnknownModel, check_model
from services.worker.serve_client import ServeClient, TokenSource

# --- --set -------------------------------------------------------------------------------------


def test_an_unknown_setting_lists_every_valid_key_from_the_models():
    with pytest.raises(BadSetting) as err:
        split_settings(["bogus=1"])
    message = str(err.value)
    assert message.startswith("unknown setting 'bogus'; valid: data options ")
    for key in [*DataSpec.model_fields, *Tuning.model_fields]:
        assert key in message
    assert err.value.key == "bogus"


def test_a_near_miss_is_suggested():
    with pytest.raises(BadSetting, match="did you mean 'micro_batch_size'"):
        split_settings(["micro_batch_siz=10"])


def test_settings_split_into_data_and_tuning_with_json_or_text_values():
    data, tuning = split_settings(["output_format=parquet", 'input_columns=["a","b"]', "shard_size=10"])
    assert data == {"output_format": "parquet", "input_columns": ["a", "b"]}
    assert tuning == {"shard_size": 10}
    with pytest.raises(BadSetting, match="KEY=VALUE"):
        split_settings(["shard_size"])


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("micro_batch_size=5000", "micro_batch_size (records per HTTP request): input should be less than or "
         "equal to 1024 (got 5000)"),
        ("max_in_flight=many", "max_in_flight (concurrent requests per shard): input should be a valid "
         "integer"),
    ],
)  # fmt: skip
def test_a_bad_value_names_the_key_and_what_fits_not_a_pydantic_dump(setting, expected):
    with pytest.raises(BadSetting) as err:
        tuning_from(split_settings([setting])[1])
    assert str(err.value).startswith(expected)
    assert "pydantic" not in str(err.value) and "type=" not in str(err.value)


def test_the_cli_prints_one_line_and_exits_2(capsys):
    code = cli_main(["submit", "--input", "in.jsonl", "--output", "out", "--set", "output_format=xml"])
    err = capsys.readouterr().err
    assert code == 2
    assert err == (
        "error: output_format (results as jsonl or parquet): input should be 'jsonl' or 'parquet' "
        "(got 'xml')\n"
    )


# --- a failed batch in one line --------------------------------------------------------------


def chain(*errors: BaseException) -> WorkflowFailureError:
    for outer, inner in itertools.pairwise(errors):
        outer.__cause__ = inner
    return WorkflowFailureError(cause=errors[0])


def test_a_failure_of_ours_is_its_message_alone():
    reason = "unknown model 'nope'; Serve has: echo, iris"
    err = chain(
        ApplicationError("Activity task failed"),
        ApplicationError(reason, type=Failure.UNKNOWN_MODEL, non_retryable=True),
    )
    assert failure_line(err) == reason


def test_any_other_failure_keeps_its_chain():
    err = chain(ApplicationError("Activity task failed"), ApplicationError("boom", type="KeyError"))
    assert failure_line(err) == "Activity task failed <- KeyError: boom"


# --- the worker's log ------------------------------------------------------------------------


def log_failure(exc: BaseException, marked: bool = True) -> str:
    """What a logger with the filter writes for the SDK's "Completing activity as failed"."""
    logger = logging.getLogger(f"test-expected-failures-{id(exc)}")
    logger.propagate = False
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.addFilter(ExpectedFailureFilter())
    try:
        raise exc
    except BaseException:
        extra = {SDK_ERROR_KEY: SDK_ACTIVITY_FAILURE} if marked else {}
        logger.warning(
            "Completing activity as failed (%s)",
            "{'activity_type': 'plan_batch'}",
            exc_info=True,
            extra=extra,
        )
    return out.getvalue()


def test_an_expected_failure_is_one_line_with_its_reason():
    text = log_failure(
        ApplicationError("input not found: /x.jsonl", type=Failure.INPUT_NOT_FOUND, non_retryable=True)
    )
    assert text == (
        "WARNING Completing activity as failed ({'activity_type': 'plan_batch'}): InputNotFound: input not "
        "found: /x.jsonl\n"
    )
    serve = log_failure(
        ApplicationError("Serve answered 403 (...)", type=Failure.serve_http(403), non_retryable=True)
    )
    assert serve.count("\n") == 1 and "ServeHTTP403: Serve answered 403" in serve


@pytest.mark.parametrize(
    "exc",
    [ValueError("a bug"), ApplicationError("not ours", type="SomethingElse", non_retryable=True)],
)
def test_anything_else_keeps_its_traceback(exc):
    assert "Traceback (most recent call last)" in log_failure(exc)


def test_other_records_are_left_alone():
    exc = ApplicationError("input not found", type=Failure.INPUT_NOT_FOUND, non_retryable=True)
    assert "Traceback" in log_failure(exc, marked=False)


# --- the model check -------------------------------------------------------------------------


def serve_answering(handler) -> ServeClient:
    return ServeClient("http://serve.test", TokenSource("t"), transport=httpx.MockTransport(handler))


def models(request: httpx.Request) -> httpx.Response:
    assert request.url.path == c.MODELS_ROUTE and request.headers["authorization"] == "Bearer t"
    return httpx.Response(200, json={"models": ["iris", "echo"], "default": "echo"})


async def test_an_unknown_model_fails_naming_what_serve_has():
    with pytest.raises(UnknownModel) as err:
        await check_model(serve_answering(models), "nope")
    assert str(err.value) == "unknown model 'nope'; Serve has: echo, iris"
    assert err.value.failure == Failure.UNKNOWN_MODEL
    await check_model(serve_answering(models), "iris")


async def test_no_model_means_no_call():
    def never(request: httpx.Request) -> httpx.Response:
        raise AssertionError("called Serve")

    await check_model(serve_answering(never), None)


@pytest.mark.parametrize(
    "answer",
    [
        lambda request: httpx.Response(403, json={"detail": "invalid token"}),
        lambda request: httpx.Response(503, text="busy"),
        lambda request: httpx.Response(200, json={"unexpected": True}),
    ],
)
async def test_when_serve_cannot_say_the_batch_goes_on(answer, caplog):
    caplog.set_level(logging.WARNING)
    await check_model(serve_answering(answer), "iris")
    assert "could not check model 'iris'" in caplog.text


async def test_serve_unreachable_lets_the_batch_go_on():
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    await check_model(serve_answering(refuse), "iris")


# --- ports -----------------------------------------------------------------------------------


def test_a_taken_port_is_named_with_what_to_do():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        assert not port_free(port)
        assert next_free_port(port) != port
        with pytest.raises(PortInUse) as err:
            check_free([(port, "a test server")], "stop the other one")
    assert str(err.value) == f"port {port} (a test server) is already in use: stop the other one"
    assert port_free(port)


# --- list --------------------------------------------------------------------------------------


def test_age_and_table():
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    assert [age(now - timedelta(seconds=s), now) for s in (5, 125, 7200, 200_000)] == ["5s", "2m", "2h", "2d"]
    rows = [
        BatchRow(
            workflow_id="b-2", status="running", started_at=now, total_records=10, succeeded=4, failed=0
        ),
        BatchRow(workflow_id="batch-1", status="failed", started_at=now - timedelta(minutes=3), note="why"),
    ]
    assert table(rows, now).splitlines() == [
        "WORKFLOW ID  STATUS   SUCCEEDED  FAILED  TOTAL  AGE",
        "b-2          running  4          0       10     0s",
        "batch-1      failed   -          -       -      3m   why",
    ]
