"""Client for Kibana's data views and saved-objects APIs.

Auth is an API key (``Authorization: ApiKey <base64 id:key>``) or basic auth.
Every state-changing request carries the ``kbn-xsrf`` header Kibana requires;
``space`` prefixes paths with ``/s/<space>``. No I/O until a method is called.

One exception class per failure mode, each message naming the request and
saying what to do: :class:`KibanaUnreachable`, :class:`KibanaAuthError` (401),
:class:`KibanaPermissionError` (403), :class:`KibanaNotFound` (404, or objects
missing from an export), :class:`KibanaVersionMismatch` (server older than
the data views API, or objects from a newer Kibana), :class:`KibanaConflict`
(409), :class:`KibanaImportError` (per-object import errors) and
:class:`KibanaApiError` for anything else.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import requests

from include.dashboards._http import ApiError, JsonApi, json_object, message_of, parse_version

log = logging.getLogger(__name__)

#: The data views API (``/api/data_views``) arrived in Kibana 8.0.
MIN_VERSION = (8, 0)


class KibanaApiError(ApiError):
    """Kibana refused a request for a reason without its own class (400, 5xx)."""


class KibanaUnreachable(KibanaApiError):
    pass


class KibanaAuthError(KibanaApiError):
    status = 401


class KibanaPermissionError(KibanaApiError):
    status = 403


class KibanaNotFound(KibanaApiError):
    status = 404


class KibanaConflict(KibanaApiError):
    status = 409


class KibanaVersionMismatch(KibanaApiError):
    pass


class KibanaImportError(KibanaApiError):
    """The import API answered but refused some objects; ``errors`` lists them as Kibana did."""

    def __init__(self, message: str, *, errors: list[dict[str, Any]]) -> None:
        super().__init__(message, status=200, body=errors)
        self.errors = errors


class KibanaClient(JsonApi):
    """``KibanaClient("http://kibana:5601", api_key=...)`` or ``(..., username=, password=)``."""

    service = "Kibana"

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        username: str | None = None,
        password: str | None = None,
        space: str | None = None,
        timeout: float = 30.0,
        session: requests.Session | None = None,
        conn_id: str = "kibana_default",
    ) -> None:
        super().__init__(base_url, timeout=timeout, session=session)
        self.api_key = api_key
        self.username = username
        self.password = password
        self.space = space if space and space != "default" else None
        self.conn_id = conn_id

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", "kbn-xsrf": "sluice"}
        if self.api_key:
            headers["Authorization"] = f"ApiKey {self.api_key}"
        return headers

    def _auth(self) -> Any:
        if not self.api_key and self.username:
            return (self.username, self.password or "")
        return None

    def _path(self, path: str) -> str:
        return f"/s/{self.space}{path}" if self.space else path

    # -- errors -------------------------------------------------------------------
    def unreachable(self, url: str, exc: Exception) -> ApiError:
        return KibanaUnreachable(
            f"cannot reach Kibana at {url} ({type(exc).__name__}: {exc}); check host and port of connection "
            f"{self.conn_id} and that Kibana is up (it takes a minute after Elasticsearch: docker compose ps kibana)"
        )

    def error_for(self, method: str, path: str, resp: requests.Response) -> ApiError:
        msg = message_of(resp)
        where = f"{method} {self.base_url}{self._path(path)}"
        try:
            body = resp.json()
        except ValueError:
            body = None
        if resp.status_code == 401:
            how = "API key" if self.api_key else ("user " + repr(self.username) if self.username else "no credentials")
            return KibanaAuthError(
                f"Kibana rejected the credentials ({how}) at {where}: {msg}. Put an API key in the extra "
                f'"api_key" of connection {self.conn_id}, or a user\'s login and password',
                body=body,
            )
        if resp.status_code == 403:
            return KibanaPermissionError(
                f"Kibana denied {where}: {msg}. The user or API key needs the 'all' privilege on "
                "Management > Data View Management and Saved Objects Management (or Dashboard) in this space",
                body=body,
            )
        if resp.status_code == 404:
            space = f" or space {self.space!r} does not exist" if self.space else ""
            return KibanaNotFound(
                f"Kibana has no {self._path(path)} ({where}): {msg}. Check the URL of connection {self.conn_id}{space}",
                body=body,
            )
        if resp.status_code == 409:
            return KibanaConflict(f"{where}: {msg}. An object with this id exists; update it instead", body=body)
        return KibanaApiError(f"Kibana answered {resp.status_code} to {where}: {msg}", status=resp.status_code, body=body)

    # -- server -------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return self.request_json("GET", "/api/status")

    def check_version(self, minimum: tuple[int, ...] = MIN_VERSION) -> str:
        """Return Kibana's version; raise KibanaVersionMismatch when older than ``minimum``."""
        version = str(self.status().get("version", {}).get("number", ""))
        if parse_version(version) < minimum:
            raise KibanaVersionMismatch(
                f"Kibana at {self.base_url} is version {version or 'unknown'}; Sluice needs "
                f"{'.'.join(map(str, minimum))} or newer for the data views API. Upgrade Kibana"
            )
        return version

    # -- data views -----------------------------------------------------------------
    def get_data_view(self, view_id: str) -> dict[str, Any] | None:
        resp = self.request("GET", f"/api/data_views/data_view/{view_id}", ok_404=True)
        return _data_view(json_object(resp, f"GET {self.base_url}")) if resp is not None else None

    def create_data_view(self, spec: dict[str, Any]) -> dict[str, Any]:
        return _data_view(self.request_json("POST", "/api/data_views/data_view", json={"data_view": spec}))

    def update_data_view(self, view_id: str, spec: dict[str, Any]) -> dict[str, Any]:
        fields = {k: v for k, v in spec.items() if k != "id"}
        return _data_view(self.request_json("POST", f"/api/data_views/data_view/{view_id}", json={"data_view": fields}))

    # -- saved objects ----------------------------------------------------------------
    def export_objects(self, objects: list[dict[str, str]], *, include_references_deep: bool = True) -> list[dict[str, Any]]:
        """Saved objects by ``{"type", "id"}`` (and what they refer to); the export summary line is dropped.

        Raises KibanaNotFound naming the objects Kibana does not have.
        """
        body = {"objects": objects, "includeReferencesDeep": include_references_deep, "excludeExportDetails": False}
        try:
            resp = self.request("POST", "/api/saved_objects/_export", json=body)
        except KibanaApiError as exc:
            missing = (exc.body or {}).get("attributes", {}).get("objects") if isinstance(exc.body, dict) else None
            if exc.status == 400 and missing:
                raise KibanaNotFound(
                    "Kibana has no saved object(s) " + ", ".join(f"{o['type']}/{o['id']}" for o in missing),
                    body=exc.body,
                ) from None
            raise
        lines = [json.loads(line) for line in resp.text.splitlines() if line.strip()]
        return [o for o in lines if "type" in o and "id" in o]

    def import_objects(self, ndjson: str, *, overwrite: bool) -> dict[str, Any]:
        """``POST /api/saved_objects/_import``; raises KibanaImportError if any object failed."""
        params = {"overwrite": "true"} if overwrite else {}
        files = {"file": ("sluice.ndjson", ndjson.encode(), "application/ndjson")}
        result = self.request_json("POST", "/api/saved_objects/_import", params=params, files=files)
        errors = result.get("errors") or []
        if errors or not result.get("success", False):
            if any("more recent version" in str(e.get("error", {}).get("message", "")) for e in errors):
                raise KibanaVersionMismatch(
                    f"Kibana at {self.base_url} refused saved objects from a newer Kibana: {errors}; "
                    "upgrade Kibana or regenerate the objects for it"
                )
            summary = "; ".join(f"{e.get('type')}/{e.get('id')}: {e.get('error', {}).get('type')}" for e in errors)
            raise KibanaImportError(
                f"Kibana refused {len(errors)} saved object(s): {summary}. 'conflict' means it exists (import with "
                "overwrite); 'missing_references' means a data view it needs is missing (provision data views first)",
                errors=errors,
            )
        return result


def _data_view(body: dict[str, Any]) -> dict[str, Any]:
    view = body.get("data_view")
    if not isinstance(view, dict):
        raise KibanaApiError(f"Kibana answered without a data_view object: {str(body)[:200]}", body=body)
    return view
