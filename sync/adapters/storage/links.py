"""Azure Table Storage adapters: links, checkpoints and audit (azure-data-tables 12.7.0).

Public API:
    TableStorage(service, prefix="sync")     tables ``<prefix>links``, ``<prefix>tombstones``, ``<prefix>checkpoints``,
                                              ``<prefix>audit``, ``<prefix>jobs``, ``<prefix>subscriptions``
    TableLinkStore, TableCheckpoints, TableAudit, TableJobs, TableSubscriptions
    escape_key(text)                          make any id safe as a PartitionKey / RowKey

Links (azure.md §4): PartitionKey = mailbox; two rows per link, ``m365|<id>`` and ``sf|<id>``, both carrying the
whole link, written in ONE entity-group transaction (same partition, <= 100 operations). Every write of a link
touches all its rows, so a condition on any one row's ETag (``MatchConditions.IfNotModified``) detects any concurrent
write: the link's ``etag`` is "<row key>\\n<ETag>" of the row it was read through. A stale ETag is 412 ->
PreconditionFailed; a row that already exists on create is 409 -> AlreadyExists.
An index partition (``~sf``) maps a Salesforce id to the mailboxes holding it (row ``<sf id>|<mailbox>``); it is
written after the link and may be stale, which only costs a lookup that finds nothing.
Key characters forbidden by Table Storage (``/ \\ # ?``, control characters) are percent-encoded, as is ``%``.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from azure.core import MatchConditions
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
from azure.data.tables import TableClient, TableServiceClient, TableTransactionError, UpdateMode

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
from sync.policy import Side
from sync.ports import AuditEntry, Link, LinkState, LinkWrite, MailboxJob, ReconcileJob, StoredSubscription, row_key

logger = logging.getLogger(__name__)
_T = TypeVar("_T")
MAX_TRANSACTION = 100  # entity group transaction limit (azure.md §4.2); the SDK does not check it
INDEX_PARTITION = "~sf"
META_PARTITION = "~meta"  # links: ``lost`` (made again after a loss), ``rebuilt|<mailbox>``; checkpoints: ``links``
LOST_ROW = "lost"
META_TTL_S = 10.0  # how long a link store trusts its last read of the ``~meta`` rows
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


# ---------------------------------------------------------------------------------------------- links


class TableLinkStore:
    """Links of ``<prefix>links``; tombstones (detached links) are also kept in ``<prefix>tombstones`` (PartitionKey =
    mailbox, RowKey = the row key), which a lost links table is seeded from when it is made again: a contact deleted
    on one side stays deleted after the loss. The copy is written before the link and removed after it (a crash
    leaves a tombstone too many, which only matters after a loss, never one too few)."""

    def __init__(self, table: HealingTable, tombstones: HealingTable | None = None) -> None:
        self._table = table
        self._tombstones = tombstones
        # (read at, table generation, RowKeys of the ``~meta`` partition): trusted for META_TTL_S, and until this
        # process makes the table again
        self._meta: tuple[float, int, set[str]] | None = None

    def _meta_rows(self) -> set[str]:
        now = time.monotonic()
        if self._meta is None or now - self._meta[0] > META_TTL_S or self._meta[1] != self._table.recreated:
            rows = self._table.query_entities("PartitionKey eq @pk", parameters={"pk": META_PARTITION},
                                              select=["RowKey"])
            generation = self._table.recreated
            self._meta = (now, generation, _call(lambda: {str(r["RowKey"]) for r in rows}, META_PARTITION))
        return self._meta[2]

    def rebuilding(self, mailbox: str) -> bool:
        rows = self._meta_rows()
        return LOST_ROW in rows and escape_key(f"rebuilt|{mailbox}") not in rows

    def mark_rebuilt(self, mailbox: str) -> None:
        key = escape_key(f"rebuilt|{mailbox}")
        row = {"PartitionKey": META_PARTITION, "RowKey": key, "At": datetime.now(UTC)}
        _call(lambda: self._table.upsert_entity(row, mode=UpdateMode.REPLACE), mailbox)
        if self._meta is not None:
            self._meta[2].add(key)

    @staticmethod
    def _entity(link: Link, key: str) -> dict[str, Any]:
        return {
            "PartitionKey": escape_key(link.mailbox),
            "RowKey": escape_key(key),
            "Link": link.model_dump_json(exclude={"etag"}),
            "State": link.state.value,
            "Primary": key == link.primary_key(),
            "SyncedAt": link.synced_at,
        }

    @staticmethod
    def _from_entity(entity: Any, key: str) -> Link:
        link = Link.model_validate_json(entity["Link"])
        return link.model_copy(update={"etag": f"{key}\n{entity.metadata['etag']}"})

    def get(self, mailbox: str, side: Side, item_id: str) -> Link | None:
        key = row_key(side, item_id)
        try:
            entity = self._table.get_entity(escape_key(mailbox), escape_key(key))
        except ResourceNotFoundError:
            return None
        except AzureError as exc:
            raise _map_error(exc, item_id) from exc
        return self._from_entity(entity, key)

    def _keep_tombstone(self, link: Link) -> None:
        tombstones = self._tombstones
        if tombstones is None or link.state is not LinkState.DETACHED:
            return
        for key in link.row_keys():
            row = {"PartitionKey": escape_key(link.mailbox), "RowKey": escape_key(key),
                   "Link": link.model_dump_json(exclude={"etag"})}
            _call(lambda row=row: tombstones.upsert_entity(row, mode=UpdateMode.REPLACE), key)  # type: ignore[misc]

    def _drop_tombstones(self, link: Link, replaced: Sequence[Link]) -> None:
        """Remove the tombstone copies of replaced detached links whose rows the new link does not keep detached."""
        if self._tombstones is None:
            return
        kept = set(link.row_keys()) if link.state is LinkState.DETACHED else set()
        for old in replaced:
            if old.state is not LinkState.DETACHED:
                continue
            for key in old.row_keys():
                if key not in kept:
                    try:
                        self._tombstones.delete_entity(escape_key(old.mailbox), escape_key(key))
                    except ResourceNotFoundError:
                        pass
                    except AzureError as exc:
                        raise _map_error(exc, key) from exc

    def save(self, link: Link, *, previous: Link | None, absorb: Sequence[Link] = ()) -> Link:
        ops = self._ops(link, previous, absorb)
        self._keep_tombstone(link)
        if link.sf_id and (previous is None or previous.sf_id != link.sf_id):
            # a Salesforce id new to this mailbox is indexed before its link is written: a crash in between leaves
            # a stale index row (a lookup that finds nothing), never a missing one; an unchanged id costs no call
            self._index(link)
        try:
            result = _call(lambda: self._table.submit_transaction(ops), link.primary_key())
        except NotFound as exc:  # a row read as ``previous`` (or absorbed) is gone since: someone else removed it
            raise PreconditionFailed(f"link rows removed since they were read: {exc.message}", side="tables",
                                     item_id=link.primary_key()) from exc
        saved = self._saved(link, ops, result)
        replaced = ([previous] if previous is not None else []) + list(absorb)
        for old in replaced:
            self._index_removed(old, link)
        self._drop_tombstones(link, replaced)
        return saved

    def save_many(self, items: Sequence[LinkWrite]) -> list[Link | SyncError]:
        """Many saves of one partition packed into transactions of up to 100 operations (azure.md §4.2). A
        transaction is all or nothing: when one fails, its saves are sent again one by one, so each item gets its
        own result. Then the Salesforce-id index rows, 100 upserts per transaction."""
        out: list[Link | SyncError | None] = [None] * len(items)
        planned: list[tuple[int, list[Any]]] = []
        for i, w in enumerate(items):
            if any(x.state is LinkState.DETACHED for x in [w.link, *([w.previous] if w.previous else []), *w.absorb]):
                try:  # a tombstone made or replaced (rare): its copy in the tombstones table goes with it
                    out[i] = self.save(w.link, previous=w.previous, absorb=w.absorb)
                except SyncError as exc:
                    out[i] = exc
                continue
            try:
                planned.append((i, self._ops(w.link, w.previous, w.absorb)))
            except ValueError as exc:
                out[i] = BadData(str(exc), code="BAD_LINK", side="tables")
        chunk: list[tuple[int, list[Any]]] = []
        rows: set[tuple[str, str]] = set()
        chunks: list[list[tuple[int, list[Any]]]] = []
        for i, ops in planned:
            keys = {(op[1]["PartitionKey"], op[1]["RowKey"]) for op in ops}
            partition = items[i].link.mailbox
            if chunk and (sum(len(o) for _, o in chunk) + len(ops) > MAX_TRANSACTION or keys & rows
                          or items[chunk[0][0]].link.mailbox != partition):
                chunks.append(chunk)
                chunk, rows = [], set()
            chunk.append((i, ops))
            rows |= keys
        if chunk:
            chunks.append(chunk)
        for group in chunks:
            ops = [op for _, o in group for op in o]
            try:
                result = self._table.submit_transaction(ops)
            except (AzureError, TableTransactionError):
                for i, _ in group:  # find which save failed: each on its own
                    w = items[i]
                    try:
                        out[i] = self.save(w.link, previous=w.previous, absorb=w.absorb)
                    except SyncError as exc:
                        out[i] = exc
                continue
            at = 0
            for i, o in group:
                out[i] = self._saved(items[i].link, o, result[at:at + len(o)])
                at += len(o)
            self._reindex_many([items[i] for i, _ in group])
        return [r if r is not None else SyncError("not saved") for r in out]

    def _ops(self, link: Link, previous: Link | None, absorb: Sequence[Link]) -> list[Any]:
        new_keys = link.row_keys()
        if not new_keys:
            raise ValueError("a link needs at least one id")
        ops: list[Any] = []
        old_keys: list[str] = []
        for old in ([previous] if previous is not None else []) + list(absorb):
            if old.etag is None:
                raise ValueError("a replaced link has no etag: read it from the store first")
            if old.mailbox != link.mailbox:
                raise ValueError("a link cannot move between mailboxes")
            guard_key, _, guard_etag = old.etag.partition("\n")
            guarded = {"etag": guard_etag, "match_condition": MatchConditions.IfNotModified}
            for key in old.row_keys():
                old_keys.append(key)
                if key not in new_keys:
                    row = {"PartitionKey": escape_key(link.mailbox), "RowKey": escape_key(key)}
                    ops.append(("delete", row, guarded if key == guard_key else {}))
                elif key == guard_key:
                    ops.append(("update", self._entity(link, key), {"mode": UpdateMode.REPLACE, **guarded}))
                else:
                    ops.append(("upsert", self._entity(link, key), {"mode": UpdateMode.REPLACE}))
        ops += [("create", self._entity(link, k)) for k in new_keys if k not in old_keys]
        return ops

    @staticmethod
    def _saved(link: Link, ops: Sequence[Any], result: Sequence[Any]) -> Link:
        primary = escape_key(link.primary_key())
        # results come back in operation order, each write with its new ETag
        etag = next((r.get("etag") for op, r in zip(ops, result, strict=True) if op[1]["RowKey"] == primary), None)
        if etag is None:
            raise PreconditionFailed("the link row returned no ETag", item_id=link.primary_key())
        return link.model_copy(update={"etag": f"{link.primary_key()}\n{etag}"})

    def _reindex_many(self, writes: Sequence[LinkWrite]) -> None:
        """Index rows of saved links: removals one by one (rare), new rows in transactions of 100 upserts."""
        rows: dict[str, dict[str, Any]] = {}
        for w in writes:
            for old in ([w.previous] if w.previous is not None else []) + list(w.absorb):
                self._index_removed(old, w.link)
            if w.link.sf_id:  # refreshed on every save, as ``save`` does (repairs a row a crash left out)
                key = escape_key(f"{w.link.sf_id}|{w.link.mailbox}")
                rows[key] = {"PartitionKey": INDEX_PARTITION, "RowKey": key, "Mailbox": w.link.mailbox}
        for part in _chunks(list(rows.values())):
            ops = [("upsert", row, {"mode": UpdateMode.REPLACE}) for row in part]
            _call(lambda ops=ops: self._table.submit_transaction(ops), "index")  # type: ignore[misc]

    def _index_removed(self, old: Link, link: Link) -> None:
        if old.sf_id and old.sf_id != link.sf_id:
            self._unindex(old.sf_id, old.mailbox)

    def _index(self, link: Link) -> None:
        if link.sf_id:
            row = {"PartitionKey": INDEX_PARTITION, "RowKey": escape_key(f"{link.sf_id}|{link.mailbox}"),
                   "Mailbox": link.mailbox}
            _call(lambda: self._table.upsert_entity(row, mode=UpdateMode.REPLACE), link.sf_id)

    def _unindex(self, sf_id: str, mailbox: str) -> None:
        try:
            self._table.delete_entity(INDEX_PARTITION, escape_key(f"{sf_id}|{mailbox}"))
        except ResourceNotFoundError:
            pass
        except AzureError as exc:
            raise _map_error(exc, sf_id) from exc

    def delete(self, link: Link) -> None:
        if link.etag is None:
            raise ValueError("link has no etag: read it from the store first")
        guard_key, _, guard_etag = link.etag.partition("\n")
        ops: list[Any] = []
        for key in link.row_keys():
            row = {"PartitionKey": escape_key(link.mailbox), "RowKey": escape_key(key)}
            kw = {"etag": guard_etag, "match_condition": MatchConditions.IfNotModified} if key == guard_key else {}
            ops.append(("delete", row, kw))
        _call(lambda: self._table.submit_transaction(ops), guard_key)
        if link.sf_id:
            self._unindex(link.sf_id, link.mailbox)
        self._drop_tombstones(link.model_copy(update={"state": LinkState.LINKED}), [link])

    def list(self, mailbox: str) -> Iterator[Link]:
        pages = self._table.query_entities(
            "PartitionKey eq @pk and Primary eq true", parameters={"pk": escape_key(mailbox)}, results_per_page=1000
        )
        try:
            for entity in pages:
                link = Link.model_validate_json(entity["Link"])
                yield link.model_copy(update={"etag": f"{link.primary_key()}\n{entity.metadata['etag']}"})
        except AzureError as exc:
            raise _map_error(exc, mailbox) from exc

    def mailboxes_of(self, sf_id: str) -> set[str]:
        prefix = escape_key(f"{sf_id}|")
        rows = self._table.query_entities(
            "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi",
            parameters={"pk": INDEX_PARTITION, "lo": prefix, "hi": prefix[:-1] + "}"},
            select=["Mailbox"],
        )
        return _call(lambda: {str(r["Mailbox"]) for r in rows}, sf_id)


# ---------------------------------------------------------------------------------------------- checkpoints, audit


class TableCheckpoints:
    def __init__(self, table: HealingTable) -> None:
        self._table = table

    def get(self, scope: str, name: str) -> str | None:
        try:
            entity = self._table.get_entity(escape_key(scope), escape_key(name))
        except ResourceNotFoundError:
            return None
        except AzureError as exc:
            raise _map_error(exc, name) from exc
        return str(entity["Value"])

    def put(self, scope: str, name: str, value: str) -> None:
        row = {"PartitionKey": escape_key(scope), "RowKey": escape_key(name), "Value": value}
        _call(lambda: self._table.upsert_entity(row, mode=UpdateMode.REPLACE), name)


class TableAudit:
    """Audit rows per mailbox, newest first (RowKey = inverted milliseconds + a random suffix)."""

    def __init__(self, table: HealingTable) -> None:
        self._table = table

    @staticmethod
    def _row_key(at: datetime) -> str:
        ms = int(at.timestamp() * 1000)
        return f"{10**13 - ms:013d}-{uuid.uuid4().hex[:12]}"

    def write(self, entries: Sequence[AuditEntry]) -> None:
        by_mailbox: dict[str, list[Any]] = {}
        for e in entries:
            row = {
                "PartitionKey": escape_key(e.mailbox),
                "RowKey": self._row_key(e.at),
                "Entry": e.model_dump_json(),
                "Action": e.action,
                "Outcome": e.outcome,
                "M365Id": e.m365_id or "",  # for ``mentions`` (ids only, as in Entry)
            }
            by_mailbox.setdefault(e.mailbox, []).append(("upsert", row, {"mode": UpdateMode.REPLACE}))
        for mailbox, ops in by_mailbox.items():
            for chunk in _chunks(ops):
                _call(lambda chunk=chunk: self._table.submit_transaction(list(chunk)), mailbox)  # type: ignore[misc]

    def mentions(self, mailbox: str, m365_id: str) -> bool:
        """A partition scan on the server (no index on M365Id): used only while links are rebuilt after a loss."""
        rows = self._table.query_entities("PartitionKey eq @pk and M365Id eq @id", select=["RowKey"],
                                          parameters={"pk": escape_key(mailbox), "id": m365_id}, results_per_page=1)
        return _call(lambda: next(iter(rows), None) is not None, mailbox)

    def recent(self, mailbox: str, limit: int = 50) -> list[AuditEntry]:
        pages = self._table.query_entities(
            "PartitionKey eq @pk", parameters={"pk": escape_key(mailbox)}, results_per_page=min(limit, 1000)
        )
        out: list[AuditEntry] = []
        try:
            for entity in pages:
                out.append(AuditEntry.model_validate_json(entity["Entry"]))
                if len(out) >= limit:
                    break
        except AzureError as exc:
            raise _map_error(exc, mailbox) from exc
        return out


# ---------------------------------------------------------------------------------------------- jobs, subscriptions

JOB_ROW = "~job"


class TableJobs:
    """Reconcile jobs: PartitionKey = job id; row ``~job`` holds the request, one row ``mb|<mailbox>`` per mailbox
    (each mailbox reconcile replaces only its own row, so parallel mailboxes never race)."""

    def __init__(self, table: HealingTable) -> None:
        self._table = table

    def create(self, job: ReconcileJob) -> None:
        pk = escape_key(job.id)
        head = {"PartitionKey": pk, "RowKey": JOB_ROW, "Job": job.model_dump_json(exclude={"mailboxes"})}
        ops: list[Any] = [("create", head)]
        ops += [("create", self._row(job.id, state)) for state in job.mailboxes.values()]
        for chunk in _chunks(ops):
            _call(lambda chunk=chunk: self._table.submit_transaction(list(chunk)), job.id)  # type: ignore[misc]

    @staticmethod
    def _row(job_id: str, state: MailboxJob) -> dict[str, Any]:
        return {"PartitionKey": escape_key(job_id), "RowKey": escape_key(f"mb|{state.mailbox}"),
                "State": state.model_dump_json()}

    def get(self, job_id: str) -> ReconcileJob | None:
        rows = self._table.query_entities("PartitionKey eq @pk", parameters={"pk": escape_key(job_id)})
        head: Any = None
        states: dict[str, MailboxJob] = {}
        try:
            for entity in rows:
                if entity["RowKey"] == JOB_ROW:
                    head = entity
                else:
                    state = MailboxJob.model_validate_json(entity["State"])
                    states[state.mailbox] = state
        except AzureError as exc:
            raise _map_error(exc, job_id) from exc
        if head is None:
            return None
        job = ReconcileJob.model_validate_json(head["Job"])
        return job.model_copy(update={"mailboxes": dict(sorted(states.items()))})

    def put_mailbox(self, job_id: str, state: MailboxJob) -> None:
        row = self._row(job_id, state)
        _call(lambda: self._table.upsert_entity(row, mode=UpdateMode.REPLACE), job_id)


SUBSCRIPTION_PARTITION = "graph"


class TableSubscriptions:
    """Graph subscriptions: one partition, RowKey = subscription id (the webhook's point read).

    ``get`` keeps what it found for ``cache_s`` seconds (per process): Graph sends notifications in bursts for a few
    subscriptions, and the point read was about a quarter of the webhook's answer time. A subscription deleted by
    another process is still accepted here for at most that long; the hints it lets through are harmless (the worker
    re-reads everything, and refuses a mailbox out of scope). Unknown ids are not cached."""

    MAX_CACHED = 10_000

    def __init__(self, table: HealingTable, *, cache_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._table = table
        self._cache_s, self._clock = cache_s, clock
        self._cache: dict[str, tuple[float, StoredSubscription]] = {}
        self._lock = threading.Lock()

    def get(self, subscription_id: str) -> StoredSubscription | None:
        now = self._clock()
        with self._lock:
            hit = self._cache.get(subscription_id)
        if hit is not None and now - hit[0] < self._cache_s:
            return hit[1]
        try:
            entity = self._table.get_entity(SUBSCRIPTION_PARTITION, escape_key(subscription_id))
        except ResourceNotFoundError:
            with self._lock:
                self._cache.pop(subscription_id, None)
            return None
        except AzureError as exc:
            raise _map_error(exc, subscription_id) from exc
        found = StoredSubscription.model_validate_json(entity["Subscription"])
        with self._lock:
            if len(self._cache) >= self.MAX_CACHED:
                self._cache.clear()
            self._cache[subscription_id] = (now, found)
        return found

    def put(self, sub: StoredSubscription) -> None:
        row = {"PartitionKey": SUBSCRIPTION_PARTITION, "RowKey": escape_key(sub.id), "Mailbox": sub.mailbox,
               "ExpiresAt": sub.expires_at, "Subscription": sub.model_dump_json()}
        with self._lock:
            self._cache.pop(sub.id, None)
        _call(lambda: self._table.upsert_entity(row, mode=UpdateMode.REPLACE), sub.id)

    def delete(self, subscription_id: str) -> None:
        with self._lock:
            self._cache.pop(subscription_id, None)
        try:
            self._table.delete_entity(SUBSCRIPTION_PARTITION, escape_key(subscription_id))
        except ResourceNotFoundError:
            pass
        except AzureError as exc:
            raise _map_error(exc, subscription_id) from exc

    def list_all(self) -> list[StoredSubscription]:
        rows = self._table.query_entities("PartitionKey eq @pk", parameters={"pk": SUBSCRIPTION_PARTITION})
        return _call(lambda: sorted((StoredSubscription.model_validate_json(r["Subscription"]) for r in rows),
                                    key=lambda s: (s.mailbox, s.id)))


class TableStorage:
    """The tables of the sync state, each created on first use and again whenever it was deleted under us.

    The links table is special: when it has to be created although this deployment had one before (a row in the
    checkpoints table remembers its first creation), it was lost; it is made again with a ``lost`` row, and the
    link store reports ``rebuilding`` until each mailbox has been rebuilt from the markers by a full reconcile.
    """

    def __init__(self, service: TableServiceClient, prefix: str = "sync") -> None:
        if not prefix.isalnum() or not prefix[:1].isalpha():
            raise ValueError("SYNC_TABLE_PREFIX must start with a letter and contain only letters and digits")
        self._service = service
        self._prefix = prefix
        self._created: set[str] = set()
        self._lock = threading.RLock()

    def _create(self, name: str) -> bool:
        """Create the table; True when it did not exist."""
        try:
            self._service.create_table(f"{self._prefix}{name}")
        except ResourceExistsError:
            return False
        except AzureError as exc:
            raise _map_error(exc, name) from exc
        return True

    def _create_links(self) -> None:
        if not self._create("links"):
            return
        checkpoints = self._table("checkpoints")
        try:
            checkpoints.get_entity(META_PARTITION, "links")
        except ResourceNotFoundError:  # the first links table of this deployment
            row = {"PartitionKey": META_PARTITION, "RowKey": "links", "CreatedAt": datetime.now(UTC)}
            _call(lambda: checkpoints.upsert_entity(row, mode=UpdateMode.REPLACE), "links")
            return
        except AzureError as exc:
            raise _map_error(exc, "links") from exc
        logger.warning("the links table was lost and is made again: tombstones restored, links rebuilt from markers")
        links = self._service.get_table_client(f"{self._prefix}links")
        restored = self._restore_tombstones(links)
        lost = {"PartitionKey": META_PARTITION, "RowKey": LOST_ROW, "At": datetime.now(UTC), "Restored": restored}
        _call(lambda: links.upsert_entity(lost, mode=UpdateMode.REPLACE), "links")

    def _restore_tombstones(self, links: TableClient) -> int:
        """Seed a links table made again after a loss with the tombstones (and their index rows); returns how many."""
        self._create("tombstones")
        rows = self._service.get_table_client(f"{self._prefix}tombstones").list_entities(select=["Link"])
        by_mailbox: dict[str, list[Any]] = {}
        index: list[Any] = []
        count = 0
        for row in _call(lambda: list(rows), "tombstones"):
            link = Link.model_validate_json(row["Link"])
            by_mailbox.setdefault(link.mailbox, []).append(("upsert", TableLinkStore._entity(link, link.primary_key()),
                                                             {"mode": UpdateMode.REPLACE}))
            if link.sf_id:
                key = escape_key(f"{link.sf_id}|{link.mailbox}")
                index.append(("upsert", {"PartitionKey": INDEX_PARTITION, "RowKey": key, "Mailbox": link.mailbox},
                              {"mode": UpdateMode.REPLACE}))
            count += 1
        for ops in [*by_mailbox.values(), index]:
            for chunk in _chunks(ops):
                _call(lambda chunk=chunk: links.submit_transaction(list(chunk)), "tombstones")  # type: ignore[misc]
        return count

    def _table(self, name: str) -> HealingTable:
        full = f"{self._prefix}{name}"

        def recreate() -> None:
            with self._lock:
                if name == "links":
                    self._create_links()
                else:
                    self._create(name)

        if full not in self._created:
            recreate()
            self._created.add(full)
        return HealingTable(self._service.get_table_client(full), recreate)

    def links(self) -> TableLinkStore:
        return TableLinkStore(self._table("links"), self._table("tombstones"))

    def checkpoints(self) -> TableCheckpoints:
        return TableCheckpoints(self._table("checkpoints"))

    def audit(self) -> TableAudit:
        return TableAudit(self._table("audit"))

    def jobs(self) -> TableJobs:
        return TableJobs(self._table("jobs"))

    def subscriptions(self) -> TableSubscriptions:
        return TableSubscriptions(self._table("subscriptions"))

    @classmethod
    def from_connection_string(cls, conn: str, prefix: str = "sync") -> TableStorage:
        return cls(TableServiceClient.from_connection_string(conn, raw_request_hook=REQUESTS), prefix)

    @classmethod
    def from_endpoint(cls, endpoint: str, credential: Any, prefix: str = "sync") -> TableStorage:
        """Identity-based access (``AzureWebJobsStorage__tableServiceUri`` + a TokenCredential)."""
        return cls(TableServiceClient(endpoint, credential=credential, raw_request_hook=REQUESTS), prefix)
