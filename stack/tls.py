"""The local stack's certificate authority: one CA per runtime folder, one server certificate per service.

On the first ``up`` the stack makes a CA (``runtime/tls/ca.key``, ``ca.crt``) with
the ``cryptography`` package and signs a certificate for every service that
listens with TLS. Clients trust ``ca.crt`` and nothing else. Private keys are
mode 0600; certificates are public. Nothing here is committed: a fresh runtime
folder gets a fresh CA.

Keys are ECDSA P-256 (fast handshakes; Mosquitto, Kafka's JVM, Elasticsearch and
OpenSSL-based Python clients all take them) in PKCS#8 PEM, the form Kafka's PEM
key store needs. A server certificate is made again when it is missing, was
signed by another CA, lacks a name it must carry, or expires within 30 days.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from stack.config import StackConfig
from stack.secrets import write_private

CA_NAME = "Sluice local stack CA"
CA_DAYS = 3650
SERVER_DAYS = 825
RENEW_BEFORE = dt.timedelta(days=30)


@dataclass(frozen=True)
class ServerCert:
    """Where a service's certificate (leaf then CA: a full chain) and key are, and the CA clients trust."""

    cert: Path
    key: Path
    ca: Path


def tls_dir(config: StackConfig) -> Path:
    return config.runtime / "tls"


def ca_cert_path(config: StackConfig) -> Path:
    """The one file every client of the local stack trusts."""
    return tls_dir(config) / "ca.crt"


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path} is not an EC private key; remove {path.parent} to make a new CA")
    return key


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def ensure_ca(config: StackConfig) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The runtime folder's CA, made on first use."""
    folder = tls_dir(config)
    key_path, cert_path = folder / "ca.key", ca_cert_path(config)
    if not (key_path.exists() and cert_path.exists()):
        key = _new_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        key_path.unlink(missing_ok=True)
        cert_path.unlink(missing_ok=True)
        write_private(key_path, _key_pem(key))
        cert_path.parent.mkdir(parents=True, exist_ok=True)
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        cert_path.chmod(0o644)
    return x509.load_pem_x509_certificate(cert_path.read_bytes()), _load_key(key_path)


def _names(config: StackConfig, service: str, extra: tuple[str, ...]) -> list[x509.GeneralName]:
    """DNS and IP names a client may dial: the compose service name, localhost and the stack's host."""
    out: list[x509.GeneralName] = []
    for text in dict.fromkeys((service, "localhost", config.host, "127.0.0.1", *extra)):
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(text)))
        except ValueError:
            out.append(x509.DNSName(text))
    return out


def _still_good(cert_path: Path, ca: x509.Certificate, names: list[x509.GeneralName]) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        cert.verify_directly_issued_by(ca)
        have = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, TypeError, x509.ExtensionNotFound, InvalidSignature):
        return False
    return set(names) <= set(have) and cert.not_valid_after_utc - _now() > RENEW_BEFORE


def server_cert(config: StackConfig, service: str, *, extra_names: tuple[str, ...] = ()) -> ServerCert:
    """``service``'s certificate and key signed by the stack's CA (made or renewed when needed)."""
    ca, ca_key = ensure_ca(config)
    folder = tls_dir(config)
    cert_path, key_path = folder / f"{service}.crt", folder / f"{service}.key"
    names = _names(config, service, extra_names)
    if not (key_path.exists() and _still_good(cert_path, ca, names)):
        key = _new_key()
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, service)]))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        key_path.unlink(missing_ok=True)
        write_private(key_path, _key_pem(key))
        chain = cert.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM)
        cert_path.write_bytes(chain)
        cert_path.chmod(0o644)
    return ServerCert(cert=cert_path, key=key_path, ca=ca_cert_path(config))
