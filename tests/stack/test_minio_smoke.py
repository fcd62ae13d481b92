"""MinIO is a real S3 server: signed put/list/get/delete through boto3."""

from __future__ import annotations

import uuid

import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError

from stack.config import LANDING_BUCKET


def test_put_list_get_delete_with_custom_endpoint(minio):
    s3 = minio.client()
    prefix = f"smoke/{uuid.uuid4().hex}/"
    body = b"timestamp,host\n2026-01-01T00:00:00Z,h1\n"
    s3.put_object(Bucket=LANDING_BUCKET, Key=prefix + "a.csv", Body=body, Metadata={"rows": "1"})
    s3.put_object(Bucket=LANDING_BUCKET, Key=prefix + "b.csv", Body=b"x")

    listed = s3.list_objects_v2(Bucket=LANDING_BUCKET, Prefix=prefix)
    assert sorted(o["Key"] for o in listed["Contents"]) == [prefix + "a.csv", prefix + "b.csv"]

    got = s3.get_object(Bucket=LANDING_BUCKET, Key=prefix + "a.csv")
    assert got["Body"].read() == body
    assert got["Metadata"] == {"rows": "1"}

    s3.delete_objects(Bucket=LANDING_BUCKET, Delete={"Objects": [{"Key": prefix + "a.csv"}, {"Key": prefix + "b.csv"}]})
    assert s3.list_objects_v2(Bucket=LANDING_BUCKET, Prefix=prefix)["KeyCount"] == 0


def test_anonymous_requests_are_refused(minio):
    anonymous = boto3.client(
        "s3", endpoint_url=minio.config.url("minio"), region_name="us-east-1",
        config=Config(signature_version=UNSIGNED),
    )
    with pytest.raises(ClientError) as err:
        anonymous.list_objects_v2(Bucket=LANDING_BUCKET)
    assert err.value.response["Error"]["Code"] == "AccessDenied"
