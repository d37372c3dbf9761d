"""Ray Serve application: an authenticated FastAPI ingress routing to batched model deployments.

Built by ``build_app(args)`` from the Serve config (``charts/batch-inference/files/serve-config.yaml``),
so the chart's RayService and the local stack deploy the same thing. Each model is its own
deployment (named after the model) so replicas and batch settings are set per model there.
"""

import logging
import time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field
from ray import serve
from ray.serve import metrics as serve_metrics
from ray.serve.handle import DeploymentHandle

from services import arrow_wire, json_codec
from services import metrics as m
from services.constants import (
    ARROW_CONTENT_TYPE,
    AUTH_HEADER,
    AUTH_SCHEME,
    HEALTH_ROUTE,
    INFERENCE_ROUTE,
    MODEL_INFERENCE_ROUTE,
    MODELS_ROUTE,
    SERVE_MAX_ARROW_ROWS,
    SERVE_MAX_REQUEST_BYTES,
)
from services.errors import Code, RequestCode
from services.serve.auth import AuthError, TokenStore
from services.serve.body import BodyRefused, parse_json, read_body
from services.serve.models import BUILTIN_MODELS, ColumnarPredictions, is_columnar, load_model

logger = logging.getLogger("ray.serve")


class BatchSettings(BaseModel):
    """A model deployment's ``user_config``: server-side batching, changeable without restart."""

    max_batch_size: int = Field(16, ge=1, le=4096)
    batch_wait_timeout_s: float = Field(0.002, ge=0, le=10)


class AppArgs(BaseModel):
    """The application's ``args`` in the Serve config."""

    models: dict[str, str] = Field(default_factory=lambda: dict(BUILTIN_MODELS))
    default_model: str = "echo"
    max_records_per_request: int = Field(1024, ge=1)
    # Rows of one Arrow request: more than JSON's records, since a row costs Serve almost nothing
    # there and each request a fixed share (the byte limit still holds). The listing says it.
    max_arrow_rows_per_request: int = Field(SERVE_MAX_ARROW_ROWS, ge=1)
    # Larger JSON bodies are refused (413) before they are read whole.
    max_request_bytes: int = Field(SERVE_MAX_REQUEST_BYTES, ge=1024)


def _ray_metric(metric: m.Metric) -> serve_metrics.Counter | serve_metrics.Histogram:
    """A ``ray.serve.metrics`` object for a definition in services/metrics.py (Ray adds the
    deployment/replica/application/route tags and exports it as ``metric.prom``)."""
    if metric.kind == "counter":
        return serve_metrics.Counter(metric.name, description=metric.help, tag_keys=metric.labels)
    assert metric.kind == "histogram" and metric.buckets, metric
    return serve_metrics.Histogram(
        metric.name, description=metric.help, boundaries=list(metric.buckets), tag_keys=metric.labels
    )


def _error(code: Code, message: str) -> dict[str, Any]:
    """A record's error as the batch route reports it: a code (``services.errors.Code``) that
    callers and metrics use, and a message for people."""
    return {"error": {"code": code.value, "message": message}}


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json_codec.dumps(payload)
    return Response(body, status_code=status, media_type="application/json", headers=headers)


# Defined before the deployments: Serve pickles the ingress class's routes when it is decorated,
# with the module globals that exist at that point.
def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "").partition(";")[0].strip().lower()


