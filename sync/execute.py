"""Executing plans: apply a plan's writes, stamp the link markers, then commit its link and its audit rows.

Public API:
    Outcome                                                what happened to one person in one mailbox
    Executor(sides, links, audit, queue, scope, clock)   ``scope``: a mailbox's MailboxScope
    Executor.run(mailbox, items, *, bulk=True) -> list[Outcome | SyncError]    one result per (situation, plan)

A plan that writes to a linked pair first *claims* its link (a guarded save of the link as it was read, carrying a
token and the time: docs/sync-rules.md, "Link claims"), so two workers never write a pair from the same link version;
a plan on a link another worker has claimed (and whose lease has not run out) is not run: ``Busy``. A plan's writes
run in order; if one fails, its link stays as it was read (the claim is released) and the typed error is its result.
A plan that overrides an edit (a conflict) puts that on record before it writes.
With ``bulk``, the plain plans of a batch (creates, updates, adoptions) have their writes grouped per side and sent
in bulk (Graph ``$batch``, Salesforce sObject Collections), and their links and audit rows are committed together
(one ``UnitOfWork``). Deletes and hand-offs, and every plan when ``bulk`` is off (a hint), run one plan at a time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sync.actions import (
    Action,
    Adopt,
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
)
from sync.errors import AlreadyExists, BadData, Busy, NotFound, PreconditionFailed, SyncError
from sync.model import Side, field_digest, mailbox_ref
from sync.policy import MailboxScope
from sync.ports import (
    AuditLog,
    AuditOutcome,
    ContactChange,
    ContactSide,
    CreateRequest,
    Link,
    LinkState,
    LinkStore,
    LinkWrite,
    ReviewStore,
    SideRecord,
    UpdateRequest,
    WorkQueue,
)
from sync.review import settle
from sync.unit_of_work import Records, UnitOfWork

logger = logging.getLogger(__name__)

SIDES = (Side.SALESFORCE, Side.M365)  # the order in which grouped writes go out, as a plan orders its updates
# How long a link claim holds off other workers: a worker killed mid-plan blocks its person this long. A worker starts
# no write later than CLAIM_WRITE_WINDOW after its claim (a write call itself is bounded by the adapters' retry
# budgets), so a claim taken over after its lease never meets a write of the worker that held it, but a slower one.
CLAIM_LEASE = timedelta(seconds=120)
CLAIM_WRITE_WINDOW = CLAIM_LEASE / 2


@dataclass(frozen=True)
class Outcome:
    """What happened to one person in one mailbox."""

    mailbox: str
    plan: Plan
    applied: bool
    link: Link | None = None
    records: dict[Side, SideRecord | None] = field(default_factory=dict)


def _vanished(exc: SyncError) -> SyncError:
    """A record that vanished between our read and our write (a user deleted it meanwhile) is a lost race, to be
    read and decided again (the delete policy then applies), not a permanent error that poisons the hint."""
    if isinstance(exc, NotFound):
        raced = PreconditionFailed(f"{exc.message}; it vanished since it was read", side=exc.side, item_id=exc.item_id)
        raced.__cause__ = exc
        return raced
    return exc


def _failed(exc: SyncError) -> AuditOutcome:
    """The audit outcome of a plan a write failed for: ``review`` when a person must decide (a duplicate rule in
    Block mode refused the write; its message names the matched ids), else ``failed``."""
    return "review" if isinstance(exc, BadData) and exc.code == "DUPLICATES_DETECTED" else "failed"


def _plain(p: Plan) -> bool:
    """Whether the plan's writes can go out grouped with other plans' (creates, updates, adoptions)."""
    plain = all(isinstance(a, Create | Update | Adopt | Conflict | Nothing) for a in p.actions)
    return bool(p.writes) and plain and sum(isinstance(a, Create) for a in p.actions) <= 1


def _claims(s: Situation, p: Plan) -> bool:
    """Whether the plan claims its link before it writes: it writes, and its link is stored (a link rebuilt from a
    marker was never stored: its save is a create, which AlreadyExists guards)."""
    return bool(p.writes) and s.link is not None and s.link.etag is not None


def _touches_link(p: Plan) -> bool:
    """Whether the plan writes a side or the link (a plan on a link another worker claimed must wait)."""
    return bool(p.writes) or p.link_after is not LinkAfter.KEEP


def _records(s: Situation, p: Plan) -> Records:
    """The records a plan starts from: the situation's, or the pair it adopts."""
    records: Records = {Side.M365: s.m365, Side.SALESFORCE: s.sf}
    for a in p.actions:
        if isinstance(a, Adopt):
            records = {Side.M365: a.m365, Side.SALESFORCE: a.sf}
    return records


