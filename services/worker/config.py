"""Worker settings from the environment (or flags): Temporal connection, Serve, shutdown."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, PrivateAttr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from temporalio.client import Client, TLSConfig
from temporalio.common import VersioningBehavior, WorkerDeploymentVersion
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.envconfig import ClientConfigProfile
from temporalio.runtime import Runtime
from temporalio.worker import WorkerDeploymentConfig

from services import constants as c
from services.worker.concurrency import AdaptiveLimiter, Limiter, LimitSettings, NoLimit
from services.worker.contracts import Tuning

# How workflow and activity payloads are encoded: the worker's clients and the replay test
# (which decodes recorded histories as the worker would) use this one.
DATA_CONVERTER = pydantic_data_converter


def _env(name: str) -> AliasChoices:
    return AliasChoices(name)


def load_profile() -> ClientConfigProfile:
    """The SDK's client configuration: a profile of its TOML file (``TEMPORAL_CONFIG_FILE``,
    ``TEMPORAL_PROFILE``; none by default) overridden by the standard ``TEMPORAL_*`` variables."""
    try:
        profile = ClientConfigProfile.load()
    except RuntimeError as err:  # the bridge's ConfigError
        # Its first line says what is wrong; the rest may quote the file, keys included.
        raise ValueError(f"Temporal client configuration: {str(err).splitlines()[0]}") from None
    tls = profile.tls
    if tls and (tls.client_cert is None) != (tls.client_private_key is None):
        raise ValueError(
            f"mTLS needs both {c.ENV_TEMPORAL_TLS_CLIENT_CERT_PATH} and {c.ENV_TEMPORAL_TLS_CLIENT_KEY_PATH} "
            "(or client_cert and client_key in the config profile)"
        )
    return profile


class TemporalSettings(BaseSettings):
    """How to reach Temporal: a local dev server by default (127.0.0.1:7233, namespace
    "default", plain gRPC); TLS/mTLS and API keys for clusters.

    The connection comes from the SDK's environment configuration (``temporalio.envconfig``:
    ``TEMPORAL_ADDRESS``, ``TEMPORAL_NAMESPACE``, ``TEMPORAL_API_KEY``, ``TEMPORAL_TLS``,
    ``TEMPORAL_TLS_*``, ``TEMPORAL_GRPC_META_*``, config-file profiles), or from ``profile=``
    (the local stack's dev server, tests); ``address=``/``namespace=`` override either.
    Added here: the task queue, and the API key as a mounted file (``TEMPORAL_API_KEY_FILE``,
    re-read at each connect; wins over the SDK's key).
    """

    # forbid: a mistyped keyword is an error, not silently ignored; and a validation error never
    # quotes what it was given.
    model_config = SettingsConfigDict(populate_by_name=True, extra="forbid", hide_input_in_errors=True)

    task_queue: str = Field(c.DEFAULT_TASK_QUEUE, validation_alias=_env(c.ENV_TEMPORAL_TASK_QUEUE))
    api_key_file: Path | None = Field(None, validation_alias=_env(c.ENV_TEMPORAL_API_KEY_FILE))
    # Not a field: it may hold an API key, and no repr or error shows private attributes.
    _profile: ClientConfigProfile = PrivateAttr()

    def __init__(
        self,
        *,
        profile: ClientConfigProfile | None = None,
        address: str | None = None,
        namespace: str | None = None,
        **values: Any,
    ):
        super().__init__(**values)
        profile = load_profile() if profile is None else profile
        if address is not None:
            profile = dataclasses.replace(profile, address=address)
        if namespace is not None:
            profile = dataclasses.replace(profile, namespace=namespace)
        self._profile = profile

    @property
    def address(self) -> str:
        return self._profile.address or c.DEFAULT_TEMPORAL_ADDRESS

    @property
    def namespace(self) -> str:
        return self._profile.namespace or c.DEFAULT_NAMESPACE

    def resolved_api_key(self) -> str | None:
        if self.api_key_file:
            return self.api_key_file.read_text().strip() or None
        return self._profile.api_key

    def connect_config(self) -> dict[str, Any]:
        """``Client.connect`` arguments: the SDK's (an API key implies TLS unless the profile
        says otherwise), with this file's key and the defaults filled in."""
        profile = dataclasses.replace(self._profile, api_key=self.resolved_api_key())
        config: dict[str, Any] = {"api_key": None, "tls": False}
        config.update(profile.to_client_connect_config())
        config["target_host"], config["namespace"] = self.address, self.namespace
        return config

    def tls_config(self) -> TLSConfig | bool:
        return self.connect_config()["tls"]

    async def connect(self, runtime: Runtime | None = None) -> Client:
        """A client; ``runtime`` carries the worker's metrics setup (None: the SDK's default)."""
        config = self.connect_config()
        return await Client.connect(
            config.pop("target_host"), **config, data_converter=DATA_CONVERTER, runtime=runtime
        )


class WorkerSettings(TemporalSettings):
    serve_url: str = Field(c.DEFAULT_SERVE_URL, validation_alias=_env(c.ENV_SERVE_URL))
    serve_timeout_s: float = Field(60.0, gt=0, validation_alias=_env(c.ENV_SERVE_TIMEOUT_S))
    serve_max_connections: int = Field(
        32,
        ge=1,
        le=1024,
        validation_alias=_env(c.ENV_SERVE_MAX_CONNECTIONS),
        description="requests in flight to Serve from this worker, all shards together",
    )
    serve_adaptive_concurrency: bool = Field(
        True,
        validation_alias=_env(c.ENV_SERVE_ADAPTIVE_CONCURRENCY),
        description="adapt the requests in flight to Serve to its answers (AIMD; concurrency.py); "
        "false: always serve_max_connections",
    )
    serve_concurrency_min: int = Field(
        1, ge=1, le=1024, validation_alias=_env(c.ENV_SERVE_CONCURRENCY_MIN),
        description="the adaptive limit never goes below this",
    )  # fmt: skip
    serve_concurrency_max: int | None = Field(
        None, ge=1, le=1024, validation_alias=_env(c.ENV_SERVE_CONCURRENCY_MAX),
        description="the adaptive limit never goes above this (unset: serve_max_connections)",
    )  # fmt: skip
    serve_concurrency_bounded_cuts: bool = Field(
        LimitSettings.bounded_cuts, validation_alias=_env(c.ENV_SERVE_CONCURRENCY_BOUNDED_CUTS),
        description="one refusal cuts the adaptive limit by at most 0.7x",
    )  # fmt: skip
    serve_concurrency_slow_start_growth: float = Field(
        LimitSettings.slow_start_growth, gt=0, le=1,
        validation_alias=_env(c.ENV_SERVE_CONCURRENCY_SLOW_START_GROWTH),
        description="slots the adaptive limit gains per answer until its first cut (1: it doubles "
        "per round trip, 0.25: it grows by a quarter)",
    )  # fmt: skip
    serve_wire: c.ServeWire = Field(
        "auto",
        validation_alias=_env(c.ENV_SERVE_WIRE),
        description="auto: Parquet and CSV rows go to a columnar model as Arrow; json: always JSON",
    )
    graceful_shutdown_s: float = Field(
        30.0,
        ge=0,
        validation_alias=_env(c.ENV_WORKER_GRACEFUL_SHUTDOWN_S),
        description="how long running activities get to finish after SIGTERM",
    )
    metrics_host: str = Field("127.0.0.1", validation_alias=_env(c.ENV_WORKER_METRICS_HOST))
    metrics_port: int = Field(
        c.WORKER_METRICS_PORT,
        ge=0,
        le=65535,
        validation_alias=_env(c.ENV_WORKER_METRICS_PORT),
        description="HTTP port for /metrics and the probes (/readyz, /livez, /startupz); 0 disables",
    )
    batch_metrics_interval_s: float = Field(
        15.0,
        ge=0,
        validation_alias=_env(c.ENV_WORKER_BATCH_METRICS_INTERVAL_S),
        description="how often /metrics refreshes per-batch progress from Temporal; 0 disables",
    )
    batch_progress_metrics: bool = Field(
        False,
        validation_alias=_env(c.ENV_WORKER_BATCH_PROGRESS_METRICS),
        description="this worker also exports the per-batch progress gauges (one list call per interval); "
        "one process should, not every replica: `batch-inference progress-exporter` does",
    )
    max_concurrent_activities: int = Field(
        16, ge=1, validation_alias=_env(c.ENV_WORKER_MAX_CONCURRENT_ACTIVITIES)
    )
    eager_activities: int = Field(
        # A batch's whole first wave (the default window): the SDK's own default of 3 leaves
        # the fourth shard to a dispatch round trip.
        Tuning.model_fields["max_concurrent_shards"].default,
        ge=0,
        le=64,
        validation_alias=_env(c.ENV_WORKER_EAGER_ACTIVITIES),
        description="activities this worker starts straight from its own workflow task's completion "
        "(eager: no dispatch round trip), at most per task; 0 disables",
    )
    deployment_name: str | None = Field(
        None,
        min_length=1,
        # The SDK writes a version as "<deployment>.<build id>": a dot here would be ambiguous.
        pattern=r"^[^.]+$",
        validation_alias=_env(c.ENV_TEMPORAL_DEPLOYMENT_NAME),
        description="Worker Deployment this worker is a version of (with the build id); unset: unversioned",
    )
    build_id: str | None = Field(
        None,
        min_length=1,
        max_length=255,
        validation_alias=AliasChoices(c.ENV_TEMPORAL_BUILD_ID, c.ENV_TEMPORAL_WORKER_BUILD_ID),
        description="this worker's version within the Worker Deployment (the chart: the image tag; "
        "the Worker Controller's pods: its TEMPORAL_WORKER_BUILD_ID)",
    )

    @field_validator("serve_wire", mode="before")
    @classmethod
    def _wire_any_case(cls, value: Any) -> Any:
        # As the variable was read before it was a setting: any case, blanks around it; empty
        # (a variable set to nothing) is the default.
        if isinstance(value, str):
            return value.strip().lower() or "auto"
        return value

    @model_validator(mode="after")
    def _both_or_neither(self) -> WorkerSettings:
        if (self.deployment_name is None) != (self.build_id is None):
            raise ValueError(
                f"Worker Versioning needs both {c.ENV_TEMPORAL_DEPLOYMENT_NAME} and "
                f"{c.ENV_TEMPORAL_BUILD_ID} (or {c.ENV_TEMPORAL_WORKER_BUILD_ID}; or neither: "
                "an unversioned worker)"
            )
        return self

    @model_validator(mode="after")
    def _concurrency_bounds(self) -> WorkerSettings:
        top = self.serve_concurrency_max or self.serve_max_connections
        if not self.serve_concurrency_min <= top <= self.serve_max_connections:
            raise ValueError(
                f"need {c.ENV_SERVE_CONCURRENCY_MIN} <= {c.ENV_SERVE_CONCURRENCY_MAX} <= "
                f"{c.ENV_SERVE_MAX_CONNECTIONS}, got {self.serve_concurrency_min}, {top}, "
                f"{self.serve_max_connections}"
            )
        return self

    def limiter(self, on_limit: Callable[[int], None] | None = None) -> Limiter:
        """The Serve client's in-flight limit: adaptive between the bounds, or none beyond
        ``serve_max_connections`` (then ``on_limit`` is told that cap once)."""
        top = self.serve_concurrency_max or self.serve_max_connections
        if not self.serve_adaptive_concurrency:
            if on_limit:
                on_limit(self.serve_max_connections)
            return NoLimit()
        settings = LimitSettings(
            self.serve_concurrency_min,
            top,
            bounded_cuts=self.serve_concurrency_bounded_cuts,
            slow_start_growth=self.serve_concurrency_slow_start_growth,
        )
        return AdaptiveLimiter(settings, on_limit=on_limit)

    def deployment_config(self) -> WorkerDeploymentConfig | None:
        """The worker's Worker Deployment version, or None (unversioned). Batches are pinned to
        the version they started on: a run never meets new workflow code mid-history; each
        continue-as-new moves the batch to the deployment's current version."""
        if self.deployment_name is None or self.build_id is None:
            return None
        return WorkerDeploymentConfig(
            version=WorkerDeploymentVersion(self.deployment_name, self.build_id),
            use_worker_versioning=True,
            default_versioning_behavior=VersioningBehavior.PINNED,
        )
