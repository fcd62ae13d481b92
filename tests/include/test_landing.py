"""The landing-zone protocol, the same on each store: the file store, boto3 (Airflow) and the MinIO client (collectors).

The two S3 clients must agree on what the other wrote: a collector lands a
file with the MinIO client and the DAGs read it, metadata and all, with boto3.
"""

from __future__ import annotations

import uuid

import pytest

from include.landing import FileLanding, LandingZone, MinioLanding, S3Landing
from stack.config import LANDING_BUCKET

BODY = b"timestamp,host\n2026-12-01T00:00:00.000Z,h\n"
META = {"schema": "host", "rows": "1"}


def _minio_client(minio, access_key: str, secret_key: str):
    from urllib.parse import urlparse

    import urllib3
    from minio import Minio

    http = urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=str(minio.ca_file), retries=False)
    return Minio(urlparse(minio.endpoint_url).netloc, access_key=access_key, secret_key=secret_key, secure=True,
                 region="us-east-1", http_client=http)


@pytest.fixture()
def prefix(minio):
    """A private prefix of the landing bucket; root removes what a test left in it."""
    name = f"test-landing-{uuid.uuid4().hex[:8]}"
    yield name
    root = minio.admin_client()
    listed = root.list_objects_v2(Bucket=LANDING_BUCKET, Prefix=name + "/").get("Contents", [])
    if listed:
        root.delete_objects(Bucket=LANDING_BUCKET, Delete={"Objects": [{"Key": o["Key"]} for o in listed]})


def _zone(kind: str, minio, prefix: str, tmp_path) -> LandingZone:
    if kind == "file":
        return FileLanding(tmp_path / "landing")
    if kind == "boto3":
        return S3Landing(minio.admin_client(), LANDING_BUCKET, prefix)
    root = minio.credentials()
    return MinioLanding(_minio_client(minio, root["access_key"], root["secret_key"]), LANDING_BUCKET, prefix)


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["file", "boto3", "minio"])
def test_the_protocol_on_each_store(kind, minio, prefix, tmp_path):
    zone = _zone(kind, minio, prefix, tmp_path)
    put = zone.put("raw/host/date=2026-12-01/hour=00/minute=00/h.csv", BODY, META)
    zone.put("raw/host/date=2026-12-01/hour=00/minute=01/h.csv", b"x")
    zone.put("manifests/host/h.json", b"{}")
    assert put.size == len(BODY) and put.metadata == META

    assert zone.get("raw/host/date=2026-12-01/hour=00/minute=00/h.csv") == BODY
    head = zone.head("raw/host/date=2026-12-01/hour=00/minute=00/h.csv")
    assert head is not None and (head.size, head.etag, head.metadata) == (len(BODY), put.etag, META)
    assert zone.head("raw/host/date=2026-12-01/hour=00/minute=01/h.csv").metadata == {}
    # A missing key: get raises KeyError naming it, head answers None.
    assert zone.head("raw/host/nothing.csv") is None
    with pytest.raises(KeyError, match="raw/host/nothing.csv is not in the landing zone"):
        zone.get("raw/host/nothing.csv")
    # list: every key under the prefix (recursively), keys relative to the zone, no metadata.
    assert sorted(o.key for o in zone.list("raw/host/")) == [
        "raw/host/date=2026-12-01/hour=00/minute=00/h.csv", "raw/host/date=2026-12-01/hour=00/minute=01/h.csv"]
    assert [o.size for o in zone.list("manifests/")] == [2]
    zone.delete("raw/host/date=2026-12-01/hour=00/minute=01/h.csv")
    assert zone.head("raw/host/date=2026-12-01/hour=00/minute=01/h.csv") is None
    zone.delete("raw/host/date=2026-12-01/hour=00/minute=01/h.csv")  # deleting twice is no error


@pytest.mark.integration
def test_what_a_collector_lands_airflow_reads_alike(minio, prefix, tmp_path):
    """The collector's store (``open_store``: the MinIO client as the collector user) and boto3 agree."""
    from collectors.common import open_store
    from collectors.host import HostConfig

    creds = minio.credentials("collector")
    config = HostConfig(landing_url=f"s3://{LANDING_BUCKET}/{prefix}", s3_endpoint_url=minio.endpoint_url,
                        s3_access_key=creds["access_key"], s3_secret_key=creds["secret_key"],
                        s3_ca_bundle=str(minio.ca_file), state_dir=str(tmp_path))
    collector = open_store(config)
    assert isinstance(collector, MinioLanding)
    key = "raw/host/date=2026-12-01/hour=00/minute=00/h.csv"
    landed = collector.put(key, BODY, META)
    assert collector.head(key).metadata == META  # it reads back what it wrote (the lander merges into it)
    airflow = S3Landing(minio.admin_client(), LANDING_BUCKET, prefix)
    seen = airflow.head(key)
    assert (seen.size, seen.etag, seen.metadata) == (len(BODY), landed.etag, META)
    assert airflow.get(key) == BODY
    # The collector user may not delete a minute file: the refusal is an error, never a silent no-op.
    from minio.error import S3Error

    with pytest.raises(S3Error, match="AccessDenied"):
        collector.delete(key)
    assert airflow.get(key) == BODY


def test_a_collector_store_that_is_down_is_an_error_at_once(tmp_path):
    """No store at the endpoint: the call raises (no retries inside the client: the lander backs off itself)."""
    import socket

    import urllib3

    from collectors.common import open_store
    from collectors.host import HostConfig

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = HostConfig(landing_url="s3://bucket/p", s3_endpoint_url=f"http://127.0.0.1:{port}",
                        s3_access_key="a", s3_secret_key="b", state_dir=str(tmp_path))
    with pytest.raises(urllib3.exceptions.NewConnectionError, match="refused"):
        open_store(config).put("raw/host/x.csv", b"x")
