"""In-memory fakes of the ports: both contact sides, links, checkpoints, audit, queue, jobs and subscriptions.

For unit, property and fuzz tests; never deployed. They keep the same promises as the real adapters:
``MemoryLinkStore`` passes the same contract suite as the Azure Tables store (tests/contract), ``MemorySide``
behaves like an Outlook folder (per mailbox) or a Salesforce org (org-wide, owned records, field lengths).
Fakes record their effects (``side.writes``, ``queue.sent``) and can be told to fail (``side.fail_next``).
"""

from __future__ import annotations

import builtins
import itertools
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sync.errors import AlreadyExists, NotFound, PreconditionFailed, SyncError
from sync.mapping import fit_salesforce
from sync.model import Contact, Side
from sync.policy import DEFAULT_SALESFORCE_LENGTHS, FieldMap
from sync.ports import (
    AuditEntry,
    ChangePage,
    ContactChange,
    CreateRequest,
    Link,
    LinkState,
    LinkWrite,
    MailboxJob,
    ReconcileJob,
    ReviewItem,
    SideRecord,
    StoredSubscription,
    UpdateRequest,
    WorkItem,
    row_key,
)

_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


class LogicalClock:
    """Deterministic time for tests: every tick is one second later."""

    def __init__(self) -> None:
        self._ticks = itertools.count(1)

    def __call__(self) -> datetime:
        return _EPOCH + timedelta(seconds=next(self._ticks))

    def skip(self, seconds: int) -> None:
        """Let ``seconds`` pass (e.g. a link claim's lease)."""
        self._ticks = itertools.count(next(self._ticks) + seconds)


@dataclass
class _Stored:
    contact: Contact
    version: int
    owner: str | None
    modified_at: datetime
    marker: str | None
    ours: bool = False  # made by the sync and written by no user since (Salesforce reports it: ``untouched``)
    created: datetime | None = None  # Outlook's createdDateTime (the first ``modified_at``)
    key: str | None = None  # the create key a sync create with a marker stamps (Outlook; ``made_here``)

    def __post_init__(self) -> None:
        if self.created is None:
            self.created = self.modified_at


@dataclass(frozen=True)
class WriteRecord:
    op: str  # create | update | delete
    mailbox: str
    item_id: str
    fields: frozenset[str] = frozenset()
    marker: str | None = None


