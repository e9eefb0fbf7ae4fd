"""Microsoft 365 side: the ``Salesforce_Sync`` contact folder of each mailbox, over msgraph-sdk 1.65 + azure-identity.

Public API:
    GraphContactSide(credential, *, base_url, folder_name, mailboxes, marker_property_id, field_map, ...)
        the ``ContactSide`` port (sync/ports.py) for Outlook; ``close()`` when done
    credential_from_settings(kind, tenant_id, client_id, ...)   a TokenCredential for the configured kind
    CredentialKind, MARKER_PROPERTY_ID, DEFAULT_FOLDER_NAME

How it talks to Graph (section numbers are ../shared/reference/graph.md):
    * One private asyncio loop in a background thread per adapter; the synchronous port methods submit coroutines to
      it. One ``GraphRequestAdapter`` (auth provider + httpx client with the SDK middleware) is built once, on that
      loop, and reused. No SDK module is imported before the constructor runs (cold start, STYLE.md habit 14).
    * Every request is raw JSON sent through the SDK's request adapter (auth and middleware apply) and read back with
      kiota's ``NativeResponseHandler``: the mapping module speaks Graph JSON, and raw JSON avoids the model pitfalls
      of §7.7 (a PATCH carries exactly the camelCase keys ``contact_to_graph`` produced, ``null`` clears) and the
      broken ``$batch`` helpers of §7.6. Every request, batch items included, carries ``Prefer: IdType="ImmutableId"``
      (§1.6) so ids survive moves.
    * The SDK's RetryHandler is switched off on every request (``RetryHandlerOption(max_retries=0)``): it would
      re-send a POST after a 503 (§7.4, a duplicate create) and sleep any Retry-After uncapped. This module retries
      itself: 429/503/504 (and connection failures) on idempotent requests, honouring ``Retry-After`` (integer or
      fractional seconds, or an HTTP date) or backing off exponentially, at most ``max_attempts`` tries and never a
      single wait over ``max_wait`` seconds; what is left is raised as ``Throttled(retry_after)`` / ``Transient``.
    * Creates are never blindly retried. A 429 was not executed and is retried. A 5xx or a lost connection is
      *ambiguous* (the create may have happened): when the create carries a marker (the Salesforce id) it also
      carries a create key (``CREATE_KEY_PROPERTY_ID``, a fresh uuid per create call), which the adapter looks up
      (``$filter=singleValueExtendedProperties/any(...)``) and only re-sends when nothing was created. The key, not
      the marker: two workers creating the same person at once stamp the same marker, and a lookup by marker would
      hand one of them the other's copy, leaving its own as a duplicate nobody deletes. A create without a marker
      raises ``Transient``; what protects it on the retry is the engine's match-before-create (``find`` by email,
      then name + company, links the contact the first attempt made).
    * At most 4 requests per mailbox are in flight (§5 "4 concurrent requests" per app + mailbox): a per-mailbox
      permit pool around every request. A ``$batch`` takes min(4, items) permits because Graph runs up to four items
      of a batch at once against the mailbox (§5), so batches of one mailbox run one at a time.
    * ``create_many`` / ``update_many`` send ``$batch`` requests of <= 20; items answered 429/503/504 are re-queued
      with their own Retry-After and go out in a later batch together with fresh items (per-item honouring, so one
      throttled item does not stall the rest); a batch-level failure re-queues all its items the same way.
    * ``changes`` follows ``@odata.nextLink`` itself (PageIterator stops on empty pages, §7.5), re-sends ``Prefer``
      on every page, returns the ``@odata.deltaLink`` as the checkpoint, and on 410 / ``syncStateNotFound`` /
      ``resyncRequired`` starts over with ``full=True`` (§3.3). Delta cannot ``$expand`` extended properties, so
      change-feed records carry no marker (``get`` has it).
    * Folder: ``GET /users/{m}/contactFolders?$filter=displayName eq '…'``, create when missing, and on
      ``ErrorFolderExists`` (a concurrent create) filter again (§2.2). Folder ids are cached per mailbox.
    * ``find``: one ``$filter=emailAddresses/any(a:a/address eq '…')`` per address (the only documented contact
      filter, user-list-contacts), plus a listing of the folder with ``$select=id,givenName,surname,companyName``
      matched locally for first + last name + company (graph.md documents no filter on those properties).

Marker (the Salesforce id on the Outlook contact): a single-value extended property in the String namespace with a
fixed GUID, ``MARKER_PROPERTY_ID`` = ``String {0463b54a-5dcb-4781-9d3f-29b43773c27c} Name SalesforceId``; written
with the contact, read back with ``$expand=singleValueExtendedProperties($filter=id eq '…')``.

Logs carry contact ids, statuses and a short digest of the mailbox, never names, emails or UPNs. Error messages
carry the Graph status and error code only (Graph's message text may quote a UPN).
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import logging
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

from sync.errors import (
    AlreadyExists,
    AuthFailed,
    BadData,
    NotFound,
    PreconditionFailed,
    SyncError,
    Throttled,
    Transient,
)
from sync.mapping import contact_to_graph, graph_to_contact
from sync.model import STANDARD_FIELDS, Contact
from sync.policy import FieldMap, Side
from sync.ports import ChangePage, CreateRequest, SideRecord, UpdateRequest

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

MARKER_PROPERTY_ID = "String {0463b54a-5dcb-4781-9d3f-29b43773c27c} Name SalesforceId"
# A fresh value per create call, so a create whose answer was lost finds *its own* contact, not another worker's
# copy of the same person (which carries the same marker); graph.md §7.4 "stamp a sync key ... look it up".
CREATE_KEY_PROPERTY_ID = "String {0463b54a-5dcb-4781-9d3f-29b43773c27c} Name SyncCreateKey"
DEFAULT_BASE_URL = "https://graph.microsoft.com/v1.0"
DEFAULT_FOLDER_NAME = "Salesforce_Sync"
GRAPH_SCOPE = "https://graph.microsoft.com/.default"
TOKEN_EXCHANGE_SCOPE = "api://AzureADTokenExchange/.default"
IMMUTABLE_ID = 'IdType="ImmutableId"'
MAX_BATCH = 20  # §5 JSON batching
MAILBOX_CONCURRENCY = 4  # §5 Outlook: 4 concurrent requests per app + mailbox
LIST_PAGE_SIZE = 500  # §5: $top <= 999 recommended
_RETRY_STATUSES = frozenset({429, 503, 504})
_RESYNC_CODES = frozenset({"syncstatenotfound", "resyncrequired"})
_NOT_FOUND_CODES = frozenset({"erroritemnotfound", "itemnotfound", "errorinvalididmalformed", "resourcenotfound"})
# Contact properties read everywhere (mapping.py's correspondence plus the version and bookkeeping ones).
_SELECT_BASE: tuple[str, ...] = (
    "id", "changeKey", "lastModifiedDateTime", "parentFolderId", "displayName", "givenName", "surname",
    "emailAddresses", "businessPhones", "homePhones", "mobilePhone", "companyName", "jobTitle", "department",
    "personalNotes", "businessAddress",
)
# Field keys whose Graph body depends on the current resource (collections and the address keep what we don't sync).
_NEEDS_CURRENT = frozenset({
    "email", "email_2", "email_3", "business_phone", "home_phone", "street", "city", "state", "postal_code", "country",
})


# ---------------------------------------------------------------------------------------------- errors


@dataclass(eq=False)
class _Failure(Exception):
    """A Graph request that did not succeed, before it is typed (``_map_error`` types it)."""

    status: int | None  # None: no HTTP answer (connection failure, timeout)
    code: str = ""
    retry_after: float | None = None
    exc: BaseException | None = None

    @property
    def ambiguous(self) -> bool:
        """The request may have been executed although it failed (5xx, lost answer); 429 never ran."""
        return self.status is None or self.status >= 500

    @property
    def retryable(self) -> bool:
        return self.status is None or self.status in _RETRY_STATUSES

    @property
    def resync(self) -> bool:
        return self.status == 410 or self.code.casefold() in _RESYNC_CODES

    def error(self, item_id: str | None = None) -> SyncError:
        return _map_error(self.status, self.code, retry_after=self.retry_after, item_id=item_id, exc=self.exc)


def _map_error(
    status: int | None,
    code: str = "",
    *,
    retry_after: float | None = None,
    item_id: str | None = None,
    exc: BaseException | None = None,
) -> SyncError:
    """The one place Graph failures (HTTP status + error code, or a transport exception) become typed errors."""
    side = Side.M365.value
    low = (code or "").casefold()
    what = f"graph {status or 'no response'}{' ' + code if code else ''}"
    if status is None:
        kind = type(exc).__name__ if exc is not None else "no response"
        return Transient(f"graph request failed: {kind}", side=side, item_id=item_id)
    if status == 412 or low == "errorirresolvableconflict":
        return PreconditionFailed(f"contact changed since it was read ({what})", side=side, item_id=item_id)
    if status == 404 or low in _NOT_FOUND_CODES:
        return NotFound(f"contact or folder not found ({what})", side=side, item_id=item_id)
    if status == 409 or low == "errorfolderexists":
        return AlreadyExists(f"already exists ({what})", side=side, item_id=item_id)
    if status in (401, 403):
        return AuthFailed(f"Graph refused the credentials or the mailbox is out of scope ({what})", side=side)
    if status in (429, 503):
        return Throttled(f"Graph is throttling ({what})", retry_after=retry_after, side=side, item_id=item_id)
    if status >= 500 or status in (408, 410, 424):
        return Transient(f"Graph failed ({what})", side=side, item_id=item_id)
    if 400 <= status < 500:
        return BadData(f"Graph refused the request ({what})", code=code or None, side=side, item_id=item_id)
    return Transient(f"unexpected Graph answer ({what})", side=side, item_id=item_id)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: integer or fractional seconds, or an HTTP date."""
    if not value:
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def odata_str(value: str) -> str:
    """An OData string literal: single quotes doubled (§2.2; the SDK does not escape)."""
    return "'" + value.replace("'", "''") + "'"


