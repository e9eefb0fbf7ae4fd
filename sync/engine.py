"""The engine: read both sides and the link, plan, execute, commit the link, audit.

Public API:
    Engine(m365, salesforce, links, audit, queue, policy, mailboxes)
    Engine.sync_contact(change) -> list[Outcome]        one hint, every mailbox it concerns
    Engine.situation(...) / Engine.execute(situation, plan)   used by reconcile for whole mailboxes

Level-triggered (DESIGN.md): a hint only names a contact; the engine reads the *current* state of both sides and the
link, so duplicated, late, reordered and lost hints are harmless. A plan's writes run in order; if one fails the link
is left exactly as it was (the next attempt re-reads and decides again) and the typed error goes up to the caller.
The link is committed last, under the etag it was read with.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sync.errors import AlreadyExists, NotFound, PreconditionFailed, SyncError
from sync.model import field_digest, field_digests, fingerprint
from sync.planner import (
    Adopt,
    Candidate,
    Conflict,
    Create,
    Delete,
    Handoff,
    LinkAfter,
    Nothing,
    Plan,
    Review,
    Situation,
    Skip,
    Update,
    plan,
    synced_rules,
)
from sync.policy import DeletePolicy, Policy, Side
from sync.ports import (
    AuditEntry,
    AuditLog,
    AuditOutcome,
    ContactChange,
    ContactSide,
    CreateRequest,
    Link,
    LinkState,
    LinkStore,
    LinkWrite,
    SideRecord,
    UpdateRequest,
    WorkQueue,
)

logger = logging.getLogger(__name__)


def _vanished(exc: SyncError) -> SyncError:
    """A record that vanished between our read and our write (a user deleted it meanwhile) is a lost race, to be
    read and decided again (the delete policy then applies), not a permanent error that poisons the hint."""
    if isinstance(exc, NotFound):
        return PreconditionFailed(f"{exc.message}; it vanished since it was read", side=exc.side, item_id=exc.item_id)
    return exc


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


@dataclass(frozen=True)
class Outcome:
    """What happened to one person in one mailbox."""

    mailbox: str
    plan: Plan
    applied: bool
    link: Link | None = None
    records: dict[Side, SideRecord | None] = field(default_factory=dict)


class Engine:
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
    ) -> None:
        self.sides: dict[Side, ContactSide] = {Side.M365: m365, Side.SALESFORCE: salesforce}
        self.links = links
        self.audit = audit
        self.queue = queue
        self.policy = policy
        self.mailboxes = frozenset(mb.casefold() for mb in mailboxes)
        self.clock = clock

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
            out.append(Candidate(rec, linked=existing is not None and existing.state is LinkState.LINKED))
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
        linked = {mb: self.links.get(mb, Side.SALESFORCE, change.item_id)
                  for mb in sorted(self.links.mailboxes_of(change.item_id))}
        f = self.sides[Side.SALESFORCE].get("", change.item_id)
        mailboxes = set(linked)
        if f is not None and f.owner in self.mailboxes:
            mailboxes.add(f.owner)
        # the mailbox that loses the contact goes first, so the new owner's copy is made after the old one left
        order = sorted(mailboxes, key=lambda mb: (f is not None and mb == f.owner, mb))
        return _Routed(order, f, linked)

    def read(self, change: ContactChange, mailbox: str, *, routed: _Routed | None = None) -> Situation | None:
        """Read the current state of both sides and the link, for one hint in one mailbox.

        The link is always read before the records: a record read first could be older than the link (another
        worker wrote both in between) and its old values would pass for an edit back to them. ``routed``: what
        ``sync_contact`` read to route a Salesforce hint; its record is reused unless a link turns up that was read
        after it."""
        m365, sf = self.sides[Side.M365], self.sides[Side.SALESFORCE]
        if change.source is Side.M365:
            link = self.links.get(mailbox, Side.M365, change.item_id)
            m = m365.get(mailbox, change.item_id)
            f = sf.get(mailbox, link.sf_id) if link is not None and link.sf_id else None
            if link is None and m is None:
                return self._lost_delete(mailbox, change.item_id)
            if link is None and m is not None:
                return self.rebuilt(mailbox, m) or self.situation(mailbox, link, m, f)
            return self.situation(mailbox, link, m, f)
        known = routed.record if routed is not None else UNREAD
        if routed is not None and mailbox in routed.links:
            link = routed.links[mailbox]  # read before the record
        else:
            link = self.links.get(mailbox, Side.SALESFORCE, change.item_id)
            if link is not None:  # a link made since the record was read (or none read): the record again
                known = UNREAD
        f = sf.get(mailbox, change.item_id) if isinstance(known, _Unread) else known
        m = m365.get(mailbox, link.m365_id) if link is not None and link.m365_id else None
        if link is None and f is not None:
            return self.rebuilt(mailbox, f) or self.situation(mailbox, link, m, f)
        return self.situation(mailbox, link, m, f)

    def lost_link(self, mailbox: str, record: SideRecord) -> tuple[Link, SideRecord | None] | None:
        """While the links of ``mailbox`` are rebuilt after the links table was lost: the link an unlinked Outlook
        copy's marker proves it had, when the planner must hear it as a link, with the partner the marker names.

        - An Outlook copy whose marker names a Salesforce contact that is deleted (deleted while the links were lost:
          the delete policy applies), or owned by another user (its owner changed: it leaves this mailbox).
          Salesforce ids are org-wide, so this cannot be mistaken.
        - A Salesforce contact of this mailbox whose marker names an Outlook copy that is gone from the folder and
          that this mailbox's audit mentions (the copy lived here, so it was deleted here: the tombstone the delete
          would have left). A copy the audit does not know lived in a previous owner's mailbox: not a delete here.
        None when the links are not being rebuilt, the record has no marker, or its partner is here (the marker
        adopts it as usual). The returned link is not stored (no etag): the plan's link write replaces it.
        """
        if not record.marker or not self.links.rebuilding(mailbox):
            return None
        partner = self.sides[record.side.other].get(mailbox, record.marker)
        if record.side is Side.M365:
            if partner is not None and partner.owner == mailbox:
                return None
        elif partner is not None or record.owner != mailbox or not self.audit.mentions(mailbox, record.marker):
            return None
        synced = tuple(rule.key for rule, _ in synced_rules(self.policy, mailbox))
        m, f = (record, partner) if record.side is Side.M365 else (partner, record)
        # What was synced last is unknown. Alone, the record counts as unedited (so the delete policy applies as the
        # lost link would have applied it); with its partner, every field on which they differ counts as edited on
        # both sides (the conflict policy decides, and the audit records it), as when a pair is first linked.
        alone = partner is None
        link = Link(
            mailbox=mailbox,
            m365_id=m.id if m else record.marker,
            sf_id=f.id if f else record.marker,
            m365_base=field_digests(m.contact, synced) if m and alone else {},
            sf_base=field_digests(f.contact, synced) if f and alone else {},
            m365_fp=fingerprint(m.contact, synced) if m and alone else None,
            sf_fp=fingerprint(f.contact, synced) if f and alone else None,
            m365_version=m.version if m else None,
            sf_version=f.version if f else None,
            synced_at=self.clock(),
            reason="rebuilt from the link marker after the links table was lost",
        )
        logger.info("link of %s %s rebuilt from its marker (links table lost)", record.side.value, record.id)
        return link, partner

    def _lost_delete(self, mailbox: str, m365_id: str) -> Situation | None:
        """While the links are rebuilt: an Outlook copy deleted from this mailbox's folder whose link was lost. The
        Salesforce contact stamped with its id (the marker) tells which person it was; the hint came from this
        mailbox, so the delete happened here: the delete policy applies as the lost link would have applied it."""
        if not self.links.rebuilding(mailbox):
            return None
        f = self.sides[Side.SALESFORCE].find_by_marker(mailbox, m365_id)
        if f is None or f.owner != mailbox or self.links.get(mailbox, Side.SALESFORCE, f.id) is not None:
            return None
        synced = tuple(rule.key for rule, _ in synced_rules(self.policy, mailbox))
        link = Link(mailbox=mailbox, m365_id=m365_id, sf_id=f.id, sf_base=field_digests(f.contact, synced),
                    sf_fp=fingerprint(f.contact, synced), sf_version=f.version, synced_at=self.clock(),
                    reason="rebuilt from the link marker after the links table was lost")
        logger.info("Outlook delete of %s matched to salesforce %s by its marker (links table lost)", m365_id, f.id)
        return self.situation(mailbox, link, None, f)

    def rebuilt(self, mailbox: str, record: SideRecord) -> Situation | None:
        """The situation of an unlinked record read with the link its marker proves it lost (``lost_link``)."""
        lost = self.lost_link(mailbox, record)
        if lost is None:
            return None
        link, partner = lost
        m, f = (record, partner) if record.side is Side.M365 else (partner, record)
        return self.situation(mailbox, link, m, f)

    def situation(
        self, mailbox: str, link: Link | None, m: SideRecord | None, f: SideRecord | None
    ) -> Situation:
        if f is not None and f.owner is not None and f.owner not in self.mailboxes:
            f = f.model_copy(update={"owner": None})  # owned by a user we do not sync
        candidates: tuple[Candidate, ...] = ()
        present = m if m is not None else f
        if (
            present is not None
            and (m is None or f is None)
            and self._may_create(link, present)
            and (present.side is Side.M365 or present.owner == mailbox)
        ):
            candidates = self._candidates(mailbox, present)
        return Situation(mailbox, link, m, f, candidates)

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
        records: dict[Side, SideRecord | None] = {Side.M365: s.m365, Side.SALESFORCE: s.sf}
        if p.link_after is LinkAfter.KEEP and not p.writes:
            if any(isinstance(a, Review | Skip) for a in p.actions):
                self._audit(s, p, records, "review" if any(isinstance(a, Review) for a in p.actions) else "applied")
            return Outcome(s.mailbox, p, True, s.link, records)
        self._audit_conflicts_first(s, p, records)
        try:
            for action in p.actions:
                self._apply(s.mailbox, action, records)
            if not any(isinstance(a, Create) for a in p.actions):  # a create stamps its source itself
                for rec, other_id in self._unstamped(p, records):
                    records[rec.side] = self._stamp(s.mailbox, rec, other_id)
        except SyncError as exc:
            raced = _vanished(exc)
            self._audit(s, p, records, "failed", error=f"{type(raced).__name__}: {raced}")
            raise raced from exc
        try:
            link = self._commit(s, p, records)
        except SyncError as exc:
            note = ""
            if isinstance(exc, AlreadyExists | PreconditionFailed):
                note = self._undo_creates(s, p, records, {a.side for a in p.actions if isinstance(a, Create)})
            self._audit(s, p, records, "failed", error=f"{type(exc).__name__}: {exc}{note}")
            raise
        self._audit(s, p, records, "applied")
        return Outcome(s.mailbox, p, True, link, records)

    def _audit_conflicts_first(self, s: Situation, p: Plan, records: dict[Side, SideRecord | None]) -> None:
        """A plan that overrides an edit (a conflict) says so in the audit before it writes, so a worker killed
        between its writes and its audit rows never leaves an override without a trace (outcome ``planned``; the
        ``applied`` or ``failed`` rows follow)."""
        if p.writes and any(isinstance(a, Conflict) for a in p.actions):
            self.audit.write([e for e in self._audit_entries(s, p, records, "planned") if e.action == "conflict"])

    def _undo_creates(self, s: Situation, p: Plan, records: dict[Side, SideRecord | None], sides: set[Side]) -> str:
        """The link save after a create lost a race (another worker linked this person first: a duplicated hint,
        an owner change handed over twice): delete the copies this plan made, so the person is not doubled, and
        point the source's marker back at the winner's copy. Best effort; returns a note for the audit."""
        notes = []
        for side in sorted(sides, key=lambda x: x.value):
            made, before = records[side], (s.m365 if side is Side.M365 else s.sf)
            if made is None or (before is not None and before.id == made.id):
                continue
            if self.links.get(s.mailbox, side, made.id) is not None:
                continue  # the winner adopted this very copy (its marker led there): it stays
            try:
                moved = self._delete_made(s.mailbox, made, records[side.other])
            except NotFound:
                moved = ""
            except SyncError as exc:
                logger.warning("copy %s %s made by a plan that lost a race not deleted: %s", side.value, made.id,
                               type(exc).__name__)
                notes.append(f"the {side.label} copy {made.id} it created could not be deleted again")
                continue
            records[side] = None
            notes.append(f"the {side.label} copy {made.id} it created was deleted again (linked by another worker)"
                         + moved)
            source = records[side.other]
            if source is not None and source.marker == made.id and self.sides[side.other].carries_markers:
                winner = self.links.get(s.mailbox, source.side, source.id)
                other_id = winner.id_on(side) if winner is not None else None
                if other_id:
                    records[side.other] = self._stamp(s.mailbox, source, other_id)
        return "; " + "; ".join(notes) if notes else ""

    def _delete_made(self, mailbox: str, made: SideRecord, source: SideRecord | None) -> str:
        """Delete a copy this plan made in a lost race. If a user edited it meanwhile (412: people see both copies
        for a moment), the fields they changed are written to the winner's copy first, so the edit is not lost with
        the duplicate. Returns a note for the audit."""
        port = self.sides[made.side]
        try:
            port.delete(mailbox, made.id, if_match=made.version)
            return ""
        except PreconditionFailed:
            now = port.get(mailbox, made.id)
        if now is None:
            return ""
        synced = [rule.key for rule, _ in synced_rules(self.policy, mailbox)]
        edited = {k: now.contact.get(k) for k in synced
                  if field_digest(k, now.contact.get(k)) != field_digest(k, made.contact.get(k))}
        winner = self.links.get(mailbox, source.side, source.id) if source is not None else None
        winner_id = winner.id_on(made.side) if winner is not None else None
        note = ""
        if edited and winner_id:
            target = port.get(mailbox, winner_id)
            if target is None:
                raise PreconditionFailed("the winner's copy vanished", side=made.side.value, item_id=winner_id)
            port.update(mailbox, winner_id, target.contact.with_values(edited), fields=frozenset(edited),
                        if_match=target.version)
            note = f"; a user's edit of it ({', '.join(sorted(edited))}) was moved to {winner_id}"
        port.delete(mailbox, made.id, if_match=now.version)
        return note

    def execute_many(self, mailbox: str, items: Sequence[tuple[Situation, Plan]]) -> list[Outcome | SyncError]:
        """``execute`` for many plans of one mailbox, with the writes of plain plans sent in bulk.

        Plain plans (creates, updates, adoptions) have their writes grouped per side: updates first (Salesforce,
        then Outlook, as ``execute`` orders them), then creates (carrying the other side's id as marker), then the
        marker stamps on the sources; a plan whose write failed skips its later writes and keeps its link as it
        was. Plans with deletes or hand-offs run one by one. One result per item, in order: the Outcome, or the
        typed error that stopped that plan. Audit rows are written together at the end.
        """
        results: list[Outcome | SyncError | None] = [None] * len(items)
        records: dict[int, dict[Side, SideRecord | None]] = {}
        failed: dict[int, SyncError] = {}
        entries: list[AuditEntry] = []
        for i, (s, p) in enumerate(items):
            plain = all(isinstance(a, Create | Update | Adopt | Conflict | Nothing) for a in p.actions)
            if p.writes and plain and sum(isinstance(a, Create) for a in p.actions) <= 1:
                records[i] = {Side.M365: s.m365, Side.SALESFORCE: s.sf}
                for a in p.actions:
                    if isinstance(a, Adopt):
                        records[i] = {Side.M365: a.m365, Side.SALESFORCE: a.sf}
                continue
            try:
                results[i] = self.execute(s, p)
            except SyncError as exc:
                results[i] = exc

        planned = [e for i in records for e in self._audit_entries(*items[i], records[i], "planned")
                   if e.action == "conflict"]
        if planned:  # overrides are on record before anything is written (see _audit_conflicts_first)
            self.audit.write(planned)
        for side in (Side.SALESFORCE, Side.M365):  # updates, in execute's order
            todo = [(i, a) for i in records for a in items[i][1].actions
                    if isinstance(a, Update) and a.side is side and i not in failed]
            if todo:
                done = self.sides[side].update_many(mailbox, [
                    UpdateRequest(item_id=a.item_id, contact=a.contact, fields=a.fields, if_match=a.if_match,
                                  marker=a.marker) for _, a in todo])
                for (i, a), r in zip(todo, done, strict=True):
                    if isinstance(r, SyncError):
                        failed[i] = _vanished(r)
                    else:
                        records[i][side] = self._as_written(mailbox, records[i][side], r, a.fields, a.marker)
        created: list[tuple[int, Side]] = []
        for side in (Side.SALESFORCE, Side.M365):  # creates, each carrying the source's id as marker
            todo_c = [(i, a) for i in records for a in items[i][1].actions
                      if isinstance(a, Create) and a.side is side and i not in failed]
            if todo_c:
                sources = [records[i][side.other] for i, _ in todo_c]
                done = self.sides[side].create_many(mailbox, [
                    CreateRequest(contact=a.contact, marker=src.id if src else None)
                    for (_, a), src in zip(todo_c, sources, strict=True)])
                for (i, _), r in zip(todo_c, done, strict=True):
                    if isinstance(r, SyncError):
                        failed[i] = r
                    else:
                        records[i][side] = r
                        created.append((i, side))
        for side in (Side.SALESFORCE, Side.M365):  # marker stamps: the sources of creates, and any stale marker
            stamps = [(i, rec, other_id) for i in records if i not in failed
                      for rec, other_id in self._unstamped(items[i][1], records[i]) if rec.side is side]
            if stamps and self.sides[side].carries_markers:
                done = self.sides[side].update_many(mailbox, [  # unguarded: see _stamp
                    UpdateRequest(item_id=src.id, contact=src.contact, fields=frozenset(), if_match=None,
                                  marker=new_id) for _, src, new_id in stamps])
                for (i, src, new_id), r in zip(stamps, done, strict=True):
                    if isinstance(r, SyncError):
                        logger.warning("marker not stamped on %s in bulk: %s", side.value, type(r).__name__)
                    else:
                        records[i][side] = self._as_written(mailbox, src, r, frozenset(), new_id)

        made = set(created)
        saves: list[tuple[int, LinkWrite]] = []
        committed: dict[int, Link | None | SyncError] = {}
        for i in records:
            s, p = items[i]
            if i in failed:
                continue
            try:
                write = self._link_write(s, p, records[i], created={r.id for side, r in records[i].items()
                                                                     if r is not None and (i, side) in made})
                if write is None:
                    committed[i] = self._commit(s, p, records[i])
                else:
                    saves.append((i, write))
            except SyncError as exc:
                committed[i] = exc
        if saves:  # the links of the pass together: a transaction per 100 rows instead of one per link
            for (i, _), saved in zip(saves, self.links.save_many([w for _, w in saves]), strict=True):
                committed[i] = saved
        for i in records:
            s, p = items[i]
            outcome = failed.get(i) or committed.get(i)
            if isinstance(outcome, SyncError):
                note = ""
                if i not in failed and isinstance(outcome, AlreadyExists | PreconditionFailed):
                    note = self._undo_creates(s, p, records[i], {side for j, side in made if j == i})
                entries += self._audit_entries(s, p, records[i], "failed",
                                               error=f"{type(outcome).__name__}: {outcome}{note}")
                results[i] = outcome
                continue
            entries += self._audit_entries(s, p, records[i], "applied")
            results[i] = Outcome(s.mailbox, p, True, outcome, records[i])
        if entries:
            self.audit.write(entries)
        return [r if r is not None else SyncError("not executed") for r in results]

    def _apply(self, mailbox: str, action: object, records: dict[Side, SideRecord | None]) -> None:
        if isinstance(action, Create):
            other = records[action.side.other]
            created = self.sides[action.side].create(mailbox, action.contact, marker=other.id if other else None)
            records[action.side] = created
            if other is not None:
                records[other.side] = self._stamp(mailbox, other, created.id)
        elif isinstance(action, Update):
            written = self.sides[action.side].update(
                mailbox, action.item_id, action.contact, fields=action.fields, if_match=action.if_match,
                marker=action.marker,
            )
            records[action.side] = self._as_written(mailbox, records[action.side], written, action.fields,
                                                    action.marker)
        elif isinstance(action, Delete):
            with contextlib.suppress(NotFound):  # already gone: the goal is reached
                self.sides[action.side].delete(mailbox, action.item_id, if_match=action.if_match)
            records[action.side] = None
        elif isinstance(action, Adopt):
            records[Side.M365], records[Side.SALESFORCE] = action.m365, action.sf
        elif isinstance(action, Handoff):
            self.queue.send(ContactChange(source=Side.SALESFORCE, item_id=action.sf_id))

    def _as_written(self, mailbox: str, before: SideRecord | None, after: SideRecord, fields: frozenset[str],
                    marker: str | None) -> SideRecord:
        """The record as our write left it, for the link. A synced field we did not write that differs from what
        we read was changed by someone else between our version check and our write (Salesforce has no conditional
        update: it compares SystemModstamp, then PATCHes). Taking it into the link would pass it for synced and it
        would never reach the other side; so the link keeps the value we read, and no version, and the next hint or
        reconcile sees that edit as a change.

        An update that sends no marker leaves it as it was, though the answer may not show it (Graph's PATCH answer
        has no extended properties); taking that for "no marker" would stamp it again after every edit."""
        if before is None:
            return after
        if after.marker is None and marker is None and before.marker:
            after = after.model_copy(update={"marker": before.marker})
        foreign = {rule.key: before.contact.get(rule.key) for rule, _ in synced_rules(self.policy, mailbox)
                   if rule.key not in fields
                   and field_digest(rule.key, before.contact.get(rule.key))
                   != field_digest(rule.key, after.contact.get(rule.key))}
        if not foreign:
            return after
        logger.info("%s %s was edited by someone else while we wrote it: %d field(s) left to the next pass",
                    after.side.value, after.id, len(foreign))
        return after.model_copy(update={"contact": after.contact.with_values(foreign), "version": None})

    def _unstamped(self, p: Plan, records: dict[Side, SideRecord | None]) -> list[tuple[SideRecord, str]]:
        """The records of a pair this plan leaves linked whose marker does not name their partner, with the id it
        should name: a create's source, or a copy whose stamp once lost a race with a user's edit (best effort).
        Without its marker, a pair whose link is lost cannot be told from a new contact: a delete on the other side
        made while the links are rebuilt would be undone by a re-create."""
        m, f = records[Side.M365], records[Side.SALESFORCE]
        if p.link_after is not LinkAfter.SAVE or p.state is not LinkState.LINKED or m is None or f is None:
            return []
        return [(rec, other.id) for rec, other in ((f, m), (m, f))
                if rec.marker != other.id and self.sides[rec.side].carries_markers]

    def _stamp(self, mailbox: str, record: SideRecord, other_id: str) -> SideRecord:
        """Stamp the link marker on a record (a create's source, or a pair's stale marker).

        Unguarded (no version check): the write sends the marker only, which no user edits, so it cannot overwrite
        anyone's edit, and a stamp refused because a rep edited the contact at that moment left pairs without their
        marker, which a links loss then could not re-link (the soak: a copy deleted during the rebuild came back).
        What the answer shows changed is a user's edit, not ours (``_as_written``). Still best effort: a record gone
        meanwhile keeps no marker."""
        if record.marker == other_id or not self.sides[record.side].carries_markers:
            return record
        try:
            stamped = self.sides[record.side].update(
                mailbox, record.id, record.contact, fields=frozenset(), if_match=None, marker=other_id
            )
            # a stamp writes no field: any field that changed under it is someone else's edit, not synced
            return self._as_written(mailbox, record, stamped, frozenset(), other_id)
        except (PreconditionFailed, NotFound) as exc:
            logger.warning("marker not stamped on %s %s: %s", record.side.value, record.id, type(exc).__name__)
            return record

    def _commit(self, s: Situation, p: Plan, records: dict[Side, SideRecord | None]) -> Link | None:
        write = self._link_write(s, p, records)
        if write is not None:
            return self.links.save(write.link, previous=write.previous, absorb=write.absorb)
        if p.link_after is LinkAfter.KEEP:
            return s.link
        if p.link_after is LinkAfter.REMOVE:
            if s.link is not None and s.link.etag is not None:  # a link rebuilt from a marker was never stored
                with contextlib.suppress(NotFound):
                    self.links.delete(s.link)
            return None
        raise AssertionError("unreachable: _link_write covers every other link_after")

    def _link_write(self, s: Situation, p: Plan, records: dict[Side, SideRecord | None],
                    created: set[str] | frozenset[str] = frozenset()) -> LinkWrite | None:
        """The link the plan leaves behind, as a save; None when the plan keeps or removes the link instead.
        ``created``: ids this plan just created (no link can hold them, so no tombstone lookup for them)."""
        if p.link_after in (LinkAfter.KEEP, LinkAfter.REMOVE):
            return None
        m, f = records[Side.M365], records[Side.SALESFORCE]
        if p.state is LinkState.DETACHED:  # a tombstone remembers only the copy the plan keeps
            m, f = (m if p.m365_id else None), (f if p.sf_id else None)
        fields = p.synced_fields
        link = Link(
            mailbox=s.mailbox,
            m365_id=m.id if m else None,
            sf_id=f.id if f else None,
            state=p.state,
            m365_base=field_digests(m.contact, fields) if m else {},
            sf_base=field_digests(f.contact, fields) if f else {},
            m365_fp=fingerprint(m.contact, fields) if m else None,
            sf_fp=fingerprint(f.contact, fields) if f else None,
            m365_version=m.version if m else None,
            sf_version=f.version if f else None,
            synced_at=self.clock(),
            reason=p.reason[:500],
        )
        previous = s.link if s.link is not None and s.link.etag is not None else None  # rebuilt: not stored
        return LinkWrite(link, previous, self._tombstones_for(s, link, created))

    def _tombstones_for(self, s: Situation, link: Link, created: set[str] | frozenset[str]) -> list[Link]:
        """Detached links holding one of the new link's ids are replaced in the same transaction (a deleted contact's
        survivor was matched again). Not looked up: ids this plan created, and the situation's own records when it
        had no link (their lookup found none when the situation was read; a link written since makes the save fail
        with AlreadyExists, which is re-decided)."""
        previous = s.link if s.link is not None and s.link.etag is not None else None
        known_free = set(created)
        if previous is None:
            known_free |= {r.id for r in (s.m365, s.sf) if r is not None}
        out: list[Link] = []
        for side in (Side.M365, Side.SALESFORCE):
            item_id = link.id_on(side)
            if item_id and item_id not in known_free and (previous is None or previous.id_on(side) != item_id):
                existing = self.links.get(link.mailbox, side, item_id)
                if existing is not None and existing.state is LinkState.DETACHED:
                    out.append(existing)
        return out

    # ------------------------------------------------------------------------------------------ audit
    def _audit(
        self,
        s: Situation,
        p: Plan,
        records: dict[Side, SideRecord | None],
        outcome: AuditOutcome,
        *,
        error: str | None = None,
    ) -> None:
        self.audit.write(self._audit_entries(s, p, records, outcome, error=error))

    def _audit_entries(
        self,
        s: Situation,
        p: Plan,
        records: dict[Side, SideRecord | None],
        outcome: AuditOutcome,
        *,
        error: str | None = None,
    ) -> list[AuditEntry]:
        m, f = records[Side.M365], records[Side.SALESFORCE]
        m_id = (m.id if m else None) or p.m365_id or (s.link.m365_id if s.link else None)
        f_id = (f.id if f else None) or p.sf_id or (s.link.sf_id if s.link else None)
        now = self.clock()
        entries = []
        for a in p.actions:
            if isinstance(a, Nothing):
                continue
            kind, winner, rule = type(a).__name__.lower(), None, None
            fields: tuple[str, ...] = ()
            if isinstance(a, Create | Update | Delete):
                kind = f"{kind}:{a.side.value}"
            if isinstance(a, Create | Update):
                fields = tuple(sorted(a.fields))
            if isinstance(a, Conflict):
                fields, winner, rule = (a.field,), a.winner, a.rule
            if isinstance(a, Adopt):
                rule = a.via
            entries.append(
                AuditEntry(
                    at=now, mailbox=s.mailbox, m365_id=m_id, sf_id=f_id, action=kind, reason=a.reason,
                    fields=fields, winner=winner, rule=rule,
                    outcome="review" if isinstance(a, Review) else outcome, error=error,
                )
            )
        if not entries:
            entries.append(
                AuditEntry(at=now, mailbox=s.mailbox, m365_id=m_id, sf_id=f_id, action=p.link_after.value,
                           reason=p.reason, outcome=outcome, error=error)
            )
        return entries
