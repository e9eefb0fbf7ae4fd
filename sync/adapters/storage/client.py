"""What every Table Storage store shares: key escaping, the error map, request counts, a self-healing table.

- ``escape_key`` percent-encodes the characters Table Storage forbids in keys (``/ \\ # ?``, control characters)
  and ``%`` itself, so any id can be a PartitionKey or RowKey and the mapping is reversible.
- ``_map_error`` is the one place an Azure Storage failure (tables and queues alike) becomes a ``sync.errors`` type:
  412 PreconditionFailed, 409 AlreadyExists, 404 NotFound, 401/403 AuthFailed, 429/503 Throttled, other 4xx
  BadData, the rest Transient. ``_call`` runs one SDK call through it.
- ``HealingTable`` makes its table again when it was deleted under a running process and sends the call again
  once (a query of a table made again is simply empty).
- ``REQUESTS`` counts the table requests of this process by kind, for the benchmarks.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline import PipelineRequest
from azure.data.tables import TableClient, TableTransactionError

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

_T = TypeVar("_T")
MAX_TRANSACTION = 100  # entity group transaction limit (docs/reference/azure.md §4.2); the SDK does not check it
_FORBIDDEN = set("/\\#?%") | {chr(c) for c in range(0x20)} | {chr(c) for c in range(0x7F, 0xA0)}


class RequestCounts:
    """Table Storage requests sent by this process, by kind (``transaction``, ``query``, ``read``, ``write``,
    ``delete``, ``table``), counted once per request (retries included): what benchmarks compare with the
    theoretical minimum. Installed as azure-core's ``raw_request_hook`` (the tables client builds its own policy
    list and ignores ``per_call_policies``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def __call__(self, request: PipelineRequest[Any]) -> None:
        http = request.http_request
        path = http.url.split("?", 1)[0].rsplit("/", 1)[-1]
        if path == "$batch":
            kind = "transaction"
        elif path.startswith("Tables"):
            kind = "table"
        elif http.method == "GET":
            kind = "read" if "PartitionKey=" in path else "query"
        elif http.method == "DELETE":
            kind = "delete"
        else:
            kind = "write"
        with self._lock:
            self.counts[kind] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)

    def reset(self) -> None:
        with self._lock:
            self.counts.clear()


REQUESTS = RequestCounts()  # every TableStorage of this process counts here
# ... except the Graph permit table's requests: the price of the shared slots (sync.adapters.graph.permits), counted
# apart so that a count of the sync's own reads and writes (a no-change pass writes nothing) is not blurred by them
PERMIT_REQUESTS = RequestCounts()


def escape_key(text: str) -> str:
    """Percent-encode the characters Table Storage forbids in keys (and '%' itself), so the mapping is reversible."""
    return "".join(f"%{ord(ch):02X}" if ch in _FORBIDDEN else ch for ch in text)


def _map_error(exc: Exception, item_id: str | None = None) -> SyncError:
    """The one place Table Storage failures become typed errors."""
    status = getattr(exc, "status_code", None)
    message = getattr(exc, "message", None) or type(exc).__name__
    first_line = str(message).splitlines()[0][:200]
    if isinstance(exc, ResourceModifiedError) or status == 412:
        return PreconditionFailed(f"table row changed since it was read: {first_line}", side="tables", item_id=item_id)
    if isinstance(exc, ResourceExistsError) or status == 409:
        return AlreadyExists(f"table row exists: {first_line}", side="tables", item_id=item_id)
    if isinstance(exc, ResourceNotFoundError) or status == 404:
        return NotFound(f"table row not found: {first_line}", side="tables", item_id=item_id)
    if isinstance(exc, ClientAuthenticationError) or status in (401, 403):
        return AuthFailed(f"table storage refused the credentials: {first_line}", side="tables")
    if status in (429, 503):
        return Throttled(f"table storage is busy: {first_line}", side="tables")
    if isinstance(exc, ServiceRequestError | ServiceResponseError) or (status is not None and status >= 500):
        return Transient(f"table storage failed: {first_line}", side="tables")
    if status is not None and 400 <= status < 500:
        return BadData(f"table storage refused the request: {first_line}", side="tables", item_id=item_id)
    return Transient(f"table storage error: {first_line}", side="tables")


def _call(fn: Callable[[], _T], item_id: str | None = None) -> _T:
    try:
        return fn()
    except (AzureError, TableTransactionError) as exc:
        raise _map_error(exc, item_id) from exc


def _chunks(items: Sequence[_T], size: int = MAX_TRANSACTION) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _table_gone(exc: BaseException) -> bool:
    """The table itself is missing (deleted while we run), as opposed to a missing row."""
    return str(getattr(exc, "error_code", "") or "") in ("TableNotFound", "TableErrorCode.TABLE_NOT_FOUND")


class HealingTable:
    """A TableClient that re-creates its table when it was deleted under a running process (404 with error code
    ``TableNotFound``, https://learn.microsoft.com/dotnet/api/azure.data.tables.models.tableerrorcode.tablenotfound;
    observed on Azurite for reads, upserts, transactions and queries; a delete of a missing table's row answers
    204) and sends the call again once; a query of a re-created table is empty. ``recreate`` creates it and may
    record that the table was lost. Only the methods the stores use are offered."""

    def __init__(self, client: TableClient, recreate: Callable[[], None]) -> None:
        self._client = client
        self._recreate = recreate
        self.recreated = 0  # how often this client made its table again

    def _again(self) -> None:
        self._recreate()
        self.recreated += 1

    def _healed(self, fn: Callable[[], _T]) -> _T:
        try:
            return fn()
        except (AzureError, TableTransactionError) as exc:
            if not _table_gone(exc):
                raise
        self._again()
        return fn()

    def get_entity(self, partition_key: str, row_key: str) -> Any:
        return self._healed(lambda: self._client.get_entity(partition_key, row_key))

    def upsert_entity(self, entity: dict[str, Any], **kw: Any) -> Any:
        return self._healed(lambda: self._client.upsert_entity(entity, **kw))

    def submit_transaction(self, operations: Any, **kw: Any) -> Any:
        return self._healed(lambda: self._client.submit_transaction(operations, **kw))

    def delete_entity(self, partition_key: str, row_key: str, **kw: Any) -> None:
        self._healed(lambda: self._client.delete_entity(partition_key, row_key, **kw))

    def query_entities(self, query_filter: str, **kw: Any) -> Iterator[Any]:
        pages = self._client.query_entities(query_filter, **kw)
        try:
            yield from pages
        except (AzureError, TableTransactionError) as exc:
            if not _table_gone(exc):
                raise
            self._again()  # a table made just now holds nothing
