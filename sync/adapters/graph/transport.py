"""HTTP to Microsoft Graph: an event loop of its own, per-mailbox permits, retries, and the one error mapping.

``_GraphHttp`` runs a private asyncio loop in a background thread (the port's methods are synchronous and submit
coroutines to it) and builds one SDK request adapter on that loop, so no SDK module is imported before an adapter
is constructed (cold start). Every request is raw JSON through that adapter (auth and middleware apply), read back
with kiota's ``NativeResponseHandler``, and carries ``Prefer: IdType="ImmutableId"`` (§1.6) so ids survive moves.

* The SDK's RetryHandler is off on every request: it would re-send a POST after a 503 (§7.4, a duplicate create) and
  sleep any Retry-After uncapped. ``call`` retries 429/503/504 and lost connections itself, honouring Retry-After,
  at most ``max_attempts`` tries and never one wait over ``max_wait``; a create (``only_throttled``) retries a 429 only.
* At most 4 requests per mailbox are in flight (§5): a FIFO pool of permits per mailbox; a ``$batch`` takes
  min(4, items) of them because Graph runs up to four of its items at once against the mailbox. With ``shared``
  (``permits.SharedPermits``, app setting ``GRAPH_MAILBOX_PERMITS=shared``) a request also holds one of the mailbox's
  4 slots in Table Storage, so the limit holds across every instance of the app, not only in this process.
``_map_error`` is the only place a Graph answer becomes a ``sync.errors`` type; its messages carry the status and
error code only (Graph's message text may quote a UPN). Section numbers (§) refer to docs/reference/graph.md.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

from sync.adapters.graph.permits import Held, PermitsUnavailable, SharedPermits
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
from sync.model import Side, mailbox_ref

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

GRAPH_SCOPE = "https://graph.microsoft.com/.default"
IMMUTABLE_ID = 'IdType="ImmutableId"'
MAILBOX_CONCURRENCY = 4  # §5 Outlook: 4 concurrent requests per app + mailbox
_RETRY_STATUSES = frozenset({429, 503, 504})
# §3.3: a delta token Graph dropped. Compared case-insensitively (the docs write syncStateNotFound, Exchange answers
# SyncStateNotFound), on the error code or any innerError code.
_RESYNC_CODES = frozenset({"syncstatenotfound", "syncstateinvalid", "resyncrequired"})
_NOT_FOUND_CODES = frozenset({"erroritemnotfound", "itemnotfound", "errorinvalididmalformed", "resourcenotfound"})


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
    if low in _RESYNC_CODES:
        return Transient(f"Graph dropped the delta token ({what})", side=side, item_id=item_id)
    if status == 412 or low == "errorirresolvableconflict":
        return PreconditionFailed(f"contact changed since it was read ({what})", side=side, item_id=item_id)
    if status == 404 or low in _NOT_FOUND_CODES:
        return NotFound(f"contact or folder not found ({what})", side=side, item_id=item_id)
    if status == 409 or low == "errorfolderexists":
        return AlreadyExists(f"already exists ({what})", side=side, item_id=item_id)
    if status in (401, 403):
        return AuthFailed(f"{_auth_cause(status, low)} ({what})", side=side)
    if status in (429, 503):
        return Throttled(f"Graph is throttling ({what})", retry_after=retry_after, side=side, item_id=item_id)
    if status >= 500 or status in (408, 410, 424):
        return Transient(f"Graph failed ({what})", side=side, item_id=item_id)
    if 400 <= status < 500:
        return BadData(f"Graph refused the request ({what})", code=code or None, side=side, item_id=item_id)
    return Transient(f"unexpected Graph answer ({what})", side=side, item_id=item_id)


def _auth_cause(status: int, low_code: str) -> str:
    """What a 401/403 means for an admin (§6.4): a directory permission, the Exchange scope, or the credentials."""
    if low_code == "authorization_requestdenied":
        return "the app lacks an Entra directory permission for this call (Authorization_RequestDenied)"
    if low_code == "erroraccessdenied":
        return "the mailbox is outside the app's Exchange RBAC for Applications scope (ErrorAccessDenied)"
    if status == 401:
        return "Graph refused the app's token"
    return "Graph refused the call"


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


def odata_query(**params: str) -> str:
    """``?$key=value&...`` for OData system query options (``select``, ``filter``, ``expand``, ``top``)."""
    return "?" + "&".join(f"${k}={quote(v, safe=',')}" for k, v in params.items())


def user_path(mailbox: str) -> str:
    return "/users/" + quote(mailbox, safe="")


def _mb(mailbox: str) -> str:
    """A mailbox as it may appear in logs: a short digest, not the UPN."""
    return mailbox_ref(mailbox)


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
        self, credential: Any, base_url: str, *, max_attempts: int, max_wait: float, timeout_s: float,
        shared: SharedPermits | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.shared = shared  # the slots every instance sees (permits.py); None: this process's permits only
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
        # what is still scheduled (a shared slot's linger timer) ends here; the slots go back with the permits' close
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
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
        # Raw JSON, not the SDK's models: a PATCH carries exactly the keys given and ``null`` clears (§7.7), and the
        # SDK's $batch helpers are not used (§7.6).
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
        held: Held | None = None
        keeper: asyncio.Task[None] | None = None
        try:
            if self.shared is not None and mailbox:
                try:
                    held = await self.shared.acquire(mailbox, taken)
                except PermitsUnavailable as exc:  # the request was not sent: retried like a throttled one
                    logger.warning("graph permits unavailable: %s", exc)
                    raise _Failure(429, "PermitsUnavailable", retry_after=1.0, exc=exc) from exc
                keeper = asyncio.ensure_future(self.shared.keep(held))
            self.stats["requests"] += 1
            raw = await self._adapter.send_primitive_async(info, "bytes", None)
        except _Failure:
            raise
        except Exception as exc:  # no HTTP answer: connection refused/reset, timeout
            raise _Failure(None, exc=exc) from exc
        finally:
            if keeper is not None:
                keeper.cancel()
            if held is not None and self.shared is not None:
                await self.shared.release(held)
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
        inner, depth = err, 0
        while isinstance(inner, dict) and depth < 5 and code.casefold() not in _RESYNC_CODES:
            # the errors page: "loop through all the error codes" - a delta reset may be an innerError's code
            inner, depth = inner.get("innerError") or inner.get("innererror"), depth + 1
            if isinstance(inner, dict) and str(inner.get("code") or "").casefold() in _RESYNC_CODES:
                code = str(inner["code"])
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
        """One raw ``$batch`` (§7.8 f) for one mailbox; per-item answers by id. No retries here (see ``batch``)."""
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