class MemorySide:
    """One side of the sync in memory.

    Outlook (``Side.M365``): one folder per mailbox; ``get`` finds a record only in that mailbox's folder.
    Salesforce: one org; ``get`` ignores the mailbox, ``owner`` is the owning mailbox (None: not a synced user),
    ``stream(mailbox)`` lists the records that mailbox owns, ``find`` searches the whole org, values are cut to the
    Contact field lengths as Salesforce would.
    ``fail_next`` holds errors raised by the next calls (one each); ``on_call`` is called before each operation.
    """

    def __init__(
        self,
        side: Side,
        *,
        clock: Callable[[], datetime] | None = None,
        field_map: FieldMap | None = None,
        lengths: Mapping[str, int] = DEFAULT_SALESFORCE_LENGTHS,
    ) -> None:
        self.side = side
        self.carries_markers = True
        self._clock = clock or LogicalClock()
        self._field_map = field_map or FieldMap()
        self._lengths = lengths
        self._items: dict[str, _Stored] = {}
        self.deleted: dict[str, _Stored] = {}  # Deleted Items / Recycle Bin
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.fail_next: list[SyncError] = []
        self.on_call: Callable[[str], None] | None = None
        self.writes: list[WriteRecord] = []
        self.calls: dict[str, int] = {}
        # (sequence, id, owner before, owner after; None after = deleted): what change feeds read
        self._log: list[tuple[int, str, str | None, str | None]] = []
        self.page_size = 50

    # --- helpers ---------------------------------------------------------------------------------------------
    def _enter(self, op: str) -> None:
        self.calls[op] = self.calls.get(op, 0) + 1
        if self.on_call is not None:
            self.on_call(op)
        if self.fail_next:
            raise self.fail_next.pop(0)

    def _fit(self, contact: Contact) -> Contact:
        if self.side is not Side.SALESFORCE:
            return contact
        cut = {
            k: fit_salesforce(k, contact.get(k), self._field_map, self._lengths)
            for k in self._field_map.salesforce_fields()
        }
        return contact.with_values(cut)

    def _record(self, item_id: str, s: _Stored) -> SideRecord:
        return SideRecord(
            side=self.side, id=item_id, contact=s.contact, version=str(s.version), owner=s.owner,
            modified_at=s.modified_at, marker=s.marker, untouched=s.ours and self.side is Side.SALESFORCE,
            created_at=s.created if self.side is Side.M365 else None,
        )

    def _visible(self, mailbox: str, s: _Stored) -> bool:
        return self.side is Side.SALESFORCE or s.owner == mailbox

    def _logged(self, item_id: str, before: str | None, after: str | None) -> None:
        self._log.append((len(self._log) + 1, item_id, before, after))

    def _new_id(self) -> str:
        n = next(self._ids)
        return f"003{n:015d}" if self.side is Side.SALESFORCE else f"AAMk-{n:06d}="

    # --- ContactSide ------------------------------------------------------------------------------------------
    def get(self, mailbox: str, item_id: str) -> SideRecord | None:
        self._enter("get")
        with self._lock:
            s = self._items.get(item_id)
            return self._record(item_id, s) if s is not None and self._visible(mailbox, s) else None

    def find(self, mailbox: str, contact: Contact) -> list[SideRecord]:
        self._enter("find")
        emails = contact.email_keys()
        key = contact.name_company_key()
        with self._lock:
            return [
                self._record(i, s)
                for i, s in sorted(self._items.items())
                if self._visible(mailbox, s)
                and ((emails and emails & s.contact.email_keys()) or (key and s.contact.name_company_key() == key))
            ]

    def left_with_folder(self, mailbox: str, item_id: str) -> bool:
        return False  # the fake has one folder per mailbox, which nobody deletes

    def made_here(self, mailbox: str, item_id: str) -> bool:
        """Outlook as the Graph adapter tells it: created by the sync with a marker (its create key), and no other
        record carries that key (a copy made with ``user_copy`` does)."""
        self._enter("made_here")
        with self._lock:
            s = self._items.get(item_id)
            if self.side is not Side.M365 or s is None or s.key is None or not self._visible(mailbox, s):
                return False
            return [i for i, o in self._items.items() if o.key == s.key] == [item_id]

    def find_by_marker(self, mailbox: str, marker: str) -> SideRecord | None:
        self._enter("find_by_marker")
        with self._lock:
            return next((self._record(i, s) for i, s in sorted(self._items.items())
                         if s.marker == marker and self._visible(mailbox, s)), None)

    def create(self, mailbox: str, contact: Contact, *, marker: str | None = None) -> SideRecord:
        self._enter("create")
        with self._lock:
            item_id = self._new_id()
            self._items[item_id] = _Stored(self._fit(contact), 1, mailbox, self._clock(), marker, ours=True,
                                           key=f"key-{item_id}" if marker is not None else None)
            self._logged(item_id, None, mailbox)
            self.writes.append(WriteRecord("create", mailbox, item_id, marker=marker))
            return self._record(item_id, self._items[item_id])

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
        self._enter("update")
        with self._lock:
            s = self._items.get(item_id)
            if s is None or not self._visible(mailbox, s):
                raise NotFound("contact not found", side=self.side.value, item_id=item_id)
            if if_match is not None and if_match != str(s.version):
                raise PreconditionFailed("changed since it was read", side=self.side.value, item_id=item_id)
            new = self._fit(s.contact.with_values(contact.values(fields)))
            s.contact, s.version, s.modified_at = new, s.version + 1, self._clock()
            if marker is not None:
                s.marker = marker
            self._logged(item_id, s.owner, s.owner)
            self.writes.append(WriteRecord("update", mailbox, item_id, fields))
            return self._record(item_id, s)

    def delete(self, mailbox: str, item_id: str, *, if_match: str | None) -> None:
        self._enter("delete")
        with self._lock:
            s = self._items.get(item_id)
            if s is None or not self._visible(mailbox, s):
                raise NotFound("contact not found", side=self.side.value, item_id=item_id)
            if if_match is not None and if_match != str(s.version):
                raise PreconditionFailed("changed since it was read", side=self.side.value, item_id=item_id)
            self.deleted[item_id] = self._items.pop(item_id)
            self._logged(item_id, s.owner, None)
            self.writes.append(WriteRecord("delete", mailbox, item_id))

    def stream(self, mailbox: str) -> Iterator[SideRecord]:
        self._enter("stream")
        with self._lock:
            records = [self._record(i, s) for i, s in sorted(self._items.items()) if s.owner == mailbox]
        yield from records

    def create_many(self, mailbox: str, items: Sequence[CreateRequest]) -> list[SideRecord | SyncError]:
        self.calls["create_many"] = self.calls.get("create_many", 0) + 1
        out: list[SideRecord | SyncError] = []
        for item in items:
            try:
                out.append(self.create(mailbox, item.contact, marker=item.marker))
            except SyncError as exc:
                out.append(exc)
        return out

    def update_many(self, mailbox: str, items: Sequence[UpdateRequest]) -> list[SideRecord | SyncError]:
        self.calls["update_many"] = self.calls.get("update_many", 0) + 1
        out: list[SideRecord | SyncError] = []
        for item in items:
            try:
                out.append(self.update(mailbox, item.item_id, item.contact, fields=item.fields,
                                       if_match=item.if_match, marker=item.marker))
            except SyncError as exc:
                out.append(exc)
        return out

    def changes(self, mailbox: str, checkpoint: str | None) -> Iterator[ChangePage]:
        """Pages of what changed for ``mailbox`` since ``checkpoint`` (a position in the change log)."""
        self._enter("changes")
        with self._lock:
            head = len(self._log)
            if checkpoint is None or not checkpoint.isdigit() or int(checkpoint) > head:
                records = [self._record(i, s) for i, s in sorted(self._items.items()) if s.owner == mailbox]
                removed: list[str] = []
                full = True
            else:
                touched: dict[str, bool] = {}  # id -> ever in this mailbox during the window
                for _, item_id, before, after in self._log[int(checkpoint):]:
                    touched[item_id] = touched.get(item_id, False) or mailbox in (before, after)
                records, removed, full = [], [], False
                for item_id, concerned in touched.items():
                    s = self._items.get(item_id)
                    if s is not None and s.owner == mailbox:
                        records.append(self._record(item_id, s))
                    elif concerned:
                        removed.append(item_id)
        pages = [records[i:i + self.page_size] for i in range(0, len(records), self.page_size)] or [[]]
        for n, page in enumerate(pages):
            last = n == len(pages) - 1
            yield ChangePage(records=tuple(page), removed=tuple(removed) if last else (),
                             checkpoint=str(head) if last else None, full=full)

    # --- acting as a user (tests, demo): no faults, no write records -------------------------------------------
    def user_create(self, mailbox: str | None, contact: Contact, *, marker: str | None = None) -> str:
        with self._lock:
            item_id = self._new_id()
            self._items[item_id] = _Stored(self._fit(contact), 1, mailbox, self._clock(), marker)
            self._logged(item_id, None, mailbox)
            return item_id

    def user_copy(self, item_id: str, values: Mapping[str, str | None] | None = None) -> str:
        """A rep copies a contact in Outlook (every property comes along: marker and create key), then edits it."""
        with self._lock:
            s = self._items[item_id]
            copy_id = self._new_id()
            self._items[copy_id] = _Stored(self._fit(s.contact.with_values(values or {})), 1, s.owner, self._clock(),
                                           s.marker, key=s.key)
            self._logged(copy_id, None, s.owner)
            return copy_id

    def user_edit(self, item_id: str, values: Mapping[str, str | None]) -> None:
        with self._lock:
            s = self._items[item_id]
            s.contact, s.version, s.modified_at = self._fit(s.contact.with_values(values)), s.version + 1, self._clock()
            s.ours = False
            self._logged(item_id, s.owner, s.owner)

    def user_delete(self, item_id: str) -> None:
        with self._lock:
            self.deleted[item_id] = self._items.pop(item_id)
            self._logged(item_id, self.deleted[item_id].owner, None)

    def user_set_owner(self, item_id: str, owner: str | None) -> None:
        with self._lock:
            s = self._items[item_id]
            self._logged(item_id, s.owner, owner)
            s.owner, s.version, s.modified_at, s.ours = owner, s.version + 1, self._clock(), False

    def user_undelete(self, item_id: str) -> None:
        with self._lock:
            s = self.deleted.pop(item_id)
            s.version += 1
            s.ours = False
            self._items[item_id] = s
            self._logged(item_id, None, s.owner)

    def snapshot(self) -> dict[str, SideRecord]:
        """Every live record by id (tests read the final state through this)."""
        with self._lock:
            return {i: self._record(i, s) for i, s in self._items.items()}


