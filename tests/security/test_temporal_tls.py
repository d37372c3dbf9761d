"""The worker's Temporal connection: TLS, mTLS and API keys.

``temporal server start-dev`` has no TLS options, so the real-connection tests put a TLS
terminator (Python's ``ssl``, ALPN h2, optionally requiring a client certificate) in front of
the session's dev server: the worker's settings then make a real TLS/mTLS handshake with
certificates loaded from files, as from a mounted Secret. The rest is config-level.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import ssl
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.client import Client, TLSConfig
from temporalio.envconfig import ClientConfigProfile, ClientConfigTLS

from services import constants as c
from services.worker.config import TemporalSettings, WorkerSettings
from services.worker.contracts import BatchInferenceInput, BatchInferenceOutput
from services.worker.serve_client import ServeClient, TokenSource
from services.worker.worker import build_worker

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402

# --- config level ------------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch):
    for name in (
        c.ENV_TEMPORAL_TLS, c.ENV_TEMPORAL_TLS_CLIENT_CERT_PATH, c.ENV_TEMPORAL_TLS_CLIENT_KEY_PATH,
        c.ENV_TEMPORAL_TLS_SERVER_CA_CERT_PATH, c.ENV_TEMPORAL_TLS_SERVER_NAME, c.ENV_TEMPORAL_API_KEY,
        c.ENV_TEMPORAL_API_KEY_FILE, c.ENV_TEMPORAL_ADDRESS, c.ENV_TEMPORAL_NAMESPACE,
        c.ENV_TEMPORAL_PROFILE,
    ):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    # No developer's own Temporal config file: only what a test sets.
    monkeypatch.setenv(c.ENV_TEMPORAL_CONFIG_FILE, "/nonexistent/temporal.toml")
    return monkeypatch


@pytest.mark.parametrize("only", [c.ENV_TEMPORAL_TLS_CLIENT_CERT_PATH, c.ENV_TEMPORAL_TLS_CLIENT_KEY_PATH])
def test_a_certificate_without_its_key_or_a_key_without_its_certificate_is_a_clear_error(
    clean_env, tmp_path, only
):
    (tmp_path / "f.pem").write_text("x")
    clean_env.setenv(only, str(tmp_path / "f.pem"))
    cert, key = c.ENV_TEMPORAL_TLS_CLIENT_CERT_PATH, c.ENV_TEMPORAL_TLS_CLIENT_KEY_PATH
    with pytest.raises(ValueError, match=f"mTLS needs both {cert} and {key}"):
        TemporalSettings().tls_config()


def test_plain_by_default_tls_on_request_and_files_read_from_env_paths(clean_env, tmp_path):
    assert TemporalSettings().tls_config() is False
    clean_env.setenv(c.ENV_TEMPORAL_TLS, "true")
    assert TemporalSettings().tls_config() == TLSConfig()  # system roots
    for name, env in (
        ("ca", c.ENV_TEMPORAL_TLS_SERVER_CA_CERT_PATH),
        ("crt", c.ENV_TEMPORAL_TLS_CLIENT_CERT_PATH),
        ("key", c.ENV_TEMPORAL_TLS_CLIENT_KEY_PATH),
    ):
        (tmp_path / name).write_bytes(f"{name}-bytes".encode())
        clean_env.setenv(env, str(tmp_path / name))
    clean_env.setenv(c.ENV_TEMPORAL_TLS_SERVER_NAME, "temporal.internal")
    assert TemporalSettings().tls_config() == TLSConfig(
        server_root_ca_cert=b"ca-bytes", client_cert=b"crt-bytes", client_private_key=b"key-bytes",
        domain="temporal.internal",
    )  # fmt: skip


def test_a_missing_certificate_file_names_the_file(clean_env, tmp_path):
    clean_env.setenv(c.ENV_TEMPORAL_TLS_SERVER_CA_CERT_PATH, str(tmp_path / "no-such-ca.pem"))
    with pytest.raises(FileNotFoundError, match=r"no-such-ca\.pem"):
        TemporalSettings().tls_config()


def test_api_key_from_a_mounted_file_wins_and_never_shows_in_repr(clean_env, tmp_path):
    key_file = tmp_path / "api-key"
    key_file.write_text("  file-key-123\n")
    clean_env.setenv(c.ENV_TEMPORAL_API_KEY, "env-key-456")
    assert TemporalSettings().resolved_api_key() == "env-key-456"
    clean_env.setenv(c.ENV_TEMPORAL_API_KEY_FILE, str(key_file))
    settings = WorkerSettings()
    assert settings.resolved_api_key() == "file-key-123"
    assert "env-key-456" not in repr(settings) and "file-key-123" not in repr(settings)
    key_file.write_text("\n")
    assert TemporalSettings().resolved_api_key() is None


async def test_an_api_key_implies_tls(clean_env, monkeypatch):
    seen = {}

    async def fake_connect(address, **kwargs):
        seen.update(kwargs, address=address)

    monkeypatch.setattr(Client, "connect", fake_connect)
    clean_env.setenv(c.ENV_TEMPORAL_API_KEY, "k")
    clean_env.setenv(c.ENV_TEMPORAL_ADDRESS, "tmprl.example:7233")
    await TemporalSettings().connect()
    assert seen["api_key"] == "k" and seen["tls"] is True
    assert seen["address"] == "tmprl.example:7233" and seen["namespace"] == c.DEFAULT_NAMESPACE
    seen.clear()
    clean_env.delenv(c.ENV_TEMPORAL_API_KEY)
    await TemporalSettings().connect()
    assert seen["api_key"] is None and seen["tls"] is False


def test_defaults_are_a_local_dev_server(clean_env):
    settings = WorkerSettings()
    assert (settings.address, settings.namespace) == (c.DEFAULT_TEMPORAL_ADDRESS, c.DEFAULT_NAMESPACE)
    assert settings.task_queue == c.DEFAULT_TASK_QUEUE
    clean_env.setenv(c.ENV_TEMPORAL_TLS, "true")
    explicit = TemporalSettings(address="elsewhere:7233", namespace="batches")
    assert (explicit.address, explicit.namespace) == ("elsewhere:7233", "batches")
    assert explicit.tls_config() == TLSConfig()  # the rest of the environment still applies


def test_a_config_file_profile_is_read_and_the_environment_overrides_it(clean_env, tmp_path):
    config = tmp_path / "temporal.toml"
    config.write_text(
        '[profile.default]\naddress = "dev:7233"\n'
        '[profile.prod]\naddress = "prod:7233"\nnamespace = "batches"\napi_key = "toml-key-789"\n'
    )
    clean_env.setenv(c.ENV_TEMPORAL_CONFIG_FILE, str(config))
    assert TemporalSettings().address == "dev:7233"
    clean_env.setenv(c.ENV_TEMPORAL_PROFILE, "prod")
    settings = WorkerSettings()
    assert (settings.address, settings.namespace) == ("prod:7233", "batches")
    assert settings.resolved_api_key() == "toml-key-789" and settings.tls_config() is True
    assert "toml-key-789" not in repr(settings) and "toml-key-789" not in str(settings.model_dump())
    clean_env.setenv(c.ENV_TEMPORAL_ADDRESS, "override:7233")
    assert TemporalSettings().address == "override:7233"
    clean_env.setenv(c.ENV_TEMPORAL_PROFILE, "missing")
    with pytest.raises(ValueError, match="missing"):
        TemporalSettings()


def test_a_malformed_config_file_is_an_error_that_does_not_quote_it(clean_env, tmp_path):
    config = tmp_path / "temporal.toml"
    config.write_text('[profile.default]\napi_key = "toml-key-789\n')  # unterminated string
    clean_env.setenv(c.ENV_TEMPORAL_CONFIG_FILE, str(config))
    with pytest.raises(ValueError, match="Temporal client configuration") as err:
        TemporalSettings()
    assert "toml-key-789" not in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__


# --- real TLS / mTLS handshakes ----------------------------------------------------------------


def _cert(subject: str, issuer_key, issuer_name, key, *, ca: bool = False, server: bool = False):
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
    return builder.sign(issuer_key or key, hashes.SHA256())


def _write(path: Path, cert, key=None) -> tuple[Path, Path | None]:
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is None:
        return path.with_suffix(".crt"), None
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return path.with_suffix(".crt"), path.with_suffix(".key")


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """A CA, a server certificate for localhost/127.0.0.1, a client certificate, another CA."""
    d = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test CA", None, None, ca_key, ca=True)
    server_key, client_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    other_key = ec.generate_private_key(ec.SECP256R1())
    files = {
        "ca": _write(d / "ca", ca)[0],
        "other_ca": _write(d / "other-ca", _cert("other CA", None, None, other_key, ca=True))[0],
    }
    files["server_crt"], files["server_key"] = _write(
        d / "server", _cert("temporal", ca_key, ca.subject, server_key, server=True), server_key
    )
    files["client_crt"], files["client_key"] = _write(
        d / "client", _cert("worker", ca_key, ca.subject, client_key), client_key
    )
    return files


@contextlib.asynccontextmanager
async def tls_terminator(
    upstream: str, pki: dict[str, Path], require_client_cert: bool
) -> AsyncIterator[str]:
    """TLS on a loopback port, plain TCP to ``upstream`` (the dev server)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki["server_crt"], pki["server_key"])
    context.set_alpn_protocols(["h2"])
    if require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(pki["ca"])
    host, port = upstream.rsplit(":", 1)

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, ssl.SSLError, OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(Exception):
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