@serve.deployment
class ModelServer:
    """One model. Requests carry lists of records; ``@serve.batch`` groups requests."""

    def __init__(self, import_path: str):
        self._model = load_model(import_path)
        self._validate = getattr(self._model, "validate", None)
        self._batch_duration = _ray_metric(m.MODEL_BATCH_DURATION)
        self._batch_size = _ray_metric(m.MODEL_BATCH_SIZE)
        self._records = _ray_metric(m.MODEL_RECORDS)
        self._record_errors = _ray_metric(m.MODEL_RECORD_ERRORS)

    def reconfigure(self, config: dict[str, Any]) -> None:
        settings = BatchSettings.model_validate(config or {})
        self._predict_requests.set_max_batch_size(settings.max_batch_size)
        self._predict_requests.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)
        self._predict_tables.set_max_batch_size(settings.max_batch_size)
        self._predict_tables.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)

    def _predict_records(self, records: list[Any]) -> list[dict[str, Any]]:
        """Per-record results: ``{"prediction": ...}`` or ``{"error": {"code", "message"}}``."""
        results: list[dict[str, Any] | None] = [None] * len(records)
        positions, values = [], []
        for i, record in enumerate(records):
            try:
                values.append(self._validate(record) if self._validate else record)
                positions.append(i)
            except (ValueError, TypeError) as exc:
                results[i] = _error(Code.INVALID_INPUT, f"invalid input: {exc}")
        if values:
            try:
                predictions = self._model.predict(values)
                if len(predictions) != len(values):
                    raise RuntimeError(
                        f"model returned {len(predictions)} predictions for {len(values)} inputs"
                    )
            except Exception:
                # Isolate the record(s) the model chokes on instead of failing the whole batch.
                predictions = []
                for value in values:
                    try:
                        predictions.append({"prediction": self._model.predict([value])[0]})
                    except Exception as exc:
                        predictions.append(
                            _error(Code.MODEL_ERROR, f"model error: {type(exc).__name__}: {exc}")
                        )
                for i, result in zip(positions, predictions, strict=True):
                    results[i] = result
            else:
                for i, prediction in zip(positions, predictions, strict=True):
                    results[i] = {"prediction": prediction}
        return results  # type: ignore[return-value]

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def _predict_requests(self, requests: list[list[Any]]) -> list[list[dict[str, Any]]]:
        flat = [record for request in requests for record in request]
        started = time.perf_counter()
        results = self._predict_records(flat)
        self._batch_duration.observe(time.perf_counter() - started)
        self._batch_size.observe(len(flat))
        if flat:
            self._records.inc(len(flat))
        for result in results:
            if "error" in result:
                self._record_errors.inc(tags={m.REASON: result["error"]["code"]})
        out, start = [], 0
        for request in requests:
            out.append(results[start : start + len(request)])
            start += len(request)
        return out

    async def __call__(self, records: list[Any]) -> list[dict[str, Any]]:
        return await self._predict_requests(records)

    def _predict_table(self, table: pa.Table) -> pa.Table:
        """The reply table (services/arrow_wire.py) for a table of inputs: the model's columnar
        predict on all of them; if it raises, row by row, so only the rows it chokes on fail."""
        try:
            answer = self._model.predict_columns(table)
            if len(answer.predictions) != table.num_rows:
                raise RuntimeError(
                    f"model returned {len(answer.predictions)} predictions for {table.num_rows} inputs"
                )
        except Exception:
            return self._predict_rows(table)
        if answer.invalid is None:
            codes = pa.nulls(table.num_rows, pa.string())
            messages = codes
        else:
            refused = answer.invalid.is_valid()
            codes = pc.if_else(refused, Code.INVALID_INPUT.value, pa.scalar(None, pa.string()))
            messages = pc.binary_join_element_wise("invalid input: ", answer.invalid, "")
        return arrow_wire.results(answer.predictions, codes, messages)

    def _predict_rows(self, table: pa.Table) -> pa.Table:
        answers: list[ColumnarPredictions | str] = []
        for i in range(table.num_rows):
            try:
                answer = self._model.predict_columns(table.slice(i, 1))
                if len(answer.predictions) != 1:
                    raise RuntimeError(f"model returned {len(answer.predictions)} predictions for 1 input")
                answers.append(answer)
            except Exception as exc:
                answers.append(f"model error: {type(exc).__name__}: {exc}")
        kind = next((a.predictions.type for a in answers if not isinstance(a, str)), pa.null())
        predictions, codes, messages = [], [], []
        for answer in answers:
            if isinstance(answer, str):
                predictions.append(pa.nulls(1, kind))
                codes.append(Code.MODEL_ERROR.value)
                messages.append(answer)
                continue
            predictions.append(answer.predictions)
            invalid = None if answer.invalid is None else answer.invalid[0].as_py()
            codes.append(None if invalid is None else Code.INVALID_INPUT.value)
            messages.append(None if invalid is None else f"invalid input: {invalid}")
        whole = pa.concat_arrays(predictions) if predictions else pa.nulls(0)
        return arrow_wire.results(whole, pa.array(codes, pa.string()), pa.array(messages, pa.string()))

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def _predict_tables(self, tables: list[pa.Table]) -> list[pa.Table]:
        """Arrow requests, batched as JSON ones are: one columnar predict for all of them when
        their columns agree, and each request's rows of the reply back to it."""
        started = time.perf_counter()
        try:
            whole = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            replies = [self._predict_table(table) for table in tables]
        else:
            reply = self._predict_table(whole)
            replies, start = [], 0
            for table in tables:
                replies.append(reply.slice(start, table.num_rows))
                start += table.num_rows
        rows = sum(table.num_rows for table in tables)
        self._batch_duration.observe(time.perf_counter() - started)
        self._batch_size.observe(rows)
        if rows:
            self._records.inc(rows)
        for reply in replies:
            codes = reply.column(arrow_wire.ERROR_CODE)
            if codes.null_count != len(codes):
                for counted in pc.value_counts(codes.drop_null()).to_pylist():
                    self._record_errors.inc(counted["counts"], tags={m.REASON: counted["values"]})
        return replies

    async def predict_arrow(self, body: bytes) -> bytes:
        """A request's Arrow IPC stream (checked by the ingress) in, the reply's stream
        (arrow_wire.results) out. Streams, not tables, cross the handle: Ray's pickling of a
        pyarrow Table cost this replica more CPU than the model (docs/performance.md)."""
        return arrow_wire.encode(await self._predict_tables(arrow_wire.decode(body)))


