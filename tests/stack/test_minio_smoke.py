"""MinIO is a real S3 server, over TLS only, and each Sluice user may do exactly its part.

Everything here runs against the local stack's MinIO. Root's client (``admin_client``)
seeds and cleans up on purpose: no Sluice user may delete ``raw/``.
"""

from __future__ import annotations

import urllib.error
import urllib.request
import uuid

import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError, SSLError

from include.contract import (
    FILE, HEARTBEATS, LOADED, MANIFESTS, PAYLOAD, RAW, STAGED, STATE, deadletter_prefix,
)
from stack.config import LANDING_BUCKET
from stack.minio_users import KEEP_RAW, READS, WRITES, access_key, provision

BODY = b"timestamp,host\n2026-01-01T00:00:00Z,h1\n"


def _code(call) -> str:
    """The S3 error code ``call()`` raised, or ``"ok"``."""
    try:
        call()
    except ClientError as exc:
        return exc.response["Error"]["Code"]
    return "ok"


@pytest.fixture()
def area(minio):
    """A private landing prefix; root's client removes whatever the test left in it."""
    prefix = f"test-security-{uuid.uuid4().hex[:8]}/"
    yield prefix
    root = minio.admin_client()
    listed = root.list_objects_v2(Bucket=LANDING_BUCKET, Prefix=prefix).get("Contents", [])
    if listed:
        root.delete_objects(Bucket=LANDING_BUCKET, Delete={"Objects": [{"Key": o["Key"]} for o in listed]})


def test_put_list_get_delete_over_tls(minio, area):
    s3 = minio.admin_client()
    s3.put_object(Bucket=LANDING_BUCKET, Key=area + "a.csv", Body=BODY, Metadata={"rows": "1"})
    s3.put_object(Bucket=LANDING_BUCKET, Key=area + "b.csv", Body=b"x")
    listed = s3.list_objects_v2(Bucket=LANDING_BUCKET, Prefix=area)
    assert sorted(o["Key"] for o in listed["Contents"]) == [area + "a.csv", area + "b.csv"]
    got = s3.get_object(Bucket=LANDING_BUCKET, Key=area + "a.csv")
    assert got["Body"].read() == BODY and got["Metadata"] == {"rows": "1"}
    assert minio.endpoint_url.startswith("https://")


@pytest.mark.parametrize("user", sorted(WRITES))
def test_each_user_writes_its_areas_and_nothing_else(minio, area, user):
    s3 = minio.client(user)
    for prefix in (RAW, deadletter_prefix(PAYLOAD), MANIFESTS, HEARTBEATS, LOADED, STAGED, deadletter_prefix(FILE),
                   STATE, "anomaly/", "elsewhere/"):
        key = f"{area}{prefix}sensor/x.csv"
        expected = "ok" if prefix in WRITES[user] else "AccessDenied"
        assert _code(lambda k=key: s3.put_object(Bucket=LANDING_BUCKET, Key=k, Body=BODY)) == expected, (user, prefix)
    # The same rights at the bucket's root, where the platform's own landing URL writes.
    root_key = f"{WRITES[user][0]}test-security/{uuid.uuid4().hex}.csv"
    assert _code(lambda: s3.put_object(Bucket=LANDING_BUCKET, Key=root_key, Body=BODY)) == "ok"
    minio.admin_client().delete_object(Bucket=LANDING_BUCKET, Key=root_key)


