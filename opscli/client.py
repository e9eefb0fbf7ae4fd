"""The HTTP side of the ops CLI: one client, the function key in ``x-functions-key``, typed failures."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import httpx

EXIT_OK, EXIT_DEGRADED, EXIT_FAILING, EXIT_API, EXIT_UNREACHABLE, EXIT_DECLINED = 0, 1, 3, 4, 5, 6


class ApiError(Exception):
    """The API answered with an error status (``status``) or could not be reached (``status`` 0)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status

    @property
    def exit_code(self) -> int:
        return EXIT_UNREACHABLE if self.status == 0 else EXIT_API


@dataclass
class Api:
    base_url: str
    key: str
    timeout: float = 30.0

    @classmethod
    def from_env(cls) -> Api:
        url, key = os.environ.get("SYNC_API_URL", "").rstrip("/"), os.environ.get("SYNC_FUNCTION_KEY", "")
        if not url or not key:
            raise ApiError(0, "set SYNC_API_URL (https://<app host>) and SYNC_FUNCTION_KEY (a function key)")
        return cls(url, key)

    def call(self, method: str, path: str, body: object = None, params: dict[str, Any] | None = None) -> Any:
        url = f"{self.base_url}/api/{path.lstrip('/')}"
        try:
            resp = httpx.request(method, url, json=body, params=params, timeout=self.timeout,
                                 headers={"x-functions-key": self.key, "Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise ApiError(0, f"cannot reach {self.base_url}: {type(exc).__name__}") from None
        try:
            doc = resp.json() if resp.content else {}
        except ValueError:
            doc = {"error": resp.text[:200]}
        if resp.status_code >= 400:
            raise ApiError(resp.status_code, f"{method} /api/{path} -> {resp.status_code}: "
                                             f"{doc.get('error') if isinstance(doc, dict) else doc}")
        return doc
