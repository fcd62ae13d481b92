"""A private landing prefix on the real MinIO for the plugin tests (alert books, the Sluice page)."""

from __future__ import annotations

import uuid

import pytest

from include.landing import S3Landing
from stack.config import LANDING_BUCKET


@pytest.fixture()
def landing(minio):
    """Through MinIO's root account, on purpose: the tests seed files and delete the prefix afterwards."""
    zone = S3Landing(minio.admin_client(), LANDING_BUCKET, f"test-plugins-{uuid.uuid4().hex[:8]}")
    yield zone
    for info in list(zone.list("")):
        zone.delete(info.key)
