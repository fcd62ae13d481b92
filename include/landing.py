"""The landing zone: where collectors put minute files and DAGs find them.

One URL decides the store: ``s3://bucket/prefix`` (S3 or MinIO; the endpoint
comes from the injected client or ``SLUICE_S3_ENDPOINT_URL``) or
``file:///path`` (the embedded default). Two S3 clients stand behind the one
protocol: boto3 (:class:`S3Landing`) where it is loaded anyway, in Airflow
through its S3Hook, and the much lighter MinIO client (:class:`MinioLanding`)
in the collectors, which run for months beside the thing they measure: boto3
and its service models cost a collector about 25 MB of memory, the MinIO
client about 8 MB (tests/benchmarks/host_bench.py measures the sampler with each). The key of a minute file is
deterministic (:func:`include.contract.minute_key`), so rewriting a minute
replaces the file instead of adding one::

    raw/{source}/date=YYYY-MM-DD/hour=HH/minute=MM/{writer}.csv

A file is complete when it appears: S3 puts are atomic, and the file store
writes to a temporary name and renames. Object metadata (schema name and
version, row count) travels with S3 objects; the file store keeps it in a
``.meta.json`` sidecar written before the data file is renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from include.contract import SIDECAR_SUFFIX

#: botocore's ``request_checksum_calculation`` for every landing-zone client. Its default
#: (``when_supported``) sends each PUT over https as an ``aws-chunked`` body with a trailing
#: CRC32, after which MinIO closes the connection, so every PUT paid a new TLS handshake
#: (tests/benchmarks/minio_tls_bench.py measures it). TLS protects the body in transit, and
#: the request stays signed.
S3_REQUEST_CHECKSUMS = "when_required"


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str
    last_modified: datetime
    metadata: dict[str, str]


class LandingZone(Protocol):
    url: str

    def put(self, key: str, data: bytes, metadata: dict[str, str] | None = None) -> ObjectInfo: ...
    def get(self, key: str) -> bytes: ...
    def head(self, key: str) -> ObjectInfo | None: ...
    def list(self, prefix: str) -> Iterator[ObjectInfo]: ...
    def delete(self, key: str) -> None: ...


class FileLanding:
    """The embedded landing zone: a folder on local disk."""

    def __init__(self, root: Path, url: str | None = None) -> None:
        self.root = Path(root)
        self.url = url or self.root.resolve().as_uri()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"key {key!r} points outside the landing zone {self.root}")
        return path

    def put(self, key: str, data: bytes, metadata: dict[str, str] | None = None) -> ObjectInfo:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Sidecar first, data last: the data file appearing is the commit point.
        self._write_atomic(path.with_name(path.name + SIDECAR_SUFFIX), json.dumps(metadata or {}, sort_keys=True).encode())
        self._write_atomic(path, data)
        return self.head(key)  # type: ignore[return-value]

    @staticmethod
    def _write_atomic(path: Path, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise KeyError(f"{key} is not in the landing zone {self.url}") from None

    def head(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        try:
            stat = path.stat()
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            metadata = json.loads(path.with_name(path.name + SIDECAR_SUFFIX).read_text())
        except FileNotFoundError:
            metadata = {}
        return ObjectInfo(
            key=key,
            size=stat.st_size,
            etag=hashlib.md5(data, usedforsecurity=False).hexdigest(),
            last_modified=datetime.fromtimestamp(stat.st_mtime, timezone.utc),
            metadata=metadata,
        )

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        base = self.root / prefix
        folder = base if prefix.endswith("/") or base.is_dir() else base.parent
        if not folder.exists():
            return
        for path in sorted(folder.rglob("*")):
            name = path.name
            if not path.is_file() or name.startswith(".") or name.endswith(SIDECAR_SUFFIX):
                continue
            key = path.relative_to(self.root).as_posix()
            if key.startswith(prefix):
                info = self.head(key)
                if info is not None:
                    yield info

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        path.with_name(path.name + SIDECAR_SUFFIX).unlink(missing_ok=True)


class _Bucket:
    """A landing zone in an S3 bucket under a key prefix; ``client`` is the S3 client of a subclass."""

    def __init__(self, client: Any, bucket: str, prefix: str = "") -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.url = f"s3://{bucket}/{self.prefix}"


class S3Landing(_Bucket):
    """S3 or MinIO through boto3; ``client`` is a boto3 S3 client (injected)."""

    def put(self, key: str, data: bytes, metadata: dict[str, str] | None = None) -> ObjectInfo:
        resp = self.client.put_object(
            Bucket=self.bucket, Key=self.prefix + key, Body=data, Metadata=metadata or {}, ContentType="text/csv"
        )
        return ObjectInfo(key, len(data), resp["ETag"].strip('"'), datetime.now(timezone.utc), dict(metadata or {}))

    def get(self, key: str) -> bytes:
        try:
            body: bytes = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"].read()
            return body
        except self.client.exceptions.NoSuchKey:
            raise KeyError(f"{key} is not in the landing zone {self.url}") from None

    def head(self, key: str) -> ObjectInfo | None:
        from botocore.exceptions import ClientError

        try:
            resp = self.client.head_object(Bucket=self.bucket, Key=self.prefix + key)
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return ObjectInfo(key, resp["ContentLength"], resp["ETag"].strip('"'), resp["LastModified"], resp["Metadata"])

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
            for obj in page.get("Contents", []):
                key = obj["Key"][len(self.prefix):]
                # Listing carries no user metadata; head() fetches it when needed.
                yield ObjectInfo(key, obj["Size"], obj["ETag"].strip('"'), obj["LastModified"], {})

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.prefix + key)


class MinioLanding(_Bucket):
    """S3 or MinIO through the MinIO client (``minio``); ``client`` is a ``minio.Minio``."""

    def put(self, key: str, data: bytes, metadata: dict[str, str] | None = None) -> ObjectInfo:
        import io

        # One PUT whatever the size (up to S3's 5 GiB), as boto3's put_object: the client would
        # otherwise cut a large minute file into a multipart upload.
        result = self.client.put_object(self.bucket, self.prefix + key, io.BytesIO(data), len(data),
                                        content_type="text/csv", metadata=metadata or None,
                                        part_size=max(len(data), _MIN_PART_BYTES))
        return ObjectInfo(key, len(data), result.etag.strip('"'), datetime.now(timezone.utc), dict(metadata or {}))

    def get(self, key: str) -> bytes:
        from minio.error import S3Error

        try:
            response = self.client.get_object(self.bucket, self.prefix + key)
        except S3Error as exc:
            if exc.code == "NoSuchKey":
                raise KeyError(f"{key} is not in the landing zone {self.url}") from None
            raise
        try:
            body: bytes = response.read()
            return body
        finally:
            response.close()
            response.release_conn()

    def head(self, key: str) -> ObjectInfo | None:
        from minio.error import S3Error

        try:
            stat = self.client.stat_object(self.bucket, self.prefix + key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "ResourceNotFound"):
                return None
            raise
        # The MinIO client returns every response header; the user metadata are the x-amz-meta-* ones,
        # named as boto3 names them (the prefix cut, lower case).
        meta = {name.lower()[len(_USER_META):]: value for name, value in (stat.metadata or {}).items()
                if name.lower().startswith(_USER_META)}
        return ObjectInfo(key, stat.size, stat.etag.strip('"'), stat.last_modified, meta)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        for obj in self.client.list_objects(self.bucket, prefix=self.prefix + prefix, recursive=True):
            if obj.is_dir:
                continue
            yield ObjectInfo(obj.object_name[len(self.prefix):], obj.size, obj.etag.strip('"'), obj.last_modified, {})

    def delete(self, key: str) -> None:
        self.client.remove_object(self.bucket, self.prefix + key)


_USER_META = "x-amz-meta-"
_MIN_PART_BYTES = 5 * 2**20  # the MinIO client's smallest part size


def s3_location(url: str) -> tuple[str, str]:
    """The bucket and key prefix of an ``s3://bucket[/prefix]`` landing URL; ValueError without a bucket."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"landing URL {url!r} names no bucket; use s3://bucket[/prefix]")
    return parsed.netloc, parsed.path


def open_landing(url: str, *, s3_client: Any = None) -> LandingZone:
    """The landing zone behind ``url``.

    ``s3://`` needs a boto3 client: pass one (an Airflow S3Hook's, say) or let
    this build one from the environment (``SLUICE_S3_ENDPOINT_URL`` and the
    usual ``AWS_*`` variables or files).
    """
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"landing URL {url!r}: file URLs take no host; use file:///absolute/path")
        return FileLanding(Path(parsed.path), url)
    if parsed.scheme == "s3":
        bucket, prefix = s3_location(url)
        if s3_client is None:
            import boto3
            from botocore.config import Config

            s3_client = boto3.client("s3", endpoint_url=os.environ.get("SLUICE_S3_ENDPOINT_URL") or None,
                                     config=Config(request_checksum_calculation=S3_REQUEST_CHECKSUMS))
        return S3Landing(s3_client, bucket, prefix)
    raise ValueError(f"landing URL {url!r}: the scheme must be s3:// or file://")
