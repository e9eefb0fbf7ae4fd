"""Salesforce side: Contact records over REST with simple-salesforce (direct mode), plus the OAuth token provider.

Public API:
    TokenProvider(token_url, client_id, ...)   OAuth JWT bearer (RS256 assertion) or client credentials against
                                               ``<login url>/services/oauth2/token`` (salesforce.md §3.1, §3.2); no SOAP
    AccessToken                                access token, instance URL, org id and user id (from the ``id`` URL)
    SalesforceContactSide(tokens, mailboxes=...)  the ``ContactSide`` of the org (sync.ports)
    map_error(...)                             THE one table turning Salesforce failures (REST, OAuth, collection items,
                                               Pub/Sub gRPC) into ``sync.errors`` types
    SessionExpired, ReplayRejected             the two adapter-specific error types (both ``SyncError``)

Choices (each one a design decision, see the docstrings for the details):
- Client: ``Salesforce(instance_url=, session_id=, version="67.0", session=<ours>)`` (direct mode, §3.3). Headers on
  ``session.headers`` so they survive simple-salesforce's retries (§3.6): ``Sforce-Call-Options: client=<name>`` (the
  CDC ``changeOrigin`` echo marker, §2.9) and ``Sforce-Duplicate-Rule-Header: allowSave=true`` (§1.3).
- Duplicate rule: the engine matches before it creates (email, then name + company), so a duplicate-rule *alert* on our
  write is a second opinion we already had; we send ``allowSave=true`` (``allow_duplicates=True``, default). With it
  off, ``DUPLICATES_DETECTED`` (and a *Block* rule, which allowSave cannot bypass) becomes ``BadData(code=...)``:
  not retryable, the item goes to review.
- Version = ``SystemModstamp`` (Contact has no ETag, §2.7). Updates/deletes with ``if_match`` re-read it just before
  the write (and before each retry of it, see Retries) and raise ``PreconditionFailed`` on a mismatch. Remaining
  race: a write landing between our read and our PATCH/DELETE (milliseconds) is overwritten/deleted; the next CDC
  event or reconcile sees the result and the three-way merge repairs what it can. Same-millisecond writes share a
  stamp and cannot be told apart.
- Owners: each synced mailbox maps to the active User whose FederationIdentifier, else Email, equals it
  (case-insensitive). Cached for ``user_cache_ttl_s``. A record owned by anyone else has ``owner=None``.
  A mailbox with no (or an ambiguous) user raises ``BadData`` when used: never an empty stream.
- Company: ``Account.Name`` is read with every record. On write the name is resolved to an Account by Name
  (case-insensitive, oldest first, cached); failing that, by the contact's email domain (the one Account whose
  Website is on that domain; never for free-mail domains), so "Contoso" finds "Contoso, Inc." instead of creating a
  near-duplicate Account (Salesforce then holds that Account's name; the per-side merge base keeps this stable).
  An unknown name with no domain match creates the Account (``create_missing_accounts=True``,
  default) - so Salesforce holds exactly the company that was asked for; with it off the item fails with
  ``BadData(fields=("company",), code="ACCOUNT_NOT_FOUND")`` and its id is appended to ``unresolved_accounts``.
  The company is never silently dropped. ``company=None`` clears AccountId.
- Marker: the Outlook id in ``marker_field`` (e.g. ``Outlook_Id__c``) when configured, ignored otherwise.
- Retries (``_call``): ``REQUEST_LIMIT_EXCEEDED`` / 503 -> bounded exponential backoff, then ``Throttled``. These
  answers mean "not processed", so even a POST is retried; a connection error on a POST is NOT retried (it may have
  been processed: a retry could create a duplicate) and surfaces as ``Transient``. A guarded update/delete compares
  SystemModstamp again after each backoff before it re-sends (``before_retry``; ``update_many`` drops the changed
  records from the retried chunk): an edit made during the wait gives ``PreconditionFailed`` instead of being
  overwritten (also when the failed attempt had in fact run: our own write moved the stamp, the engine re-reads).
  ``INVALID_SESSION_ID`` -> one new token and one immediate retry, then ``AuthFailed``.
- ``changes``: checkpoint = a SystemModstamp watermark (+ the ids seen at exactly that stamp, so ``>=`` queries do not
  repeat them). One org-wide queryAll of ``SystemModstamp >= watermark`` is split: live and owned by the mailbox's
  user -> changed; deleted (Recycle Bin) or owned by someone else -> ``removed``. SOQL cannot tell who owned a record
  before, so ``removed`` is a superset: it may list ids that never were in this mailbox (the consumer ignores ids it
  has no link for). No checkpoint, a bad one, or one older than the Recycle Bin window -> full listing (``full=True``).
  Remaining race: a transaction that commits after our query with a SystemModstamp at or before our watermark is
  missed by the feed (CDC delivers it; the periodic full reconcile is the backstop).
"""

from __future__ import annotations

