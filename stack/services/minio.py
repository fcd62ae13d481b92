"""MinIO, the S3 server of the landing zone, built from source with ``go install``.

The credentials are generated on the first start and kept in the runtime folder
(``runtime/minio/credentials.json``, mode 0600): nothing secret is committed.
The landing bucket is created once the server is healthy.
"""

from __future__ import annotations

import os
import secrets
import urllib.request

from stack.config import LANDING_BUCKET
from stack.secrets import new_password, secret_json
from stack.service import Service, which_or_fail

#: MinIO's documented install is `go install github.com/minio/minio@...`. The
#: module proxy serves the repository's last commit only as this pseudo-version.
MINIO_MODULE = "github.com/minio/minio"
MINIO_VERSION = "v0.0.0-20260212201848-7aac2a2c5b7c"


class MinIO(Service):
    name = "minio"
    port_names = ("minio", "minio_console")
    start_timeout = 30.0

    @property
    def binary(self):
        return self.config.cache / "minio" / MINIO_VERSION / "minio"

    @property
    def credentials_file(self):
        return self.dir / "credentials.json"

    def install(self) -> None:
        if self.binary.exists():
            return
        go = which_or_fail(self.name, "go", "/usr/local/go/bin/go")
        self.binary.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, GOBIN=str(self.binary.parent))
        self.run_checked([go, "install", f"{MINIO_MODULE}@{MINIO_VERSION}"], "building MinIO with go install", env=env)

    def credentials(self) -> dict[str, str]:
        """Access key and secret of the local MinIO, created on first use."""
        return secret_json(self.credentials_file,
                           lambda: {"access_key": "sluice-" + secrets.token_hex(4), "secret_key": new_password()})

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
        ]

    def check_health(self) -> str:
        url = f"{self.config.url('minio')}/minio/health/live"
        with urllib.request.urlopen(url, timeout=3) as resp:
            if resp.status != 200:
                raise RuntimeError(f"{url} answered {resp.status}")
        return f"S3 API on {self.config.url('minio')}"

    def client(self):
        """A boto3 S3 client for this MinIO."""
        import boto3
        from botocore.config import Config

        creds = self.credentials()
        return boto3.client(
            "s3",
            endpoint_url=self.config.url("minio"),
            aws_access_key_id=creds["access_key"],
            aws_secret_access_key=creds["secret_key"],
            region_name="us-east-1",
            config=Config(retries={"max_attempts": 2}, connect_timeout=3, read_timeout=10),
        )

    def after_start(self) -> None:
        s3 = self.client()
        existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
        if LANDING_BUCKET not in existing:
            s3.create_bucket(Bucket=LANDING_BUCKET)