def _mb(mailbox: str) -> str:
    """A mailbox as it may appear in logs: a short digest, not the UPN."""
    return hashlib.sha256(mailbox.casefold().encode()).hexdigest()[:10]


# ---------------------------------------------------------------------------------------------- credentials


class CredentialKind(StrEnum):
    SECRET = "secret"
    CERTIFICATE = "certificate"
    MANAGED_IDENTITY = "managed_identity"  # federated: the app trusts the managed identity's token (no secret at all)


def _federated_assertion(managed_identity: Any) -> Callable[[], str]:
    """The client-assertion callback: a managed-identity token for the Entra token-exchange audience."""

    def assertion() -> str:
        token: str = managed_identity.get_token(TOKEN_EXCHANGE_SCOPE).token
        return token

    return assertion


def credential_from_settings(
    kind: str | CredentialKind,
    tenant_id: str,
    client_id: str,
    secret: str | None = None,
    certificate: str | bytes | None = None,
    managed_identity_client_id: str | None = None,
) -> Any:
    """A (synchronous) azure-identity TokenCredential for the app registration ``client_id`` in ``tenant_id``.

    ``secret``: ClientSecretCredential. ``certificate``: CertificateCredential from PEM/PKCS12 bytes, PEM text or a
    file path. ``managed_identity``: ClientAssertionCredential whose assertion is a token of the (user-assigned, when
    ``managed_identity_client_id`` is given) managed identity for ``api://AzureADTokenExchange`` - the app
    registration has a federated credential trusting that identity. Nothing is requested from Entra here.
    Raises ValueError naming the missing or wrong setting.
    """
    try:
        which = CredentialKind(kind)
    except ValueError:
        raise ValueError(
            f"unknown Graph credential kind {kind!r}; use one of {', '.join(k.value for k in CredentialKind)}"
        ) from None
    if not tenant_id or not client_id:
        raise ValueError("the Graph credential needs a tenant id and a client id")
    if which is CredentialKind.SECRET:
        if not secret:
            raise ValueError("credential kind 'secret' needs a client secret")
        from azure.identity import ClientSecretCredential

        return ClientSecretCredential(tenant_id, client_id, secret)
    if which is CredentialKind.CERTIFICATE:
        if not certificate:
            raise ValueError("credential kind 'certificate' needs a certificate (PEM/PKCS12 bytes, PEM text or a path)")
        from azure.identity import CertificateCredential

        if isinstance(certificate, bytes):
            return CertificateCredential(tenant_id, client_id, certificate_data=certificate)
        if certificate.lstrip().startswith("-----BEGIN"):
            return CertificateCredential(tenant_id, client_id, certificate_data=certificate.encode())
        return CertificateCredential(tenant_id, client_id, certificate_path=certificate)
    from azure.identity import ClientAssertionCredential, ManagedIdentityCredential

    identity = (
        ManagedIdentityCredential(client_id=managed_identity_client_id)
        if managed_identity_client_id
        else ManagedIdentityCredential()
    )
    return ClientAssertionCredential(tenant_id, client_id, _federated_assertion(identity))