@dataclass
class _Batch:
    """The plain plans of a batch while their writes go out grouped per side."""

    mailbox: str
    items: list[tuple[Situation, Plan]]
    records: dict[int, Records] = field(default_factory=dict)  # by index in ``items``, in order
    failed: dict[int, SyncError] = field(default_factory=dict)  # plans a write failed for
    made: set[tuple[int, Side]] = field(default_factory=set)  # the creates that succeeded
    claims: dict[int, tuple[Situation, float]] = field(default_factory=dict)  # claimed: situation read, monotonic
    unrun: set[int] = field(default_factory=set)  # plans not run at all (busy, or their claim lost a race)
    written: dict[int, list[Update]] = field(default_factory=dict)  # the updates that succeeded, per plan

    def pending(self) -> list[int]:
        """The plans no write has failed for yet, in order."""
        return [i for i in self.records if i not in self.failed]


class Executor:
    def __init__(
        self,
        sides: Mapping[Side, ContactSide],
        links: LinkStore,
        audit: AuditLog,
        queue: WorkQueue,
        scope: Callable[[str], MailboxScope],
        clock: Callable[[], datetime],
        reviews: ReviewStore | None = None,
    ) -> None:
        self.reviews = reviews
        self.sides = sides
        self.links = links
        self.audit = audit
        self.queue = queue
        self.scope = scope
        self.clock = clock

    def run(self, mailbox: str, items: Sequence[tuple[Situation, Plan]], *,
            bulk: bool = True) -> list[Outcome | SyncError]:
        """Execute the plans of one mailbox. One result per item, in order: the Outcome, or the typed error that
        stopped that plan. Plans that run one at a time go first, in order; then the grouped ones: updates
        (Salesforce, then Outlook), creates (carrying the other side's id as marker), the marker stamps on the
        sources; a plan whose write failed skips its later writes and keeps its link as it was."""
        results: list[Outcome | SyncError | None] = [None] * len(items)
        batch = _Batch(mailbox, list(items))
        for i, (s, p) in enumerate(items):
            if bulk and _plain(p):
                batch.records[i] = _records(s, p)
            else:
                results[i] = self._one(s, p)
        if batch.records:
            for i, result in self._grouped(batch).items():
                results[i] = result
        if self.reviews is not None:
            for (s, p), done in zip(items, results, strict=True):
                if isinstance(done, Outcome):
                    try:
                        settle(self.reviews, s, p, self.clock())
                    except SyncError as exc:  # the inbox catches up on the next plan of this record
                        logger.warning("review item of %s not updated: %s", mailbox_ref(s.mailbox), type(exc).__name__)
        return [r if r is not None else SyncError("not executed") for r in results]

    # ------------------------------------------------------------------------------------------ one plan
    def _one(self, s: Situation, p: Plan) -> Outcome | SyncError:
        """One plan, its writes one at a time in the order of its actions, then its link and audit rows."""
        records: Records = {Side.M365: s.m365, Side.SALESFORCE: s.sf}
        uow = UnitOfWork(self.links, self.audit, self.clock)
        if p.link_after is LinkAfter.KEEP and not p.writes:
            if any(isinstance(a, Review | Skip) for a in p.actions):
                uow.note(s, p, records, "review" if any(isinstance(a, Review) for a in p.actions) else "applied")
                uow.write_audit()
            return Outcome(s.mailbox, p, True, s.link, records)
        busy = self._busy(s, p)
        if busy is not None:
            return busy
        read, claimed_at = s, time.monotonic()
        if _claims(s, p):
            try:
                s = self._claim(s, self.clock())
            except SyncError as exc:
                return _vanished(exc)
        if p.writes and any(isinstance(a, Conflict) for a in p.actions):
            uow.note_conflicts(s, p, records)
            uow.write_audit()
        done: list[Update] = []
        try:
            for action in p.actions:
                if s is not read:
                    self._in_time(claimed_at, s)
                self._apply(s.mailbox, action, records)
                if isinstance(action, Update):
                    done.append(action)
            if not any(isinstance(a, Create) for a in p.actions):  # a create stamps its source itself
                for rec, other_id in self._unstamped(p, records):
                    records[rec.side] = self._stamp(s.mailbox, rec, other_id)
        except SyncError as exc:
            raced = _vanished(exc)
            if s is not read:
                self._release([(s, read, records, done)])
            uow.note(s, p, records, _failed(raced), error=f"{type(raced).__name__}: {raced}")
            uow.write_audit()
            return raced
        try:
            link = uow.commit(s, p, records)
            if s is not read and p.link_after is LinkAfter.KEEP:
                self._release([(s, read, records, [])])
                link = read.link
        except SyncError as exc:
            note = ""
            if isinstance(exc, AlreadyExists | PreconditionFailed):
                note = self._undo_creates(s, p, records, {a.side for a in p.actions if isinstance(a, Create)})
            if s is not read:  # still ours unless it was taken over (then the release fails, harmlessly)
                self._release([(s, read, records, done)])
            uow.note(s, p, records, "failed", error=f"{type(exc).__name__}: {exc}{note}")
            uow.write_audit()
            return exc
        uow.note(s, p, records, "applied")
        uow.write_audit()
        return Outcome(s.mailbox, p, True, link, records)

    def _apply(self, mailbox: str, action: Action, records: Records) -> None:
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

    # ------------------------------------------------------------------------------------------ grouped plans
    def _grouped(self, batch: _Batch) -> dict[int, Outcome | SyncError]:
        uow = UnitOfWork(self.links, self.audit, self.clock)
        self._claim_all(batch)
        for i in batch.pending():
            uow.note_conflicts(*batch.items[i], batch.records[i])
        uow.write_audit()  # overrides are on record before anything is written
        for side in SIDES:
            self._expired(batch)
            self._update_all(batch, side)
        for side in SIDES:
            self._expired(batch)
            self._create_all(batch, side)
        for side in SIDES:
            self._stamp_all(batch, side)
        committed = self._commit_links(batch, uow)
        self._release([(batch.items[i][0], batch.claims[i][0], batch.records[i], batch.written.get(i, []))
                       for i in batch.claims if i in batch.failed or isinstance(committed.get(i), SyncError)])
        results: dict[int, Outcome | SyncError] = {}
        for i, records in batch.records.items():
            s, p = batch.items[i]
            outcome = batch.failed.get(i) or committed.get(i)
            if i in batch.unrun and isinstance(outcome, SyncError):
                results[i] = outcome  # busy, or its claim lost a race: nothing was done, nothing to put on record
                continue
            if isinstance(outcome, SyncError):
                note = ""
                if i not in batch.failed and isinstance(outcome, AlreadyExists | PreconditionFailed):
                    note = self._undo_creates(s, p, records, {side for j, side in batch.made if j == i})
                uow.note(s, p, records, _failed(outcome), error=f"{type(outcome).__name__}: {outcome}{note}")
                results[i] = outcome
                continue
            uow.note(s, p, records, "applied")
            results[i] = Outcome(s.mailbox, p, True, outcome, records)
        uow.write_audit()
        return results

    def _update_all(self, batch: _Batch, side: Side) -> None:
        todo = [(i, a) for i in batch.pending() for a in batch.items[i][1].actions
                if isinstance(a, Update) and a.side is side]
        if not todo:
            return
        done = self.sides[side].update_many(batch.mailbox, [
            UpdateRequest(item_id=a.item_id, contact=a.contact, fields=a.fields, if_match=a.if_match,
                          marker=a.marker) for _, a in todo])
        for (i, a), r in zip(todo, done, strict=True):
            if isinstance(r, SyncError):
                batch.failed[i] = _vanished(r)
            else:
                batch.records[i][side] = self._as_written(batch.mailbox, batch.records[i][side], r, a.fields,
                                                          a.marker)
                batch.written.setdefault(i, []).append(a)

    def _create_all(self, batch: _Batch, side: Side) -> None:
        """Creates, each carrying its source's id as marker."""
        todo = [(i, a) for i in batch.pending() for a in batch.items[i][1].actions
                if isinstance(a, Create) and a.side is side]
        if not todo:
            return
        sources = [batch.records[i][side.other] for i, _ in todo]
        done = self.sides[side].create_many(batch.mailbox, [
            CreateRequest(contact=a.contact, marker=src.id if src else None)
            for (_, a), src in zip(todo, sources, strict=True)])
        for (i, _), r in zip(todo, done, strict=True):
            if isinstance(r, SyncError):
                batch.failed[i] = r
            else:
                batch.records[i][side] = r
                batch.made.add((i, side))

    def _stamp_all(self, batch: _Batch, side: Side) -> None:
        """Marker stamps on ``side``: the sources of creates, and any stale marker (unguarded: see ``_stamp``)."""
        stamps = [(i, rec, other_id) for i in batch.pending()
                  for rec, other_id in self._unstamped(batch.items[i][1], batch.records[i]) if rec.side is side]
        if not stamps or not self.sides[side].carries_markers:
            return
        done = self.sides[side].update_many(batch.mailbox, [
            UpdateRequest(item_id=src.id, contact=src.contact, fields=frozenset(), if_match=None, marker=new_id)
            for _, src, new_id in stamps])
        for (i, src, new_id), r in zip(stamps, done, strict=True):
            if isinstance(r, SyncError):
                logger.warning("marker not stamped on %s in bulk: %s", side.value, type(r).__name__)
            else:
                batch.records[i][side] = self._as_written(batch.mailbox, src, r, frozenset(), new_id)

    def _commit_links(self, batch: _Batch, uow: UnitOfWork) -> dict[int, Link | None | SyncError]:
        """The links of the plans whose writes all succeeded: kept or removed at once, saved together (a claimed
        link a plan keeps is released)."""
        committed: dict[int, Link | None | SyncError] = {}
        for i, records in batch.records.items():
            s, p = batch.items[i]
            if i in batch.failed:
                continue
            try:
                made = {r.id for side, r in records.items() if r is not None and (i, side) in batch.made}
                write = uow.link_write(s, p, records, created=made)
                if write is None and p.link_after is LinkAfter.KEEP and i in batch.claims:
                    read = batch.claims[i][0]
                    self._release([(s, read, records, [])])
                    committed[i] = read.link
                elif write is None:
                    committed[i] = uow.commit(s, p, records)
                else:
                    uow.save_later(i, write)
            except SyncError as exc:
                committed[i] = exc
        committed.update(uow.save_all())
        return committed


    # ------------------------------------------------------------------------------------------ link claims
    def _busy(self, s: Situation, p: Plan) -> Busy | None:
        """``Busy`` when the plan would write the pair or its link while another worker's claim on it is live."""
        if s.link is None or not _touches_link(p):
            return None
        left = s.link.claimed(self.clock(), CLAIM_LEASE)
        if left <= 0:
            return None
        ids = " ".join(x for x in (s.link.m365_id, s.link.sf_id) if x)
        logger.info("link of %s claimed by another worker: back in %.0f s", ids, left)
        return Busy("another worker is writing this contact (its link is claimed)", retry_after=left, side="tables",
                    item_id=s.link.primary_key())

    def _claimed_link(self, s: Situation, at: datetime) -> Link:
        if s.link is None:
            raise AssertionError("unreachable: only a stored link is claimed")
        return s.link.model_copy(update={"claim": uuid.uuid4().hex, "claimed_at": at, "etag": None})

    def _claim(self, s: Situation, at: datetime) -> Situation:
        """The situation with its link claimed (saved under the etag it was read with: PreconditionFailed when
        another worker claimed or saved it since, and this plan was decided on an older state)."""
        claimed = self.links.save(self._claimed_link(s, at), previous=s.link)
        return dataclasses.replace(s, link=claimed)

    def _claim_all(self, batch: _Batch) -> None:
        """Claim the links of the grouped plans that write a linked pair, in few table transactions (``save_many``);
        a plan whose link another worker claimed, or whose claim fails, is not run."""
        now, since = self.clock(), time.monotonic()
        todo = []
        for i in batch.pending():
            s, p = batch.items[i]
            busy = self._busy(s, p)
            if busy is not None:
                batch.failed[i] = busy
                batch.unrun.add(i)
            elif _claims(s, p):
                todo.append(i)
        if not todo:
            return
        done = self.links.save_many([LinkWrite(self._claimed_link(batch.items[i][0], now),
                                               previous=batch.items[i][0].link) for i in todo])
        for i, r in zip(todo, done, strict=True):
            s, p = batch.items[i]
            if isinstance(r, SyncError):
                batch.failed[i] = _vanished(r)
                batch.unrun.add(i)
            else:
                batch.claims[i] = (s, since)
                batch.items[i] = (dataclasses.replace(s, link=r), p)

    @staticmethod
    def _in_time(claimed_at: float, s: Situation) -> None:
        """Refuse to start a write later than CLAIM_WRITE_WINDOW after the claim (``time.monotonic`` then; another
        worker may take it over once its lease has run out)."""
        if time.monotonic() - claimed_at > CLAIM_WRITE_WINDOW.total_seconds():
            raise PreconditionFailed("the link claim is too old to start a write", side="tables",
                                     item_id=s.link.primary_key() if s.link else None)

    def _expired(self, batch: _Batch) -> None:
        for i in batch.pending():
            if i in batch.claims:
                try:
                    self._in_time(batch.claims[i][1], batch.items[i][0])
                except PreconditionFailed as exc:
                    batch.failed[i] = exc

    def _release(self, items: Sequence[tuple[Situation, Situation, Records, Sequence[Update]]]) -> None:
        """Give claims back: each (claimed situation, situation read, records, updates made) gets its link as it was
        read, without a claim, so the next worker is not held off; moved on for the updates the plan made when a
        later write failed (``UnitOfWork.partial``). Best effort: an unreleased claim runs out with its lease."""
        uow = UnitOfWork(self.links, self.audit, self.clock)
        writes = []
        for claimed, read, records, done in items:
            if claimed.link is None or read.link is None:
                continue
            link = (uow.partial(read.link, records, done)
                    or read.link.model_copy(update={"claim": None, "claimed_at": None, "etag": None}))
            writes.append(LinkWrite(link, previous=claimed.link))
        if not writes:
            return
        try:
            saved = self.links.save_many(writes)
        except SyncError as exc:
            saved = [exc] * len(writes)
        for w, r in zip(writes, saved, strict=True):
            if isinstance(r, SyncError):
                logger.warning("link claim of %s not released: %s", w.link.primary_key(), type(r).__name__)

    # ------------------------------------------------------------------------------------------ markers
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
        foreign = {rule.key: before.contact.get(rule.key) for rule, _ in self.scope(mailbox).rules
                   if rule.key not in fields
                   and field_digest(rule.key, before.contact.get(rule.key))
                   != field_digest(rule.key, after.contact.get(rule.key))}
        if not foreign:
            return after
        logger.info("%s %s was edited by someone else while we wrote it: %d field(s) left to the next pass",
                    after.side.value, after.id, len(foreign))
        return after.model_copy(update={"contact": after.contact.with_values(foreign), "version": None})

    def _unstamped(self, p: Plan, records: Records) -> list[tuple[SideRecord, str]]:
        """The records of a pair this plan leaves linked whose marker does not name their partner, with the id it
        should name: a create's source, or a copy whose stamp once lost a race with a user's edit (best effort).
        Without its marker, a pair whose link is lost cannot be told from a new contact: a delete on the other side
        made while the links are rebuilt would be undone by a re-create."""
        outlook, salesforce = records[Side.M365], records[Side.SALESFORCE]
        if (p.link_after is not LinkAfter.SAVE or p.state is not LinkState.LINKED
                or outlook is None or salesforce is None):
            return []
        return [(rec, other.id) for rec, other in ((salesforce, outlook), (outlook, salesforce))
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

    # ------------------------------------------------------------------------------------------ lost races
    def _undo_creates(self, s: Situation, p: Plan, records: Records, sides: set[Side]) -> str:
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
        synced = self.scope(mailbox).keys
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