import base64
import json
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

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
from sync.mapping import contact_to_salesforce, salesforce_to_contact
from sync.model import Contact
from sync.policy import DEFAULT_SALESFORCE_LENGTHS, FieldMap, Side
from sync.ports import ChangePage, CreateRequest, SideRecord, UpdateRequest

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
SIDE = "salesforce"
API_VERSION = "67.0"
MAX_COLLECTION = 200  # sObject Collections records per request (salesforce.md §2.5)
MAX_IDS_PER_SOQL = 200  # ids in one ``WHERE Id IN (...)`` (keeps the GET URL short)
# Kept-alive connections per host. A Functions instance works on up to batchSize + newBatchThreshold (16 + 8, host.json)
# queue messages at once; requests keeps 10 by default and discards the rest after each call, so every call past
# the 10th would open a new TLS connection to Salesforce.
HTTP_POOL_SIZE = 32
RECYCLE_BIN_DAYS = 15  # queryAll sees deleted rows this long (salesforce.md §2.3)
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
_ID = re.compile(r"^[a-zA-Z0-9]{15}(?:[a-zA-Z0-9]{3})?$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# ---------------------------------------------------------------------------------------------- errors


class SessionExpired(AuthFailed):
    """401 ``INVALID_SESSION_ID`` (or gRPC ``UNAUTHENTICATED``): get a new token and retry once."""


class _NothingToRetry(SyncError):
    """Internal: a retried collection chunk has no record left to send (each one changed or vanished)."""


class ReplayRejected(SyncError):
    """The Pub/Sub replay id is invalid or older than the 72 h retention (salesforce.md §4.5): events were lost,
    a full reconcile is needed."""


_BAD_DATA_CODES = frozenset({
    "REQUIRED_FIELD_MISSING", "STRING_TOO_LONG", "INVALID_EMAIL_ADDRESS", "FIELD_CUSTOM_VALIDATION_EXCEPTION",
    "MALFORMED_ID", "INVALID_CROSS_REFERENCE_KEY", "INACTIVE_OWNER_OR_USER", "INVALID_FIELD",
    "INVALID_FIELD_FOR_INSERT_UPDATE", "DUPLICATES_DETECTED", "INVALID_TYPE", "MALFORMED_QUERY",
    "INVALID_QUERY_FILTER_OPERATOR", "JSON_PARSER_ERROR", "EXCEEDED_ID_LIMIT", "MISSING_ARGUMENT",
    "FIELD_INTEGRITY_EXCEPTION", "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
})
_NOT_FOUND_CODES = frozenset({"ENTITY_IS_DELETED", "NOT_FOUND", "INVALID_ID_FIELD"})
_AUTH_CODES = frozenset({
    "INSUFFICIENT_ACCESS", "INSUFFICIENT_ACCESS_OR_READONLY", "INSUFFICIENT_ACCESS_ON_CROSS_REFERENCE_ENTITY",
    "API_DISABLED_FOR_ORG", "API_CURRENTLY_DISABLED", "FUNCTIONALITY_NOT_ENABLED",
})
_TRANSIENT_CODES = frozenset({"UNABLE_TO_LOCK_ROW", "ALL_OR_NONE_OPERATION_ROLLED_BACK", "INVALID_QUERY_LOCATOR",
                              "SERVER_UNAVAILABLE", "QUERY_TIMEOUT"})
_GRPC_PREFIX = "sfdc.platform.eventbus.grpc."


def map_error(
    *,
    status: int | None = None,
    code: str | None = None,
    message: str = "",
    fields: Sequence[str] = (),
    item_id: str | None = None,
    oauth: bool = False,
    grpc_status: str | None = None,
    retry_after: float | None = None,
) -> SyncError:
    """The one place Salesforce failures become typed errors.

    ``status``/``code``: REST HTTP status and ``errorCode`` (or a collection item's ``statusCode``); ``oauth``: the
    token endpoint answered (``code`` = the OAuth ``error``); ``grpc_status``: a Pub/Sub status name with ``code`` =
    its ``error-code`` trailer (salesforce.md §5.1). Service-level errors keep the code and a cut message. An error
    about a record's content keeps the code and the field names only: Salesforce's message quotes the value
    ("Email: invalid email address: <the address>", "data value too large: <the value>", "duplicate value found:
    ..."), and the error text reaches the audit table and the status page, which hold ids and field names, never values.
    """
    code = code or ""
    text = f"{code}: {message}"[:200] if code else message[:200]
    fields_t = tuple(fields)
    about_record = (f"{code} on {', '.join(fields_t)}" if fields_t else code) or f"HTTP {status}"
    if grpc_status is not None:
        if "replayid" in code:
            return ReplayRejected(f"replay id rejected: {text}", side=SIDE)
        if grpc_status == "UNAUTHENTICATED" or code.endswith("auth.error"):
            return SessionExpired(f"pub/sub session refused: {text}", side=SIDE)
        if grpc_status == "PERMISSION_DENIED":
            return AuthFailed(f"pub/sub permission denied: {text}", side=SIDE)
        if grpc_status == "RESOURCE_EXHAUSTED" or code.endswith("limit.exceeded"):
            return Throttled(f"pub/sub allocation exceeded: {text}", side=SIDE, retry_after=retry_after)
        if grpc_status in ("INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "UNIMPLEMENTED"):
            return BadData(f"pub/sub refused the request: {text}", code=code or grpc_status, side=SIDE)
        return Transient(f"pub/sub failed ({grpc_status}): {text}", side=SIDE)
    if oauth:
        if status is not None and status >= 500:
            return Transient(f"token endpoint failed: {text}", side=SIDE)
        return AuthFailed(f"token request refused: {text}", side=SIDE)
    if code == "REQUEST_LIMIT_EXCEEDED" or status in (429, 503):
        return Throttled(f"salesforce asks us to slow down: {text}", side=SIDE, item_id=item_id,
                         retry_after=retry_after)
    if code == "INVALID_SESSION_ID" or status == 401:
        return SessionExpired(f"session expired or invalid: {text}", side=SIDE)
    if code in _NOT_FOUND_CODES or status == 404:
        return NotFound(f"record not found: {text}", side=SIDE, item_id=item_id)
    if code in ("DUPLICATE_VALUE", "DUPLICATE_EXTERNAL_ID"):
        return AlreadyExists(f"unique value already used: {about_record}", side=SIDE, item_id=item_id)
    if code in _AUTH_CODES or status == 403:
        return AuthFailed(f"not allowed: {text}", side=SIDE, item_id=item_id)
    if code in _TRANSIENT_CODES or (status is not None and status >= 500):
        return Transient(f"salesforce failed: {text}", side=SIDE, item_id=item_id)
    if code in _BAD_DATA_CODES or (status is not None and 400 <= status < 500):
        return BadData(f"salesforce refused the content: {about_record}", fields=fields_t, code=code or None,
                       side=SIDE, item_id=item_id)
    return Transient(f"salesforce error: {about_record}", side=SIDE, item_id=item_id)


def _first_error(content: Any) -> tuple[str | None, str, tuple[str, ...]]:
    """(code, message, fields) of a REST error body: ``[{"errorCode"|"statusCode", "message", "fields"}]``."""
    item = content[0] if isinstance(content, list) and content else content
    if isinstance(item, Mapping):
        code = item.get("errorCode") or item.get("statusCode") or item.get("error")
        message = item.get("message") or item.get("error_description") or ""
        fields = tuple(str(f) for f in item.get("fields") or ())
        return (str(code) if code else None), str(message), fields
    return None, str(content or "")[:200], ()


def _error_of(exc: BaseException, item_id: str | None) -> SyncError | None:
    """The typed error for an exception raised by simple-salesforce / requests (None: not ours to map)."""
    import requests
    from simple_salesforce.exceptions import SalesforceError

    if isinstance(exc, SyncError):
        return exc
    if isinstance(exc, SalesforceError):
        code, message, fields = _first_error(exc.content)
        return map_error(status=exc.status, code=code, message=message, fields=fields, item_id=item_id)
    if isinstance(exc, requests.Timeout | requests.ConnectionError):
        return Transient(f"salesforce unreachable: {type(exc).__name__}", side=SIDE, item_id=item_id)
    return None


def _collection_error(result: Mapping[str, Any], item_id: str | None) -> SyncError:
    code, message, fields = _first_error(result.get("errors") or [])
    return map_error(status=None, code=code, message=message, fields=fields, item_id=item_id)


# ---------------------------------------------------------------------------------------------- tokens


@dataclass(frozen=True)
class AccessToken:
    access_token: str
    instance_url: str
    org_id: str
    user_id: str
    issued_at: float


class TokenProvider:
    """OAuth 2.0 tokens for a server integration (salesforce.md §3.1, §3.2). No SOAP login, no refresh tokens.

    JWT bearer when ``private_key`` and ``username`` are given: an RS256 assertion ``iss`` = client id, ``sub`` =
    username, ``aud`` = ``audience`` (login/test URL), ``exp`` = now + ``assertion_ttl_s``. Client credentials when
    ``client_secret`` is given (the token URL must be the My Domain host). ``token()`` caches; ``token(force=True)``
    mints a new one (after ``INVALID_SESSION_ID``); ``max_age_s`` renews proactively (sessions last 2 h by default).
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
        self.minted = 0

    def token(self, *, force: bool = False) -> AccessToken:
        with self._lock:
            cur = self._current
            if cur is None or force or self._clock() - cur.issued_at >= self._max_age:
                self._current = cur = self._mint()
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
            code, message, _ = _first_error(body if isinstance(body, dict) else {})
            raise map_error(status=resp.status_code, code=code, message=message, oauth=True)
        # id = https://login.salesforce.com/id/<orgId>/<userId> (salesforce.md §3.1): Pub/Sub needs the org id.
        parts = str(body.get("id", "")).rstrip("/").split("/")
        org_id, user_id = (parts[-2], parts[-1]) if len(parts) >= 2 else ("", "")
        issued = float(body["issued_at"]) / 1000 if str(body.get("issued_at", "")).isdigit() else self._clock()
        self.minted += 1
        logger.info("salesforce token minted (%s) for org %s user %s", self.flow, org_id, user_id)
        return AccessToken(str(body["access_token"]), str(body["instance_url"]), org_id, user_id,
                           min(issued, self._clock()))


# ---------------------------------------------------------------------------------------------- helpers


def soql_quote(value: str) -> str:
    """A SOQL string literal (backslash and quote escaped; SOQL reference 'Quoted String Escape Sequences')."""
    escaped = (value.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\r", "\\r")
               .replace("\t", "\\t"))
    return f"'{escaped}'"


def _soql_datetime(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def _parse_dt(text: str | None) -> datetime | None:
    if not text:
        return None
    t = text.replace("Z", "+00:00")
    if re.search(r"[+-]\d{4}$", t):
        t = t[:-2] + ":" + t[-2:]
    return datetime.fromisoformat(t)


def _more(url: str) -> Callable[[Any], Any]:
    def call(sf: Any) -> Any:
        return sf.query_more(url, identifier_is_url=True)

    return call


def _chunks(items: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


@dataclass(frozen=True)
class _Watermark:
    """The ``changes`` checkpoint: SystemModstamp of the newest row seen + the ids seen at exactly that stamp."""

    stamp: datetime
    ids: frozenset[str]

    MAX_IDS = 500  # beyond this (a bulk load in one second) the stamp moves 1 ms past them instead, see dump

    def dump(self) -> str:
        stamp, ids = self.stamp, sorted(self.ids)
        if len(ids) > self.MAX_IDS:
            # every row at this stamp was reported: step past it rather than report them all again on every run
            # (only a row committed later with this very stamp would be missed; CDC and the weekly full pass see it)
            stamp, ids = stamp + timedelta(milliseconds=1), []
        raw = json.dumps({"v": 1, "wm": _soql_datetime(stamp), "ids": ids}, separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode()

    @classmethod
    def load(cls, text: str | None) -> _Watermark | None:
        if not text:
            return None
        try:
            data = json.loads(base64.urlsafe_b64decode(text.encode()))
            stamp = _parse_dt(data["wm"])
            if data.get("v") != 1 or stamp is None:
                return None
            return cls(stamp, frozenset(str(i) for i in data.get("ids") or ()))
        except (ValueError, KeyError, TypeError):
            return None

    def advanced(self, rows: Iterable[tuple[str, datetime]]) -> _Watermark:
        stamp, ids = self.stamp, set(self.ids)
        for rid, ts in rows:
            if ts > stamp:
                stamp, ids = ts, {rid}
            elif ts == stamp:
                ids.add(rid)
        return _Watermark(stamp, frozenset(ids))


# ---------------------------------------------------------------------------------------------- the side


# Consumer mail domains never identify a company (account resolution by email domain skips them).
FREE_MAIL_DOMAINS = frozenset({
    "gmail.com", "googlemail.com", "outlook.com", "hotmail.com", "live.com", "msn.com", "yahoo.com", "ymail.com",
    "icloud.com", "me.com", "mac.com", "aol.com", "gmx.com", "gmx.net", "gmx.de", "web.de", "mail.com",
    "proton.me", "protonmail.com", "zoho.com", "yandex.com", "yandex.ru", "qq.com", "163.com",
})


def _website_host(website: object) -> str:
    """'https://www.Contoso.com/about' -> 'contoso.com'."""
    text = str(website or "").strip().casefold()
    text = text.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
    return text[4:] if text.startswith("www.") else text


def _domain_hints(contacts: Iterable[Contact]) -> dict[str, str]:
    """Company name (casefold) -> the email domain of a contact naming it (first one wins)."""
    out: dict[str, str] = {}
    for c in contacts:
        if c.company and c.emails and "@" in c.emails[0]:
            out.setdefault(c.company.casefold(), c.emails[0].rsplit("@", 1)[1].casefold())
    return out


class SalesforceContactSide:
    """The Salesforce org as a ``ContactSide`` (see the module docstring for every choice).

    ``mailboxes``: the synced mailboxes (or a callable returning them). ``calls`` counts REST calls by kind
    (``query``, ``query_more``, ``composite``, ``write``, ``describe``); ``retries`` counts backoffs.
    """

    side = Side.SALESFORCE

    def __init__(
        self,
        tokens: TokenProvider,
        *,
        mailboxes: Sequence[str] | Callable[[], Sequence[str]],
        session: Any = None,
        verify: bool | str = True,
        client_name: str = "m365-sync",
        api_version: str = API_VERSION,
        field_map: FieldMap | None = None,
        marker_field: str | None = None,
        allow_duplicates: bool = True,
        create_missing_accounts: bool = True,
        lengths: Mapping[str, int] | None = None,
        use_describe_lengths: bool = True,
        max_retries: int = 4,
        backoff_s: float = 0.5,
        backoff_cap_s: float = 8.0,
        sleep: Callable[[float], None] = time.sleep,
        user_cache_ttl_s: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        import requests

        self._tokens = tokens
        self._mailboxes = mailboxes
        if session is None:
            session = requests.Session()
            session.trust_env = False  # REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE would override ``verify``
            session.verify = verify
            for scheme in ("https://", "http://"):
                session.mount(scheme, requests.adapters.HTTPAdapter(pool_maxsize=HTTP_POOL_SIZE))
        session.headers["Sforce-Call-Options"] = f"client={client_name}"  # salesforce.md §2.9 (echo marker)
        if allow_duplicates:
            session.headers["Sforce-Duplicate-Rule-Header"] = "allowSave=true"  # salesforce.md §1.3
        self._session = session
        self.client_name = client_name
        self._version = api_version
        self._field_map = field_map or FieldMap()
        self._marker_field = marker_field
        self.carries_markers = bool(marker_field)  # the Outlook id needs a Contact text field (SF_OUTLOOK_ID_FIELD)
        self._create_accounts = create_missing_accounts
        self._lengths: Mapping[str, int] = dict(lengths or DEFAULT_SALESFORCE_LENGTHS)
        self._describe_pending = use_describe_lengths and lengths is None
        self._max_retries, self._backoff, self._backoff_cap, self._sleep = max_retries, backoff_s, backoff_cap_s, sleep
        self._user_ttl, self._clock = user_cache_ttl_s, clock
        self._lock = threading.RLock()
        self._sf: Any = None
        self._token: AccessToken | None = None
        self._users: dict[str, str | None] = {}  # mailbox (casefold) -> user id (None: no/ambiguous user)
        self._owners: dict[str, str] = {}  # user id -> mailbox
        self._users_loaded_at: float | None = None
        self._accounts: dict[str, str] = {}  # Account name (casefold) -> Id
        self._domains: dict[str, str | None] = {}  # email domain -> Account Id (None: no single match)
        self.unresolved_accounts: list[str | None] = []  # item ids (None: not created yet) whose company failed
        self.created_accounts: list[str] = []
        self.calls: dict[str, int] = {}
        self.retries = 0
        fields = ["Id", "OwnerId", "SystemModstamp", "LastModifiedDate", "CreatedById", "LastModifiedById", "IsDeleted",
                  "AccountId",
                  *self._field_map.salesforce_fields().values()]
        if marker_field:
            fields.append(marker_field)
        self._select = ", ".join(dict.fromkeys(fields))

    # --- plumbing ---------------------------------------------------------------------------------------------
    def _client(self) -> Any:
        with self._lock:
            if self._sf is None:
                from simple_salesforce.api import Salesforce

                self._token = self._tokens.token()
                self._sf = Salesforce(instance_url=self._token.instance_url, session_id=self._token.access_token,
                                      version=self._version, session=self._session)
            return self._sf

    def _renew(self) -> None:
        with self._lock:
            self._tokens.invalidate(self._token)
            self._sf = None
        logger.info("salesforce session expired: minting a new token")

    def _call(
        self,
        kind: str,
        fn: Callable[[Any], _T],
        *,
        item_id: str | None = None,
        idempotent: bool = True,
        before_retry: Callable[[], None] | None = None,
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
                err = _error_of(exc, item_id)
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

    def _query_pages(self, soql: str, *, include_deleted: bool = False) -> Iterator[list[dict[str, Any]]]:
        """Pages of a SOQL query, following ``nextRecordsUrl`` (each page one call, retried on its own)."""
        page = self._call("query", lambda sf: sf.query(soql, include_deleted=include_deleted))
        while True:
            yield [dict(r) for r in page.get("records") or []]
            url = page.get("nextRecordsUrl")
            if page.get("done", True) or not url:
                return
            page = self._call("query_more", _more(url))

    def _query(self, soql: str, *, include_deleted: bool = False) -> list[dict[str, Any]]:
        return [r for page in self._query_pages(soql, include_deleted=include_deleted) for r in page]

    def _lengths_now(self) -> Mapping[str, int]:
        if self._describe_pending:
            self._describe_pending = False
            try:
                desc = self._call("describe", lambda sf: sf.Contact.describe())
                lengths = dict(self._lengths)
                for f in desc.get("fields") or []:
                    if f.get("type") in ("string", "textarea", "email", "phone", "url") and f.get("length"):
                        lengths[str(f["name"])] = int(f["length"])
                self._lengths = lengths
            except SyncError as exc:
                logger.warning("Contact describe failed (%s); using the default field lengths", type(exc).__name__)
        return self._lengths

    # --- owners -----------------------------------------------------------------------------------------------
    def _mailbox_list(self) -> list[str]:
        boxes = self._mailboxes() if callable(self._mailboxes) else self._mailboxes
        return list(boxes)

    def refresh_users(self) -> None:
        """Re-read the Users of the synced mailboxes (FederationIdentifier first, then Email; active only)."""
        boxes = self._mailbox_list()
        found: list[dict[str, Any]] = []
        for chunk in _chunks(boxes, 100):
            lits = ", ".join(soql_quote(m) for m in chunk)
            found += self._query(f"SELECT Id, Email, FederationIdentifier FROM User WHERE IsActive = true AND "
                                 f"(FederationIdentifier IN ({lits}) OR Email IN ({lits}))")
        users: dict[str, str | None] = {}
        for mailbox in boxes:
            key = mailbox.casefold()
            by_fed = {u["Id"] for u in found if str(u.get("FederationIdentifier") or "").casefold() == key}
            by_mail = {u["Id"] for u in found if str(u.get("Email") or "").casefold() == key}
            chosen = by_fed or by_mail
            if len(chosen) == 1:
                users[key] = next(iter(chosen))
            else:
                users[key] = None
                logger.warning("mailbox %s has %s Salesforce users", mailbox, "no" if not chosen else "several")
        with self._lock:
            self._users = users
            self._owners = {uid: m for m, uid in zip(boxes, (users[b.casefold()] for b in boxes), strict=True) if uid}
            self._users_loaded_at = self._clock()

    def _ensure_users(self) -> None:
        loaded = self._users_loaded_at
        if loaded is None or self._clock() - loaded > self._user_ttl:
            self.refresh_users()

    def user_of(self, mailbox: str) -> str:
        """The owning User id for a mailbox; ``BadData`` when there is none (or several)."""
        self._ensure_users()
        uid = self._users.get(mailbox.casefold())
        if uid is None:
            raise BadData("no single active Salesforce user for this mailbox", code="OWNER_NOT_FOUND", side=SIDE,
                          item_id=mailbox)
        return uid

    def mailbox_of(self, user_id: str | None) -> str | None:
        self._ensure_users()
        return self._owners.get(user_id or "")

    # --- accounts ---------------------------------------------------------------------------------------------
    def resolve_accounts(
        self, names: Iterable[str], domains: Mapping[str, str] | None = None
    ) -> dict[str, str | SyncError]:
        """Account Id by name (case-insensitive); else, when ``domains`` gives the contact's email domain for that
        name, the one Account whose Website is on that domain; else a new Account when allowed. Errors per name."""
        wanted = {n.casefold(): n for n in names if n}
        out: dict[str, str | SyncError] = {k: self._accounts[k] for k in wanted if k in self._accounts}
        missing = [wanted[k] for k in wanted if k not in out]
        for chunk in _chunks(missing, 100):
            rows = self._query(f"SELECT Id, Name FROM Account WHERE Name IN ({', '.join(soql_quote(n) for n in chunk)})"
                               f" ORDER BY CreatedDate, Id")
            for row in rows:
                key = str(row.get("Name") or "").casefold()
                if key in wanted and key not in out:  # oldest wins when names repeat
                    out[key] = self._accounts[key] = str(row["Id"])
        for key in [k for k in wanted if k not in out and (domains or {}).get(k)]:
            found = self._account_by_domain((domains or {})[key])
            if found is not None:
                out[key] = self._accounts[key] = found
        missing = [wanted[k] for k in wanted if k not in out]
        if missing and not self._create_accounts:
            for name in missing:
                out[name.casefold()] = BadData("no Account with this name", fields=("company",),
                                               code="ACCOUNT_NOT_FOUND", side=SIDE)
            return out
        for chunk in _chunks(missing, MAX_COLLECTION):
            body = {"allOrNone": False, "records": [{"attributes": {"type": "Account"}, "Name": n} for n in chunk]}
            results = self._restful("POST", body)
            for name, res in zip(chunk, results or [], strict=False):
                if res.get("success"):
                    out[name.casefold()] = self._accounts[name.casefold()] = str(res["id"])
                    self.created_accounts.append(str(res["id"]))
                    logger.info("created Account %s for a contact's company", res["id"])
                else:
                    out[name.casefold()] = _collection_error(res, None)
        return out

    def _account_by_domain(self, domain: str) -> str | None:
        """The single Account whose Website host is ``domain`` or a parent of it (pat@sales.contoso.com ->
        www.contoso.com); None when none or several. Free-mail domains never identify a company."""
        domain = domain.casefold().strip(".")
        base = ".".join(domain.split(".")[-2:])
        if "." not in domain or domain in FREE_MAIL_DOMAINS or base in FREE_MAIL_DOMAINS:
            return None
        if domain in self._domains:
            return self._domains[domain]
        rows = self._query(f"SELECT Id, Website FROM Account WHERE Website LIKE {soql_quote('%' + base + '%')}")
        hosts = {str(r["Id"]): _website_host(r.get("Website")) for r in rows}
        hits = [i for i, host in hosts.items() if host and (domain == host or domain.endswith("." + host))]
        found = hits[0] if len(hits) == 1 else None
        self._domains[domain] = found
        return found

    # --- reading ----------------------------------------------------------------------------------------------
    def _record(self, row: Mapping[str, Any]) -> SideRecord:
        marker = row.get(self._marker_field) if self._marker_field else None
        return SideRecord(
            side=Side.SALESFORCE, id=str(row["Id"]), contact=salesforce_to_contact(row, self._field_map),
            version=str(row["SystemModstamp"]), owner=self.mailbox_of(row.get("OwnerId")),
            modified_at=_parse_dt(row.get("LastModifiedDate")), marker=str(marker) if marker else None,
            untouched=self._is_us(row.get("CreatedById")) is True and self._is_us(row.get("LastModifiedById")) is True,
        )

    def _is_us(self, user_id: object) -> bool | None:
        """Whether a CreatedById / LastModifiedById is the integration user (15- or 18-character ids compared on
        their first 15 characters, salesforce.md §1.1); None when it or our own user id is unknown."""
        me = self._token.user_id if self._token is not None else ""
        by = str(user_id or "")
        return by[:15] == me[:15] if me and by else None

    def _rows_by_id(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        valid = [i for i in ids if _ID.match(i)]
        for chunk in _chunks(valid, MAX_IDS_PER_SOQL):
            lits = ", ".join(soql_quote(i) for i in chunk)
            for row in self._query(f"SELECT {self._select} FROM Contact WHERE Id IN ({lits})"):
                out[str(row["Id"])] = row
                out[str(row["Id"])[:15]] = row
        return out

    def get(self, mailbox: str, item_id: str) -> SideRecord | None:
        row = self._rows_by_id([item_id]).get(item_id)
        return self._record(row) if row is not None else None

    def find(self, mailbox: str, contact: Contact) -> list[SideRecord]:
        """Same email (any of the contact's addresses vs Contact.Email), or same first + last name + Account name."""
        clauses = []
        if contact.emails:
            clauses.append(f"Email IN ({', '.join(soql_quote(e) for e in contact.emails)})")
        key = contact.name_company_key()
        if key and contact.last_name and contact.company:
            first = f"FirstName = {soql_quote(contact.first_name)}" if contact.first_name else "FirstName = null"
            clauses.append(f"({first} AND LastName = {soql_quote(contact.last_name)} AND "
                           f"Account.Name = {soql_quote(contact.company)})")
        if not clauses:
            return []
        rows = self._query(f"SELECT {self._select} FROM Contact WHERE {' OR '.join(clauses)} ORDER BY Id")
        emails = contact.email_keys()
        out = []
        for row in rows:
            rec = self._record(row)
            if (emails & rec.contact.email_keys()) or (key and rec.contact.name_company_key() == key):
                out.append(rec)
        return out

    def find_by_marker(self, mailbox: str, marker: str) -> SideRecord | None:
        """The contact whose marker field holds ``marker`` (an Outlook id), org-wide; None without a marker field."""
        if not self._marker_field or not marker:
            return None
        rows = self._query(f"SELECT {self._select} FROM Contact WHERE {self._marker_field} = {soql_quote(marker)} "
                           "ORDER BY Id LIMIT 1")
        return self._record(rows[0]) if rows else None

    def stream(self, mailbox: str) -> Iterator[SideRecord]:
        uid = self.user_of(mailbox)
        soql = f"SELECT {self._select} FROM Contact WHERE OwnerId = {soql_quote(uid)} ORDER BY Id"
        for page in self._query_pages(soql):
            for row in page:
                yield self._record(row)

    # --- writing ----------------------------------------------------------------------------------------------
    def _values(self, contact: Contact, fields: Iterable[str], item_id: str | None, *, creating: bool,
                accounts: Mapping[str, str | SyncError] | None = None) -> dict[str, Any]:
        """Field values to send; raises the account resolution error of this item (never drops the company)."""
        write = contact_to_salesforce(contact, fields, self._field_map, self._lengths_now())
        for t in write.truncations:
            logger.warning("salesforce %s: %s cut from %d to %d characters", item_id or "(new contact)", t.target,
                           t.length, t.limit)
        values: dict[str, Any] = dict(write.values)
        if write.set_account:
            if write.account_name is None:
                values["AccountId"] = None
            else:
                if accounts is None:
                    accounts = self.resolve_accounts([write.account_name], _domain_hints([contact]))
                resolved = accounts.get(write.account_name.casefold())
                if not isinstance(resolved, str):
                    self.unresolved_accounts.append(item_id)
                    logger.warning("salesforce %s: company not resolved to an Account", item_id or "(new contact)")
                    raise resolved or BadData("company not resolved", fields=("company",), side=SIDE,
                                              item_id=item_id)
                values["AccountId"] = resolved
        if creating:
            values = {k: v for k, v in values.items() if v is not None}
        return values

    def _all_fields(self) -> list[str]:
        return list(self._field_map.salesforce_fields())

    def _check_version(self, item_id: str, if_match: str | None) -> None:
        row = self._rows_by_id([item_id]).get(item_id)
        if row is None:
            raise NotFound("contact not found", side=SIDE, item_id=item_id)
        if if_match is not None and str(row["SystemModstamp"]) != if_match:
            raise PreconditionFailed("changed since it was read (SystemModstamp)", side=SIDE, item_id=item_id)

    def _reread(self, item_id: str, written: Mapping[str, Any]) -> SideRecord:
        row = self._rows_by_id([item_id]).get(item_id)
        if row is None:
            raise NotFound("contact vanished right after the write", side=SIDE, item_id=item_id)
        return self._as_left(row, written)

    def _as_left(self, row: Mapping[str, Any], written: Mapping[str, Any]) -> SideRecord:
        """The record as our write left it, from the re-read after it. Salesforce answers a write with the id only,
        so the values and the new SystemModstamp come from a re-read, and a user's write between ours and the
        re-read would be in it: taken as what we wrote, their value would pass for synced and never reach the
        other side. ``LastModifiedById`` tells (salesforce.md §1.1): when it is not the integration user, the fields
        we wrote are taken as we wrote them and the record has no version, so the next pass sees their edit."""
        record = self._record(row)
        if self._is_us(row.get("LastModifiedById")) is not False:  # ours, or unknown: as read
            return record
        logger.info("salesforce %s was written by another user right after us: its version is not kept", row["Id"])
        ours = salesforce_to_contact({**row, **{k: v for k, v in written.items() if k in row}}, self._field_map)
        return record.model_copy(update={"contact": ours, "version": None})

    def create(self, mailbox: str, contact: Contact, *, marker: str | None = None) -> SideRecord:
        values = self._values(contact, self._all_fields(), None, creating=True)
        values["OwnerId"] = self.user_of(mailbox)
        if marker is not None and self._marker_field:
            values[self._marker_field] = marker
        result = self._call("write", lambda sf: sf.Contact.create(values), idempotent=False)
        return self._reread(str(result["id"]), values)

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
        if if_match is not None:
            self._check_version(item_id, if_match)
        values = self._values(contact, fields, item_id, creating=False)
        if marker is not None and self._marker_field:
            values[self._marker_field] = marker
        if values:
            self._call("write", lambda sf: sf.Contact.update(item_id, values), item_id=item_id,
                       before_retry=self._version_guard(item_id, if_match))
        return self._reread(item_id, values)

    def delete(self, mailbox: str, item_id: str, *, if_match: str | None) -> None:
        """Soft delete (Recycle Bin). With ``if_match`` the SystemModstamp is compared first (and before each retry)."""
        if if_match is not None:
            self._check_version(item_id, if_match)
        self._call("write", lambda sf: sf.Contact.delete(item_id), item_id=item_id,
                   before_retry=self._version_guard(item_id, if_match))

    def _version_guard(self, item_id: str, if_match: str | None) -> Callable[[], None] | None:
        """The ``before_retry`` of a guarded write: compare SystemModstamp again (None when unguarded)."""
        if if_match is None:
            return None
        return lambda: self._check_version(item_id, if_match)

    def _restful(self, method: str, body: dict[str, Any] | Callable[[], dict[str, Any]],
                 before_retry: Callable[[], None] | None = None) -> list[Any]:
        """One sObject Collections call (POST is retried only on "not processed" answers, see ``_call``).

        ``body`` may be a callable, evaluated on every attempt (``before_retry`` may shrink what is re-sent)."""

        def send(sf: Any) -> Any:
            return sf.restful("composite/sobjects", method=method, json=body() if callable(body) else body)

        return list(self._call("composite", send, idempotent=method == "PATCH", before_retry=before_retry) or [])

    def _collection(self, method: str, records: list[dict[str, Any]]) -> list[Any]:
        return self._restful(method, {"allOrNone": False, "records": records})

    def _finish(self, results: list[SideRecord | SyncError | str],
                written: Mapping[int, Mapping[str, Any]]) -> list[SideRecord | SyncError]:
        """Replace the written ids by the records as our writes left them (one SOQL per 200 ids; ``_as_left``).
        ``written``: the values sent, by index in ``results``."""
        ids = [r for r in results if isinstance(r, str)]
        rows = self._rows_by_id(ids)
        out: list[SideRecord | SyncError] = []
        for n, r in enumerate(results):
            if isinstance(r, str):
                row = rows.get(r)
                out.append(self._as_left(row, written.get(n, {})) if row
                           else NotFound("vanished after the write", side=SIDE, item_id=r))
            else:
                out.append(r)
        return out

    def create_many(self, mailbox: str, items: Sequence[CreateRequest]) -> list[SideRecord | SyncError]:
        """sObject Collections POST, ≤ 200 per call, allOrNone=false; one result per item, in order."""
        owner = self.user_of(mailbox)
        fields = self._all_fields()
        contacts = [i.contact for i in items if i.contact.company]
        accounts = self.resolve_accounts((c.company or "" for c in contacts), _domain_hints(contacts))
        results: list[SideRecord | SyncError | str] = []
        pending: list[tuple[int, dict[str, Any]]] = []
        for item in items:
            try:
                values = self._values(item.contact, fields, None, creating=True, accounts=accounts)
            except SyncError as exc:
                results.append(exc)
                continue
            values["OwnerId"] = owner
            if item.marker is not None and self._marker_field:
                values[self._marker_field] = item.marker
            pending.append((len(results), {"attributes": {"type": "Contact"}, **values}))
            results.append(Transient("not attempted", side=SIDE))
        for chunk in _chunks(pending, MAX_COLLECTION):
            try:
                answers = self._collection("POST", [rec for _, rec in chunk])
            except SyncError as exc:
                for index, _ in chunk:
                    results[index] = exc
                continue
            for (index, _), res in zip(chunk, answers, strict=False):
                results[index] = str(res["id"]) if res.get("success") else _collection_error(res, None)
        return self._finish(results, dict(pending))

    def update_many(self, mailbox: str, items: Sequence[UpdateRequest]) -> list[SideRecord | SyncError]:
        """Versions checked with one SOQL per 200 ids, then sObject Collections PATCH (≤ 200, allOrNone=false).

        A chunk retried after a backoff is re-checked first (one SOQL): records whose SystemModstamp moved since
        (``PreconditionFailed``) or that are gone (``NotFound``) are dropped from the retry; the rest are re-sent."""
        current = self._rows_by_id([i.item_id for i in items])
        changing = [i.contact for i in items if "company" in i.fields and i.contact.company]
        accounts = (self.resolve_accounts((c.company or "" for c in changing), _domain_hints(changing))
                    if changing else {})
        results: list[SideRecord | SyncError | str] = []
        pending: list[tuple[int, dict[str, Any]]] = []  # (index of the item and of its result, record)
        for item in items:
            row = current.get(item.item_id)
            if row is None:
                results.append(NotFound("contact not found", side=SIDE, item_id=item.item_id))
                continue
            if item.if_match is not None and str(row["SystemModstamp"]) != item.if_match:
                results.append(PreconditionFailed("changed since it was read (SystemModstamp)", side=SIDE,
                                                  item_id=item.item_id))
                continue
            try:
                values = self._values(item.contact, item.fields, item.item_id, creating=False, accounts=accounts)
            except SyncError as exc:
                results.append(exc)
                continue
            if item.marker is not None and self._marker_field:
                values[self._marker_field] = item.marker
            if not values:
                results.append(str(row["Id"]))
                continue
            pending.append((len(results), {"attributes": {"type": "Contact"}, "Id": str(row["Id"]), **values}))
            results.append(Transient("not attempted", side=SIDE, item_id=item.item_id))
        for chunk in _chunks(pending, MAX_COLLECTION):
            sent = list(chunk)  # what the next attempt sends (a retry drops the records changed meanwhile)

            def recheck(sent: list[tuple[int, dict[str, Any]]] = sent) -> None:
                rows = self._rows_by_id([rec["Id"] for _, rec in sent])
                keep = []
                for index, rec in sent:
                    item, row = items[index], rows.get(rec["Id"])
                    if row is None:
                        results[index] = NotFound("contact not found", side=SIDE, item_id=item.item_id)
                    elif item.if_match is not None and str(row["SystemModstamp"]) != item.if_match:
                        results[index] = PreconditionFailed("changed since it was read (SystemModstamp)",
                                                            side=SIDE, item_id=item.item_id)
                    else:
                        keep.append((index, rec))
                sent[:] = keep
                if not sent:
                    raise _NothingToRetry("every record of the chunk changed during the backoff", side=SIDE)

            def body(sent: list[tuple[int, dict[str, Any]]] = sent) -> dict[str, Any]:
                return {"allOrNone": False, "records": [rec for _, rec in sent]}

            try:
                answers = self._restful("PATCH", body, before_retry=recheck)
            except _NothingToRetry:
                continue
            except SyncError as exc:
                for index, _ in sent:
                    results[index] = exc
                continue
            for (index, rec), res in zip(sent, answers, strict=False):
                results[index] = str(res.get("id") or rec["Id"]) if res.get("success") else \
                    _collection_error(res, rec["Id"])
        return self._finish(results, dict(pending))

    # --- change feed ------------------------------------------------------------------------------------------
    def _head(self) -> _Watermark:
        """The newest SystemModstamp in the org (deleted rows too), taken before a full listing."""
        limit = _Watermark.MAX_IDS + 1
        rows = next(self._query_pages("SELECT Id, SystemModstamp FROM Contact ORDER BY SystemModstamp DESC, Id "
                                      f"LIMIT {limit}", include_deleted=True), [])
        stamps = [(str(r["Id"]), _parse_dt(r["SystemModstamp"]) or _EPOCH) for r in rows]
        mark = _Watermark(_EPOCH, frozenset()).advanced(stamps)
        if len(rows) == limit and len(mark.ids) == limit:
            # more rows than we keep share the newest stamp: the full listing after this reports all of them
            return _Watermark(mark.stamp + timedelta(milliseconds=1), frozenset())
        return mark

    def changes(self, mailbox: str, checkpoint: str | None) -> Iterator[ChangePage]:
        uid = self.user_of(mailbox)
        mark = _Watermark.load(checkpoint)
        if mark is not None and mark.stamp < datetime.now(UTC) - timedelta(days=RECYCLE_BIN_DAYS):
            logger.warning("salesforce change checkpoint of %s is older than the Recycle Bin window: full listing",
                           mailbox)
            mark = None
        if mark is None:
            head = self._head()
            pages = [[self._record(r) for r in page] for page in self._query_pages(
                f"SELECT {self._select} FROM Contact WHERE OwnerId = {soql_quote(uid)} ORDER BY Id")]
            for n, page_records in enumerate(pages):
                last = n == len(pages) - 1
                yield ChangePage(records=tuple(page_records), checkpoint=head.dump() if last else None, full=True)
            return
        soql = (f"SELECT {self._select} FROM Contact WHERE SystemModstamp >= {_soql_datetime(mark.stamp)} "
                f"ORDER BY SystemModstamp, Id")
        new_mark = mark
        buffered: ChangePage | None = None
        for rows in self._query_pages(soql, include_deleted=True):
            records: list[SideRecord] = []
            removed: list[str] = []
            seen: list[tuple[str, datetime]] = []
            for row in rows:
                rid, stamp = str(row["Id"]), _parse_dt(row["SystemModstamp"]) or _EPOCH
                if stamp == mark.stamp and rid in mark.ids:
                    continue  # reported by the previous run
                seen.append((rid, stamp))
                if not row.get("IsDeleted") and row.get("OwnerId") == uid:
                    records.append(self._record(row))
                else:
                    removed.append(rid)  # deleted, or owned by someone else (a superset, see module docstring)
            new_mark = new_mark.advanced(seen)
            if buffered is not None:
                yield buffered
            buffered = ChangePage(records=tuple(records), removed=tuple(removed))
        final = buffered if buffered is not None else ChangePage()
        yield final.model_copy(update={"checkpoint": new_mark.dump()})


__all__ = [
    "API_VERSION",
    "AccessToken",
    "ReplayRejected",
    "SalesforceContactSide",
    "SessionExpired",
    "TokenProvider",
    "map_error",
    "soql_quote",
]