# ---------------------------------------------------------------------------------------------- links


class MemoryLinkStore:
    """Links in a dict, with the Table store's semantics: rows per id, one etag per write, guarded replace."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], tuple[Link, int]] = {}
        self._versions = itertools.count(1)
        self._lock = threading.Lock()
        self.fail_next: list[SyncError] = []
        self._lost = False
        self._rebuilt: set[str] = set()

    def _enter(self) -> None:
        if self.fail_next:
            raise self.fail_next.pop(0)

    def lose(self) -> None:
        """Forget every link but the tombstones, as a deleted links table does once it is made again from the
        tombstones' copies (then ``rebuilding`` is true for every mailbox)."""
        with self._lock:
            self._rows = {k: v for k, v in self._rows.items() if v[0].state is LinkState.DETACHED}
            self._lost = True
            self._rebuilt.clear()

    def rebuilding(self, mailbox: str) -> bool:
        return self._lost and mailbox not in self._rebuilt

    def mark_rebuilt(self, mailbox: str) -> None:
        with self._lock:
            self._rebuilt.add(mailbox)

    def get(self, mailbox: str, side: Side, item_id: str) -> Link | None:
        key = row_key(side, item_id)
        with self._lock:
            row = self._rows.get((mailbox, key))
        if row is None:
            return None
        link, version = row
        return link.model_copy(update={"etag": f"{key}\n{version}"})

    def _check(self, link: Link) -> None:
        if link.etag is None:
            raise ValueError("link has no etag: read it from the store first")
        row_key, _, expected = link.etag.partition("\n")
        current = self._rows.get((link.mailbox, row_key))
        if current is None or str(current[1]) != expected:
            raise PreconditionFailed("link changed since it was read", item_id=row_key)

    def save_many(self, items: Sequence[LinkWrite]) -> list[Link | SyncError]:
        out: list[Link | SyncError] = []
        for w in items:
            try:
                out.append(self.save(w.link, previous=w.previous, absorb=w.absorb))
            except SyncError as exc:
                out.append(exc)
        return out

    def save(self, link: Link, *, previous: Link | None, absorb: Sequence[Link] = ()) -> Link:
        self._enter()
        if not (link.m365_id or link.sf_id):
            raise ValueError("a link needs at least one id")
        with self._lock:
            old_keys: list[str] = []
            for other in absorb:
                self._check(other)
                old_keys += other.row_keys()
            if previous is not None:
                self._check(previous)
                old_keys += previous.row_keys()
            new_keys = link.row_keys()
            for key in new_keys:
                if key not in old_keys and (link.mailbox, key) in self._rows:
                    raise AlreadyExists("another link holds this id", item_id=key)
            for key in old_keys:
                if key not in new_keys:
                    self._rows.pop((link.mailbox, key), None)
            version = next(self._versions)
            stored = link.model_copy(update={"etag": None})
            for key in new_keys:
                self._rows[(link.mailbox, key)] = (stored, version)
        primary = link.primary_key()
        return link.model_copy(update={"etag": f"{primary}\n{version}"})

    def delete(self, link: Link) -> None:
        self._enter()
        if link.etag is None:
            raise ValueError("link has no etag: read it from the store first")
        row_key, _, version = link.etag.partition("\n")
        with self._lock:
            current = self._rows.get((link.mailbox, row_key))
            if current is None:
                raise NotFound("link not found", item_id=row_key)
            if str(current[1]) != version:
                raise PreconditionFailed("link changed since it was read", item_id=row_key)
            for key in link.row_keys():
                self._rows.pop((link.mailbox, key), None)

    def list(self, mailbox: str) -> Iterator[Link]:
        with self._lock:
            rows = [(k, v) for k, v in self._rows.items() if k[0] == mailbox]
        for (_, key), (link, version) in sorted(rows):
            if key == link.primary_key():
                yield link.model_copy(update={"etag": f"{key}\n{version}"})

    def mailboxes_of(self, sf_id: str) -> set[str]:
        wanted = row_key(Side.SALESFORCE, sf_id)
        with self._lock:
            return {mb for (mb, key) in self._rows if key == wanted}

    def all_links(self) -> builtins.list[Link]:
        mailboxes = sorted({mb for mb, _ in self._rows})
        return [link for mb in mailboxes for link in self.list(mb)]