def test_the_collector_cannot_read_loaded_list_or_delete(minio, area):
    root, collector = minio.admin_client(), minio.client("collector")
    raw_key, loaded_key = f"{area}{RAW}host/a.csv", f"{area}{LOADED}host/a.csv@etag.json"
    root.put_object(Bucket=LANDING_BUCKET, Key=raw_key, Body=BODY)
    root.put_object(Bucket=LANDING_BUCKET, Key=loaded_key, Body=b"{}")
    assert _code(lambda: collector.get_object(Bucket=LANDING_BUCKET, Key=loaded_key)) == "AccessDenied"
    assert _code(lambda: collector.head_object(Bucket=LANDING_BUCKET, Key=loaded_key)) == "403"
    # It reads back what it writes (its lander merges into a landed minute file), and a missing key
    # is "not there", not a refusal (the lander then writes the file new).
    assert collector.get_object(Bucket=LANDING_BUCKET, Key=raw_key)["Body"].read() == BODY
    assert _code(lambda: collector.get_object(Bucket=LANDING_BUCKET, Key=raw_key + ".none")) == "NoSuchKey"
    assert set(READS["collector"]) == set(WRITES["collector"])
    assert _code(lambda: collector.delete_object(Bucket=LANDING_BUCKET, Key=loaded_key)) == "AccessDenied"
    assert _code(lambda: collector.delete_object(Bucket=LANDING_BUCKET, Key=raw_key)) == "AccessDenied"
    assert _code(lambda: collector.list_objects_v2(Bucket=LANDING_BUCKET, Prefix=area)) == "AccessDenied"
    # Still there: a refused delete removed nothing.
    assert root.head_object(Bucket=LANDING_BUCKET, Key=raw_key)["ContentLength"] == len(BODY)
    assert root.head_object(Bucket=LANDING_BUCKET, Key=loaded_key)["ContentLength"] == 2


def test_airflow_reads_raw_writes_loaded_and_cannot_delete_raw(minio, area):
    root, airflow = minio.admin_client(), minio.client("airflow")
    raw_key = f"{area}{RAW}sensor/date=2026-01-01/hour=00/minute=00/w.csv"
    root.put_object(Bucket=LANDING_BUCKET, Key=raw_key, Body=BODY)
    assert airflow.get_object(Bucket=LANDING_BUCKET, Key=raw_key)["Body"].read() == BODY
    assert [o["Key"] for o in airflow.list_objects_v2(Bucket=LANDING_BUCKET, Prefix=area + RAW)["Contents"]] == [raw_key]
    loaded_key = f"{area}{LOADED}sensor/date=2026-01-01/hour=00/minute=00/w.csv@e.json"
    airflow.put_object(Bucket=LANDING_BUCKET, Key=loaded_key, Body=b"{}")
    assert airflow.get_object(Bucket=LANDING_BUCKET, Key=loaded_key)["Body"].read() == b"{}"
    assert _code(lambda: airflow.delete_object(Bucket=LANDING_BUCKET, Key=raw_key)) == "AccessDenied"
    assert _code(lambda: airflow.put_object(Bucket=LANDING_BUCKET, Key=raw_key, Body=b"forged")) == "AccessDenied"
    assert _code(lambda: airflow.delete_object(Bucket=LANDING_BUCKET, Key=loaded_key)) == "AccessDenied"
    assert root.get_object(Bucket=LANDING_BUCKET, Key=raw_key)["Body"].read() == BODY
    assert set(READS["airflow"]) >= {RAW, LOADED}


def test_keep_raw_denies_deleting_raw_even_to_a_user_allowed_to_delete_everything(minio, area):
    """The explicit Deny wins over any Allow: a user given DeleteObject on the whole bucket still cannot delete raw/."""
    admin, root = minio.admin(), minio.admin_client()
    name, secret = f"sluice-test-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    everything = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["s3:*"],
                                                          "Resource": [f"arn:aws:s3:::{LANDING_BUCKET}/*"]}]}
    admin.policy_add(name, policy=everything)
    admin.user_add(name, secret)
    try:
        admin.policy_set(f"{name},{KEEP_RAW}", user=name)
        s3 = boto3.client("s3", endpoint_url=minio.endpoint_url, aws_access_key_id=name, aws_secret_access_key=secret,
                          region_name="us-east-1", verify=str(minio.ca_file))
        raw_key, other = f"{area}{RAW}host/a.csv", f"{area}{STAGED}host/a.ndjson"
        for key in (raw_key, other):
            s3.put_object(Bucket=LANDING_BUCKET, Key=key, Body=BODY)
        assert _code(lambda: s3.delete_object(Bucket=LANDING_BUCKET, Key=raw_key)) == "AccessDenied"
        assert _code(lambda: s3.delete_object(Bucket=LANDING_BUCKET, Key=other)) == "ok"
        assert root.head_object(Bucket=LANDING_BUCKET, Key=raw_key)["ContentLength"] == len(BODY)
    finally:
        admin.user_remove(name)
        admin.policy_remove(name)


