"""Who may do what in the landing bucket: MinIO's users and policies, one definition for the stack and compose.

MinIO's root account creates these and is used by nothing else (the stack's set-up
and the tests' clean-up). Every client of the landing zone has its own user:

========== ============================================================ =====================================
user       writes (PutObject, multipart)                                reads
========== ============================================================ =====================================
collector  ``raw/``, ``deadletter/payload/``, ``manifests/``,           what it writes, to merge into it (no
           ``heartbeats/``                                              ListBucket: it cannot list anything)
airflow    ``loaded/``, ``staged/``, ``deadletter/file/``, ``state/``,  every area above (and lists the bucket)
           ``anomaly/``
========== ============================================================ =====================================

Nobody deletes: neither policy allows ``DeleteObject``, and ``sluice-keep-raw``,
attached to every user, denies deleting anything under ``raw/`` explicitly (an
explicit Deny wins over any Allow a later policy might add). The prefixes are
those of :mod:`include.contract`: a new
area of the landing zone needs a line here, or its writer is refused.

Each area is granted at the bucket's root (``raw/…``) and below one landing
prefix (``*/raw/…``): a landing URL may carry one (``s3://bucket/prefix``), as
the tests' private prefixes do. IAM's ``*`` also matches ``/``, so the collector
could write ``loaded/x/raw/y``; nothing reads such a key (load records are
looked up by the exact key :func:`include.contract.loaded_key` derives, which
has no ``/raw/`` in it).

``python -m stack.minio_users`` applies the same users and policies from files
(docker-compose's ``minio-init``, Docker secrets): see :func:`main`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from include.landing import S3_REQUEST_CHECKSUMS
from include.contract import (
    ANOMALY_RESULTS, DEADLETTERS, FILE, HEARTBEATS, LOADED, MANIFESTS, PAYLOAD, RAW, STAGED, STATE, deadletter_prefix,
)

log = logging.getLogger(__name__)

COLLECTOR = "collector"
AIRFLOW = "airflow"

#: Areas each user writes (PutObject and the multipart calls that go with it).
WRITES: dict[str, tuple[str, ...]] = {
    COLLECTOR: (RAW, deadletter_prefix(PAYLOAD), MANIFESTS, HEARTBEATS),
    AIRFLOW: (LOADED, STAGED, deadletter_prefix(FILE), STATE, ANOMALY_RESULTS),
}
#: Areas each user reads (GetObject, HeadObject). Airflow reads everything the pipeline writes. A
#: collector reads back only what it writes: its lander merges a minute file, dead letters and the
#: manifest into what already landed (a restart, a second writer of the minute), never overwrites.
READS: dict[str, tuple[str, ...]] = {
    COLLECTOR: WRITES[COLLECTOR],
    AIRFLOW: (RAW, MANIFESTS, HEARTBEATS, LOADED, STAGED, DEADLETTERS, STATE, ANOMALY_RESULTS),
}
#: Users that may list the bucket (ListObjectsV2 with any prefix).
LISTS: frozenset[str] = frozenset({AIRFLOW})

KEEP_RAW = "sluice-keep-raw"
_PUT = ["s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"]
_DELETE = ["s3:DeleteObject", "s3:DeleteObjectVersion"]


def access_key(user: str) -> str:
    """The MinIO access key (user name) of a Sluice user: ``sluice-collector``, ``sluice-airflow``."""
    return f"sluice-{user}"


def policy_name(user: str) -> str:
    return f"sluice-{user}"


def _objects(bucket: str, areas: tuple[str, ...]) -> list[str]:
    """ARNs of every object under ``areas``, at the bucket's root and below one landing prefix."""
    return [f"arn:aws:s3:::{bucket}/{root}{area}*" for area in areas for root in ("", "*/")]


def user_policy(user: str, bucket: str) -> dict[str, Any]:
    """The policy document of ``user`` (see the module's table)."""
    statements: list[dict[str, Any]] = [
        {"Sid": "Write", "Effect": "Allow", "Action": _PUT, "Resource": _objects(bucket, WRITES[user])},
    ]
    if READS[user]:
        statements.append({"Sid": "Read", "Effect": "Allow", "Action": ["s3:GetObject"],
                           "Resource": _objects(bucket, READS[user])})
    if user in LISTS:
        statements.append({"Sid": "List", "Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetBucketLocation"],
                           "Resource": [f"arn:aws:s3:::{bucket}"]})
    return {"Version": "2012-10-17", "Statement": statements}


def keep_raw_policy(bucket: str) -> dict[str, Any]:
    """Attached to every user: deleting a minute file is refused, whatever else a user may do."""
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "KeepRaw", "Effect": "Deny", "Action": _DELETE, "Resource": _objects(bucket, (RAW,))},
    ]}


def policies(bucket: str) -> dict[str, dict[str, Any]]:
    """Policy name -> document, for every policy the landing bucket needs."""
    return {KEEP_RAW: keep_raw_policy(bucket), **{policy_name(u): user_policy(u, bucket) for u in WRITES}}