# ---------------------------------------------------------------------------------------------- the rest


class MemoryCheckpoints:
    def __init__(self) -> None:
        self._values: dict[tuple[str, str], str] = {}

    def get(self, scope: str, name: str) -> str | None:
        return self._values.get((scope, name))

    def put(self, scope: str, name: str, value: str) -> None:
        self._values[(scope, name)] = value


class MemoryAudit:
    def __init__(self) -> None:
        self.entries: list[AuditEntry] = []

    def write(self, entries: Sequence[AuditEntry]) -> None:
        self.entries.extend(entries)

    def recent(self, mailbox: str, limit: int = 50) -> list[AuditEntry]:
        return [e for e in reversed(self.entries) if e.mailbox == mailbox][:limit]

    def mentions(self, mailbox: str, m365_id: str) -> bool:
        return any(e.mailbox == mailbox and e.m365_id == m365_id for e in self.entries)


@dataclass
class MemoryQueue:
    sent: list[tuple[WorkItem, float]] = field(default_factory=list)

    def send(self, item: WorkItem, *, delay: float = 0.0) -> None:
        self.sent.append((item, delay))

    def drain(self) -> list[WorkItem]:
        items = [i for i, _ in self.sent]
        self.sent.clear()
        return items

    def contact_changes(self) -> list[ContactChange]:
        return [i for i, _ in self.sent if isinstance(i, ContactChange)]


