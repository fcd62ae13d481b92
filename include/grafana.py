"""Client for Grafana's HTTP API: health, folders, data sources, dashboards by uid.

Auth is a service-account token (``Authorization: Bearer``) or a user's basic
auth. The client does no I/O until a method is called. Every failure raises
one exception class per mode, whose message names the URL or object and says
what to do:

- :class:`GrafanaUnreachable`: no answer (wrong host/port, Grafana down);
- :class:`GrafanaAuthError` (401): credentials missing or wrong;
- :class:`GrafanaPermissionError` (403): the token's role is too low
  (data sources need Admin, dashboards and folders Editor);
- :class:`GrafanaNotFound` (404): a path or object that does not exist;
- :class:`GrafanaVersionMismatch` (412 ``version-mismatch``): the dashboard
  changed since it was read; also raised by :meth:`check_version` when the
  server is older than Sluice's dashboards need;
- :class:`GrafanaConflict` (409, 412 ``name-exists``): another object holds the name;
- :class:`GrafanaApiError`: any other answer Grafana refuses (400, 5xx).
"""

from __future__ import annotations

import logging
from typing import Any

import requests

from include.dashboards._http import ApiError, JsonApi, json_object, message_of, parse_version

log = logging.getLogger(__name__)

#: Oldest Grafana the dashboards are built for (state timeline, OpenTSDB 2.4 setting, folder uids).
MIN_VERSION = (10, 0)


class GrafanaApiError(ApiError):
    """Grafana refused a request for a reason without its own class (400, 5xx)."""


class GrafanaUnreachable(GrafanaApiError):
    pass


class GrafanaAuthError(GrafanaApiError):
    status = 401


class GrafanaPermissionError(GrafanaApiError):
    status = 403


class GrafanaNotFound(GrafanaApiError):
    status = 404


class GrafanaConflict(GrafanaApiError):
    status = 409


class GrafanaVersionMismatch(GrafanaApiError):
    status = 412


class GrafanaClient(JsonApi):
    """``GrafanaClient("http://grafana:3000", token=...)`` or ``(..., username=, password=)``.

    ``org_id`` selects the organisation (``X-Grafana-Org-Id``) for basic auth;
    a service-account token already belongs to one.
    """

    service = "Grafana"

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        username: str | None = None,
        password: str | None = None,
        org_id: int | None = None,
        timeout: float = 10.0,
        session: requests.Session | None = None,
        conn_id: str = "grafana_default",
    ) -> None:
        super().__init__(base_url, timeout=timeout, session=session)
        self.token = token
        self.username = username
        self.password = password
        self.org_id = org_id
        self.conn_id = conn_id

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if self.org_id is not None:
            headers["X-Grafana-Org-Id"] = str(self.org_id)
        return headers

    def _auth(self) -> Any:
        if not self.token and self.username:
            return (self.username, self.password or "")
        return None

    # -- errors -------------------------------------------------------------------
    def unreachable(self, url: str, exc: Exception) -> ApiError:
        return GrafanaUnreachable(
            f"cannot reach Grafana at {url} ({type(exc).__name__}: {exc}); check host and port of "
            f"connection {self.conn_id} and that Grafana is up (docker compose ps grafana)"
        )

    def error_for(self, method: str, path: str, resp: requests.Response) -> ApiError:
        msg = message_of(resp)
        where = f"{method} {self.base_url}{path}"
        try:
            body = resp.json()
        except ValueError:
            body = None
        status_word = body.get("status") if isinstance(body, dict) else None
        if resp.status_code == 401:
            how = "token" if self.token else ("user " + repr(self.username) if self.username else "no credentials")
            return GrafanaAuthError(
                f"Grafana rejected the credentials ({how}) at {where}: {msg}. Put a service-account token in the "
                f"password of connection {self.conn_id} (login empty) or a user's login and password",
                body=body,
            )
        if resp.status_code == 403:
            return GrafanaPermissionError(
                f"Grafana denied {where}: {msg}. The service account or user needs the Admin role for data "
                "sources and Editor for folders and dashboards",
                body=body,
            )
        if resp.status_code == 404:
            return GrafanaNotFound(
                f"Grafana has no {path} ({where}): {msg}. Check the URL of connection {self.conn_id} "
                "(a sub-path such as /grafana goes in the host or schema) and that the object exists",
                body=body,
            )
        if resp.status_code == 412 and status_word == "version-mismatch":
            return GrafanaVersionMismatch(
                f"{where}: {msg} (version mismatch): the dashboard was saved by someone else after it was read; "
                "re-run provisioning to compare again",
                body=body,
            )
        if resp.status_code in (409, 412):
            return GrafanaConflict(
                f"{where}: {msg}. Another object already uses this name; rename or delete it in Grafana, "
                "or let provisioning own it",
                status=resp.status_code,
                body=body,
            )
        return GrafanaApiError(f"Grafana answered {resp.status_code} to {where}: {msg}", status=resp.status_code, body=body)

    # -- server -------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """``GET /api/health``: ``{"database": "ok", "version": ...}``."""
        return self.request_json("GET", "/api/health")

    def check_version(self, minimum: tuple[int, ...] = MIN_VERSION) -> str:
        """Return Grafana's version; raise GrafanaVersionMismatch when older than ``minimum``."""
        version = str(self.health().get("version", ""))
        if parse_version(version) < minimum:
            raise GrafanaVersionMismatch(
                f"Grafana at {self.base_url} is version {version or 'unknown'}; Sluice's dashboards need "
                f"{'.'.join(map(str, minimum))} or newer. Upgrade Grafana (docker-compose.yaml pins a suitable one)"
            )
        return version

    # -- folders ------------------------------------------------------------------
    def get_folder(self, uid: str) -> dict[str, Any] | None:
        resp = self.request("GET", f"/api/folders/{uid}", ok_404=True)
        return json_object(resp, f"GET {self.base_url}") if resp is not None else None

    def create_folder(self, uid: str, title: str) -> dict[str, Any]:
        return self.request_json("POST", "/api/folders", json={"uid": uid, "title": title})

    def update_folder(self, uid: str, title: str, *, version: int) -> dict[str, Any]:
        return self.request_json("PUT", f"/api/folders/{uid}", json={"title": title, "version": version})

    # -- data sources ---------------------------------------------------------------
    def get_datasource(self, uid: str) -> dict[str, Any] | None:
        resp = self.request("GET", f"/api/datasources/uid/{uid}", ok_404=True)
        return json_object(resp, f"GET {self.base_url}") if resp is not None else None

    def create_datasource(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.request_json("POST", "/api/datasources", json=body)

    def update_datasource(self, uid: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.request_json("PUT", f"/api/datasources/uid/{uid}", json=body)

    # -- dashboards -----------------------------------------------------------------
    def get_dashboard(self, uid: str) -> dict[str, Any] | None:
        """``{"dashboard": ..., "meta": ...}`` or None when no dashboard has this uid."""
        resp = self.request("GET", f"/api/dashboards/uid/{uid}", ok_404=True)
        return json_object(resp, f"GET {self.base_url}") if resp is not None else None

    def save_dashboard(
        self, model: dict[str, Any], *, folder_uid: str | None, overwrite: bool = False, message: str = ""
    ) -> dict[str, Any]:
        """``POST /api/dashboards/db``. Without ``overwrite`` Grafana refuses (412) a stale ``version``."""
        body: dict[str, Any] = {"dashboard": model, "overwrite": overwrite, "message": message}
        if folder_uid:
            body["folderUid"] = folder_uid
        return self.request_json("POST", "/api/dashboards/db", json=body)