# ---------------------------------------------------------------------------------------------- transport


@dataclass
class _Response:
    status: int
    headers: Mapping[str, str]
    body: Any  # parsed JSON, or None


class _Permits:
    """A per-mailbox pool of request slots; FIFO so a batch wanting several slots is not starved by single calls."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.free = total
        self._queue: deque[object] = deque()
        self._cond = asyncio.Condition()

    async def acquire(self, n: int) -> int:
        n = max(1, min(n, self.total))
        ticket = object()
        async with self._cond:
            self._queue.append(ticket)
            try:
                await self._cond.wait_for(lambda: self._queue[0] is ticket and self.free >= n)
            finally:
                self._queue.remove(ticket)
                self._cond.notify_all()
            self.free -= n
        return n

    async def release(self, n: int) -> None:
        async with self._cond:
            self.free += n
            self._cond.notify_all()


class _GraphHttp:
    """The loop thread, the SDK request adapter, per-mailbox permits and the retry policy."""

    def __init__(
        self, credential: Any, base_url: str, *, max_attempts: int, max_wait: float, timeout_s: float
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.max_attempts = max(1, max_attempts)
        self.max_wait = max_wait
        self.stats: Counter[str] = Counter()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="graph-adapter-loop", daemon=True)
        self._thread.start()
        self._permits: dict[str, _Permits] = {}
        self._closed = False
        try:
            self._adapter: Any = self.run(self._build(credential, timeout_s))
        except BaseException:
            self._stop_loop()
            raise

    async def _build(self, credential: Any, timeout_s: float) -> Any:
        import httpx
        from kiota_authentication_azure.azure_identity_authentication_provider import (
            AzureIdentityAuthenticationProvider,
        )
        from msgraph.graph_request_adapter import GraphRequestAdapter
        from msgraph.graph_request_adapter import options as graph_options
        from msgraph_core import GraphClientFactory  # type: ignore[import-untyped]

        host = urlsplit(self.base_url).hostname or ""
        # Tokens only ever go to the configured Graph host, even when following nextLinks (§7.1).
        auth = AzureIdentityAuthenticationProvider(credential, scopes=[GRAPH_SCOPE], allowed_hosts=[host])
        client = GraphClientFactory.create_with_default_middleware(
            client=httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 30.0)), http2=True),
            options=graph_options,
        )
        adapter = GraphRequestAdapter(auth, client)
        adapter.base_url = self.base_url  # no trailing slash: single slashes (§7.1)
        return adapter

    # --- sync <-> async ------------------------------------------------------------------------------------
    def run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        if self._closed:
            coro.close()
            raise RuntimeError("the Graph adapter is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.run(self._aclose())
        finally:
            self._closed = True
            self._stop_loop()

    async def _aclose(self) -> None:
        client = getattr(self._adapter, "_http_client", None)
        if client is not None:
            await client.aclose()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    # --- one request ---------------------------------------------------------------------------------------
    def url(self, path_or_url: str) -> str:
        return path_or_url if path_or_url.startswith(("http://", "https://")) else self.base_url + path_or_url

    async def send(
        self,
        method: str,
        path_or_url: str,
        *,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        mailbox: str | None = None,
        slots: int = 1,
    ) -> _Response:
        """One HTTP exchange, no retries; raises ``_Failure(None, exc=...)`` when no answer came back."""
        from kiota_abstractions.method import Method
        from kiota_abstractions.native_response_handler import NativeResponseHandler
        from kiota_abstractions.request_information import RequestInformation
        from kiota_http.middleware.options import ResponseHandlerOption, RetryHandlerOption

        info = RequestInformation(Method[method])
        info.url = self.url(path_or_url)
        info.headers.try_add("Accept", "application/json")
        info.headers.add("Prefer", IMMUTABLE_ID)
        for key, value in (headers or {}).items():
            info.headers.add(key, value)
        if body is not None:
            info.set_stream_content(json.dumps(body).encode(), "application/json")
        info.add_request_options([RetryHandlerOption(max_retries=0), ResponseHandlerOption(NativeResponseHandler())])
        permits = self._permits.setdefault(mailbox.casefold(), _Permits(MAILBOX_CONCURRENCY)) if mailbox else None
        taken = await permits.acquire(slots) if permits else 0
        try:
            self.stats["requests"] += 1
            raw = await self._adapter.send_primitive_async(info, "bytes", None)
        except Exception as exc:  # no HTTP answer: connection refused/reset, timeout
            raise _Failure(None, exc=exc) from exc
        finally:
            if permits:
                await permits.release(taken)
        content = raw.content
        try:
            parsed = json.loads(content) if content else None
        except ValueError:
            parsed = None
        return _Response(raw.status_code, {k.lower(): v for k, v in raw.headers.items()}, parsed)

    @staticmethod
    def failure(status: int, headers: Mapping[str, str], body: Any) -> _Failure:
        err = body.get("error") if isinstance(body, dict) else None
        code = str(err.get("code") or "") if isinstance(err, dict) else ""
        lowered = {k.lower(): v for k, v in headers.items()}
        return _Failure(status, code, parse_retry_after(lowered.get("retry-after")))

    def backoff(self, attempt: int) -> float:
        return min(self.max_wait, 0.5 * 2.0 ** (attempt - 1))

    def wait_for(self, failure: _Failure, attempt: int) -> float | None:
        """Seconds to wait before another attempt, or None when we must give up (attempts or max_wait spent)."""
        if attempt >= self.max_attempts:
            return None
        wait = failure.retry_after if failure.retry_after is not None else self.backoff(attempt)
        return None if wait > self.max_wait else wait

    async def pause(self, seconds: float, failure: _Failure) -> None:
        self.stats["retries"] += 1
        self.stats["waited_ms"] += int(seconds * 1000)
        if failure.status == 429:
            self.stats["throttled"] += 1
        await asyncio.sleep(seconds)

    async def call(
        self,
        method: str,
        path_or_url: str,
        *,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        mailbox: str | None = None,
        only_throttled: bool = False,
    ) -> _Response:
        """A request with retries: 429/503/504/no answer are retried (only 429 when ``only_throttled``: a create)."""
        attempt = 0
        while True:
            attempt += 1
            try:
                resp = await self.send(method, path_or_url, body=body, headers=headers, mailbox=mailbox)
            except _Failure as failure:
                problem = failure
            else:
                if resp.status < 400:
                    return resp
                problem = self.failure(resp.status, resp.headers, resp.body)
            retry = problem.status == 429 if only_throttled else problem.retryable
            wait = self.wait_for(problem, attempt) if retry else None
            if wait is None:
                raise problem
            logger.info("graph %s answered %s, retry %d in %.1fs", method, problem.status, attempt, wait)
            await self.pause(wait, problem)

    async def batch(self, mailbox: str, items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """One raw ``$batch`` (§7.8 f) for one mailbox; per-item answers by id. No retries here (see ``_BatchRun``)."""
        resp = await self.send(
            "POST", "/$batch", body={"requests": items}, mailbox=mailbox, slots=min(len(items), MAILBOX_CONCURRENCY)
        )
        self.stats["batches"] += 1
        if resp.status >= 400:
            raise self.failure(resp.status, resp.headers, resp.body)
        answers = resp.body.get("responses") if isinstance(resp.body, dict) else None
        if not isinstance(answers, list):
            raise _Failure(502, "InvalidBatchResponse")
        return {str(a.get("id")): a for a in answers if isinstance(a, dict)}


# ---------------------------------------------------------------------------------------------- batches


@dataclass(eq=False)
class _Op:
    """One item of a bulk call as a ``$batch`` request, with its retry state and its outcome."""

    method: str
    url: str
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    marker: str | None = None
    create: bool = False
    key: str | None = None  # a create's create key (CREATE_KEY_PROPERTY_ID), looked up after an ambiguous answer
    attempts: int = 0
    not_before: float = 0.0
    check_key: bool = False  # an earlier attempt of this create may have executed: look before re-sending
    result: _Response | _Failure | None = None

    def as_item(self, item_id: str) -> dict[str, Any]:
        headers = {"Prefer": IMMUTABLE_ID, **self.headers}
        item: dict[str, Any] = {"id": item_id, "method": self.method, "url": self.url}
        if self.body is not None:
            headers["Content-Type"] = "application/json"
            item["body"] = self.body
        item["headers"] = headers
        return item


# ---------------------------------------------------------------------------------------------- the side


class GraphContactSide:
    """``ContactSide`` on Microsoft Graph: one folder (``folder_name``) per mailbox. See the module docstring.

    ``credential``: an azure-identity TokenCredential (sync or async ``get_token``), e.g. from
    ``credential_from_settings``. ``mailboxes``: when given, calls for any other mailbox raise AuthFailed.
    ``max_attempts`` / ``max_wait``: the retry bounds (tries per request or batch item; longest single wait in
    seconds - a longer Retry-After is raised at once as ``Throttled(retry_after)`` for the caller to reschedule).
    ``stats`` counts requests, batches, retries, throttled answers and the time waited.
    """

    side = Side.M365
    carries_markers = True  # a single-value extended property (graph.md §2.4)

    def __init__(
        self,
        credential: Any,
        *,
        base_url: str = DEFAULT_BASE_URL,
        folder_name: str = DEFAULT_FOLDER_NAME,
        mailboxes: Iterable[str] | None = None,
        marker_property_id: str = MARKER_PROPERTY_ID,
        field_map: FieldMap | None = None,
        page_size: int = 100,
        max_attempts: int = 5,
        max_wait: float = 30.0,
        timeout_s: float = 60.0,
    ) -> None:
        self._folder_name = folder_name
        self._scope = {m.casefold() for m in mailboxes} if mailboxes is not None else None
        self._marker_id = marker_property_id
        self._field_map = field_map or FieldMap()
        self._page_size = page_size
        custom = tuple(self._field_map.graph_custom().values())
        self._select = ",".join(dict.fromkeys(_SELECT_BASE + custom))
        self._fields = STANDARD_FIELDS + tuple(self._field_map.graph_custom())
        self._expand = f"singleValueExtendedProperties($filter=id eq {odata_str(marker_property_id)})"
        self._folders: dict[str, str] = {}
        self._folder_locks: dict[str, asyncio.Lock] = {}
        self._user_ids: dict[str, str] = {}
        self._http = _GraphHttp(
            credential, base_url, max_attempts=max_attempts, max_wait=max_wait, timeout_s=timeout_s
        )

    # --- plumbing -----------------------------------------------------------------------------------------
    @property
    def stats(self) -> Counter[str]:
        return self._http.stats

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> GraphContactSide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, coro: Coroutine[Any, Any, _T], item_id: str | None = None) -> _T:
        try:
            return self._http.run(coro)
        except _Failure as failure:
            raise failure.error(item_id) from None

    def _check_scope(self, mailbox: str) -> None:
        if self._scope is not None and mailbox.casefold() not in self._scope:
            raise AuthFailed("mailbox is not in the configured sync scope", side=Side.M365.value)

    @staticmethod
    def _user(mailbox: str) -> str:
        return "/users/" + quote(mailbox, safe="")

    def _contacts_path(self, mailbox: str, folder_id: str) -> str:
        return f"{self._user(mailbox)}/contactFolders/{quote(folder_id, safe='')}/contacts"

    def _contact_path(self, mailbox: str, folder_id: str, item_id: str) -> str:
        return f"{self._contacts_path(mailbox, folder_id)}/{quote(item_id, safe='')}"

    @staticmethod
    def _query(**params: str) -> str:
        return "?" + "&".join(f"${k}={quote(v, safe=',')}" for k, v in params.items())

    def _read_query(self, **extra: str) -> str:
        return self._query(**extra, select=self._select, expand=self._expand)

    def _record(self, mailbox: str, doc: Mapping[str, Any], marker: str | None = None) -> SideRecord:
        version = doc.get("changeKey")
        if not version:
            etag = str(doc.get("@odata.etag") or "")
            version = etag[3:-1] if etag.startswith('W/"') else etag or None
        for prop in doc.get("singleValueExtendedProperties") or []:
            if isinstance(prop, Mapping) and str(prop.get("id", "")).casefold() == self._marker_id.casefold():
                marker = prop.get("value")
        modified = None
        if doc.get("lastModifiedDateTime"):
            try:
                modified = datetime.fromisoformat(str(doc["lastModifiedDateTime"]).replace("Z", "+00:00"))
            except ValueError:
                modified = None
        if modified is not None and modified.tzinfo is None:
            modified = modified.replace(tzinfo=UTC)
        return SideRecord(
            side=Side.M365, id=str(doc["id"]), contact=graph_to_contact(doc, self._field_map), version=version,
            owner=mailbox, modified_at=modified, marker=marker,
        )

    # --- folder and user --------------------------------------------------------------------------------------
    def folder_id(self, mailbox: str) -> str:
        """The sync folder's id in ``mailbox`` (created when missing)."""
        self._check_scope(mailbox)
        return self._run(self._folder(mailbox))

    def user_object_id(self, mailbox: str) -> str:
        """The Entra object id of ``mailbox`` (subscriptions want it rather than the UPN, graph.md §4.1)."""
        self._check_scope(mailbox)
        return self._run(self._user_object_id(mailbox))

    async def _user_object_id(self, mailbox: str) -> str:
        key = mailbox.casefold()
        if key not in self._user_ids:
            resp = await self._http.call("GET", self._user(mailbox) + self._query(select="id"), mailbox=mailbox)
            self._user_ids[key] = str(resp.body["id"])
        return self._user_ids[key]

    async def _folder(self, mailbox: str) -> str:
        key = mailbox.casefold()
        if key in self._folders:
            return self._folders[key]
        lock = self._folder_locks.setdefault(key, asyncio.Lock())
        async with lock:
            if key in self._folders:
                return self._folders[key]
            folder = await self._find_folder(mailbox)
            if folder is None:
                try:
                    resp = await self._http.call(
                        "POST", f"{self._user(mailbox)}/contactFolders", body={"displayName": self._folder_name},
                        mailbox=mailbox, only_throttled=True,
                    )
                    folder = str(resp.body["id"])
                    logger.info("created the sync folder %s in mailbox %s", folder, _mb(mailbox))
                except _Failure as failure:
                    # Someone created it meanwhile (or our ambiguous POST did): look again (§2.2).
                    if not (failure.code.casefold() == "errorfolderexists" or failure.ambiguous):
                        raise
                    folder = await self._find_folder(mailbox)
                    if folder is None:
                        raise
            self._folders[key] = folder
            return folder

    async def _find_folder(self, mailbox: str) -> str | None:
        query = self._query(filter=f"displayName eq {odata_str(self._folder_name)}", select="id,displayName")
        resp = await self._http.call("GET", f"{self._user(mailbox)}/contactFolders{query}", mailbox=mailbox)
        for row in (resp.body or {}).get("value") or []:
            if str(row.get("displayName", "")).casefold() == self._folder_name.casefold():
                return str(row["id"])
        return None

    # --- reads --------------------------------------------------------------------------------------------------
    def get(self, mailbox: str, item_id: str) -> SideRecord | None:
        self._check_scope(mailbox)
        return self._run(self._get(mailbox, item_id), item_id)

    async def _get_doc(self, mailbox: str, item_id: str) -> dict[str, Any] | None:
        folder = await self._folder(mailbox)
        try:
            resp = await self._http.call(
                "GET", self._contact_path(mailbox, folder, item_id) + self._read_query(), mailbox=mailbox
            )
        except _Failure as failure:
            if isinstance(failure.error(), NotFound):
                return None  # deleted, never existed, or moved out of the sync folder
            raise
        doc: dict[str, Any] = resp.body
        return doc

    async def _get(self, mailbox: str, item_id: str) -> SideRecord | None:
        doc = await self._get_doc(mailbox, item_id)
        return self._record(mailbox, doc) if doc is not None else None

    async def _list(self, mailbox: str, url: str) -> tuple[list[dict[str, Any]], str | None]:
        resp = await self._http.call("GET", url, mailbox=mailbox)
        body = resp.body or {}
        return list(body.get("value") or []), body.get("@odata.nextLink")

    async def _first_list_url(self, mailbox: str, **params: str) -> str:
        folder = await self._folder(mailbox)
        return self._contacts_path(mailbox, folder) + self._query(**params)

    def _pages(self, mailbox: str, first: Coroutine[Any, Any, str]) -> Iterator[list[dict[str, Any]]]:
        url: str | None = self._run(first)
        while url:
            rows, url = self._run(self._list(mailbox, url))
            yield rows

    def find(self, mailbox: str, contact: Contact) -> list[SideRecord]:
        self._check_scope(mailbox)
        found: dict[str, SideRecord] = {}
        for address in contact.emails:
            flt = f"emailAddresses/any(a:a/address eq {odata_str(address)})"
            first = self._first_list_url(mailbox, filter=flt, select=self._select, expand=self._expand)
            for rows in self._pages(mailbox, first):
                for doc in rows:
                    found.setdefault(str(doc["id"]), self._record(mailbox, doc))
        key = contact.name_company_key()
        if key is not None:
            first = self._first_list_url(mailbox, select="id,givenName,surname,companyName", top=str(LIST_PAGE_SIZE))
            for rows in self._pages(mailbox, first):
                for doc in rows:
                    theirs = ((doc.get("givenName") or "").casefold(), (doc.get("surname") or "").casefold(),
                              (doc.get("companyName") or "").casefold())
                    if theirs == key and str(doc["id"]) not in found:
                        record = self.get(mailbox, str(doc["id"]))
                        if record is not None and record.contact.name_company_key() == key:
                            found[record.id] = record
        return list(found.values())

    def stream(self, mailbox: str) -> Iterator[SideRecord]:
        self._check_scope(mailbox)
        first = self._first_list_url(mailbox, select=self._select, expand=self._expand, top=str(LIST_PAGE_SIZE))
        for rows in self._pages(mailbox, first):
            for doc in rows:
                yield self._record(mailbox, doc)

    async def _by_marker(self, mailbox: str, marker: str) -> dict[str, Any] | None:
        return await self._by_property(mailbox, self._marker_id, marker)

    async def _by_property(self, mailbox: str, property_id: str, value: str) -> dict[str, Any] | None:
        """The first contact of the folder whose extended property ``property_id`` holds ``value``."""
        flt = (
            f"singleValueExtendedProperties/any(ep: ep/id eq {odata_str(property_id)} "
            f"and ep/value eq {odata_str(value)})"
        )
        url = await self._first_list_url(mailbox, filter=flt, select=self._select, expand=self._expand)
        rows, _ = await self._list(mailbox, url)
        return rows[0] if rows else None

    def find_by_marker(self, mailbox: str, marker: str) -> SideRecord | None:
        """The contact stamped with ``marker`` (a Salesforce id) in the sync folder, if any."""
        self._check_scope(mailbox)
        doc = self._run(self._by_marker(mailbox, marker))
        return self._record(mailbox, doc) if doc is not None else None

    # --- writes -------------------------------------------------------------------------------------------------
    def _create_body(self, contact: Contact, marker: str | None, key: str | None = None) -> dict[str, Any]:
        body, truncations = contact_to_graph(contact, self._fields, None, self._field_map)
        if truncations:
            logger.info("create: %d value(s) did not fit Outlook and were cut", len(truncations))
        body = {k: v for k, v in body.items() if v is not None}
        if marker is not None:
            body["singleValueExtendedProperties"] = [{"id": self._marker_id, "value": marker}]
            if key is not None:
                body["singleValueExtendedProperties"].append({"id": CREATE_KEY_PROPERTY_ID, "value": key})
        return body

    def _patch_body(
        self, contact: Contact, fields: frozenset[str], current: Mapping[str, Any], marker: str | None
    ) -> dict[str, Any]:
        body, truncations = contact_to_graph(contact, fields, current, self._field_map)
        if truncations:
            logger.info("update: %d value(s) did not fit Outlook and were cut", len(truncations))
        if marker is not None:
            body["singleValueExtendedProperties"] = [{"id": self._marker_id, "value": marker}]
        return body

    @staticmethod
    def _if_match(version: str | None) -> dict[str, str]:
        return {"If-Match": f'W/"{version}"'} if version else {}

    def create(self, mailbox: str, contact: Contact, *, marker: str | None = None) -> SideRecord:
        """Create in the sync folder. Ambiguous failures are resolved through the marker (module docstring)."""
        self._check_scope(mailbox)
        return self._run(self._create(mailbox, contact, marker))

    async def _create(self, mailbox: str, contact: Contact, marker: str | None) -> SideRecord:
        folder = await self._folder(mailbox)
        key = uuid.uuid4().hex
        body = self._create_body(contact, marker, key)
        attempt = 0
        while True:
            attempt += 1
            try:
                resp = await self._http.call(
                    "POST", self._contacts_path(mailbox, folder), body=body, mailbox=mailbox, only_throttled=True
                )
                return self._record(mailbox, resp.body, marker)
            except _Failure as failure:
                if not failure.ambiguous or marker is None:
                    raise  # not executed (typed as usual), or no marker: the engine's match-before-create protects
                wait = self._http.wait_for(failure, attempt)
                found = await self._by_property(mailbox, CREATE_KEY_PROPERTY_ID, key)
                if found is not None:
                    logger.info("create answered %s but had happened: contact %s", failure.status, found.get("id"))
                    return self._record(mailbox, found, marker)
                if wait is None:
                    raise
                await self._http.pause(wait, failure)

    def update(
        self,
        mailbox: str,
        item_id: str,
        contact: Contact,
        *,
        fields: frozenset[str],
        if_match: str | None,
        marker: str | None = None,
    ) -> SideRecord:
        self._check_scope(mailbox)
        return self._run(self._update(mailbox, item_id, contact, fields, if_match, marker), item_id)

    async def _update(
        self,
        mailbox: str,
        item_id: str,
        contact: Contact,
        fields: frozenset[str],
        if_match: str | None,
        marker: str | None,
    ) -> SideRecord:
        folder = await self._folder(mailbox)
        current: Mapping[str, Any] = {"id": item_id}  # scalar-only PATCH: the body does not depend on the resource
        if fields & _NEEDS_CURRENT or not fields:
            doc = await self._get_doc(mailbox, item_id)
            if doc is None:
                raise _Failure(404, "ErrorItemNotFound")
            if if_match and doc.get("changeKey") != if_match:
                raise _Failure(412, "ErrorIrresolvableConflict")
            if not fields and marker is None:
                return self._record(mailbox, doc)
            current = doc
        body = self._patch_body(contact, fields, current, marker)
        resp = await self._http.call(
            "PATCH", self._contact_path(mailbox, folder, item_id), body=body, headers=self._if_match(if_match),
            mailbox=mailbox,
        )
        if marker is None and "changeKey" in current:  # a full resource was read: it knows the marker
            marker = self._record(mailbox, current).marker
        return self._record(mailbox, resp.body, marker)

    def delete(self, mailbox: str, item_id: str, *, if_match: str | None) -> None:
        self._check_scope(mailbox)
        self._run(self._delete(mailbox, item_id, if_match), item_id)

    async def _delete(self, mailbox: str, item_id: str, if_match: str | None) -> None:
        folder = await self._folder(mailbox)
        path = self._contact_path(mailbox, folder, item_id)
        attempt = 0
        while True:
            attempt += 1
            try:
                resp = await self._http.send("DELETE", path, headers=self._if_match(if_match), mailbox=mailbox)
                if resp.status < 400:
                    return
                failure = self._http.failure(resp.status, resp.headers, resp.body)
            except _Failure as lost:
                failure = lost
            if attempt > 1 and failure.status == 404:
                return  # an earlier attempt of this delete went through
            wait = self._http.wait_for(failure, attempt) if failure.retryable else None
            if wait is None:
                raise failure
            await self._http.pause(wait, failure)

    # --- bulk ---------------------------------------------------------------------------------------------------
    def create_many(self, mailbox: str, items: Sequence[CreateRequest]) -> list[SideRecord | SyncError]:
        self._check_scope(mailbox)
        return self._run(self._create_many(mailbox, items))

    async def _create_many(self, mailbox: str, items: Sequence[CreateRequest]) -> list[SideRecord | SyncError]:
        folder = await self._folder(mailbox)
        url = self._contacts_path(mailbox, folder)
        keys = [uuid.uuid4().hex if i.marker is not None else None for i in items]
        ops = [
            _Op("POST", url, self._create_body(i.contact, i.marker, key), marker=i.marker, create=True, key=key)
            for i, key in zip(items, keys, strict=True)
        ]
        await self._run_ops(mailbox, ops)
        out: list[SideRecord | SyncError] = []
        for op in ops:
            if isinstance(op.result, _Response):
                out.append(self._record(mailbox, op.result.body, op.marker))
            else:
                out.append(self._item_error(op.result, None))
        logger.info("create_many in mailbox %s: %d items, %d failed", _mb(mailbox), len(ops),
                    sum(isinstance(r, SyncError) for r in out))
        return out

    def update_many(self, mailbox: str, items: Sequence[UpdateRequest]) -> list[SideRecord | SyncError]:
        self._check_scope(mailbox)
        return self._run(self._update_many(mailbox, items))

    async def _update_many(self, mailbox: str, items: Sequence[UpdateRequest]) -> list[SideRecord | SyncError]:
        folder = await self._folder(mailbox)
        out: list[SideRecord | SyncError | None] = [None] * len(items)
        # Phase 1: read the current resource where the PATCH body depends on it (collections, the address).
        reads = {
            n: _Op("GET", self._contact_path(mailbox, folder, i.item_id) + self._read_query())
            for n, i in enumerate(items)
            if i.fields & _NEEDS_CURRENT or not i.fields
        }
        await self._run_ops(mailbox, list(reads.values()))
        currents: dict[int, Mapping[str, Any]] = {}
        for n, item in enumerate(items):
            op = reads.get(n)
            if op is None:
                currents[n] = {"id": item.item_id}
            elif not isinstance(op.result, _Response):
                out[n] = self._item_error(op.result, item.item_id)
            elif item.if_match and op.result.body.get("changeKey") != item.if_match:
                out[n] = _map_error(412, "ErrorIrresolvableConflict", item_id=item.item_id)
            elif not item.fields and item.marker is None:
                out[n] = self._record(mailbox, op.result.body)
            else:
                currents[n] = op.result.body
        # Phase 2: the PATCHes.
        patches = {
            n: _Op(
                "PATCH", self._contact_path(mailbox, folder, items[n].item_id),
                self._patch_body(items[n].contact, items[n].fields, current, items[n].marker),
                headers=self._if_match(items[n].if_match),
            )
            for n, current in currents.items()
        }
        await self._run_ops(mailbox, list(patches.values()))
        for n, op in patches.items():
            item = items[n]
            if isinstance(op.result, _Response):
                current = currents[n]
                known = item.marker if item.marker is not None else (
                    self._record(mailbox, current).marker if "changeKey" in current else None
                )
                out[n] = self._record(mailbox, op.result.body, known)
            else:
                out[n] = self._item_error(op.result, item.item_id)
        return [r if r is not None else _map_error(None, item_id=items[n].item_id) for n, r in enumerate(out)]

    @staticmethod
    def _item_error(result: _Response | _Failure | None, item_id: str | None) -> SyncError:
        if isinstance(result, _Failure):
            return result.error(item_id)
        return _map_error(None, item_id=item_id)

    async def _run_ops(self, mailbox: str, ops: list[_Op]) -> None:
        """Send ``ops`` in ``$batch`` requests of <= 20, retrying per item; fills each op's ``result``."""
        loop = asyncio.get_running_loop()
        pending: list[_Op] = list(ops)
        while pending:
            now = loop.time()
            ready = [op for op in pending if op.not_before <= now][:MAX_BATCH]
            if not ready:
                await asyncio.sleep(max(0.0, min(op.not_before for op in pending) - now))
                continue
            chosen = set(map(id, ready))
            pending = [op for op in pending if id(op) not in chosen]
            sending: list[_Op] = []
            for op in ready:
                if op.check_key and op.key is not None:
                    try:
                        found = await self._by_property(mailbox, CREATE_KEY_PROPERTY_ID, op.key)
                    except _Failure as failure:
                        op.result = failure
                        continue
                    if found is not None:
                        logger.info("batch create had happened after all: contact %s", found.get("id"))
                        op.result = _Response(201, {}, found)
                        continue
                    op.check_key = False
                sending.append(op)
            if not sending:
                continue
            for op in sending:
                op.attempts += 1
            try:
                answers = await self._http.batch(mailbox, [op.as_item(str(n)) for n, op in enumerate(sending)])
            except _Failure as failure:  # the whole batch failed: every item shares its fate
                self.stats["throttled"] += failure.status == 429
                for op in sending:
                    self._settle(op, failure, pending, loop.time())
                continue
            for n, op in enumerate(sending):
                answer = answers.get(str(n))
                if answer is None:
                    self._settle(op, _Failure(None), pending, loop.time())
                    continue
                status = int(answer.get("status") or 0)
                headers = answer.get("headers") or {}
                body = answer.get("body")
                if 200 <= status < 300:
                    op.result = _Response(status, headers, body)
                else:
                    self.stats["throttled"] += status == 429
                    self._settle(op, self._http.failure(status, headers, body), pending, loop.time())

    def _settle(self, op: _Op, failure: _Failure, pending: list[_Op], now: float) -> None:
        """Give up on ``op`` with ``failure``, or re-queue it after the wait Graph asked for."""
        if op.create and failure.ambiguous:
            if op.key is None:
                op.result = failure  # Transient: the engine's match-before-create protects the retry
                return
            op.check_key = True
        retry = failure.retryable or (op.create and failure.ambiguous)
        wait = self._http.wait_for(failure, op.attempts) if retry else None
        if wait is None:
            op.result = failure
            return
        self.stats["retries"] += 1  # items re-queued (429s are counted once per answer, in _run_ops)
        self.stats["waited_ms"] += int(wait * 1000)
        op.not_before = now + wait
        pending.append(op)

    # --- change feed --------------------------------------------------------------------------------------------
    def changes(self, mailbox: str, checkpoint: str | None) -> Iterator[ChangePage]:
        """Graph delta on the sync folder; the checkpoint is the deltaLink (module docstring)."""
        self._check_scope(mailbox)
        full = checkpoint is None
        url = checkpoint or self._run(self._delta_start(mailbox))
        prefer = {"Prefer": f"odata.maxpagesize={self._page_size}"}
        while True:
            try:
                resp = self._http.run(self._http.call("GET", url, headers=prefer, mailbox=mailbox))
            except _Failure as failure:
                if failure.resync and not full:
                    logger.info("delta token of mailbox %s expired (%s): full resync", _mb(mailbox), failure.status)
                    full = True
                    url = self._run(self._delta_start(mailbox))
                    continue
                raise failure.error() from None
            body = resp.body or {}
            records: list[SideRecord] = []
            removed: list[str] = []
            for doc in body.get("value") or []:
                if "@removed" in doc:
                    removed.append(str(doc["id"]))
                else:
                    records.append(self._record(mailbox, doc))
            next_link = body.get("@odata.nextLink")
            if next_link:
                if records or removed:
                    yield ChangePage(records=tuple(records), removed=tuple(removed), full=full)
                url = next_link
                continue
            delta_link = body.get("@odata.deltaLink")
            if not delta_link:
                raise _map_error(502, "NoDeltaLink")
            yield ChangePage(records=tuple(records), removed=tuple(removed), checkpoint=delta_link, full=full)
            return

    async def _delta_start(self, mailbox: str) -> str:
        folder = await self._folder(mailbox)
        delta_select = ",".join(p for p in self._select.split(",") if p != "parentFolderId")
        return self._contacts_path(mailbox, folder) + "/delta" + self._query(select=delta_select)


__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_FOLDER_NAME",
    "MARKER_PROPERTY_ID",
    "CredentialKind",
    "GraphContactSide",
    "credential_from_settings",
    "odata_str",
    "parse_retry_after",
]
