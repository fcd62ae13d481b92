"""The "Sluice" page of the Airflow UI: an Airflow 3 plugin (a FastAPI app plus a view in the navigation).

The api-server mounts :data:`app` at ``/sluice`` and the UI shows it under
**Sluice** in its navigation. Airflow does not authenticate plugin apps, so
every route here resolves the caller with Airflow's own
``get_user`` (the ``_token`` cookie the UI's login sets, or a Bearer token);
without one the browser is sent to Airflow's login page and back.

Routes (all HTML; pictures are inline SVG, see ``include/sluice_page.py``):

``/sluice/?hours=3&device=&reason=``  the grid, freshness chart, lag status, dead letters
``/sluice/minute/{source}/{minute}``  one minute: count per hop, mismatches, links to its DAG runs and files
``/sluice/files?prefix=…``            the landing-zone objects under a minute's prefix
``/sluice/file?key=…``                one object's text (minute files, load and dead-letter records)

Data comes from the reconcile and lag indices (Elasticsearch Connection
``elasticsearch_dashboards``, read only) and the landing zone (``SLUICE_LANDING_URL``);
nothing is read at import time.
"""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import datetime, timedelta, timezone
from urllib.parse import quote

from airflow.plugins_manager import AirflowPlugin
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response

log = logging.getLogger(__name__)

PREFIX = "/sluice"
app = FastAPI(title="Sluice", description="Sluice pipeline health: reconciliation, freshness, lag, dead letters")


async def _user(request: Request):
    """The logged-in Airflow user, or None."""
    from airflow.api_fastapi.core_api.security import get_user

    try:
        return await get_user(request, None, None)
    except HTTPException:
        return None


def _login(request: Request) -> RedirectResponse:
    from airflow.api_fastapi.app import get_auth_manager

    return RedirectResponse(get_auth_manager().get_url_login(next_url=str(request.url)), status_code=303)


def _window(hours: float) -> tuple[datetime, datetime]:
    if not 0 < hours <= 48:
        raise HTTPException(400, f"hours={hours:g}: give a window of more than 0 and at most 48 hours")
    end = datetime.now(timezone.utc).replace(second=0, microsecond=0) + timedelta(minutes=1)
    return end - timedelta(hours=hours), end


def _minute_url(source: str, minute: datetime) -> str:
    return f"{PREFIX}/minute/{source}/{minute:%Y-%m-%dT%H:%M}Z"


def _overview(hours: float, device: str, reason: str) -> str:
    from sluice_airflow import ELASTICSEARCH_DASHBOARDS_CONN_ID, elasticsearch_client, landing_zone

    from include import sluice_page, status
    from include.contract import index_prefix, minutes
    from include.reconcile import DEFAULT_SLA_S
    from include.schemas import SOURCES

    start, end = _window(hours)
    es, prefix = elasticsearch_client(ELASTICSEARCH_DASHBOARDS_CONN_ID), index_prefix()
    cells = status.reconcile_grid(es, start, end, prefix=prefix)
    grid = sluice_page.grid_svg(cells, list(minutes(start, end)), SOURCES, _minute_url)
    counts: dict[str, int] = {"green": 0, "amber": 0, "red": 0, "healed": 0}
    for doc in cells.values():
        counts[doc["status"]] = counts.get(doc["status"], 0) + 1
        counts["healed"] += bool(doc.get("healed"))
    sla_s = float(os.environ.get("SLUICE_SLA_SECONDS", DEFAULT_SLA_S))
    freshness = sluice_page.freshness_svg(status.freshness_series(es, start, end, prefix=prefix), start, end, sla_s)
    lag = sluice_page.lag_svg(status.latest_lag(es, now=datetime.now(timezone.utc), prefix=prefix))
    # Dead letters of the last hour of the window at most: the list is about what just happened.
    everything = status.deadletters(landing_zone(), max(start, end - timedelta(hours=1)), end, limit=500)
    chosen = [e for e in everything if (not device or e["device"] == device) and (not reason or e["code"] == reason)]
    dead = sluice_page.deadletters_html(
        chosen[:200], devices=sorted({e["device"] for e in everything}), reasons=sorted({e["code"] for e in everything}),
        device=device, reason=reason, hours=hours, action=f"{PREFIX}/",
    )
    return sluice_page.overview_page(start=start, end=end, grid=grid, freshness=freshness, lag=lag, deadletters=dead,
                                     counts=counts, sla_s=sla_s)


