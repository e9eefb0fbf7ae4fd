"""OAuth 2.0 access tokens for a server integration (docs/reference/salesforce.md §3.1, §3.2): no SOAP login, no refresh
tokens.

JWT bearer (an RS256 assertion) when a private key and a username are given, client credentials when a client secret
is, against ``<login url>/services/oauth2/token`` (the My Domain host for client credentials). The org id and user id
come from the token's ``id`` URL: Pub/Sub needs the org id, the contact side compares the user id.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sync.adapters.salesforce.errors import SIDE, first_error, map_error
from sync.errors import AuthFailed, Transient

logger = logging.getLogger(__name__)

JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"


@dataclass(frozen=True)
class AccessToken:
    access_token: str
    instance_url: str
    org_id: str
    user_id: str
    issued_at: float


class TokenProvider:
    """OAuth 2.0 tokens for a server integration (docs/reference/salesforce.md §3.1, §3.2). No SOAP login, no refresh
    tokens.

    JWT bearer when ``private_key`` and ``username`` are given: an RS256 assertion ``iss`` = client id, ``sub`` =
    username, ``aud`` = ``audience`` (login/test URL), ``exp`` = now + ``assertion_ttl_s``. Client credentials when
    ``client_secret`` is given (the token URL must be the My Domain host). ``token()`` caches; ``token(force=True)``
    mints a new one (after ``INVALID_SESSION_ID``); ``max_age_s`` renews proactively (sessions last 2 h by default).
    A refusal (``AuthFailed``: wrong audience, host, key, user) is remembered for ``refusal_hold_s`` and raised again
    without calling: a wrong setup needs an admin, and every worker retrying it would only hammer the endpoint.
    """

    def __init__(
        self,
        token_url: str,
        client_id: str,
        *,
        username: str | None = None,
        private_key: str | bytes | None = None,
        client_secret: str | None = None,
        audience: str = "https://login.salesforce.com",
        session: Any = None,
        verify: bool | str = True,
        assertion_ttl_s: int = 180,
        max_age_s: float = 3600.0,
        refusal_hold_s: float = 300.0,
        timeout_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if private_key is not None and username:
            self.flow = "jwt_bearer"
        elif client_secret is not None:
            self.flow = "client_credentials"
        else:
            raise ValueError("configure either a private key + username (JWT bearer) or a client secret")
        self._url, self._client_id, self._username = token_url, client_id, username
        self._key, self._secret, self._audience = private_key, client_secret, audience
        self._session, self._verify = session, verify
        self._assertion_ttl, self._max_age, self._timeout, self._clock = assertion_ttl_s, max_age_s, timeout_s, clock
        self._lock = threading.Lock()
        self._current: AccessToken | None = None
        self._hold = refusal_hold_s
        self.refused: tuple[float, AuthFailed] | None = None  # (when, what) of the last refusal
        self.minted = 0

    def token(self, *, force: bool = False) -> AccessToken:
        with self._lock:
            cur = self._current
            if cur is None or force or self._clock() - cur.issued_at >= self._max_age:
                if self.refused is not None and self._clock() - self.refused[0] < self._hold:
                    raise self.refused[1]
                try:
                    self._current = cur = self._mint()
                except AuthFailed as exc:
                    if self.refused is None:
                        logger.error("salesforce token refused (%s): %s", self.flow, exc)
                    self.refused = (self._clock(), exc)
                    raise
                self.refused = None
            return cur

    def invalidate(self, stale: AccessToken | None = None) -> None:
        """Forget the cached token (only if it is still ``stale``, so concurrent callers mint once)."""
        with self._lock:
            if stale is None or self._current == stale:
                self._current = None

    def _form(self) -> dict[str, str]:
        if self.flow == "jwt_bearer":
            import jwt

            now = int(self._clock())
            claims = {"iss": self._client_id, "sub": self._username, "aud": self._audience,
                      "exp": now + self._assertion_ttl}
            assertion = jwt.encode(claims, self._key, algorithm="RS256")  # type: ignore[arg-type]
            return {"grant_type": JWT_GRANT, "assertion": assertion}
        return {"grant_type": "client_credentials", "client_id": self._client_id,
                "client_secret": self._secret or ""}

    def _mint(self) -> AccessToken:
        import requests

        session = self._session
        if session is None:
            session = self._session = requests.Session()
            session.trust_env = False  # REQUESTS_CA_BUNDLE would override ``verify``
            session.verify = self._verify
        try:
            resp = session.post(self._url, data=self._form(), timeout=self._timeout)
        except (requests.Timeout, requests.ConnectionError) as exc:
            raise Transient(f"token endpoint unreachable: {type(exc).__name__}", side=SIDE) from exc
        try:
            body = resp.json()
        except ValueError:
            body = {}
        if resp.status_code != 200 or not isinstance(body, dict) or "access_token" not in body:
            code, message, _ = first_error(body if isinstance(body, dict) else {})
            raise map_error(status=resp.status_code, code=code, message=message, oauth=True)
        # id = https://login.salesforce.com/id/<orgId>/<userId> (docs/reference/salesforce.md §3.1): Pub/Sub needs the
        # org id.
        parts = str(body.get("id", "")).rstrip("/").split("/")
        org_id, user_id = (parts[-2], parts[-1]) if len(parts) >= 2 else ("", "")
        issued = float(body["issued_at"]) / 1000 if str(body.get("issued_at", "")).isdigit() else self._clock()
        self.minted += 1
        logger.info("salesforce token minted (%s) for org %s user %s", self.flow, org_id, user_id)
        return AccessToken(str(body["access_token"]), str(body["instance_url"]), org_id, user_id,
                           min(issued, self._clock()))
