"""Ports: the small interfaces the core drives, and the vocabulary they share.

Vocabulary
    side        ``Side.M365`` (a mailbox's sync folder in Outlook) or ``Side.SALESFORCE`` (Contact records).
    mailbox     the user principal name (or object id) of a rep's mailbox; also the Table Storage partition of links.
    id          a side's own id: Graph *immutable* id, or the 18-character Salesforce id.
    version     a side's concurrency stamp: Graph ``changeKey`` (sent back as ``If-Match``), Salesforce
                ``SystemModstamp`` (compared just before a write, Contact has no ETag; docs/reference/salesforce.md
                §2.7).
    owner       the mailbox a record belongs to: for Outlook the mailbox it lives in; for Salesforce the mailbox of the
                owning user, or None when that user is not a synced mailbox.
    marker      the other side's id stamped on a record (Graph extended property / optional Salesforce field), so links
                can be rebuilt if the link table is lost.
    base        per side, digests of the synced field values as they were right after the last sync: the three-way
                merge's common ancestor. Kept per side because a side may hold less than we sent (a field length).
    fingerprint sha256 of a side's synced field values (``sync.model.fingerprint``); equal to the link's means
                "unchanged since we last synced", which is how the echoes of our own writes die.
    etag        the link row's storage concurrency token; a save with a stale one raises ``PreconditionFailed``.

Every port raises only ``sync.errors`` types.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from sync.errors import SyncError
from sync.model import Contact, Side


class SideRecord(BaseModel):
    """One contact as read from one side, right now."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    side: Side
    id: str
    contact: Contact
    version: str | None = None
    owner: str | None = None
    # Salesforce: owned by a synced rep but outside SF_SOQL_FILTER (owner is None then, so it is out of every
    # mailbox's scope as a contact of a user we do not sync; this only names the reason)
    out_of_filter: bool = False
    modified_at: datetime | None = None
    created_at: datetime | None = None  # Outlook: ``createdDateTime`` (equal to ``modified_at`` until written again)
    marker: str | None = None
    # Made by this sync and written by nobody else since (Salesforce: CreatedById and LastModifiedById are the
    # integration user). False when the side cannot tell. The planner removes such a record when it is a second copy
    # of an Outlook contact already synced (a create whose answer was lost, made again by another worker).
    untouched: bool = False
    # What the write that returned this record wants on record (e.g. a duplicate rule's alert naming the matched
    # ids): one audit row each, ids and field names only, unless it starts with ``REVIEW_NOTE``: a part of the contact
    # that was not written and waits for a person (its row has outcome "review" and may quote the value).
    notes: tuple[str, ...] = ()