def test_provisioning_again_rotates_a_secret_and_keeps_the_rights(minio, tmp_path, area):
    """What a restart does after a user's credentials file was deleted: the old secret stops working."""
    old = minio.credentials("collector")
    key = f"{area}{RAW}host/rotated.csv"
    try:
        provision(minio.admin(), LANDING_BUCKET, {"collector": "rotated-" + uuid.uuid4().hex,
                                                  "airflow": minio.credentials("airflow")["secret_key"]})
        assert _code(lambda: minio.client("collector").put_object(Bucket=LANDING_BUCKET, Key=key, Body=BODY)) in (
            "SignatureDoesNotMatch", "InvalidAccessKeyId")
    finally:
        provision(minio.admin(), LANDING_BUCKET, {user: minio.credentials(user)["secret_key"] for user in WRITES})
    assert minio.credentials("collector") == old
    assert _code(lambda: minio.client("collector").put_object(Bucket=LANDING_BUCKET, Key=key, Body=BODY)) == "ok"


def test_anonymous_and_wrong_keys_are_refused(minio):
    anonymous = boto3.client("s3", endpoint_url=minio.endpoint_url, region_name="us-east-1",
                             verify=str(minio.ca_file), config=Config(signature_version=UNSIGNED))
    assert _code(lambda: anonymous.list_objects_v2(Bucket=LANDING_BUCKET)) == "AccessDenied"
    assert _code(lambda: anonymous.put_object(Bucket=LANDING_BUCKET, Key=f"{RAW}x.csv", Body=BODY)) == "AccessDenied"
    wrong = boto3.client("s3", endpoint_url=minio.endpoint_url, region_name="us-east-1", verify=str(minio.ca_file),
                         aws_access_key_id=access_key("collector"), aws_secret_access_key="not-the-secret")
    assert _code(lambda: wrong.put_object(Bucket=LANDING_BUCKET, Key=f"{RAW}x.csv", Body=BODY)) == "SignatureDoesNotMatch"
    unknown = boto3.client("s3", endpoint_url=minio.endpoint_url, region_name="us-east-1", verify=str(minio.ca_file),
                           aws_access_key_id="nobody", aws_secret_access_key="nothing-at-all")
    assert _code(lambda: unknown.list_objects_v2(Bucket=LANDING_BUCKET)) == "InvalidAccessKeyId"


def test_plain_http_and_untrusted_certificates_fail(minio):
    creds = minio.credentials("airflow")
    plain = boto3.client("s3", endpoint_url=minio.endpoint_url.replace("https://", "http://"), region_name="us-east-1",
                         aws_access_key_id=creds["access_key"], aws_secret_access_key=creds["secret_key"],
                         config=Config(retries={"max_attempts": 1}))
    # MinIO answers a plain request on its TLS port with a bare 400 and hangs up: botocore sees the
    # connection closed (or the 400), never a listing.
    with pytest.raises((ConnectionClosedError, ClientError)):
        plain.list_objects_v2(Bucket=LANDING_BUCKET)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{minio.endpoint_url.replace('https://', 'http://')}/{LANDING_BUCKET}", timeout=5)
    assert refused.value.code == 400 and b"HTTP request to an HTTPS server" in refused.value.read()
    # Without the stack's CA (the system's trust store only) the certificate is not trusted.
    untrusted = boto3.client("s3", endpoint_url=minio.endpoint_url, region_name="us-east-1",
                             aws_access_key_id=creds["access_key"], aws_secret_access_key=creds["secret_key"],
                             config=Config(retries={"max_attempts": 1}))
    with pytest.raises(SSLError):
        untrusted.list_objects_v2(Bucket=LANDING_BUCKET)


def test_keys_stay_off_command_lines(minio):
    assert not any(minio.credentials(u)["secret_key"] in " ".join(minio.command()) for u in ("root", *WRITES))
    with pytest.raises(ValueError, match="admin_client"):
        minio.client("root")
    with pytest.raises(ValueError, match="no Sluice user"):
        minio.credentials("spark")


