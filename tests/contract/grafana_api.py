"""Contract double of Grafana's HTTP API (the legacy /api endpoints Sluice uses).

Enforced, as Grafana documents them:

- ``GET /api/health`` needs no auth and answers ``{"database": "ok", "version"}``;
  every other path needs ``Authorization: Bearer <service-account token>`` or
  basic auth, else 401 ``{"message": ...}``.
- Roles: Viewer reads; Editor writes folders and dashboards; only Admin
  writes data sources. Too low a role: 403 with Grafana's ``Access denied`` body.
- Folders: ``GET/PUT /api/folders/{uid}``, ``POST /api/folders`` (``title``
  required, 409 when the uid exists, PUT 412 on a stale ``version`` unless
  ``overwrite``); 404 ``folder not found``.
- Data sources: ``GET/PUT /api/datasources/uid/{uid}``, ``POST /api/datasources``
  (``name``, ``type``, ``access`` required; 409 when the name exists); reads
  never return ``secureJsonData``, only ``secureJsonFields``.
- Dashboards: ``POST /api/dashboards/db`` with ``{"dashboard", "folderUid",
  "overwrite", "message"}``: title required, uid at most 40 characters, the
  folder must exist; an existing uid saved with another ``version`` and no
  ``overwrite`` is 412 ``version-mismatch``; the same title in the same folder
  under another uid is 412 ``name-exists``; success answers ``{"id", "uid",
  "url", "status": "success", "version", "slug"}`` and bumps the version.
  ``GET /api/dashboards/uid/{uid}`` answers ``{"dashboard", "meta"}`` or 404.
- JSON bodies must be ``Content-Type: application/json``.
"""

from __future__ import annotations

import copy
import re
from typing import Any
from collections.abc import Callable

from tests.contract.server import ContractServer, Request, Response, basic_credentials

ROLES = {"Viewer": 0, "Editor": 1, "Admin": 2}


def _denied(action: str) -> Response:
    return Response(
        403,
        {
            "accessErrorId": "ACE0000000001",
            "message": f"You'll need additional permissions to perform this action. Permissions needed: {action}",
            "title": "Access denied",
        },
    )


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