@pytest.mark.integration
async def test_worker_runs_a_batch_over_mtls_with_certificates_from_files(
    temporal_server, serve_stack, serve_token, pki, clean_env
):
    async with tls_terminator(temporal_server.address, pki, require_client_cert=True) as address:
        # As a worker pod would get them: paths of files mounted from a Secret, in env vars.
        clean_env.setenv(c.ENV_TEMPORAL_ADDRESS, address)
        clean_env.setenv(c.ENV_TEMPORAL_TLS_SERVER_CA_CERT_PATH, str(pki["ca"]))
        clean_env.setenv(c.ENV_TEMPORAL_TLS_CLIENT_CERT_PATH, str(pki["client_crt"]))
        clean_env.setenv(c.ENV_TEMPORAL_TLS_CLIENT_KEY_PATH, str(pki["client_key"]))
        clean_env.setenv(c.ENV_TEMPORAL_TLS_SERVER_NAME, "localhost")
        settings = WorkerSettings(task_queue=f"mtls-{uuid.uuid4().hex[:8]}", serve_url=serve_stack.url)
        client = await settings.connect()
        serve = ServeClient(serve_stack.url, TokenSource(serve_token))
        try:
            async with build_worker(client, settings, serve):
                result = await client.execute_workflow(
                    c.WORKFLOW_NAME,
                    BatchInferenceInput(records=[{"q": 1}, {"q": 2}]),
                    id=f"mtls-{uuid.uuid4().hex[:8]}",
                    task_queue=settings.task_queue,
                    result_type=BatchInferenceOutput,
                )
        finally:
            await serve.aclose()
    assert [p.prediction for p in result.predictions] == [{"q": 1}, {"q": 2}]


