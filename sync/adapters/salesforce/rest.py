"""The REST connection to one org: session, token, retries, SOQL pages and sObject Collections calls.

simple-salesforce in direct mode (``Salesforce(instance_url=, session_id=, session=<ours>)``,
docs/reference/salesforce.md §3.3). Headers sit on ``session.headers`` so they survive simple-salesforce's retries
(§3.6): ``Sforce-Call-Options: client=<name>`` (the CDC ``changeOrigin`` echo marker, §2.9). Duplicate rules (§1.3)
are the contact side's business: a write goes without ``Sforce-Duplicate-Rule-Header`` first, and
``DUPLICATES_DETECTED`` is ``DuplicateFound`` (``errors.py``).

Retries (``call``): ``REQUEST_LIMIT_EXCEEDED`` / 503 mean "not processed", so even a POST gets a bounded exponential
backoff, then ``Throttled``. A connection error on a POST is NOT retried (it may have been processed: a retry could
create a duplicate) and surfaces as ``Transient``. ``INVALID_SESSION_ID`` -> one new token and one immediate retry,
then ``AuthFailed``. A guarded write re-checks its version after each backoff (``before_retry``).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from sync.adapters.salesforce.auth import AccessToken, TokenProvider
from sync.adapters.salesforce.errors import SIDE, SessionExpired, error_of
from sync.errors import AuthFailed, Throttled, Transient

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
API_VERSION = "67.0"
MAX_COLLECTION = 200  # sObject Collections records per request (docs/reference/salesforce.md §2.5)
# Kept-alive connections per host. A Functions instance works on up to batchSize + newBatchThreshold (16 + 8, host.json)
# queue messages at once; requests keeps 10 by default and discards the rest after each call, so every call past
# the 10th would open a new TLS connection to Salesforce.
HTTP_POOL_SIZE = 32


def chunks(items: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _more(url: str) -> Callable[[Any], Any]:
    def call(sf: Any) -> Any:
        return sf.query_more(url, identifier_is_url=True)

    return call


class RestClient:
    """One org over simple-salesforce (direct mode). ``calls`` counts REST calls by kind (``query``, ``query_more``,
    ``composite``, ``write``, ``describe``); ``retries`` counts backoffs."""

    def __init__(
        self,
        tokens: TokenProvider,
        *,
        session: Any = None,
        verify: bool | str = True,
        client_name: str = "m365-sync",
        api_version: str = API_VERSION,
        max_retries: int = 4,
        backoff_s: float = 0.5,
        backoff_cap_s: float = 8.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        import requests

        self._tokens = tokens
        if session is None:
            session = requests.Session()
            session.trust_env = False  # REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE would override ``verify``
            session.verify = verify
            for scheme in ("https://", "http://"):
                session.mount(scheme, requests.adapters.HTTPAdapter(pool_maxsize=HTTP_POOL_SIZE))
        # docs/reference/salesforce.md §2.9 (echo marker)
        session.headers["Sforce-Call-Options"] = f"client={client_name}"
        self.session = session
        self._version = api_version
        self._max_retries, self._backoff, self._backoff_cap, self._sleep = max_retries, backoff_s, backoff_cap_s, sleep
        self._lock = threading.RLock()
        self._sf: Any = None
        self.token: AccessToken | None = None  # the token of the current client (None before the first call)
        self.calls: dict[str, int] = {}
        self.retries = 0

    def _client(self) -> Any:
        with self._lock:
            if self._sf is None:
                from simple_salesforce.api import Salesforce

                self.token = self._tokens.token()
                self._sf = Salesforce(instance_url=self.token.instance_url, session_id=self.token.access_token,
                                      version=self._version, session=self.session)
            return self._sf

    def _renew(self) -> None:
        with self._lock:
            self._tokens.invalidate(self.token)
            self._sf = None
        logger.info("salesforce session expired: minting a new token")

    def call(
        self,
        kind: str,
        fn: Callable[[Any], _T],
        *,
        item_id: str | None = None,
        idempotent: bool = True,
        before_retry: Callable[[], object] | None = None,
    ) -> _T:
        """Run one REST call with the retry rules of the module docstring; raise only ``sync.errors`` types.

        ``before_retry`` runs after each backoff sleep, before the call is sent again (not before the first attempt,
        not before the immediate retry with a new token): a guarded write re-checks its version there. A
        ``SyncError`` it raises ends the retries and propagates.
        """
        renewed = False
        attempt = 0
        while True:
            self.calls[kind] = self.calls.get(kind, 0) + 1
            try:
                return fn(self._client())
            except Exception as exc:  # noqa: BLE001 - mapped below, re-raised when not ours
                err = error_of(exc, item_id)
                if err is None:
                    raise
                cause: Exception = exc
            if isinstance(err, SessionExpired) and not renewed:
                renewed = True
                self._renew()
                continue
            retry = isinstance(err, Throttled) or (idempotent and isinstance(err, Transient))
            if retry and attempt < self._max_retries:
                delay = min(self._backoff_cap, self._backoff * 2 ** attempt) * random.uniform(0.75, 1.0)
                attempt += 1
                self.retries += 1
                logger.warning("salesforce %s call failed (%s), retry %d in %.1fs", kind, type(err).__name__,
                               attempt, delay)
                self._sleep(delay)
                if before_retry is not None:
                    before_retry()
                continue
            if isinstance(err, SessionExpired):
                err = AuthFailed(err.message, side=SIDE)
            raise err from cause

    def query_pages(self, soql: str, *, include_deleted: bool = False) -> Iterator[list[dict[str, Any]]]:
        """Pages of a SOQL query, following ``nextRecordsUrl`` (each page one call, retried on its own)."""
        page = self.call("query", lambda sf: sf.query(soql, include_deleted=include_deleted))
        while True:
            yield [dict(r) for r in page.get("records") or []]
            url = page.get("nextRecordsUrl")
            if page.get("done", True) or not url:
                return
            page = self.call("query_more", _more(url))

    def query(self, soql: str, *, include_deleted: bool = False) -> list[dict[str, Any]]:
        return [r for page in self.query_pages(soql, include_deleted=include_deleted) for r in page]

    def restful(self, method: str, body: dict[str, Any] | Callable[[], dict[str, Any]],
                before_retry: Callable[[], object] | None = None, *,
                headers: dict[str, str] | None = None, retry_post: bool = False) -> list[Any]:
        """One sObject Collections call (POST is retried only on "not processed" answers, see ``call``, unless
        ``retry_post``: a create whose ``before_retry`` takes out the records that were made).

        ``body`` may be a callable, evaluated on every attempt (``before_retry`` may shrink what is re-sent)."""
        path = "composite/sobjects"

        def send(sf: Any) -> Any:
            return sf.restful(path, method=method, json=body() if callable(body) else body, headers=headers or {})

        return list(self.call("composite", send, idempotent=method == "PATCH" or retry_post,
                              before_retry=before_retry) or [])