def test_the_stack_env_gives_each_client_its_own_user(minio):
    import json

    from stack.connections import airflow_connections
    from stack.services.collectors import HostCollector, MqttCollector, StreamLoader

    aws = airflow_connections(minio.config)["aws_default"]
    assert aws["login"] == access_key("airflow") and aws["extra"]["endpoint_url"].startswith("https://")
    assert aws["extra"]["verify"] == str(minio.ca_file)
    for cls in (HostCollector, MqttCollector):
        env = cls(minio.config).env()
        assert env["SLUICE_S3_ACCESS_KEY"] == access_key("collector") and env["SLUICE_S3_CA_BUNDLE"] == str(minio.ca_file)
        assert "AIRFLOW_CONN_AWS_DEFAULT" not in env  # never Airflow's key
        assert minio.credentials("root")["secret_key"] not in json.dumps(env)
    assert "SLUICE_S3_ACCESS_KEY" not in StreamLoader(minio.config).env()  # it lands nothing


def test_compose_minio_init_applies_the_same_users_from_secret_files(minio, tmp_path, area):
    """``python -m stack.minio_users`` (docker-compose's minio-init) on the real MinIO, every secret from a file."""
    import subprocess
    import sys

    from stack.config import REPO_ROOT

    root = minio.credentials()
    files = {"MINIO_ROOT_PASSWORD_FILE": root["secret_key"],
             **{f"SLUICE_MINIO_{u.upper()}_SECRET_FILE": minio.credentials(u)["secret_key"] for u in WRITES}}
    env = {"PATH": "/usr/bin:/bin", "MINIO_ROOT_USER": root["access_key"]}
    for var, secret in files.items():
        (tmp_path / var).write_text(secret + "\n")
        env[var] = str(tmp_path / var)
    cmd = [sys.executable, "-m", "stack.minio_users", "--endpoint", minio.endpoint_url, "--bucket", LANDING_BUCKET,
           "--ca-file", str(minio.ca_file)]
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"user {access_key('collector')}: sluice-collector, {KEEP_RAW}" in done.stderr
    assert not any(secret in done.stdout + done.stderr for secret in files.values())
    key = f"{area}{RAW}host/compose.csv"
    assert _code(lambda: minio.client("collector").put_object(Bucket=LANDING_BUCKET, Key=key, Body=BODY)) == "ok"
    assert _code(lambda: minio.client("airflow").delete_object(Bucket=LANDING_BUCKET, Key=key)) == "AccessDenied"
    # A missing secret file: refused before anything is changed, naming the variable.
    del env["SLUICE_MINIO_AIRFLOW_SECRET_FILE"]
    refused = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "set SLUICE_MINIO_AIRFLOW_SECRET_FILE" in refused.stderr
    env["SLUICE_MINIO_AIRFLOW_SECRET_FILE"] = str(tmp_path / "nowhere")
    refused = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and f"cannot read airflow from {tmp_path / 'nowhere'}" in refused.stderr


def test_puts_over_tls_keep_one_connection(minio, area, caplog, tmp_path):
    """botocore's default streaming checksum makes MinIO close the connection after each PUT (a TLS
    handshake per file); the landing clients turn it off (include.landing.S3_REQUEST_CHECKSUMS)."""
    import logging

    from collectors.common import open_store
    from collectors.host import HostConfig

    creds = minio.credentials("collector")
    config = HostConfig(landing_url=f"s3://{LANDING_BUCKET}/{area.rstrip('/')}", s3_endpoint_url=minio.endpoint_url,
                        s3_access_key=creds["access_key"], s3_secret_key=creds["secret_key"],
                        s3_ca_bundle=str(minio.ca_file), state_dir=str(tmp_path))
    for name, zone in (("collector", open_store(config)), ("stack", None)):
        s3 = minio.client("collector") if zone is None else None
        with caplog.at_level(logging.DEBUG, logger="urllib3.connectionpool"):
            caplog.clear()
            for i in range(10):
                key = f"{RAW}host/keepalive-{name}-{i}.csv"
                if zone is not None:
                    zone.put(key, BODY * 100)
                else:
                    s3.put_object(Bucket=LANDING_BUCKET, Key=area + key, Body=BODY * 100)
        opened = [r for r in caplog.records if "Starting new HTTPS connection" in r.getMessage()
                  or "Resetting dropped connection" in r.getMessage()]
        assert len(opened) <= 1, (name, [r.getMessage() for r in opened])
