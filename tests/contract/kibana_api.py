"""Contract double of Kibana's status, data views and saved-objects APIs.

Enforced, as Kibana documents them:

- Paths may be prefixed by ``/s/{space_id}``; an unknown space is 404.
- Every request needs ``Authorization: ApiKey <key>`` or basic auth, else 401
  ``{"statusCode": 401, "error": "Unauthorized", "message"}``; a read-only
  principal gets 403 on writes.
- Every POST/PUT/DELETE needs the ``kbn-xsrf`` header, else 400
  ``Request must contain a kbn-xsrf header.``
- ``GET /api/status``: ``{"version": {"number"}, "status": {"overall": {"level"}}}``.
- Data views: ``GET /api/data_views/data_view/{id}`` (``{"data_view"}`` or 404
  ``Saved object [index-pattern/{id}] not found``), ``POST
  /api/data_views/data_view`` with ``{"data_view": {"title", ...}}`` (title
  required, 409 when the id exists), ``POST /api/data_views/data_view/{id}``
  to update. Data views are ``index-pattern`` saved objects in the same store.
- ``POST /api/saved_objects/_import[?overwrite=true]``: multipart/form-data
  with a ``file`` part of NDJSON; each line an object with ``type``, ``id``,
  ``attributes`` (and ``references``). Per-object errors: ``conflict`` (exists,
  no overwrite), ``missing_references`` (a reference to an object neither in
  the file nor stored), ``unsupported_type``. ``overwrite`` and
  ``createNewCopies`` together are 400.
- ``POST /api/saved_objects/_export`` with ``{"objects": [{"type", "id"}],
  "includeReferencesDeep"}``: NDJSON plus an export-details line; objects that
  do not exist: 400 ``Error fetching objects to export`` listing them.
"""

from __future__ import annotations

import copy
import json
import re
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any
from collections.abc import Callable

from tests.contract.server import ContractServer, Request, Response, basic_credentials

IMPORTABLE = {"index-pattern", "visualization", "dashboard", "search", "lens", "config"}


def _error(status: int, error: str, message: str, **extra: Any) -> Response:
    return Response(status, {"statusCode": status, "error": error, "message": message, **extra})


