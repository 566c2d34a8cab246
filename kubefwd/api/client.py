"""A small client of a running kubefwd's API (standard library only), for ``kubefwd mcp``
and ``kubefwd status``: it unwraps the envelope and says in one sentence when no API runs."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote, urlencode

NOT_RUNNING = ("kubefwd's API is not running: start kubefwd with it, e.g. 'kubefwd svc "
               "--api -n NAMESPACE' or 'kubefwd' alone (idle mode), then try again")


class ApiUnavailable(Exception):
    """No API answers at the URL (or none was found)."""


class ApiFailure(Exception):
    """The API answered with an error envelope."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class ApiClient:
    def __init__(self, url: str | None, key: str | None, *, timeout: float = 30.0) -> None:
        self.url = (url or "").rstrip("/")
        self.key = key or ""
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None,
                query: dict[str, Any] | None = None) -> Any:
        if not self.url:
            raise ApiUnavailable(NOT_RUNNING)
        params = {k: v for k, v in (query or {}).items() if v is not None and v != ""}
        url = self.url + path + (f"?{urlencode(params)}" if params else "")
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method, headers={
            "Authorization": f"Bearer {self.key}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                envelope = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            try:
                envelope = json.loads(exc.read())
                error = envelope["error"]
            except (ValueError, KeyError, TypeError):
                raise ApiFailure(exc.code, "http", f"HTTP {exc.code}") from None
            raise ApiFailure(exc.code, error["code"], error["message"]) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise ApiUnavailable(f"{NOT_RUNNING} (no answer at {self.url}: "
                                 f"{getattr(exc, 'reason', exc)})") from None
        return envelope.get("data")

    def get(self, path: str, **query: Any) -> Any:
        return self.request("GET", path, query=query)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, body=body if body is not None else {})

    def delete(self, path: str, **query: Any) -> Any:
        return self.request("DELETE", path, query=query)


def seg(value: str) -> str:
    """One path segment, slashes encoded (``shop/web`` → ``shop%2Fweb``)."""
    return quote(value, safe="")