class MemoryJobs:
    """Reconcile jobs in memory (same promises as ``TableJobs``)."""

    def __init__(self) -> None:
        self._jobs: dict[str, ReconcileJob] = {}
        self._lock = threading.Lock()

    def create(self, job: ReconcileJob) -> None:
        with self._lock:
            if job.id in self._jobs:
                raise AlreadyExists("job exists", item_id=job.id)
            self._jobs[job.id] = job

    def get(self, job_id: str) -> ReconcileJob | None:
        return self._jobs.get(job_id)

    def put_mailbox(self, job_id: str, state: MailboxJob) -> None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise NotFound("no such job", item_id=job_id)
            self._jobs[job_id] = job.model_copy(update={"mailboxes": {**job.mailboxes, state.mailbox: state}})

    def recent(self, limit: int = 20) -> builtins.list[ReconcileJob]:
        return sorted(self._jobs.values(), key=lambda j: j.created, reverse=True)[:limit]


class MemoryReviews:
    """Review items in memory (same promises as ``TableReviews``)."""

    def __init__(self) -> None:
        self._items: dict[tuple[str, Side, str], ReviewItem] = {}

    def get(self, mailbox: str, side: Side, record_id: str) -> ReviewItem | None:
        return self._items.get((mailbox, side, record_id))

    def by_id(self, item_id: str) -> ReviewItem | None:
        return next((i for i in self._items.values() if i.id == item_id), None)

    def items(self, mailbox: str | None = None) -> builtins.list[ReviewItem]:
        return sorted((i for i in self._items.values() if mailbox is None or i.mailbox == mailbox),
                      key=lambda i: (i.mailbox, i.first_seen, i.id))

    def put(self, item: ReviewItem) -> None:
        self._items[(item.mailbox, item.side, item.record_id)] = item

    def delete(self, item: ReviewItem) -> None:
        self._items.pop((item.mailbox, item.side, item.record_id), None)


class MemorySubscriptions:
    """Graph subscriptions in memory (same promises as ``TableSubscriptions``)."""

    def __init__(self) -> None:
        self._subs: dict[str, StoredSubscription] = {}

    def get(self, subscription_id: str) -> StoredSubscription | None:
        return self._subs.get(subscription_id)

    def put(self, sub: StoredSubscription) -> None:
        self._subs[sub.id] = sub

    def delete(self, subscription_id: str) -> None:
        self._subs.pop(subscription_id, None)

    def list_all(self) -> builtins.list[StoredSubscription]:
        return sorted(self._subs.values(), key=lambda s: (s.mailbox, s.id))


__all__ = [
    "LinkState",
    "LogicalClock",
    "MemoryAudit",
    "MemoryCheckpoints",
    "MemoryJobs",
    "MemoryLinkStore",
    "MemoryQueue",
    "MemoryReviews",
    "MemorySide",
    "MemorySubscriptions",
    "WriteRecord",
]