class KibanaContract(ContractServer):
    def __init__(
        self,
        *,
        version: str = "9.1.0",
        api_keys: dict[str, str] | None = None,
        users: dict[tuple[str, str], str] | None = None,
        spaces: tuple[str, ...] = ("default",),
    ) -> None:
        super().__init__()
        self.version = version
        self.api_keys = api_keys if api_keys is not None else {"a2liYW5hOmtleQ==": "all"}
        self.users = users if users is not None else {("elastic", "s3cret-pw"): "all"}
        self.spaces = spaces
        #: (space, type, id) -> saved object
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._clock = 0

    # -- test helpers ------------------------------------------------------------------
    def edit(self, type_: str, obj_id: str, change: Callable[[dict[str, Any]], None], *, space: str = "default") -> None:
        """What a save in Kibana's UI does to a saved object: change attributes, bump the version."""
        with self._lock:
            obj = self.objects[(space, type_, obj_id)]
            change(obj["attributes"])
            self._stamp(obj)

    def _stamp(self, obj: dict[str, Any]) -> None:
        self._clock += 1
        obj["updated_at"] = f"2026-01-01T00:00:{self._clock % 60:02d}.000Z"
        obj["version"] = f"WzEsMV0{self._clock}"
        obj["managed"] = False
        obj["coreMigrationVersion"] = "8.8.0"

    def is_read(self, request: Request) -> bool:
        return request.path.endswith("/_export")

    # -- routing -----------------------------------------------------------------------
    def _principal(self, req: Request) -> str | None:
        auth = req.headers.get("authorization", "")
        if auth.startswith("ApiKey "):
            return self.api_keys.get(auth[len("ApiKey ") :])
        credentials = basic_credentials(req)
        return self.users.get(credentials) if credentials else None

    def handle(self, req: Request) -> Response:
        space, path = "default", req.path
        m = re.fullmatch(r"/s/([a-z0-9_-]+)(/.*)", req.path)
        if m:
            space, path = m.group(1), m.group(2)
            if space not in self.spaces:
                return _error(404, "Not Found", f"Saved object [space/{space}] not found")
        privilege = self._principal(req)
        if privilege is None:
            message = "Unauthorized" if not req.headers.get("authorization") else "[security_exception] unable to authenticate"
            return _error(401, "Unauthorized", message)
        if req.method in ("POST", "PUT", "DELETE") and "kbn-xsrf" not in req.headers:
            return _error(400, "Bad Request", "Request must contain a kbn-xsrf header.")
        is_write = req.method in ("POST", "PUT", "DELETE") and not path.endswith("/_export")
        if is_write and privilege != "all":
            return _error(403, "Forbidden", f"Unable to {req.method.lower()} {path}: missing privileges")
        if path == "/api/status" and req.method == "GET":
            return Response(200, {"name": "kibana", "version": {"number": self.version}, "status": {"overall": {"level": "available"}}})
        m = re.fullmatch(r"/api/data_views/data_view(?:/([^/]+))?", path)
        if m:
            view_id = m.group(1)
            if req.method == "GET" and view_id:
                return self.get_data_view(space, view_id)
            if req.method == "POST" and view_id:
                return self.update_data_view(space, view_id, req.json())
            if req.method == "POST":
                return self.create_data_view(space, req.json())
            return _error(405, "Method Not Allowed", "Method Not Allowed")
        if path == "/api/saved_objects/_import" and req.method == "POST":
            return self.import_objects(space, req)
        if path == "/api/saved_objects/_export" and req.method == "POST":
            return self.export_objects(space, req.json())
        return _error(404, "Not Found", "Not Found")

    # -- data views -------------------------------------------------------------------
    def _view(self, obj: dict[str, Any]) -> dict[str, Any]:
        return {"id": obj["id"], "version": obj.get("version"), **obj["attributes"]}

    def get_data_view(self, space: str, view_id: str) -> Response:
        obj = self.objects.get((space, "index-pattern", view_id))
        if obj is None:
            return _error(404, "Not Found", f"Saved object [index-pattern/{view_id}] not found")
        return Response(200, {"data_view": self._view(obj)})

    def create_data_view(self, space: str, body: Any) -> Response:
        spec = body.get("data_view") if isinstance(body, dict) else None
        if not isinstance(spec, dict) or not spec.get("title"):
            return _error(400, "Bad Request", "[request body.data_view.title]: expected value of type [string] but got [undefined]")
        view_id = spec.get("id") or f"dv{len(self.objects) + 1}"
        if (space, "index-pattern", view_id) in self.objects:
            return _error(409, "Conflict", f"Saved object [index-pattern/{view_id}] conflict")
        attrs = {k: v for k, v in spec.items() if k != "id"}
        obj = {"type": "index-pattern", "id": view_id, "attributes": attrs, "references": []}
        self._stamp(obj)
        self.objects[(space, "index-pattern", view_id)] = obj
        return Response(200, {"data_view": self._view(obj)})

    def update_data_view(self, space: str, view_id: str, body: Any) -> Response:
        obj = self.objects.get((space, "index-pattern", view_id))
        if obj is None:
            return _error(404, "Not Found", f"Saved object [index-pattern/{view_id}] not found")
        spec = body.get("data_view") if isinstance(body, dict) else None
        if not isinstance(spec, dict):
            return _error(400, "Bad Request", "[request body.data_view]: expected a value of type [object]")
        if "id" in spec:
            return _error(400, "Bad Request", "[request body.data_view.id]: definition for this key is missing")
        obj["attributes"].update(spec)
        self._stamp(obj)
        return Response(200, {"data_view": self._view(obj)})

    # -- saved objects ------------------------------------------------------------------
    def _ndjson_file(self, req: Request) -> str | Response:
        ctype = req.headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            return _error(415, "Unsupported Media Type", "Unsupported Media Type")
        msg = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {ctype}\r\n\r\n".encode() + req.body)
        for part in msg.iter_parts():
            if part.get_param("name", header="content-disposition") == "file":
                filename = part.get_filename() or ""
                if not filename.endswith(".ndjson"):
                    return _error(400, "Bad Request", f"Invalid file extension {filename!r}")
                return part.get_payload(decode=True).decode()
        return _error(400, "Bad Request", "[request body.file]: expected value of type [Stream] but got [undefined]")

    def import_objects(self, space: str, req: Request) -> Response:
        overwrite = req.query.get("overwrite", ["false"])[0] == "true"
        if overwrite and req.query.get("createNewCopies", ["false"])[0] == "true":
            return _error(400, "Bad Request", "cannot use [overwrite] with [createNewCopies]")
        text = self._ndjson_file(req)
        if isinstance(text, Response):
            return text
        objs = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as exc:
                return _error(400, "Bad Request", f"Unexpected token in JSON at line {n}: {exc}")
            if not isinstance(obj, dict) or not {"type", "id", "attributes"} <= obj.keys():
                return _error(400, "Bad Request", f"line {n} is not a saved object (type, id, attributes)")
            objs.append(obj)
        in_file = {(o["type"], o["id"]) for o in objs}
        errors, done = [], []
        for o in objs:
            key = (space, o["type"], o["id"])
            meta = {"title": o["attributes"].get("title")}
            if o["type"] not in IMPORTABLE:
                errors.append({"type": o["type"], "id": o["id"], "meta": meta, "error": {"type": "unsupported_type"}})
                continue
            missing = [
                {"type": r["type"], "id": r["id"]}
                for r in o.get("references", [])
                if (r["type"], r["id"]) not in in_file and (space, r["type"], r["id"]) not in self.objects
            ]
            if missing:
                errors.append({"type": o["type"], "id": o["id"], "meta": meta, "error": {"type": "missing_references", "references": missing}})
                continue
            if key in self.objects and not overwrite:
                errors.append({"type": o["type"], "id": o["id"], "meta": meta, "error": {"type": "conflict"}})
                continue
            done.append(o)
        if not errors:
            for o in done:
                stored = {"type": o["type"], "id": o["id"], "attributes": copy.deepcopy(o["attributes"]), "references": o.get("references", [])}
                self._stamp(stored)
                self.objects[(space, o["type"], o["id"])] = stored
        results = [{"type": o["type"], "id": o["id"], "meta": {"title": o["attributes"].get("title")}} for o in done] if not errors else []
        return Response(200, {"success": not errors, "successCount": len(results), "successResults": results, "errors": errors})

    def export_objects(self, space: str, body: Any) -> Response:
        if not isinstance(body, dict) or not isinstance(body.get("objects"), list):
            return _error(400, "Bad Request", "Either `type` or `objects` are required.")
        wanted = [(o["type"], o["id"]) for o in body["objects"]]
        missing = [{"type": t, "id": i} for t, i in wanted if (space, t, i) not in self.objects]
        if missing:
            return _error(400, "Bad Request", "Error fetching objects to export", attributes={"objects": missing})
        seen: list[tuple[str, str]] = []
        queue = list(wanted)
        while queue:
            t, i = queue.pop(0)
            if (t, i) in seen or (space, t, i) not in self.objects:
                continue
            seen.append((t, i))
            if body.get("includeReferencesDeep"):
                queue += [(r["type"], r["id"]) for r in self.objects[(space, t, i)].get("references", [])]
        lines = [json.dumps(self.objects[(space, t, i)]) for t, i in seen]
        lines.append(json.dumps({"excludedObjects": [], "excludedObjectsCount": 0, "exportedCount": len(seen), "missingRefCount": 0, "missingReferences": []}))
        return Response(200, "\n".join(lines) + "\n", content_type="application/ndjson")
