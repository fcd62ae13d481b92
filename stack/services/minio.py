"""MinIO, the S3 server of the landing zone, built from source with ``go install``.

Secure by default: the S3 API (and the console) speak TLS only, with the
certificate the stack's CA signs for ``minio`` (:func:`stack.tls.server_cert`),
copied into MinIO's ``--certs-dir`` (``runtime/minio/certs``) at every start.
Clients trust :func:`stack.tls.ca_cert_path` and nothing else.

The root account (``runtime/minio/credentials.json``) is generated on the first
start; it creates the landing bucket and the users and policies of
:mod:`stack.minio_users` after every start and is used by nothing else. The
collectors and Airflow get their own users' keys
(``runtime/minio/<user>-credentials.json``), all mode 0600: nothing secret is
committed, and no key appears on a command line.
"""

from __future__ import annotations

import os
import secrets
import ssl
import urllib.request
from pathlib import Path
from typing import Any

from stack.config import LANDING_BUCKET
from stack.minio_users import WRITES, access_key, admin_client, ensure_bucket, provision, s3_client
from stack.secrets import new_password, secret_json, write_private
from stack.service import Service, which_or_fail
from stack.tls import ca_cert_path, server_cert

#: MinIO's documented install is `go install github.com/minio/minio@...`. The
#: module proxy serves the repository's last commit only as this pseudo-version.
MINIO_MODULE = "github.com/minio/minio"
MINIO_VERSION = "v0.0.0-20260212201848-7aac2a2c5b7c"
#: The root account's name in :meth:`MinIO.credentials`.
ROOT = "root"


class MinIO(Service):
    name = "minio"
    port_names = ("minio", "minio_console")
    start_timeout = 30.0

    @property
    def binary(self) -> Path:
        return self.config.cache / "minio" / MINIO_VERSION / "minio"

    @property
    def credentials_file(self) -> Path:
        return self.dir / "credentials.json"

    @property
    def certs_dir(self) -> Path:
        return self.dir / "certs"

    @property
    def endpoint_url(self) -> str:
        """The S3 API every client of the local stack uses (TLS)."""
        return self.config.url("minio", "https")

    @property
    def ca_file(self) -> Path:
        """The CA a client of this MinIO trusts."""
        return ca_cert_path(self.config)

    def install(self) -> None:
        if self.binary.exists():
            return
        go = which_or_fail(self.name, "go", "/usr/local/go/bin/go")
        self.binary.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, GOBIN=str(self.binary.parent))
        self.run_checked([go, "install", f"{MINIO_MODULE}@{MINIO_VERSION}"], "building MinIO with go install", env=env)

    def credentials(self, user: str = ROOT) -> dict[str, str]:
        """Access key and secret of ``user`` (``root``, ``collector``, ``airflow``), created on first use.

        Deleting a user's file and restarting MinIO rotates that user's secret
        (see docs/security.md).
        """
        if user == ROOT:
            return secret_json(self.credentials_file,
                               lambda: {"access_key": "sluice-" + secrets.token_hex(4), "secret_key": new_password()})
        if user not in WRITES:
            raise ValueError(f"MinIO has no Sluice user {user!r}; use one of {sorted(WRITES)} (or {ROOT!r})")
        return secret_json(self.dir / f"{user}-credentials.json",
                           lambda: {"access_key": access_key(user), "secret_key": new_password()})

    def prepare(self) -> None:
        # MinIO serves TLS when it finds public.crt/private.key in --certs-dir; CAs/ is the pool it
        # trusts itself (the console calls the S3 API over TLS). A new CA or renewed certificate lands
        # here at the next start.
        cert = server_cert(self.config, "minio")
        (self.certs_dir / "CAs").mkdir(parents=True, exist_ok=True)
        (self.certs_dir / "public.crt").write_bytes(cert.cert.read_bytes())
        write_private(self.certs_dir / "private.key", cert.key.read_bytes(), replace=True)
        (self.certs_dir / "CAs" / "ca.crt").write_bytes(cert.ca.read_bytes())

    def env(self) -> dict[str, str]:
        creds = self.credentials()
        return dict(
            os.environ,
            MINIO_ROOT_USER=creds["access_key"],
            MINIO_ROOT_PASSWORD=creds["secret_key"],
            MINIO_BROWSER="on",
            MINIO_UPDATE="off",
        )

    def command(self) -> list[str]:
        host = self.config.host
        return [
            str(self.binary), "server", str(self.data_dir), "--quiet",
            "--address", f"{host}:{self.port}",
            "--console-address", f"{host}:{self.config.ports['minio_console']}",
            "--certs-dir", str(self.certs_dir),
        ]

    def check_health(self) -> str:
        url = f"{self.endpoint_url}/minio/health/live"
        context = ssl.create_default_context(cafile=str(self.ca_file))
        with urllib.request.urlopen(url, timeout=3, context=context) as resp:
            if resp.status != 200:
                raise RuntimeError(f"{url} answered {resp.status}")
        return f"S3 API on {self.endpoint_url} (TLS)"

    def client(self, user: str) -> Any:
        """A boto3 S3 client for this MinIO as ``user`` (``collector`` or ``airflow``), trusting the stack's CA."""
        if user == ROOT:
            raise ValueError("the root account is for set-up and clean-up only: use admin_client()")
        creds = self.credentials(user)
        return s3_client(self.endpoint_url, creds["access_key"], creds["secret_key"], ca_file=str(self.ca_file))

    def admin_client(self) -> Any:
        """A boto3 S3 client as MinIO's root account: for the stack's set-up and tests that inspect or clean up."""
        creds = self.credentials()
        return s3_client(self.endpoint_url, creds["access_key"], creds["secret_key"], ca_file=str(self.ca_file))

    def admin(self) -> Any:
        """MinIO's admin API (the ``minio`` package's MinioAdmin) as root."""
        creds = self.credentials()
        return admin_client(self.endpoint_url, creds["access_key"], creds["secret_key"], ca_file=str(self.ca_file))

    def after_start(self) -> None:
        ensure_bucket(self.admin_client(), LANDING_BUCKET)
        provision(self.admin(), LANDING_BUCKET, {user: self.credentials(user)["secret_key"] for user in WRITES})
