"""The local stack's CA: a real TLS handshake against a certificate it signed, and what it refuses."""

from __future__ import annotations

import socket
import ssl
import stat
import threading

import pytest

from stack.config import StackConfig
from stack.tls import ca_cert_path, ensure_ca, server_cert


@pytest.fixture
def config(tmp_path) -> StackConfig:
    return StackConfig.from_env({"SLUICE_RUNTIME": str(tmp_path / "runtime")})


def _handshake(cert, server_hostname: str, cafile) -> str:
    """Serve one TLS connection with ``cert`` and dial it trusting ``cafile``; the peer's common name."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert.cert, cert.key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError):
            pass  # the client refused us: that is what some cases test

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client_ctx = ssl.create_default_context(cafile=str(cafile))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls:
                subject = dict(x[0] for x in tls.getpeercert()["subject"])
                tls.sendall(b"x")
                return subject["commonName"]
    finally:
        thread.join(5)
        listener.close()


def test_a_client_trusting_the_ca_verifies_the_service_by_each_of_its_names(config):
    cert = server_cert(config, "mosquitto")
    for name in ("mosquitto", "localhost", "127.0.0.1"):
        assert _handshake(cert, name, cert.ca) == "mosquitto"


def test_a_name_the_certificate_does_not_carry_is_refused(config):
    cert = server_cert(config, "mosquitto")
    with pytest.raises(ssl.SSLCertVerificationError, match="match|mismatch"):
        _handshake(cert, "kafka", cert.ca)


def test_another_runtime_folders_ca_is_not_trusted(config, tmp_path):
    other = StackConfig.from_env({"SLUICE_RUNTIME": str(tmp_path / "other")})
    cert = server_cert(config, "kafka")
    ensure_ca(other)
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer|self.signed|unknown ca"):
        _handshake(cert, "kafka", ca_cert_path(other))


def test_keys_are_private_and_kept_across_calls(config):
    first = server_cert(config, "elasticsearch", extra_names=("es01",))
    assert stat.S_IMODE(first.key.stat().st_mode) == 0o600
    assert stat.S_IMODE((first.ca.parent / "ca.key").stat().st_mode) == 0o600
    key_before = first.key.read_bytes()
    assert server_cert(config, "elasticsearch", extra_names=("es01",)).key.read_bytes() == key_before
    # A name the old certificate lacks makes a new one.
    assert server_cert(config, "elasticsearch", extra_names=("es02",)).key.read_bytes() != key_before


def test_a_certificate_from_a_replaced_ca_is_made_again(config):
    cert = server_cert(config, "minio")
    for path in (cert.ca, cert.ca.parent / "ca.key"):
        path.unlink()
    renewed = server_cert(config, "minio")
    assert _handshake(renewed, "minio", renewed.ca) == "minio"
