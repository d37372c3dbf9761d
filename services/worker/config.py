"""Worker settings from the environment (or flags): Temporal connection, Serve, shutdown."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from temporalio.client import Client, TLSConfig
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import Runtime

from services import constants as c
from services.worker.models import Tuning


def _env(name: str) -> AliasChoices:
    return AliasChoices(name)


class TemporalSettings(BaseSettings):
    """How to reach Temporal: a local dev server by default; TLS/mTLS and API keys for clusters."""

    model_config = SettingsConfigDict(populate_by_name=True, extra="ignore")

    address: str = Field(c.DEFAULT_TEMPORAL_ADDRESS, validation_alias=_env(c.ENV_TEMPORAL_ADDRESS))
    namespace: str = Field(c.DEFAULT_NAMESPACE, validation_alias=_env(c.ENV_TEMPORAL_NAMESPACE))
    task_queue: str = Field(c.DEFAULT_TASK_QUEUE, validation_alias=_env(c.ENV_TEMPORAL_TASK_QUEUE))
    tls: bool = Field(False, validation_alias=_env(c.ENV_TEMPORAL_TLS))
    tls_cert: Path | None = Field(None, validation_alias=_env(c.ENV_TEMPORAL_TLS_CERT))
    tls_key: Path | None = Field(None, validation_alias=_env(c.ENV_TEMPORAL_TLS_KEY))
    tls_ca: Path | None = Field(None, validation_alias=_env(c.ENV_TEMPORAL_TLS_CA))
    tls_server_name: str | None = Field(None, validation_alias=_env(c.ENV_TEMPORAL_TLS_SERVER_NAME))
    api_key: str | None = Field(None, validation_alias=_env(c.ENV_TEMPORAL_API_KEY), repr=False)
    api_key_file: Path | None = Field(None, validation_alias=_env(c.ENV_TEMPORAL_API_KEY_FILE))

    def tls_config(self) -> TLSConfig | bool:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError(f"mTLS needs both {c.ENV_TEMPORAL_TLS_CERT} and {c.ENV_TEMPORAL_TLS_KEY}")
        if not (self.tls or self.tls_cert or self.tls_ca):
            return False
        return TLSConfig(
            client_cert=self.tls_cert.read_bytes() if self.tls_cert else None,
            client_private_key=self.tls_key.read_bytes() if self.tls_key else None,
            server_root_ca_cert=self.tls_ca.read_bytes() if self.tls_ca else None,
            domain=self.tls_server_name,
        )

    def resolved_api_key(self) -> str | None:
        if self.api_key_file:
            return self.api_key_file.read_text().strip() or None
        return self.api_key

    async def connect(self, runtime: Runtime | None = None) -> Client:
        """A client; ``runtime`` carries the worker's metrics setup (None: the SDK's default)."""
        api_key = self.resolved_api_key()
        return await Client.connect(
            self.address,
            namespace=self.namespace,
            tls=self.tls_config() if not api_key else (self.tls_config() or True),
            api_key=api_key,
            data_converter=pydantic_data_converter,
            runtime=runtime,
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
        description="HTTP port for /metrics (also the liveness probe); 0 disables",
    )
    batch_metrics_interval_s: float = Field(
        15.0,
        ge=0,
        validation_alias=_env(c.ENV_WORKER_BATCH_METRICS_INTERVAL_S),
        description="how often /metrics refreshes per-batch progress from Temporal; 0 disables",
    )
    max_concurrent_activities: int = Field(
        16, ge=1, validation_alias=_env(c.ENV_WORKER_MAX_CONCURRENT_ACTIVITIES)
    )
    eager_activities: int = Field(
        # A batch's whole first wave (the default window): the SDK's own default of 3 left the
        # fourth shard to a dispatch round trip, 5-8 ms later (docs/performance.md).
        Tuning.model_fields["max_concurrent_shards"].default,
        ge=0,
        le=64,
        validation_alias=_env(c.ENV_WORKER_EAGER_ACTIVITIES),
        description="activities this worker starts straight from its own workflow task's completion "
        "(eager: no dispatch round trip), at most per task; 0 disables",
    )