class CreateRequest(BaseModel):
    """One item of a bulk create."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    contact: Contact
    marker: str | None = None


class UpdateRequest(BaseModel):
    """One item of a bulk update (same meaning as ``ContactSide.update``'s arguments)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    item_id: str
    contact: Contact
    fields: frozenset[str]
    if_match: str | None = None
    marker: str | None = None


class ChangePage(BaseModel):
    """One page of a change feed. ``checkpoint`` is set on the last page only: store it to resume from there.

    ``full`` says the feed started over (no checkpoint, or the old one expired, e.g. Graph's 410
    syncStateNotFound): the pages then list *everything*, and a record not listed no longer belongs to the mailbox.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    records: tuple[SideRecord, ...] = ()
    removed: tuple[str, ...] = ()  # ids deleted or moved out of the mailbox since the checkpoint
    checkpoint: str | None = None
    full: bool = False


class ContactSide(Protocol):
    """A place contacts live: one Outlook folder per mailbox, or the Salesforce org.

    ``get`` returns None when the item does not exist *for that mailbox* (deleted, or moved out of the sync folder).
    Salesforce ignores ``mailbox`` on reads (a record is found wherever it is owned; ``owner`` says where).
    ``find`` returns match candidates for match-before-create: same email (any address), or same
    first + last name + company. Outlook searches the mailbox's folder; Salesforce searches the org.
    Writes return the record as stored after the write (new version). ``update`` sends only ``fields``
    (field keys); ``if_match`` is the version read before the decision, a mismatch raises PreconditionFailed.
    ``marker`` on create/update stamps the other side's id (None on update: leave it as it is; "" clears it).
    ``find_by_marker`` returns the record stamped with ``marker`` (None when there is none, or the side carries no
    markers).
    ``create_many`` / ``update_many`` write in bulk (Graph ``$batch``, Salesforce sObject Collections) and return one
    result per item, in order: the stored record, or the typed error of that item (the call itself raises only
    when nothing could be attempted). ``changes`` streams what changed in a mailbox since a checkpoint
    (Graph delta; Salesforce SystemModstamp watermark + Recycle Bin).
    ``left_with_folder`` tells, for an item ``get`` does not find, whether it left with its folder: the Outlook sync
    folder the user deleted or moved, not a delete of the contact (always False where there are no folders).
    ``made_here`` tells whether this sync created the item and nobody copied it since: Outlook reads the create key
    its creates stamp (graph adapter, ``CREATE_KEY_PROPERTY_ID``) and checks that no other contact of the folder
    carries it (a rep's copy of a contact carries its properties). False where records name their author instead
    (Salesforce: ``SideRecord.untouched``).
    """

    side: Side
    carries_markers: bool  # False: this side cannot store the other side's id (create/update ignore ``marker``)

    def get(self, mailbox: str, item_id: str) -> SideRecord | None: ...

    def find(self, mailbox: str, contact: Contact) -> list[SideRecord]: ...

    def find_by_marker(self, mailbox: str, marker: str) -> SideRecord | None: ...

    def create(self, mailbox: str, contact: Contact, *, marker: str | None = None) -> SideRecord: ...

    def update(
        self,
        mailbox: str,
        item_id: str,
        contact: Contact,
        *,
        fields: frozenset[str],
        if_match: str | None,
        marker: str | None = None,
    ) -> SideRecord: ...

    def delete(self, mailbox: str, item_id: str, *, if_match: str | None) -> None: ...

    def stream(self, mailbox: str) -> Iterator[SideRecord]: ...

    def create_many(self, mailbox: str, items: Sequence[CreateRequest]) -> list[SideRecord | SyncError]: ...

    def update_many(self, mailbox: str, items: Sequence[UpdateRequest]) -> list[SideRecord | SyncError]: ...

    def changes(self, mailbox: str, checkpoint: str | None) -> Iterator[ChangePage]: ...

    def left_with_folder(self, mailbox: str, item_id: str) -> bool: ...

    def made_here(self, mailbox: str, item_id: str) -> bool: ...


class LinkState(StrEnum):
    LINKED = "linked"  # both ids, kept in sync
    DETACHED = "detached"  # one copy was deleted and the delete policy said 'unlink': never bring it back


class Link(BaseModel):
    """What we last agreed about one person in one mailbox. Stored as two rows (``m365|id``, ``sf|id``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mailbox: str
    m365_id: str | None = None
    sf_id: str | None = None
    state: LinkState = LinkState.LINKED
    # Per side, the digest of each synced field as that side held it right after the last sync (the merge base).
    # Digests, not values: enough to tell "changed since", and no personal data at rest in the link table.
    m365_base: Mapping[str, str] = Field(default_factory=dict)
    sf_base: Mapping[str, str] = Field(default_factory=dict)
    m365_fp: str | None = None
    sf_fp: str | None = None
    m365_version: str | None = None
    sf_version: str | None = None
    synced_at: datetime
    reason: str = ""
    # A worker about to write this pair claimed the link (docs/sync-rules.md, "Link claims"): a token of its own and
    # when. Saved like any link write (guarded by the etag read before the records), cleared by the link it saves.
    claim: str | None = None
    claimed_at: datetime | None = None
    etag: str | None = None

    def claimed(self, now: datetime, lease: timedelta) -> float:
        """Seconds left of a live claim by another worker (0.0: none, or its lease ran out)."""
        if self.claim is None or self.claimed_at is None:
            return 0.0
        return max(0.0, (self.claimed_at + lease - now).total_seconds())

    def id_on(self, side: Side) -> str | None:
        return self.m365_id if side is Side.M365 else self.sf_id

    def fp_on(self, side: Side) -> str | None:
        return self.m365_fp if side is Side.M365 else self.sf_fp

    def base_on(self, side: Side) -> Mapping[str, str]:
        return self.m365_base if side is Side.M365 else self.sf_base

    def row_keys(self) -> list[str]:
        """The storage rows of this link: ``m365|<id>`` and/or ``sf|<id>``."""
        keys = []
        if self.m365_id:
            keys.append(row_key(Side.M365, self.m365_id))
        if self.sf_id:
            keys.append(row_key(Side.SALESFORCE, self.sf_id))
        return keys

    def primary_key(self) -> str:
        """The row ``list`` yields (each link once): the Salesforce row when there is one."""
        return row_key(Side.SALESFORCE, self.sf_id) if self.sf_id else row_key(Side.M365, self.m365_id or "")


def row_key(side: Side, item_id: str) -> str:
    return f"{'m365' if side is Side.M365 else 'sf'}|{item_id}"


@dataclass(frozen=True)
class LinkWrite:
    """One ``save`` of a ``save_many``."""

    link: Link
    previous: Link | None = None
    absorb: Sequence[Link] = ()


class LinkStore(Protocol):
    """Links per mailbox. ``save`` writes all rows of a link in one transaction.

    ``save(link, previous=None)`` creates (AlreadyExists if any row exists); with ``previous`` it replaces the rows
    read as ``previous`` under its etag (PreconditionFailed if someone wrote since) and removes rows of ids the new
    link no longer has. ``absorb`` lists other links (read with their etags) whose rows the same transaction removes
    (a tombstone giving way to a new link). ``delete`` is guarded the same way. ``mailboxes_of`` answers which
    mailboxes hold a link to a Salesforce id (an index, refreshed after each save; a stale answer only costs a lookup
    that finds nothing). ``save_many`` is ``save`` for many links of one mailbox, packed into few transactions:
    one result per item, in order (the saved link, or the typed error of that item).

    ``rebuilding(mailbox)`` is true after the store was lost and started over (the links table deleted: it comes back
    holding only the tombstones, which are also kept apart), until ``mark_rebuilt(mailbox)`` records that a full
    reconcile of that mailbox rebuilt its links from the markers. While it is true the engine reads the markers of
    unlinked Outlook copies as lost links when their Salesforce partner is deleted or belongs to another owner.
    """

    def get(self, mailbox: str, side: Side, item_id: str) -> Link | None: ...

    def save(self, link: Link, *, previous: Link | None, absorb: Sequence[Link] = ()) -> Link: ...

    def save_many(self, items: Sequence[LinkWrite]) -> list[Link | SyncError]: ...

    def delete(self, link: Link) -> None: ...

    def list(self, mailbox: str) -> Iterator[Link]: ...

    def mailboxes_of(self, sf_id: str) -> set[str]: ...

    def rebuilding(self, mailbox: str) -> bool: ...

    def mark_rebuilt(self, mailbox: str) -> None: ...


class CheckpointStore(Protocol):
    """Opaque resume points: Graph deltaLinks, the Pub/Sub replay id, watermarks. ``scope`` is usually a mailbox."""

    def get(self, scope: str, name: str) -> str | None: ...

    def put(self, scope: str, name: str, value: str) -> None: ...


REVIEW_NOTE = "review:"
AuditOutcome = Literal["applied", "planned", "failed", "review", "refused"]


class AuditEntry(BaseModel):
    """One decision about one contact: what was done, why, to which fields. Ids and field names only, no values."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    at: datetime
    mailbox: str
    m365_id: str | None = None
    sf_id: str | None = None
    action: str
    reason: str
    fields: tuple[str, ...] = ()
    winner: Side | None = None
    rule: str | None = None
    outcome: AuditOutcome = "applied"
    error: str | None = None


class AuditLog(Protocol):
    def write(self, entries: Sequence[AuditEntry]) -> None: ...

    def recent(self, mailbox: str, limit: int = 50) -> list[AuditEntry]: ...

    def mentions(self, mailbox: str, m365_id: str) -> bool:
        """Whether any row of the mailbox names this Outlook id: the copy lived in this mailbox."""
        ...


class ContactChange(BaseModel):
    """A hint that one contact may have changed. Never trusted for content: the worker re-reads both sides."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["contact"] = "contact"
    source: Side
    item_id: str
    mailbox: str | None = None  # required for Outlook hints; Salesforce hints find the mailbox from the owner


class ReconcileMailbox(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["reconcile"] = "reconcile"
    mailbox: str
    job_id: str | None = None
    mode: Literal["delta", "full"] = "full"
    dry_run: bool = False
    force: bool = False


class LifecycleNotice(BaseModel):
    """A Graph lifecycle event (docs/reference/graph.md §4.6) whose clientState matched, queued for the upkeep worker;
    the webhook only acknowledges it. The mailbox comes from the stored subscription, never from the payload."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["lifecycle"] = "lifecycle"
    event: Literal["missed", "subscriptionRemoved", "reauthorizationRequired"]
    subscription_id: str
    mailbox: str


WorkItem = ContactChange | ReconcileMailbox | LifecycleNotice


class WorkQueue(Protocol):
    """Where hints go. ``delay`` (seconds) hides a message until then (retry later)."""

    def send(self, item: WorkItem, *, delay: float = 0.0) -> None: ...


# ---------------------------------------------------------------------------------------------- function app state


JobState = Literal["queued", "running", "done", "failed", "refused"]


class MailboxJob(BaseModel):
    """One mailbox of a reconcile job: where it stands and what it planned / applied (counts by action kind).

    ``refusal`` is the circuit breaker's message (with ``report``, its plan lines) when the mailbox was refused;
    ``errors`` are ``"<ErrorType> <ids>: message"`` lines (ids only, no personal data).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    mailbox: str
    state: JobState = "queued"
    attempts: int = 0
    ran: Literal["delta", "full"] | None = None
    visited: int = 0
    linked_before: int = 0
    planned: Mapping[str, int] = Field(default_factory=dict)
    applied: Mapping[str, int] = Field(default_factory=dict)
    errors: tuple[str, ...] = ()
    refusal: str | None = None
    report: tuple[str, ...] = ()
    started_at: datetime | None = None
    finished_at: datetime | None = None


class ReconcileJob(BaseModel):
    """A reconcile request (API or timer): one ``MailboxJob`` per mailbox."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    created: datetime
    mode: Literal["delta", "full"]
    dry_run: bool = False
    force: bool = False
    origin: Literal["api", "timer", "lifecycle", "cdc", "scope"] = "api"
    mailboxes: Mapping[str, MailboxJob] = Field(default_factory=dict)


class JobStore(Protocol):
    """Reconcile jobs. ``create`` writes the job and its mailboxes; ``put_mailbox`` replaces one mailbox's row
    (each mailbox has its own row, so concurrent mailbox reconciles never overwrite each other); ``recent`` lists
    the newest."""

    def create(self, job: ReconcileJob) -> None: ...

    def get(self, job_id: str) -> ReconcileJob | None: ...

    def put_mailbox(self, job_id: str, state: MailboxJob) -> None: ...

    def recent(self, limit: int = 20) -> list[ReconcileJob]:
        """The newest jobs of the last week, newest first, with their mailboxes."""
        ...


ReviewDecision = Literal["link", "create", "separate", "ignore"]


class ReviewItem(BaseModel):
    """An unlinked contact the planner sent to review (ambiguous match, duplicates), and a person's decision on it.

    Ids only. ``decision``: ``link`` the record with ``chosen[0]``; ``create`` a new contact on the other side;
    ``separate``: never match it with ``chosen``; ``ignore`` the record. A decision holds while the record's synced
    fields still have the fingerprint ``decided_fp`` they had when it was made (sync/review.py).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    mailbox: str
    side: Side
    record_id: str
    reason: str
    candidate_ids: tuple[str, ...] = ()
    first_seen: datetime
    last_seen: datetime
    decision: ReviewDecision | None = None
    chosen: tuple[str, ...] = ()
    decided_by: str | None = None
    decided_at: datetime | None = None
    decided_fp: str | None = None

    @property
    def id(self) -> str:
        """A stable id for the API: a digest of mailbox, side and record id."""
        return hashlib.sha256(f"{self.mailbox}|{self.side.value}|{self.record_id}".encode()).hexdigest()[:24]

    @property
    def open(self) -> bool:
        """Waiting for a person (no decision yet)."""
        return self.decision is None


class ReviewStore(Protocol):
    """Review items per mailbox, one per unlinked record. ``by_id`` finds an item by ``ReviewItem.id``."""

    def get(self, mailbox: str, side: Side, record_id: str) -> ReviewItem | None: ...

    def by_id(self, item_id: str) -> ReviewItem | None: ...

    def items(self, mailbox: str | None = None) -> list[ReviewItem]: ...

    def put(self, item: ReviewItem) -> None: ...

    def delete(self, item: ReviewItem) -> None: ...


class StoredSubscription(BaseModel):
    """A Graph subscription as the app stores it: the clientState only as its sha256 digest (hex)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    mailbox: str
    resource: str
    expires_at: datetime
    client_state_digest: str


class SubscriptionStore(Protocol):
    """Graph subscriptions by id (the webhook's lookup) and by mailbox (the renewal timer's)."""

    def get(self, subscription_id: str) -> StoredSubscription | None: ...

    def put(self, sub: StoredSubscription) -> None: ...

    def delete(self, subscription_id: str) -> None: ...

    def list_all(self) -> list[StoredSubscription]: ...