# No /docs, /redoc or /openapi.json: every route but health needs a token, and the API description
# would be one more open route.
api = FastAPI(title="batch-inference", docs_url=None, redoc_url=None, openapi_url=None)


@serve.deployment
@serve.ingress(api)
class Ingress:
    """Checks the bearer token, parses single or batch requests, routes to the model."""

    def __init__(
        self,
        models: dict[str, DeploymentHandle],
        default_model: str,
        max_records: int,
        max_request_bytes: int = SERVE_MAX_REQUEST_BYTES,
        columnar: list[str] | None = None,
        max_arrow_rows: int = SERVE_MAX_ARROW_ROWS,
    ):
        self._models = models
        self._default = default_model
        self._max_records = max_records
        self._max_request_bytes = max_request_bytes
        self._columnar = sorted(columnar or [])
        self._max_arrow_rows = max_arrow_rows
        self._tokens = TokenStore.from_env()
        self._auth_failures = _ray_metric(m.AUTH_FAILURES)

    def _auth(self, request: Request) -> Response | None:
        try:
            self._tokens.check(request.headers.get(AUTH_HEADER))
        except AuthError as exc:
            self._auth_failures.inc(tags={m.REASON: exc.code.value})
            headers = {"WWW-Authenticate": AUTH_SCHEME} if exc.status == 401 else None
            return _json({"detail": exc.reason}, exc.status, headers)
        return None

    @api.get(HEALTH_ROUTE)
    async def health(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get(MODELS_ROUTE)
    async def models(self, request: Request) -> Response:
        if denied := self._auth(request):
            return denied
        listing = {"models": sorted(self._models), "default": self._default, "columnar": self._columnar}
        return _json({**listing, "max_arrow_rows": self._max_arrow_rows})

    @api.post(INFERENCE_ROUTE)
    async def infer_default(self, request: Request) -> Response:
        return await self._infer(self._default, request)

    @api.post(MODEL_INFERENCE_ROUTE)
    async def infer_model(self, model: str, request: Request) -> Response:
        return await self._infer(model, request)

    async def _infer(self, model: str, request: Request) -> Response:
        if denied := self._auth(request):
            return denied
        handle = self._models.get(model)
        if handle is None:
            known = ", ".join(sorted(self._models))
            detail = f"unknown model {model!r}; available: {known}"
            return _json({"detail": detail, "code": RequestCode.UNKNOWN_MODEL.value}, 404)
        if _content_type(request) == ARROW_CONTENT_TYPE:
            return await self._infer_arrow(model, handle, request)
        try:
            body = parse_json(await read_body(request, self._max_request_bytes))
        except BodyRefused as exc:
            return _json({"detail": exc.message, "code": exc.code.value}, exc.status)
        if isinstance(body, dict) and isinstance(body.get("inputs"), list):
            inputs = body["inputs"]
            if len(inputs) > self._max_records:
                detail = f"{len(inputs)} inputs in one request; the limit is {self._max_records}"
                return _json({"detail": detail, "code": RequestCode.TOO_MANY_INPUTS.value}, 413)
            results = await handle.remote(inputs) if inputs else []
            return _json(
                {
                    "predictions": [r.get("prediction") for r in results],
                    "errors": [r.get("error") for r in results],
                }
            )
        (result,) = await handle.remote([body])
        if "error" in result:
            return _json({"detail": result["error"]["message"], "code": result["error"]["code"]}, 422)
        return _json({"prediction": result["prediction"]})

    async def _infer_arrow(self, model: str, handle: DeploymentHandle, request: Request) -> Response:
        """An Arrow IPC body: its record batches go to the model deployment as a table (no
        Python object per record) and its reply comes back as an IPC stream."""
        if model not in self._columnar:
            detail = f"model {model!r} takes no Arrow body (it has no columnar predict); send JSON"
            return _json({"detail": detail, "code": RequestCode.NOT_COLUMNAR.value}, 415)
        try:
            body = await read_body(request, self._max_request_bytes)
            table = arrow_wire.decode(body, self._max_arrow_rows)
        except BodyRefused as exc:
            return _json({"detail": exc.message, "code": exc.code.value}, exc.status)
        except arrow_wire.TooManyRows as exc:
            return _json({"detail": str(exc), "code": RequestCode.TOO_MANY_INPUTS.value}, 413)
        except arrow_wire.WireError as exc:
            detail = f"request body is not a valid Arrow IPC stream: {exc}"
            return _json({"detail": detail, "code": RequestCode.MALFORMED_ARROW.value}, 400)
        if table.num_rows:
            # The record batches go on as the stream they came in (zero-copy views of it here).
            reply = await handle.predict_arrow.remote(body)
        else:
            empty = pa.nulls(0, pa.string())
            reply = arrow_wire.encode(arrow_wire.results(pa.nulls(0), empty, empty))
        return Response(reply, media_type=ARROW_CONTENT_TYPE)


def build_app(args: dict[str, Any]) -> serve.Application:
    """Application builder named by the Serve config's ``import_path``."""
    config = AppArgs.model_validate(args or {})
    if config.default_model not in config.models:
        raise ValueError(f"default_model {config.default_model!r} is not one of {sorted(config.models)}")
    handles = {name: ModelServer.options(name=name).bind(path) for name, path in config.models.items()}
    columnar = [name for name, path in config.models.items() if is_columnar(path)]
    return Ingress.bind(
        handles,
        config.default_model,
        config.max_records_per_request,
        max_request_bytes=config.max_request_bytes,
        columnar=columnar,
        max_arrow_rows=config.max_arrow_rows_per_request,
    )