class GrafanaContract(ContractServer):
    def __init__(
        self,
        *,
        version: str = "11.3.0",
        tokens: dict[str, str] | None = None,
        users: dict[tuple[str, str], str] | None = None,
    ) -> None:
        super().__init__()
        self.version = version
        self.tokens = tokens if tokens is not None else {"sa-admin-token": "Admin"}
        self.users = users if users is not None else {("sluice", "s3cret-pw"): "Admin"}
        self.folders: dict[str, dict[str, Any]] = {}
        self.datasources: dict[str, dict[str, Any]] = {}
        self.dashboards: dict[str, dict[str, Any]] = {}
        self._next_id = 1

    def _id(self) -> int:
        self._next_id += 1
        return self._next_id

    # -- test helpers ------------------------------------------------------------------
    def edit_dashboard(self, uid: str, change: Callable[[dict[str, Any]], None]) -> None:
        """What a save in Grafana's UI does: change the model, bump the version, keep the rest."""
        with self._lock:
            entry = self.dashboards[uid]
            change(entry["dashboard"])
            entry["version"] += 1
            entry["dashboard"]["version"] = entry["version"]

    # -- auth --------------------------------------------------------------------------
    def _role(self, req: Request) -> str | None:
        auth = req.headers.get("authorization", "")
        if auth.startswith("Bearer "):
            return self.tokens.get(auth[len("Bearer ") :])
        credentials = basic_credentials(req)
        return self.users.get(credentials) if credentials else None

    def is_read(self, request: Request) -> bool:
        return request.method == "GET"

    # -- routing -------------------------------------------------------------------------
    def handle(self, req: Request) -> Response:
        if req.path == "/api/health":
            if req.method != "GET":
                return Response(405, {"message": "Method Not Allowed"})
            return Response(200, {"commit": "contract", "database": "ok", "version": self.version})
        if not req.headers.get("authorization"):
            return Response(401, {"message": "Unauthorized"})
        role = self._role(req)
        if role is None:
            return Response(401, {"message": "invalid API key or username/password", "messageId": "auth.unauthorized"})
        if req.method in ("POST", "PUT") and not req.headers.get("content-type", "").startswith("application/json"):
            return Response(400, {"message": "bad request data: Content-Type must be application/json"})
        level = ROLES[role]
        routes = [
            ("GET", r"/api/folders/(?P<uid>[^/]+)", self.get_folder, 0, "folders:read"),
            ("POST", r"/api/folders", self.create_folder, 1, "folders:create"),
            ("PUT", r"/api/folders/(?P<uid>[^/]+)", self.update_folder, 1, "folders:write"),
            ("GET", r"/api/datasources/uid/(?P<uid>[^/]+)", self.get_datasource, 0, "datasources:read"),
            ("POST", r"/api/datasources", self.create_datasource, 2, "datasources:create"),
            ("PUT", r"/api/datasources/uid/(?P<uid>[^/]+)", self.update_datasource, 2, "datasources:write"),
            ("GET", r"/api/dashboards/uid/(?P<uid>[^/]+)", self.get_dashboard, 0, "dashboards:read"),
            ("POST", r"/api/dashboards/db", self.save_dashboard, 1, "dashboards:write"),
        ]
        path_known = False
        for method, pattern, fn, need, action in routes:
            m = re.fullmatch(pattern, req.path)
            if not m:
                continue
            path_known = True
            if method != req.method:
                continue
            if level < need:
                return _denied(action)
            return fn(req, **m.groupdict())
        if path_known:
            return Response(405, {"message": "Method Not Allowed"})
        return Response(404, {"message": "Not found"})

    # -- folders -------------------------------------------------------------------------
    def get_folder(self, req: Request, uid: str) -> Response:
        folder = self.folders.get(uid)
        return Response(200, folder) if folder else Response(404, {"message": "folder not found", "status": "not-found"})

    def create_folder(self, req: Request) -> Response:
        body = req.json()
        if not isinstance(body, dict) or not body.get("title"):
            return Response(400, {"message": "folder title cannot be empty"})
        uid = body.get("uid") or f"f{self._id()}"
        if uid in self.folders:
            return Response(409, {"message": "a folder with the same uid already exists"})
        folder = {"id": self._id(), "uid": uid, "title": body["title"], "url": f"/dashboards/f/{uid}/", "version": 1}
        self.folders[uid] = folder
        return Response(200, folder)

    def update_folder(self, req: Request, uid: str) -> Response:
        body = req.json()
        folder = self.folders.get(uid)
        if folder is None:
            return Response(404, {"message": "folder not found", "status": "not-found"})
        if not body.get("title"):
            return Response(400, {"message": "folder title cannot be empty"})
        if not body.get("overwrite") and body.get("version") != folder["version"]:
            return Response(412, {"message": "the folder has been changed by someone else", "status": "version-mismatch"})
        folder.update(title=body["title"], version=folder["version"] + 1)
        return Response(200, folder)

    # -- data sources ----------------------------------------------------------------------
    def _public_ds(self, ds: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in ds.items() if k != "secureJsonData"}
        out["secureJsonFields"] = {k: True for k in ds.get("secureJsonData", {})}
        return out

    def _check_ds(self, body: Any) -> Response | None:
        if not isinstance(body, dict):
            return Response(400, {"message": "bad request data"})
        missing = [k for k in ("name", "type", "access") if not body.get(k)]
        if missing:
            return Response(400, {"message": f"Required field(s) missing: {', '.join(missing)}"})
        if body["access"] not in ("proxy", "direct"):
            return Response(400, {"message": f"invalid access {body['access']!r}"})
        return None

    def get_datasource(self, req: Request, uid: str) -> Response:
        ds = self.datasources.get(uid)
        return Response(200, self._public_ds(ds)) if ds else Response(404, {"message": "Data source not found"})

    def create_datasource(self, req: Request) -> Response:
        body = req.json()
        if (bad := self._check_ds(body)) is not None:
            return bad
        if any(d["name"] == body["name"] for d in self.datasources.values()):
            return Response(409, {"message": "data source with the same name already exists"})
        uid = body.get("uid") or f"ds{self._id()}"
        if uid in self.datasources:
            return Response(409, {"message": "data source with the same uid already exists"})
        ds = {"id": self._id(), "orgId": 1, "readOnly": False, "version": 1, "jsonData": {}, **body, "uid": uid}
        self.datasources[uid] = ds
        pub = self._public_ds(ds)
        return Response(200, {"datasource": pub, "id": ds["id"], "message": "Datasource added", "name": ds["name"]})

    def update_datasource(self, req: Request, uid: str) -> Response:
        body = req.json()
        ds = self.datasources.get(uid)
        if ds is None:
            return Response(404, {"message": "Data source not found"})
        if (bad := self._check_ds(body)) is not None:
            return bad
        if any(d["name"] == body["name"] and u != uid for u, d in self.datasources.items()):
            return Response(409, {"message": "data source with the same name already exists"})
        secure = dict(ds.get("secureJsonData", {}))
        secure.update(body.get("secureJsonData") or {})
        new = {k: v for k, v in body.items() if k not in ("secureJsonData", "version")}
        ds.update(new, uid=uid, version=ds["version"] + 1, secureJsonData=secure)
        pub = self._public_ds(ds)
        return Response(200, {"datasource": pub, "id": ds["id"], "message": "Datasource updated", "name": ds["name"]})

    # -- dashboards ------------------------------------------------------------------------
    def get_dashboard(self, req: Request, uid: str) -> Response:
        entry = self.dashboards.get(uid)
        if entry is None:
            return Response(404, {"message": "Dashboard not found"})
        model = copy.deepcopy(entry["dashboard"])
        meta = {
            "slug": _slug(model["title"]),
            "url": f"/d/{uid}/{_slug(model['title'])}",
            "folderUid": entry["folderUid"],
            "version": entry["version"],
            "provisioned": False,
        }
        return Response(200, {"dashboard": model, "meta": meta})

    def save_dashboard(self, req: Request) -> Response:
        body = req.json()
        if not isinstance(body, dict) or not isinstance(body.get("dashboard"), dict):
            return Response(400, {"message": "bad request data: dashboard is required"})
        model = copy.deepcopy(body["dashboard"])
        title = model.get("title")
        if not title:
            return Response(400, {"message": "Dashboard title cannot be empty", "status": "empty-name"})
        uid = model.get("uid") or f"d{self._id()}"
        if len(uid) > 40:
            return Response(400, {"message": "Dashboard UID too long", "status": "uid-too-long"})
        folder_uid = body.get("folderUid") or ""
        if folder_uid and folder_uid not in self.folders:
            return Response(400, {"message": "folder not found", "status": "not-found"})
        overwrite = bool(body.get("overwrite"))
        existing = self.dashboards.get(uid)
        if not overwrite:
            for other_uid, other in self.dashboards.items():
                if other_uid != uid and other["folderUid"] == folder_uid and other["dashboard"]["title"] == title:
                    return Response(
                        412,
                        {"message": "A dashboard with the same name in the folder already exists", "status": "name-exists"},
                    )
            if existing is not None and model.get("version") != existing["version"]:
                return Response(
                    412, {"message": "The dashboard has been changed by someone else", "status": "version-mismatch"}
                )
        version = existing["version"] + 1 if existing else 1
        dash_id = existing["dashboard"]["id"] if existing else self._id()
        model.update(uid=uid, id=dash_id, version=version)
        self.dashboards[uid] = {"dashboard": model, "folderUid": folder_uid, "version": version, "message": body.get("message", "")}
        slug = _slug(title)
        return Response(200, {"id": dash_id, "uid": uid, "url": f"/d/{uid}/{slug}", "status": "success", "version": version, "slug": slug})
