"""The engine: route a hint to its mailboxes, read both sides and the link, plan, execute.

Public API:
    Engine(m365, salesforce, links, audit, queue, policy, mailboxes)
    Engine.sync_contact(change) -> list[Outcome]        one hint, every mailbox it concerns
    Engine.read(change, mailbox) / Engine.situation(...)  the current state of one person, for the planner
    Engine.execute(situation, plan) / Engine.execute_many(mailbox, items)   run plans (``sync.execute``)
    Engine.twin_of(mailbox, record, candidates)         the pair an unlinked Outlook copy this sync made doubles

Level-triggered: a hint only names a contact; the engine reads the *current* state of both sides and the link, so
duplicated, late, reordered and lost hints are harmless. The link is always read before the records. An unlinked
Outlook copy whose marker names a deleted Salesforce contact, and while the links of a mailbox are rebuilt after the
links table was lost any unlinked record whose marker proves a lost link, is decided with that link (``lost_link``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sync.actions import Candidate, Plan, Situation
from sync.errors import SyncError
from sync.execute import Executor, Outcome
from sync.model import Side, field_digests, fingerprint
from sync.planner import plan
from sync.policy import DeletePolicy, MailboxScope, Policy
from sync.ports import (
    AuditLog,
    ContactChange,
    ContactSide,
    Link,
    LinkState,
    LinkStore,
    ReviewItem,
    ReviewStore,
    SideRecord,
    WorkQueue,
)
from sync.scope import MailboxList

logger = logging.getLogger(__name__)


class _Unread:
    """A record not read yet (as opposed to None: read, and not found)."""


UNREAD = _Unread()


@dataclass(frozen=True)
class _Routed:
    """The mailboxes a hint concerns, in order, and for a Salesforce hint what routing read: the record (read to
    find its owner) and the links of the mailboxes the index named, read before the record."""

    mailboxes: list[str]
    record: SideRecord | None | _Unread = UNREAD
    links: dict[str, Link | None] = field(default_factory=dict)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Engine:
    """Routing and reading; the plans it makes are run by an ``Executor``."""

    def __init__(
        self,
        m365: ContactSide,
        salesforce: ContactSide,
        links: LinkStore,
        audit: AuditLog,
        queue: WorkQueue,
        policy: Policy,
        mailboxes: Collection[str],
        *,
        clock: Callable[[], datetime] = utcnow,
        reviews: ReviewStore | None = None,
    ) -> None:
        self.sides: dict[Side, ContactSide] = {Side.M365: m365, Side.SALESFORCE: salesforce}
        self.links = links
        self.audit = audit
        self.queue = queue
        self.policy = policy
        # a MailboxList stays live (the group scope changes while the process runs); any other collection is fixed
        self.mailboxes: Collection[str] = (mailboxes if isinstance(mailboxes, MailboxList)
                                           else frozenset(mb.casefold() for mb in mailboxes))
        self.clock = clock
        self.reviews = reviews
        self._scopes: dict[str, MailboxScope] = {}
        self._executor = Executor(self.sides, links, audit, queue, self.scope, clock, reviews)

    def scope(self, mailbox: str) -> MailboxScope:
        """What ``mailbox`` syncs, and which way: resolved from the policy once per mailbox."""
        scope = self._scopes.get(mailbox)
        if scope is None:
            scope = self._scopes[mailbox] = self.policy.scope(mailbox)
        return scope

    # ------------------------------------------------------------------------------------------ reading
    def _candidates(self, mailbox: str, record: SideRecord) -> tuple[Candidate, ...]:
        """Possible matches on the other side for an unlinked record (marker first, then the side's search)."""
        other = self.sides[record.side.other]
        found: dict[str, SideRecord] = {}
        if record.marker:
            marked = other.get(mailbox, record.marker)
            if marked is not None:
                found[marked.id] = marked
        for rec in other.find(mailbox, record.contact):
            found.setdefault(rec.id, rec)
        out = []
        for rec in found.values():
            existing = self.links.get(mailbox, rec.side, rec.id)
            linked = existing is not None and existing.state is LinkState.LINKED
            out.append(Candidate(rec, linked=linked,
                                 partner=existing.id_on(record.side) if existing is not None and linked else None))
        return tuple(out)

    def mailboxes_for(self, change: ContactChange) -> list[str]:
        """The mailboxes a hint concerns: the Outlook mailbox, or the Salesforce owner plus every linked mailbox."""
        return self._route(change).mailboxes

    def _route(self, change: ContactChange) -> _Routed:
        """``mailboxes_for``, with what it read on the way: for a Salesforce hint, the links of the mailboxes the
        index names (read *before* the record) and the record (read to find its owner)."""
        if change.source is Side.M365:
            if not change.mailbox:
                raise ValueError("an Outlook change needs its mailbox")
            mailbox = change.mailbox.casefold()
            if mailbox not in self.mailboxes:
                logger.info("change for a mailbox out of scope ignored: item %s", change.item_id)
                return _Routed([])
            return _Routed([mailbox])
        # a mailbox that left the scope keeps its links but is never read or written (docs/sync-rules.md, "Mailbox
        # scope changes"): its copy stays as it is
        linked = {mb: self.links.get(mb, Side.SALESFORCE, change.item_id)
                  for mb in sorted(self.links.mailboxes_of(change.item_id)) if mb in self.mailboxes}
        salesforce = self.sides[Side.SALESFORCE].get("", change.item_id)
        mailboxes = set(linked)
        if salesforce is not None and salesforce.owner is not None and salesforce.owner in self.mailboxes:
            mailboxes.add(salesforce.owner)
        # the mailbox that loses the contact goes first, so the new owner's copy is made after the old one left
        order = sorted(mailboxes, key=lambda mb: (salesforce is not None and mb == salesforce.owner, mb))
        return _Routed(order, salesforce, linked)

    def read(self, change: ContactChange, mailbox: str, *, routed: _Routed | None = None) -> Situation | None:
        """Read the current state of both sides and the link, for one hint in one mailbox.

        The link is always read before the records: a record read first could be older than the link (another
        worker wrote both in between) and its old values would pass for an edit back to them. ``routed``: what
        ``sync_contact`` read to route a Salesforce hint; its record is reused unless a link turns up that was read
        after it."""
        outlook_side, sf_side = self.sides[Side.M365], self.sides[Side.SALESFORCE]
        if change.source is Side.M365:
            link = self.links.get(mailbox, Side.M365, change.item_id)
            outlook = outlook_side.get(mailbox, change.item_id)
            salesforce = sf_side.get(mailbox, link.sf_id) if link is not None and link.sf_id else None
            if link is None and outlook is None:
                return self._lost_delete(mailbox, change.item_id)
            if link is None and outlook is not None:
                return self.rebuilt(mailbox, outlook) or self.situation(mailbox, link, outlook, salesforce)
            return self.situation(mailbox, link, outlook, salesforce)
        known = routed.record if routed is not None else UNREAD
        if routed is not None and mailbox in routed.links:
            link = routed.links[mailbox]  # read before the record
        else:
            link = self.links.get(mailbox, Side.SALESFORCE, change.item_id)
            if link is not None:  # a link made since the record was read (or none read): the record again
                known = UNREAD
        salesforce = sf_side.get(mailbox, change.item_id) if isinstance(known, _Unread) else known
        outlook = outlook_side.get(mailbox, link.m365_id) if link is not None and link.m365_id else None
        if link is None and salesforce is not None:
            return self.rebuilt(mailbox, salesforce) or self.situation(mailbox, link, outlook, salesforce)
        return self.situation(mailbox, link, outlook, salesforce)

    def lost_link(self, mailbox: str, record: SideRecord) -> tuple[Link, SideRecord | None] | None:
        """The link an unlinked record's marker proves it had, when the planner must hear it as a link, with the
        partner the marker names.

        - An Outlook copy whose marker names a Salesforce contact that is deleted: the delete policy applies, always
          (the delete was missed while the links were lost, or the copy's link save never happened, or a worker
          decides an older read of the copy than the one another worker just deleted it for: every worker must
          decide it as that delete, never as a new contact). Salesforce ids are org-wide, so this cannot be
          mistaken.
        - While the links of ``mailbox`` are rebuilt after the links table was lost: an Outlook copy whose marker
          names a Salesforce contact owned by another user (its owner changed: it leaves this mailbox); a Salesforce
          contact of this mailbox whose marker names an Outlook copy that is gone from the folder and that this
          mailbox's audit mentions (the copy lived here, so it was deleted here: the tombstone the delete would have
          left). A copy the audit does not know lived in a previous owner's mailbox: not a delete here.
        None otherwise: no marker, or its partner is here (the marker adopts it as usual). The returned link is not
        stored (no etag): the plan's link write replaces it.
        """
        if not record.marker:
            return None
        rebuilding = self.links.rebuilding(mailbox)
        if not rebuilding and record.side is not Side.M365:
            return None
        partner = self.sides[record.side.other].get(mailbox, record.marker)
        if record.side is Side.M365:
            if partner is not None and (partner.owner == mailbox or not rebuilding):
                return None
        elif partner is not None or record.owner != mailbox or not self.audit.mentions(mailbox, record.marker):
            return None
        synced = self.scope(mailbox).keys
        outlook, salesforce = (record, partner) if record.side is Side.M365 else (partner, record)
        # What was synced last is unknown. Alone, the record counts as unedited (so the delete policy applies as the
        # lost link would have applied it); with its partner, every field on which they differ counts as edited on
        # both sides (the conflict policy decides, and the audit records it), as when a pair is first linked.
        alone = partner is None
        link = Link(
            mailbox=mailbox,
            m365_id=outlook.id if outlook else record.marker,
            sf_id=salesforce.id if salesforce else record.marker,
            m365_base=field_digests(outlook.contact, synced) if outlook and alone else {},
            sf_base=field_digests(salesforce.contact, synced) if salesforce and alone else {},
            m365_fp=fingerprint(outlook.contact, synced) if outlook and alone else None,
            sf_fp=fingerprint(salesforce.contact, synced) if salesforce and alone else None,
            m365_version=outlook.version if outlook else None,
            sf_version=salesforce.version if salesforce else None,
            synced_at=self.clock(),
            reason=("rebuilt from the link marker after the links table was lost" if rebuilding else
                    "read from the link marker: the Salesforce contact it names is deleted"),
        )
        logger.info("link of %s %s rebuilt from its marker (%s)", record.side.value, record.id,
                    "links table lost" if rebuilding else "its Salesforce contact is deleted")
        return link, partner

    def _lost_delete(self, mailbox: str, m365_id: str) -> Situation | None:
        """While the links are rebuilt: an Outlook copy deleted from this mailbox's folder whose link was lost. The
        Salesforce contact stamped with its id (the marker) tells which person it was; the hint came from this
        mailbox, so the delete happened here: the delete policy applies as the lost link would have applied it."""
        if not self.links.rebuilding(mailbox):
            return None
        marked = self.sides[Side.SALESFORCE].find_by_marker(mailbox, m365_id)
        if marked is None or marked.owner != mailbox or self.links.get(mailbox, Side.SALESFORCE, marked.id) is not None:
            return None
        synced = self.scope(mailbox).keys
        link = Link(mailbox=mailbox, m365_id=m365_id, sf_id=marked.id, sf_base=field_digests(marked.contact, synced),
                    sf_fp=fingerprint(marked.contact, synced), sf_version=marked.version, synced_at=self.clock(),
                    reason="rebuilt from the link marker after the links table was lost")
        logger.info("Outlook delete of %s matched to salesforce %s by its marker (links table lost)", m365_id,
                    marked.id)
        return self.situation(mailbox, link, None, marked)

    def rebuilt(self, mailbox: str, record: SideRecord) -> Situation | None:
        """The situation of an unlinked record read with the link its marker proves it lost (``lost_link``)."""
        lost = self.lost_link(mailbox, record)
        if lost is None:
            return None
        link, partner = lost
        outlook, salesforce = (record, partner) if record.side is Side.M365 else (partner, record)
        return self.situation(mailbox, link, outlook, salesforce)

    def situation(
        self, mailbox: str, link: Link | None, outlook: SideRecord | None, salesforce: SideRecord | None
    ) -> Situation:
        if salesforce is not None and salesforce.owner is not None and salesforce.owner not in self.mailboxes:
            salesforce = salesforce.model_copy(update={"owner": None})  # owned by a user we do not sync
        candidates: tuple[Candidate, ...] = ()
        review: ReviewItem | None = None
        present = outlook if outlook is not None else salesforce
        left = self._left_with_folder(mailbox, link, outlook, salesforce)
        if (
            present is not None
            and (outlook is None or salesforce is None)
            and (left or self._may_create(link, present))
            and (present.side is Side.M365 or present.owner == mailbox)
        ):
            candidates = self._candidates(mailbox, present)
            if link is None and self.reviews is not None:
                review = self.reviews.get(mailbox, present.side, present.id)
        twin = self.twin_of(mailbox, present, candidates) if link is None and present is not None else None
        return Situation(mailbox, link, outlook, salesforce, candidates, self.scope(mailbox), review, left, twin)

    def twin_of(self, mailbox: str, record: SideRecord, candidates: Sequence[Candidate]) -> Link | None:
        """For an unlinked Outlook copy whose marker names a Salesforce contact linked to *another* copy (two
        creates of one person: workers that raced on a hand-off, one killed or its undo refused by a user's edit),
        that pair's link, when this sync made the copy (``ContactSide.made_here``); else None. Reads only in that
        shape: the link, then the copy's create key."""
        if record.side is not Side.M365 or not record.marker:
            return None
        if not any(c.linked and c.record.id == record.marker for c in candidates):
            return None  # (its marker may name this copy: the loser stamped it last; the link tells the pair)
        twin = self.links.get(mailbox, Side.SALESFORCE, record.marker)
        if twin is None or twin.state is not LinkState.LINKED or twin.m365_id in (None, record.id):
            return None
        return twin if self.sides[Side.M365].made_here(mailbox, record.id) else None

    def _left_with_folder(
        self, mailbox: str, link: Link | None, outlook: SideRecord | None, salesforce: SideRecord | None
    ) -> bool:
        """Whether a linked Outlook copy that is missing left with the sync folder (deleted or moved by the user):
        asked only before the planner would hear it as an Outlook delete."""
        if link is None or link.state is not LinkState.LINKED or not link.m365_id or outlook is not None:
            return False
        if salesforce is None or salesforce.owner != mailbox:
            return False
        return self.sides[Side.M365].left_with_folder(mailbox, link.m365_id)

    def _may_create(self, link: Link | None, present: SideRecord) -> bool:
        """Whether the plan may create a copy of ``present`` (then it needs match candidates first)."""
        if link is None:
            return True
        gone = present.side.other
        return link.state is LinkState.LINKED and self.policy.delete_policy(gone) is DeletePolicy.RECREATE

    # ------------------------------------------------------------------------------------------ the entry point
    def sync_contact(self, change: ContactChange) -> list[Outcome]:
        """Bring one person in sync in every mailbox the hint concerns. Raises typed errors (retry or poison)."""
        outcomes = []
        routed = self._route(change)
        for i, mailbox in enumerate(routed.mailboxes):
            # read just before deciding: an earlier mailbox may have written (the first one reuses the routing read)
            situation = self.read(change, mailbox, routed=routed if i == 0 else None)
            if situation is not None:
                outcomes.append(self.execute(situation, plan(situation, self.policy)))
        return outcomes

    # ------------------------------------------------------------------------------------------ executing
    def execute(self, s: Situation, p: Plan) -> Outcome:
        """``execute_many`` of one plan, its writes one at a time (a hint's); raises the typed error that stopped
        it."""
        (result,) = self._executor.run(s.mailbox, [(s, p)], bulk=False)
        if isinstance(result, SyncError):
            raise result
        return result

    def execute_many(self, mailbox: str, items: Sequence[tuple[Situation, Plan]]) -> list[Outcome | SyncError]:
        """Execute many plans of one mailbox, the writes of plain plans (creates, updates, adoptions) sent in bulk
        (``Executor.run``). One result per item, in order: the Outcome, or the typed error that stopped that plan."""
        return self._executor.run(mailbox, items)