def provision(admin: Any, bucket: str, secrets: Mapping[str, str]) -> list[str]:
    """Create or update the policies and the users (``user -> secret key``) with ``admin``, a MinioAdmin.

    Idempotent: policies are replaced, a user's secret is set again (how a
    rotated secret takes effect), and its policies are set, not added. Returns
    what it did, one line each, for the caller's log.
    """
    missing = set(WRITES) - set(secrets)
    if missing:
        raise ValueError(f"no secret for MinIO user(s) {sorted(missing)}")
    done = []
    for name, document in policies(bucket).items():
        admin.policy_add(name, policy=document)
        done.append(f"policy {name}")
    for user in WRITES:
        admin.user_add(access_key(user), secrets[user])
        admin.policy_set(f"{policy_name(user)},{KEEP_RAW}", user=access_key(user))
        done.append(f"user {access_key(user)}: {policy_name(user)}, {KEEP_RAW}")
    return done


def admin_client(endpoint: str, root_user: str, root_password: str, *, ca_file: str | None = None) -> Any:
    """A MinioAdmin on ``endpoint`` (``https://host:port`` or ``http://``), trusting ``ca_file`` for https."""
    import urllib3
    from minio import MinioAdmin
    from minio.credentials import StaticProvider

    secure = endpoint.startswith("https://")
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=3, read=10),
        retries=urllib3.Retry(total=2, backoff_factor=0.2),
        **({"cert_reqs": "CERT_REQUIRED", "ca_certs": ca_file} if secure and ca_file else {}),
    )
    return MinioAdmin(endpoint=endpoint.split("://", 1)[1].rstrip("/"), credentials=StaticProvider(root_user, root_password),
                      secure=secure, http_client=http)


def s3_client(endpoint: str, access: str, secret: str, *, ca_file: str | None = None) -> Any:
    """A boto3 S3 client on ``endpoint`` that verifies its certificate with ``ca_file`` (https)."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=access, aws_secret_access_key=secret,
        region_name="us-east-1", verify=ca_file if ca_file else True,
        config=Config(retries={"max_attempts": 2}, connect_timeout=3, read_timeout=10,
                      request_checksum_calculation=S3_REQUEST_CHECKSUMS),
    )


def ensure_bucket(s3: Any, bucket: str) -> None:
    """Create ``bucket`` unless it exists (root's client: nobody else may)."""
    if bucket not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
        s3.create_bucket(Bucket=bucket)


def _read(path: str, what: str) -> str:
    try:
        text = Path(path).read_text().strip()
    except OSError as exc:
        raise SystemExit(f"minio-users: cannot read {what} from {path}: {exc.strerror}") from None
    if not text:
        raise SystemExit(f"minio-users: {path} ({what}) is empty")
    return text


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Apply the users and policies from files: what docker-compose's ``minio-init`` runs.

    Every secret comes from a file (Docker secrets), never from the command line
    or the environment itself: ``MINIO_ROOT_PASSWORD_FILE``,
    ``SLUICE_MINIO_COLLECTOR_SECRET_FILE``, ``SLUICE_MINIO_AIRFLOW_SECRET_FILE``.
    The root user's name (not a secret) is ``MINIO_ROOT_USER`` or the file
    ``MINIO_ROOT_USER_FILE`` names. Exits non-zero naming what is missing.
    """
    env = os.environ if environ is None else environ
    p = argparse.ArgumentParser(prog="python -m stack.minio_users", description=(main.__doc__ or "").split("\n\n")[0])
    p.add_argument("--endpoint", required=True, help="MinIO's S3 API, e.g. https://minio:9000")
    p.add_argument("--bucket", required=True, help="the landing bucket, created when missing")
    p.add_argument("--ca-file", default="", help="CA certificate (PEM) the endpoint's certificate is signed by")
    args = p.parse_args(argv)
    files = {"root password": "MINIO_ROOT_PASSWORD_FILE",
             **{user: f"SLUICE_MINIO_{user.upper()}_SECRET_FILE" for user in WRITES}}
    if not env.get("MINIO_ROOT_USER"):
        files["root user"] = "MINIO_ROOT_USER_FILE"
    unset = [var for var in files.values() if not env.get(var)]
    if unset:
        raise SystemExit(f"minio-users: set {', '.join(unset)} (files holding the secrets, e.g. /run/secrets/...)")
    values = {what: _read(env[var], what) for what, var in files.items()}
    values.setdefault("root user", env.get("MINIO_ROOT_USER", ""))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    admin = admin_client(args.endpoint, values["root user"], values["root password"], ca_file=args.ca_file or None)
    ensure_bucket(s3_client(args.endpoint, values["root user"], values["root password"], ca_file=args.ca_file or None),
                  args.bucket)
    for line in provision(admin, args.bucket, {user: values[user] for user in WRITES}):
        log.info("%s", line)
    print(json.dumps({"bucket": args.bucket, "users": [access_key(u) for u in WRITES]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