@pytest.mark.integration
@pytest.mark.parametrize(
    ("require_client_cert", "ca", "with_cert", "connects"),
    [
        (False, "ca", False, True),  # TLS, server authenticated by the CA file
        (False, "other_ca", False, False),  # a server the CA did not sign: refused
        (True, "ca", False, False),  # mTLS required, no client certificate: refused
        (True, "ca", True, True),
    ],
    ids=["tls", "wrong-ca", "mtls-without-cert", "mtls"],
)
async def test_tls_handshakes(temporal_server, pki, require_client_cert, ca, with_cert, connects):
    async with tls_terminator(temporal_server.address, pki, require_client_cert) as address:
        tls = ClientConfigTLS(
            server_root_ca_cert=pki[ca],
            client_cert=pki["client_crt"] if with_cert else None,
            client_private_key=pki["client_key"] if with_cert else None,
            server_name="localhost",
        )
        settings = TemporalSettings(profile=ClientConfigProfile(address=address, tls=tls))
        if connects:
            client = await asyncio.wait_for(settings.connect(), 30)
            assert (await client.workflow_service.get_system_info(_system_info_request())).server_version
        else:
            with pytest.raises(RuntimeError, match="Failed client connect"):
                await asyncio.wait_for(settings.connect(), 60)


def _system_info_request():
    from temporalio.api.workflowservice.v1 import GetSystemInfoRequest

    return GetSystemInfoRequest()
