"""The small Table Storage stores, one table each: checkpoints (a named value per scope, e.g. a change-feed
watermark), the audit log, reconcile jobs, Graph subscriptions and the review inbox.

``TableStorage`` hands each its ``HealingTable``; failures become ``sync.errors`` through ``client._call``. A
subscription read is cached per process for up to a minute (see ``TableSubscriptions``).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core.exceptions import AzureError, ResourceNotFoundError
from azure.data.tables import UpdateMode

from sync.adapters.storage.client import HealingTable, _call, _chunks, _map_error, escape_key
from sync.model import Side
from sync.ports import AuditEntry, MailboxJob, ReconcileJob, ReviewItem, StoredSubscription


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

    def recent(self, limit: int = 20) -> list[ReconcileJob]:
        """A scan of the job heads of the last 7 days (a few per hour at most), then each job's rows."""
        since = datetime.now(UTC) - timedelta(days=7)
        rows = self._table.query_entities("RowKey eq @rk and Timestamp ge @since", select=["PartitionKey", "Job"],
                                          parameters={"rk": JOB_ROW, "since": since})
        heads = _call(lambda: [ReconcileJob.model_validate_json(r["Job"]) for r in rows], "jobs")
        heads.sort(key=lambda j: j.created, reverse=True)
        return [job for job in (self.get(h.id) for h in heads[:limit]) if job is not None]


SUBSCRIPTION_PARTITION = "graph"


class TableSubscriptions:
    """Graph subscriptions: one partition, RowKey = subscription id (the webhook's point read).

    ``get`` keeps what it found for ``cache_s`` seconds (per process): Graph sends notifications in bursts for a few
    subscriptions, and the webhook should not pay the same point read for each. A subscription deleted by another
    process is still accepted here for at most that long; the hints it lets through are harmless (the worker
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


class TableReviews:
    """Review items: PartitionKey = mailbox, RowKey = the item id (a digest of mailbox, side and record id; ids
    only, no contact data). The inbox is small: listing and ``by_id`` query the table."""

    def __init__(self, table: HealingTable) -> None:
        self._table = table

    @staticmethod
    def _key(mailbox: str, side: Side, record_id: str) -> str:
        return ReviewItem(mailbox=mailbox, side=side, record_id=record_id, reason="", first_seen=datetime.min,
                          last_seen=datetime.min).id

    def get(self, mailbox: str, side: Side, record_id: str) -> ReviewItem | None:
        try:
            entity = self._table.get_entity(escape_key(mailbox), self._key(mailbox, side, record_id))
        except ResourceNotFoundError:
            return None
        except AzureError as exc:
            raise _map_error(exc, record_id) from exc
        return ReviewItem.model_validate_json(entity["Item"])

    def by_id(self, item_id: str) -> ReviewItem | None:
        rows = self._table.query_entities("RowKey eq @rk", parameters={"rk": item_id})
        return _call(lambda: next((ReviewItem.model_validate_json(r["Item"]) for r in rows), None), item_id)

    def items(self, mailbox: str | None = None) -> list[ReviewItem]:
        if mailbox is None:
            rows = self._table.query_entities("RowKey ne ''")
        else:
            rows = self._table.query_entities("PartitionKey eq @pk", parameters={"pk": escape_key(mailbox)})
        found = _call(lambda: [ReviewItem.model_validate_json(r["Item"]) for r in rows], mailbox or "review")
        return sorted(found, key=lambda i: (i.mailbox, i.first_seen, i.id))

    def put(self, item: ReviewItem) -> None:
        row = {"PartitionKey": escape_key(item.mailbox), "RowKey": item.id, "Open": item.open,
               "Item": item.model_dump_json()}
        _call(lambda: self._table.upsert_entity(row, mode=UpdateMode.REPLACE), item.record_id)

    def delete(self, item: ReviewItem) -> None:
        try:
            self._table.delete_entity(escape_key(item.mailbox), item.id)
        except ResourceNotFoundError:
            pass
        except AzureError as exc:
            raise _map_error(exc, item.record_id) from exc
