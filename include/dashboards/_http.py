"""The HTTP plumbing Grafana's and Kibana's clients share: auth, errors, no I/O at construction."""

from __future__ import annotations

import logging
from typing import Any, Literal, overload

import requests

log = logging.getLogger(__name__)


class ApiError(RuntimeError):
    """Base of the errors of the dashboard clients; ``status`` is the HTTP status (0: no answer)."""

    status = 0

    def __init__(self, message: str, *, status: int = 0, body: Any = None) -> None:
        super().__init__(message)
        self.status = status or self.status
        self.body = body


def parse_version(text: str) -> tuple[int, ...]:
    """``"11.3.0-pre"`` -> ``(11, 3, 0)``; unparsable parts end the tuple."""
    parts: list[int] = []
    for piece in text.split("-")[0].split("+")[0].split("."):
        if not piece.isdigit():
            break
        parts.append(int(piece))
    return tuple(parts)


class JsonApi:
    """A requests session bound to one base URL and one set of credentials.

    ``token``/``api_key`` and ``username``/``password`` are alternatives; the
    subclass decides the header. The session is made on first use, never in
    ``__init__``.
    """

    service = "service"

    def __init__(self, base_url: str, *, timeout: float = 10.0, session: requests.Session | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._session = session

    @property
    def session(self) -> requests.Session:
        if self._session is None:
            self._session = requests.Session()
        return self._session

    def _headers(self) -> dict[str, str]:
        return {"Accept": "application/json"}

    def _auth(self) -> Any:
        return None

    def _path(self, path: str) -> str:
        return path

    @overload
    def request(
        self, method: str, path: str, *, ok_404: Literal[False] = False, **kwargs: Any
    ) -> requests.Response: ...

    @overload
    def request(self, method: str, path: str, *, ok_404: bool, **kwargs: Any) -> requests.Response | None: ...

    def request(self, method: str, path: str, *, ok_404: bool = False, **kwargs: Any) -> requests.Response | None:
        """Send one request; returns None for a 404 when ``ok_404``; raises the mapped error otherwise."""
        url = self.base_url + self._path(path)
        headers = {**self._headers(), **kwargs.pop("headers", {})}
        try:
            resp = self.session.request(method, url, headers=headers, auth=self._auth(), timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise self.unreachable(url, exc) from exc
        log.debug("%s %s -> %s", method, url, resp.status_code)
        if resp.status_code == 404 and ok_404:
            return None
        if resp.status_code >= 400:
            raise self.error_for(method, path, resp)
        return resp

    def request_json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """:meth:`request` whose answer must be a JSON object; ApiError naming the request otherwise."""
        return json_object(self.request(method, path, **kwargs), f"{method} {self.base_url}{path}")

    def unreachable(self, url: str, exc: Exception) -> ApiError:
        raise NotImplementedError

    def error_for(self, method: str, path: str, resp: requests.Response) -> ApiError:
        raise NotImplementedError


def json_object(resp: requests.Response, where: str) -> dict[str, Any]:
    """The JSON object an answer carries; ApiError naming ``where`` when it is not one."""
    try:
        body = resp.json()
    except ValueError:
        raise ApiError(f"{where} answered {resp.status_code} with a body that is not JSON: {resp.text[:200]!r}") from None
    if not isinstance(body, dict):
        raise ApiError(f"{where} answered a JSON {type(body).__name__}, not an object", body=body)
    return body


def message_of(resp: requests.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:200]
    if isinstance(body, dict):
        return str(body.get("message") or body.get("error") or body)[:300]
    return str(body)[:300]