@app.get("/", response_class=HTMLResponse)
async def overview(request: Request, hours: float = 3.0, device: str = "", reason: str = "") -> Response:
    if await _user(request) is None:
        return _login(request)
    return HTMLResponse(await asyncio.to_thread(_overview, hours, device, reason))


def _parse_minute(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise HTTPException(400, f"minute {text!r} is not an ISO-8601 UTC minute such as 2026-12-01T09:45Z") from None
    if value.tzinfo is None:
        raise HTTPException(400, f"minute {text!r} has no time zone: end it with Z")
    return value.astimezone(timezone.utc).replace(second=0, microsecond=0)


def _minute(source: str, minute: datetime) -> str:
    from sluice_airflow import ELASTICSEARCH_DASHBOARDS_CONN_ID, elasticsearch_client

    from include import reconcile, sluice_page, status
    from include.contract import index_prefix

    doc = reconcile.stored(elasticsearch_client(ELASTICSEARCH_DASHBOARDS_CONN_ID), index_prefix(), [(source, minute)]).get(
        reconcile.document_id(source, minute))
    links = status.minute_links(source, minute)
    dag_id = f"sluice_{source}_minute"
    run_id = f"scheduled__{minute.isoformat()}"
    return sluice_page.minute_page(
        source, minute, doc, dag_runs=f"/dags/{dag_id}/runs", run=f"/dags/{dag_id}/runs/{quote(run_id, safe='')}",
        files={f"{name}: {prefix}": f"{PREFIX}/files?prefix={quote(prefix)}" for name, prefix in links.items()},
        back=f"{PREFIX}/",
    )


@app.get("/minute/{source}/{minute}", response_class=HTMLResponse)
async def minute_view(request: Request, source: str, minute: str) -> Response:
    from include.schemas import SOURCES

    if await _user(request) is None:
        return _login(request)
    if source not in SOURCES:
        raise HTTPException(404, f"source {source!r} is not one of {', '.join(SOURCES)}")
    return HTMLResponse(await asyncio.to_thread(_minute, source, _parse_minute(minute)))


_BROWSABLE = ("raw/", "loaded/", "deadletter/", "staged/", "manifests/")


@app.get("/files", response_class=HTMLResponse)
async def files(request: Request, prefix: str) -> Response:
    from sluice_airflow import landing_zone

    from include import sluice_page, status

    if await _user(request) is None:
        return _login(request)
    if not prefix.startswith(_BROWSABLE):
        raise HTTPException(400, f"prefix {prefix!r}: only {', '.join(_BROWSABLE)} can be browsed")
    objects = await asyncio.to_thread(lambda: status.listing(landing_zone(), prefix))
    return HTMLResponse(sluice_page.listing_page(prefix, objects, file_url=lambda k: f"{PREFIX}/file?key={quote(k)}",
                                                 back=f"{PREFIX}/"))


@app.get("/file", response_class=PlainTextResponse)
async def file(request: Request, key: str) -> Response:
    from sluice_airflow import landing_zone

    if await _user(request) is None:
        return _login(request)
    if not key.startswith(_BROWSABLE):
        raise HTTPException(400, f"key {key!r}: only {', '.join(_BROWSABLE)} can be read")
    try:
        data = await asyncio.to_thread(lambda: landing_zone().get(key))
    except KeyError as exc:
        raise HTTPException(404, str(exc)) from None
    return PlainTextResponse(data[:500_000].decode("utf-8", "replace"))


class SluiceUIPlugin(AirflowPlugin):
    name = "sluice_ui"
    fastapi_apps = [{"app": app, "url_prefix": PREFIX, "name": "Sluice"}]
    external_views = [{"name": "Sluice", "href": f"{PREFIX}/", "destination": "nav", "url_route": "sluice",
                       "category": "browse"}]
