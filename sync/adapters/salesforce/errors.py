"""The one place Salesforce failures (REST, OAuth, collection items, Pub/Sub gRPC) become ``sync.errors`` types.

``map_error`` is the table; ``first_error``, ``error_of`` and ``collection_error`` turn REST error bodies and
simple-salesforce / requests exceptions into its arguments. An error about a record's content keeps the code and the
field names only, never Salesforce's message, which quotes the value (see ``map_error``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

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

SIDE = "salesforce"


class SessionExpired(AuthFailed):
    """401 ``INVALID_SESSION_ID`` (or gRPC ``UNAUTHENTICATED``): get a new token and retry once."""


class ReplayRejected(SyncError):
    """The Pub/Sub replay id is invalid or older than the 72 h retention (docs/reference/salesforce.md §4.5): events
    were lost, a full reconcile is needed."""


class DuplicateFound(BadData):
    """400 ``DUPLICATES_DETECTED``: a duplicate rule matched (docs/reference/salesforce.md §1.3). ``allow_save``: an
    Alert rule (the save goes through with ``Sforce-Duplicate-Rule-Header: allowSave=true``), else Block;
    ``matches``: the ids of the matched records."""

    def __init__(self, *, allow_save: bool, matches: tuple[str, ...], item_id: str | None = None) -> None:
        rule = "alert" if allow_save else "block"
        super().__init__(f"salesforce duplicate rule ({rule}) matched {', '.join(matches) or 'records'}",
                         code="DUPLICATES_DETECTED", side=SIDE, item_id=item_id)
        self.allow_save, self.matches = allow_save, matches


def duplicate_of(item: Any, item_id: str | None) -> DuplicateFound | None:
    """The ``DuplicateFound`` in a REST error item (``errorCode`` / ``statusCode`` DUPLICATES_DETECTED), if any."""
    item = item[0] if isinstance(item, list) and item else item
    if not isinstance(item, Mapping) or "DUPLICATES_DETECTED" not in (item.get("errorCode"), item.get("statusCode")):
        return None
    result = item.get("duplicateResult") or {}
    ids = tuple(str(rec.get("record", {}).get("Id")) for match in result.get("matchResults") or []
                for rec in match.get("matchRecords") or [] if rec.get("record", {}).get("Id"))
    return DuplicateFound(allow_save=bool(result.get("allowSave")), matches=ids, item_id=item_id)


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


# token endpoint answers that mean the app settings are wrong (docs/reference/salesforce.md §3.1, §3.2)
_OAUTH_FIXES = {
    "audience is invalid": " (set SF_JWT_AUDIENCE to production or sandbox, never the My Domain URL)",
    "request not supported on this domain": " (client credentials need SF_LOGIN_URL = your My Domain URL)",
    "no client credentials user enabled": " (set the app's Run As user for the client credentials flow)",
    "user hasn't approved this consumer": " (pre-authorize the integration user's profile or permission set)",
}


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
    its ``error-code`` trailer (docs/reference/salesforce.md §5.1). Service-level errors keep the code and a cut
    message. An error about a record's content keeps the code and the field names only: Salesforce's message quotes the
    value ("Email: invalid email address: <the address>", "data value too large: <the value>", "duplicate value found:
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
        return AuthFailed(f"token request refused: {text}{_OAUTH_FIXES.get(message, '')}", side=SIDE)
    if code == "REQUEST_LIMIT_EXCEEDED" or status in (429, 503):
        return Throttled(f"salesforce asks us to slow down: {text}", side=SIDE, item_id=item_id,
                         retry_after=retry_after)
    if code == "INVALID_SESSION_ID" or status == 401:
        return SessionExpired(f"session expired or invalid: {text}", side=SIDE)
    if status == 412:  # If-Unmodified-Since refused (docs/reference/salesforce.md §2.7)
        return PreconditionFailed(f"changed since it was read: {text}", side=SIDE, item_id=item_id)
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


def first_error(content: Any) -> tuple[str | None, str, tuple[str, ...]]:
    """(code, message, fields) of a REST error body: ``[{"errorCode"|"statusCode", "message", "fields"}]``."""
    item = content[0] if isinstance(content, list) and content else content
    if isinstance(item, Mapping):
        code = item.get("errorCode") or item.get("statusCode") or item.get("error")
        message = item.get("message") or item.get("error_description") or ""
        fields = tuple(str(f) for f in item.get("fields") or ())
        return (str(code) if code else None), str(message), fields
    return None, str(content or "")[:200], ()


def error_of(exc: BaseException, item_id: str | None) -> SyncError | None:
    """The typed error for an exception raised by simple-salesforce / requests (None: not ours to map)."""
    import requests
    from simple_salesforce.exceptions import SalesforceError

    if isinstance(exc, SyncError):
        return exc
    if isinstance(exc, SalesforceError):
        duplicate = duplicate_of(exc.content, item_id)
        if duplicate is not None:
            return duplicate
        code, message, fields = first_error(exc.content)
        return map_error(status=exc.status, code=code, message=message, fields=fields, item_id=item_id)
    if isinstance(exc, requests.Timeout | requests.ConnectionError):
        return Transient(f"salesforce unreachable: {type(exc).__name__}", side=SIDE, item_id=item_id)
    return None


def collection_error(result: Mapping[str, Any], item_id: str | None) -> SyncError:
    duplicate = duplicate_of(result.get("errors") or [], item_id)
    if duplicate is not None:
        return duplicate
    code, message, fields = first_error(result.get("errors") or [])
    return map_error(status=None, code=code, message=message, fields=fields, item_id=item_id)
