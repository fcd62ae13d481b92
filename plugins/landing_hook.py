"""Airflow adapter for the landing zone: a Connection and a URL to a LandingZone.

The URL (``s3://bucket/prefix`` or ``file:///path``) comes from the
``SLUICE_LANDING_URL`` environment variable; for ``s3://`` the boto3 client
comes from the Amazon provider's S3Hook, so the endpoint (MinIO) and the keys
live in the ``aws_default`` Connection and nowhere else.
"""

from __future__ import annotations

import os

from airflow.sdk import BaseHook

from include.landing import LandingZone, open_landing

DEFAULT_URL_ENV = "SLUICE_LANDING_URL"


class LandingZoneHook(BaseHook):
    """Builds an :class:`include.landing.LandingZone`; no I/O until ``get_conn``."""

    def __init__(self, *, url: str | None = None, aws_conn_id: str = "aws_default") -> None:
        super().__init__()
        self.url = url
        self.aws_conn_id = aws_conn_id

    def get_conn(self) -> LandingZone:
        url = self.url or os.environ.get(DEFAULT_URL_ENV)
        if not url:
            raise ValueError(
                f"no landing zone configured: set {DEFAULT_URL_ENV} (s3://bucket[/prefix] or file:///path) "
                "in the Airflow environment"
            )
        if url.startswith("s3://"):
            from airflow.providers.amazon.aws.hooks.s3 import S3Hook

            return open_landing(url, s3_client=S3Hook(aws_conn_id=self.aws_conn_id).get_conn())
        return open_landing(url)
