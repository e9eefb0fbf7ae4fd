"""Reconcile one mailbox: stream both sides, pair them through the links, plan everything, check the circuit
breaker, then apply (or only report, for a dry run).

Public API:
    reconcile_mailbox(engine, mailbox, *, dry_run=False, force=False) -> ReconcileReport   a full pass
    reconcile_mailbox_delta(engine, mailbox, checkpoints, *, dry_run=False, force=False)  what changed since the
        last delta pass; a full pass when a change feed starts over or the links are being rebuilt. A pass whose
        feeds reported nothing writes no checkpoint (``_Feeds.to_write``)
    MailboxReconcile      the full pass, one method per phase

A full pass visits every link and every record once, as vdirsyncer's sync does over its status table, and keeps in
memory only what changed. After the links table was lost (``LinkStore.rebuilding``), a full pass rebuilds the links
from the markers without undoing deletes or owner changes (``Engine.lost_link``); a pass without errors ends the
rebuild. An unlinked Outlook copy whose marker names a deleted Salesforce contact is that contact's delete in any
pass. Plans are applied in bulk (``Engine.execute_many``), a chunk at a time.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from sync import planner
from sync.actions import Adopt, Candidate, Create, LinkAfter, Nothing, Plan, Review, Situation
from sync.engine import Engine
from sync.errors import AlreadyExists, Busy, PreconditionFailed, SyncError
from sync.match_index import MatchIndex
from sync.model import Side, fingerprint, mailbox_ref
from sync.planner import check_breaker, plan
from sync.ports import CheckpointStore, ContactChange, ContactSide, Link, LinkState, ReviewItem, SideRecord, row_key

logger = logging.getLogger(__name__)


@dataclass
class ReconcileReport:
    mailbox: str
    dry_run: bool
    planned: Counter[str] = field(default_factory=Counter)  # action kind -> count
    applied: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)  # "<ErrorType> <ids>: message" (no personal data)
    linked_before: int = 0
    visited: int = 0
    ran: Literal["delta", "full"] = "full"

    def summary(self) -> str:
        counts = self.planned if self.dry_run else self.applied
        done = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "nothing"
        mode = "dry run, planned" if self.dry_run else "applied"
        return (f"mailbox {mailbox_ref(self.mailbox)} ({self.ran} pass): {self.visited} visited, "
                f"{self.linked_before} linked before; {mode}: {done}; {len(self.errors)} error(s)")


def _kinds(p: Plan) -> list[str]:
    return [a.kind for a in p.actions]


class _Ref:
    """A link as a pass holds it while it streams the records: ids, the fingerprints it was synced at (their first
    64 bits) and the etag it was read with. The full link (its per-field bases) is read again only for a person
    whose plan is not "unchanged on both sides"."""

    __slots__ = ("etag", "linked", "m365_fp", "m365_id", "seen", "sf_fp", "sf_id")

    def __init__(self, link: Link) -> None:
        self.m365_id, self.sf_id, self.etag = link.m365_id, link.sf_id, hash(link.etag)
        self.linked = link.state is LinkState.LINKED
        self.m365_fp, self.sf_fp = _fp64(link.m365_fp), _fp64(link.sf_fp)
        self.seen = False  # its Salesforce contact came by in this owner's stream

    def moved_on(self, link: Link | None) -> bool:
        """Whether ``link`` (read again) is not the link this was made from."""
        return link is None or hash(link.etag) != self.etag

    def key(self) -> tuple[Side, str]:
        """The row ``LinkStore.list`` reads a link through (its etag is that row's): Salesforce when there is one."""
        return (Side.SALESFORCE, self.sf_id) if self.sf_id else (Side.M365, self.m365_id or "")


def _fp64(fp: str | None) -> int | None:
    return int(fp[:16], 16) if fp else None


FETCH_ONE_BY_ONE = 50  # records or links needed again after the streams: up to this many are read one by one


def reconcile_mailbox(engine: Engine, mailbox: str, *, dry_run: bool = False, force: bool = False) -> ReconcileReport:
    """A full pass over one mailbox (``MailboxReconcile``)."""
    return MailboxReconcile(engine, mailbox, dry_run=dry_run, force=force).run()


class MailboxReconcile:
    """A full pass over one mailbox, streaming: memory grows with the contacts that changed, not with the mailbox.

    Its phases, in the order ``run`` calls them:
    1. ``read_links``, first and compactly (``_Ref``): a record read before its link could be older than the link
       (a worker wrote both in between) and its old values would pass for an edit back to them.
    2. ``stream_outlook``: a linked copy whose fingerprint is the one it was synced at is kept as its id only;
       every other copy is kept whole. Every copy's match keys go into an index (hashes and ids, no values).
    3. ``stream_salesforce``: a linked contact unchanged on both sides is only counted. An unlinked contact that
       matches nothing in Outlook is planned at once (a create, or a skip or review) and applied a chunk at a time
       while the stream is read; the circuit breaker judges deletes and clears, which only linked contacts make,
       and a create is neither. Every other contact is kept whole.
    4. ``plan_changed``: the links of what was kept, read again (a link that moved on since phase 1 is decided again
       by a fresh read), and Outlook copies unchanged but needed, read again.
    5. ``plan_unlinked``: unlinked Outlook copies matched against Salesforce, then unlinked Salesforce contacts
       against Outlook.
    6. ``check_breaker`` judges the plans of phases 4 and 5 before ``apply`` applies any of them.
    """

    def __init__(self, engine: Engine, mailbox: str, *, dry_run: bool = False, force: bool = False) -> None:
        self.engine = engine
        self.mailbox = mailbox.casefold()
        self.dry_run = dry_run
        self.force = force
        self.outlook_side, self.sf_side = engine.sides[Side.M365], engine.sides[Side.SALESFORCE]
        self.report = ReconcileReport(self.mailbox, dry_run)
        self.scope = engine.scope(self.mailbox)
        self.rebuilding = engine.links.rebuilding(self.mailbox)
        # the review items of the mailbox (one query): a person's decisions reach the planner through them
        self.reviews = {(i.side, i.record_id): i for i in engine.reviews.items(self.mailbox)} if engine.reviews else {}
        self.unlinked: set[tuple[Side, str]] = set()  # records planned as unlinked: the others' items are closed
        self.quiet: Counter[str] = Counter()  # plans that neither write nor audit (unchanged pairs): counted, not kept
        self.creating = MatchIndex()  # unlinked records this pass copies to the other side
        # 1. the links
        self.by_outlook: dict[str, _Ref] = {}
        self.by_sf: dict[str, _Ref] = {}
        self.linked_outlook: set[str] = set()
        self.linked_sf: set[str] = set()
        # 2. Outlook
        self.outlook_same: set[str] = set()  # linked copies unchanged since the sync: ids only
        self.outlook_kept: dict[str, SideRecord] = {}
        self.outlook_index = MatchIndex()  # every copy in the folder
        # 3. Salesforce
        self.sf_kept: dict[str, SideRecord] = {}
        self.sf_new = MatchIndex()  # unlinked contacts of this owner whose Outlook match is decided after the stream
        self.sf_all: set[str] = set()  # every contact of this owner, only while rebuilding (markers are read then)
        # 4, 5. what to do
        self.plans: list[tuple[Situation, Plan]] = []
        self.rereads: list[ContactChange] = []  # people whose link moved on during the pass: decided afresh

    def run(self) -> ReconcileReport:
        self.read_links()
        self.stream_outlook()
        self.stream_salesforce()
        self.plan_changed()
        self.plan_unlinked()
        self._let_go()
        self._count()
        self.check_breaker()
        if not self.dry_run:
            self.apply()
        return self.report

    # ------------------------------------------------------------------------------------------ 1-3: reading
    def read_links(self) -> None:
        for link in self.engine.links.list(self.mailbox):
            ref = _Ref(link)
            if ref.m365_id:
                self.by_outlook[ref.m365_id] = ref
            if ref.sf_id:
                self.by_sf[ref.sf_id] = ref
            self.report.linked_before += ref.linked

    def stream_outlook(self) -> None:
        for outlook in self.outlook_side.stream(self.mailbox):
            self.outlook_index.add(outlook)
            ref = self.by_outlook.get(outlook.id)
            if ref is not None and ref.linked and ref.m365_fp == _fp64(fingerprint(outlook.contact, self.scope.keys)):
                self.outlook_same.add(outlook.id)
            else:
                self.outlook_kept[outlook.id] = outlook

    def stream_salesforce(self) -> None:
        early: list[tuple[Situation, Plan]] = []
        for salesforce in self.sf_side.stream(self.mailbox):
            if self.rebuilding:
                self.sf_all.add(salesforce.id)
            ref = self.by_sf.get(salesforce.id)
            if ref is not None:
                ref.seen = True
                if self._unchanged(ref, salesforce):
                    self.quiet["nothing"] += 1
                else:
                    self.sf_kept[salesforce.id] = salesforce
                continue
            if self.rebuilding or self.outlook_index.matches(salesforce):
                self.sf_kept[salesforce.id] = salesforce  # its Outlook match (or lost link) is decided after the stream
                self.sf_new.add(salesforce)
                continue
            self._plan_new(salesforce, early)
        _apply(self.engine, self.mailbox, early, self.report)

    def _unchanged(self, ref: _Ref, salesforce: SideRecord) -> bool:
        """Whether a linked contact of this owner needs no plan: unchanged on both sides, or the copy a tombstone
        kept, still here."""
        if salesforce.owner != self.mailbox:
            return False
        if not ref.linked:
            return not ref.m365_id
        return ref.m365_id in self.outlook_same and ref.sf_fp == _fp64(fingerprint(salesforce.contact, self.scope.keys))

    def _plan_new(self, salesforce: SideRecord, early: list[tuple[Situation, Plan]]) -> None:
        """An unlinked contact that matches nothing in Outlook, planned at once and applied a chunk at a time."""
        s = Situation(self.mailbox, None, None, salesforce, (), self.scope, self._review(salesforce))
        p = _unless_twin(plan(s, self.engine.policy), salesforce, self.creating)
        if _quiet(p, self.quiet):
            return
        self.report.visited += 1
        self.report.planned.update(_kinds(p))
        if not self.dry_run:
            early.append((s, p))
            if len(early) >= APPLY_CHUNK:
                _apply(self.engine, self.mailbox, early, self.report)

    # ------------------------------------------------------------------------------------------ 4: linked
    def plan_changed(self) -> None:
        pending = self._pending()
        self.outlook_kept.update(_fetch(self.outlook_side, self.mailbox,
                                        {r.m365_id for r in pending if r.m365_id and r.m365_id in self.outlook_same}))
        full_links = _relinks(self.engine, self.mailbox, pending)
        for ref in pending:
            full = full_links.get(ref.key())
            if full is None or ref.moved_on(full):
                # the link moved on since the pass read it (a worker synced this person meanwhile): the records read
                # since may be older than it, so this person is read and decided afresh
                self.rereads.append(
                    ContactChange(source=Side.M365, item_id=ref.m365_id, mailbox=self.mailbox) if ref.m365_id
                    else ContactChange(source=Side.SALESFORCE, item_id=ref.sf_id or ""))
                continue
            self._plan_linked(full)

    def _pending(self) -> list[_Ref]:
        """The links whose people need a plan (the compact links are let go: only their ids are kept)."""
        refs = [*self.by_sf.values(), *(r for r in self.by_outlook.values() if not r.sf_id)]
        self.linked_outlook, self.linked_sf = set(self.by_outlook), set(self.by_sf)
        self.by_outlook, self.by_sf = {}, {}
        pending: list[_Ref] = []
        for ref in refs:
            if ref.seen and ref.sf_id not in self.sf_kept:
                continue  # counted above: unchanged
            if not ref.linked and not ref.sf_id and ref.m365_id in self.outlook_kept:
                self.quiet["nothing"] += 1  # a tombstone that kept this Outlook copy, still here
                continue
            if ref.sf_id and not ref.seen:
                moved = self.sf_side.get(self.mailbox, ref.sf_id)  # owner changed, or deleted
                if moved is not None:
                    self.sf_kept[moved.id] = moved
            pending.append(ref)
        return pending

    def _plan_linked(self, link: Link) -> None:
        outlook = self.outlook_kept.get(link.m365_id) if link.m365_id else None
        salesforce = self.sf_kept.get(link.sf_id) if link.sf_id else None
        if (salesforce is not None and salesforce.owner != self.mailbox) or (outlook is None) != (salesforce is None):
            s = self.engine.situation(self.mailbox, link, outlook, salesforce)  # owner change, or a delete to decide
        else:
            s = Situation(self.mailbox, link, outlook, salesforce, (), self.scope)
        p = plan(s, self.engine.policy)
        survivor = s.m365 if s.m365 is not None else s.sf
        if survivor is not None and any(isinstance(a, Create) for a in p.actions):
            p = _unless_twin(p, survivor, self.creating)  # a re-create: an unlinked twin may be copied already
        if not _quiet(p, self.quiet):
            self.plans.append((s, p))

    # ------------------------------------------------------------------------------------------ 5: unlinked
    def plan_unlinked(self) -> None:
        """Unlinked records: Outlook first (they may adopt a Salesforce record), then Salesforce ones left over."""
        adopted_sf: set[str] = set()
        decided_outlook: set[str] = set()
        for outlook in [r for i, r in self.outlook_kept.items() if i not in self.linked_outlook]:
            adopted_sf.update(self._plan_unlinked_outlook(outlook))
            decided_outlook.add(outlook.id)
        unlinked_sf = [r for i, r in self.sf_kept.items()
                       if i not in self.linked_sf and i not in adopted_sf and i in self.sf_new]
        self.outlook_kept.update(_fetch(self.outlook_side, self.mailbox, {
            i for r in unlinked_sf for i in self.outlook_index.matches(r) if i not in self.outlook_kept}))
        for salesforce in unlinked_sf:
            lost = _lost(self.engine, self.mailbox, salesforce, self.outlook_index) if self.rebuilding else None
            if lost is not None:  # its marker names an Outlook copy deleted from this folder while links were lost
                self.plans.append((lost, plan(lost, self.engine.policy)))
                continue
            cands = tuple(Candidate(self.outlook_kept[i], linked=i in self.linked_outlook or i in decided_outlook)
                          for i in self.outlook_index.matches(salesforce) if i in self.outlook_kept)
            s = Situation(self.mailbox, None, None, salesforce, cands, self.scope, self._review(salesforce))
            self.plans.append((s, _unless_twin(plan(s, self.engine.policy), salesforce, self.creating)))

    def _plan_unlinked_outlook(self, outlook: SideRecord) -> list[str]:
        """Plan an unlinked Outlook copy; returns the Salesforce ids its plan adopts."""
        # its marker names a Salesforce contact that is deleted (or, while the links are rebuilt, moved away): the
        # contact's delete (or owner change), never a new contact; a marker naming a contact this pass listed is not
        # read again
        lost = _lost(self.engine, self.mailbox, outlook, self.sf_all if self.rebuilding else self.sf_kept)
        if lost is not None:
            self.plans.append((lost, plan(lost, self.engine.policy)))
            return []
        cands = self._sf_candidates(outlook)
        s = Situation(self.mailbox, None, outlook, None, cands, self.scope, self._review(outlook),
                      twin=self.engine.twin_of(self.mailbox, outlook, cands))
        p = _unless_twin(plan(s, self.engine.policy), outlook, self.creating)
        self.plans.append((s, p))
        return [a.sf_id for a in p.actions if isinstance(a, Adopt)]

    def _review(self, record: SideRecord) -> ReviewItem | None:
        self.unlinked.add((record.side, record.id))
        return self.reviews.get((record.side, record.id))

    def close_reviews(self) -> None:
        """Close the items of records this pass did not plan as unlinked: linked since, or gone."""
        store = self.engine.reviews
        for key, item in self.reviews.items():
            if store is not None and key not in self.unlinked:
                store.delete(item)

    def _sf_candidates(self, outlook: SideRecord) -> tuple[Candidate, ...]:
        """This owner's unlinked contacts it may be, then Salesforce's search (org-wide: the linked and the other
        owners' contacts it may be, so that it is reviewed, never doubled)."""
        local = [Candidate(self.sf_kept[i]) for i in self.sf_new.matches(outlook) if i in self.sf_kept]
        found = {c.id: c for c in self.sf_side.find(self.mailbox, outlook.contact) if c.id not in self.sf_new}
        if outlook.marker and outlook.marker not in self.sf_new and outlook.marker not in found:
            marked = self.sf_side.get(self.mailbox, outlook.marker)  # the contact it names (a copy of a linked copy)
            if marked is not None:
                found[marked.id] = marked
        remote = []
        for c in found.values():
            link = None if c.id in self.linked_sf else self.engine.links.get(self.mailbox, Side.SALESFORCE, c.id)
            remote.append(Candidate(c, linked=c.id in self.linked_sf or link is not None,
                                    partner=link.m365_id if link is not None else None))
        return tuple(local + remote)

    # ------------------------------------------------------------------------------------------ 6: judge, apply
    def _let_go(self) -> None:
        """What the plans need, their situations hold: the records and indexes kept for planning are let go."""
        self.outlook_kept, self.sf_kept, self.outlook_same, self.sf_all = {}, {}, set(), set()
        self.outlook_index, self.sf_new, self.creating = MatchIndex(), MatchIndex(), MatchIndex()

    def _count(self) -> None:
        report = self.report
        report.visited += len(self.plans) + len(self.rereads) + sum(self.quiet.values())
        report.planned.update(self.quiet)
        for _, p in self.plans:
            report.planned.update(_kinds(p))

    def check_breaker(self) -> None:
        """Raise CircuitBreakerTripped if the plans delete or empty too much of the mailbox (unless ``force``)."""
        planner.check_breaker(self.mailbox, [p for _, p in self.plans], self.report.linked_before,
                              self.engine.policy.breaker, force=self.force)

    def apply(self) -> None:
        """Apply the plans in bulk, then decide afresh the people whose link moved on during the pass."""
        report = self.report
        report.applied.update(self.quiet)
        _apply(self.engine, self.mailbox, self.plans, report)
        for hint in self.rereads:
            _decide_again(self.engine, self.mailbox, hint, report)
        if not report.errors:
            self.close_reviews()
        if self.rebuilding and not report.errors:
            self.engine.links.mark_rebuilt(self.mailbox)
            logger.info("links of mailbox %s rebuilt from the markers", mailbox_ref(self.mailbox))
        logger.info("%s", report.summary())


def _quiet(p: Plan, quiet: Counter[str]) -> bool:
    """A plan that neither writes nor audits (an unchanged pair) is only counted."""
    if p.link_after is LinkAfter.KEEP and not p.writes and all(isinstance(a, Nothing) for a in p.actions):
        quiet.update(_kinds(p))
        return True
    return False


def _relinks(engine: Engine, mailbox: str, refs: list[_Ref]) -> dict[tuple[Side, str], Link]:
    """The full links of ``refs``, read again (one by one, or all listed again when there are many)."""
    if len(refs) <= FETCH_ONE_BY_ONE:
        out = {}
        for ref in refs:
            link = engine.links.get(mailbox, *ref.key())
            if link is not None:
                out[ref.key()] = link
        return out
    wanted = {ref.key() for ref in refs}
    out = {}
    for link in engine.links.list(mailbox):
        key = (Side.SALESFORCE, link.sf_id) if link.sf_id else (Side.M365, link.m365_id or "")
        if key in wanted:
            out[key] = link
    return out


def _fetch(side: ContactSide, mailbox: str, ids: set[str]) -> dict[str, SideRecord]:
    """Records of ``ids`` read again (one by one, or the side streamed again when there are many)."""
    if not ids:
        return {}
    if len(ids) <= FETCH_ONE_BY_ONE:
        return {r.id: r for r in (side.get(mailbox, i) for i in sorted(ids)) if r is not None}
    return {r.id: r for r in side.stream(mailbox) if r.id in ids}


def _lost(engine: Engine, mailbox: str, rec: SideRecord, others: Container[str]) -> Situation | None:
    """``Engine.rebuilt`` for an unlinked record of a full pass; None at once when its partner is among this
    mailbox's records (the marker adopts it)."""
    if not rec.marker or rec.marker in others:
        return None
    return engine.rebuilt(mailbox, rec)


def _at_link_version(engine: Engine, mailbox: str, record: SideRecord) -> bool:
    link = engine.links.get(mailbox, record.side, record.id)
    if link is None or link.state is not LinkState.LINKED or not record.version:
        return False
    version = link.m365_version if record.side is Side.M365 else link.sf_version
    return version == record.version


APPLY_CHUNK = 1000  # plans executed together: a multiple of 20 ($batch), 100 (table transactions), 200 (collections)


def _apply(engine: Engine, mailbox: str, plans: list[tuple[Situation, Plan]], report: ReconcileReport) -> None:
    """Execute the plans in bulk, APPLY_CHUNK at a time, consuming the list (what a chunk made is let go before the
    next one); a plan that lost a race is read and decided again; errors go to the report."""
    while plans:
        chunk = plans[:APPLY_CHUNK]
        del plans[:APPLY_CHUNK]
        _apply_chunk(engine, mailbox, chunk, report)


def _apply_chunk(engine: Engine, mailbox: str, plans: list[tuple[Situation, Plan]], report: ReconcileReport) -> None:
    for (s, p), result in zip(plans, engine.execute_many(mailbox, plans), strict=True):
        if isinstance(result, Busy):
            _busy(mailbox, " ".join(x for x in (p.m365_id, p.sf_id) if x))
        elif isinstance(result, PreconditionFailed | AlreadyExists):
            # something changed since this pass read it (an earlier item of this pass, or a worker that linked the
            # contact first): read again and decide again
            _decide_again(engine, mailbox, _hint_for(s), report, ids=" ".join(x for x in (p.m365_id, p.sf_id) if x))
        elif isinstance(result, SyncError):
            _failed(mailbox, result, " ".join(x for x in (p.m365_id, p.sf_id) if x), report)
        else:
            report.applied.update(_kinds(p))


def _decide_again(engine: Engine, mailbox: str, hint: ContactChange, report: ReconcileReport, *,
                  ids: str | None = None) -> None:
    """Read one person again and decide again, as a hint would (a race lost, or a link that moved on)."""
    try:
        for outcome in engine.sync_contact(hint):
            report.applied.update(_kinds(outcome.plan))
    except Busy:
        _busy(mailbox, ids or hint.item_id)
    except SyncError as exc:
        _failed(mailbox, exc, ids or hint.item_id, report)


def _busy(mailbox: str, ids: str) -> None:
    """A person another worker is writing (its link claimed): that worker decides it; the next pass looks again."""
    logger.info("reconcile %s: %s left to the worker writing it (link claimed)", mailbox_ref(mailbox), ids)


def _failed(mailbox: str, exc: SyncError, ids: str, report: ReconcileReport) -> None:
    report.errors.append(f"{type(exc).__name__} {ids}: {exc}")
    logger.warning("reconcile %s: %s on %s", mailbox_ref(mailbox), type(exc).__name__, ids)


# A feed that reported nothing keeps its stored checkpoint, so a no-change pass writes nothing. Graph answers every
# delta round with a new delta link and keeps old ones in a cache of undocumented size that evicts the oldest
# (docs/reference/graph.md §3.3): a stored link is replaced once it is this old, even when nothing changed, so at the
# default 30-minute schedule at most 3 newer links of a folder go unused before ours is replaced. An evicted link
# costs one full pass of that mailbox (Graph's 410 starts the feed over), never a lost change.
CHECKPOINT_REFRESH = timedelta(hours=2)


def reconcile_mailbox_delta(
    engine: Engine, mailbox: str, checkpoints: CheckpointStore, *, dry_run: bool = False, force: bool = False,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> ReconcileReport:
    """Reconcile only what changed in this mailbox since the last delta pass, on both sides.

    Reads each side's change feed from its checkpoint (Graph: the folder's delta link; Salesforce: a SystemModstamp
    watermark), then decides every changed or removed contact as a hint would (the same planner, the same
    circuit breaker, bulk writes). When a feed starts over (first run, Graph's 410 syncStateNotFound, a watermark
    older than the Recycle Bin) the whole mailbox is reconciled instead (``ran == "full"``). The checkpoints advance
    only after a pass without errors, and never on a dry run, so nothing is skipped; a feed that reported nothing
    keeps its checkpoint unless it is ``CHECKPOINT_REFRESH`` old (``_Feeds.to_write``).
    """
    mailbox = mailbox.casefold()
    feeds = _Feeds.read(engine, mailbox, checkpoints)
    if feeds.starts_over:
        if feeds.rebuilding and not dry_run:
            _decide_gone(engine, mailbox, feeds.gone_m365)
        report = reconcile_mailbox(engine, mailbox, dry_run=dry_run, force=force)
    else:
        report = _delta_pass(engine, mailbox, list(feeds.hints.values()), dry_run=dry_run, force=force)
    if not dry_run and not report.errors:
        now = clock()
        for name, value in feeds.to_write(now):
            checkpoints.put(mailbox, name, _Checkpoint(value, now).dump())
    logger.info("%s", report.summary())
    return report


@dataclass(frozen=True)
class _Checkpoint:
    """A change feed's checkpoint as stored: the feed's own resume point and when it was stored. Stored as JSON
    ``{"v": value, "at": ISO time}``; a bare value (written before the time was kept) reads with no time."""

    value: str
    at: datetime | None = None

    def dump(self) -> str:
        return json.dumps({"v": self.value, "at": self.at.isoformat() if self.at else None}, separators=(",", ":"))

    @classmethod
    def load(cls, raw: str | None) -> _Checkpoint | None:
        if not raw:
            return None
        if raw.startswith("{"):
            try:
                doc = json.loads(raw)
                if isinstance(doc, dict) and isinstance(doc.get("v"), str):
                    at = datetime.fromisoformat(doc["at"]) if isinstance(doc.get("at"), str) else None
                    return cls(doc["v"], at if at is None or at.tzinfo else at.replace(tzinfo=UTC))
            except ValueError:
                pass
        return cls(raw)


@dataclass
class _FeedEnd:
    """One change feed of a pass: its checkpoint name, what was stored, where it ended, whether it said anything."""

    name: str
    stored: _Checkpoint | None
    last: str | None = None
    reported: bool = False  # records, removals, or a start over


@dataclass
class _Feeds:
    """What the two change feeds of a mailbox reported since their checkpoints."""

    rebuilding: bool  # the links of the mailbox are being rebuilt (a full pass does it)
    starts_over: bool  # a feed starts over, or the links are rebuilt: a full pass instead
    hints: dict[tuple[Side, str], ContactChange] = field(default_factory=dict)  # one per changed or removed contact
    gone_m365: list[str] = field(default_factory=list)  # Outlook removals
    ends: list[_FeedEnd] = field(default_factory=list)  # per feed: where it ended, against what was stored

    @classmethod
    def read(cls, engine: Engine, mailbox: str, checkpoints: CheckpointStore) -> _Feeds:
        rebuilding = engine.links.rebuilding(mailbox)
        feeds = cls(rebuilding, starts_over=rebuilding)
        for side in (Side.M365, Side.SALESFORCE):
            name = f"reconcile-delta:{side.value}"
            stored = _Checkpoint.load(checkpoints.get(mailbox, name))
            end = _FeedEnd(name, stored)
            for page in engine.sides[side].changes(mailbox, stored.value if stored else None):
                feeds.starts_over = feeds.starts_over or page.full
                end.reported = end.reported or page.full or bool(page.records or page.removed)
                if not feeds.starts_over:
                    feeds._add(engine, mailbox, side, page.records, page.removed)
                elif side is Side.M365:
                    # a full pass follows and decides every record itself: no hint (and no link read) per record;
                    # only Outlook removals are kept for a rebuild (``_decide_gone``)
                    feeds.gone_m365.extend(page.removed)
                end.last = page.checkpoint or end.last
            feeds.ends.append(end)
        return feeds

    def to_write(self, now: datetime) -> list[tuple[str, str]]:
        """The checkpoints to store after a pass without errors: a feed's new resume point when it differs from the
        stored one and the feed reported something (or started over), or the stored one has no time or is
        ``CHECKPOINT_REFRESH`` old. A feed that reported nothing is read from the old point again next time, with
        the same (empty) result."""
        out = []
        for end in self.ends:
            stored = end.stored
            if end.last is None or (stored is not None and end.last == stored.value):
                continue
            due = stored is None or stored.at is None or now - stored.at >= CHECKPOINT_REFRESH
            if end.reported or due:
                out.append((end.name, end.last))
        return out

    def _add(self, engine: Engine, mailbox: str, side: Side, records: Iterable[SideRecord],
             removed: Iterable[str]) -> None:
        if side is Side.M365:
            removed = tuple(removed)
            self.gone_m365.extend(removed)
        else:
            # the Salesforce feed is org-wide: a removal concerns this mailbox only if the contact is linked here.
            # Past FETCH_ONE_BY_ONE ids (other reps' contacts edited since the last pass), the mailbox's links are
            # listed once instead of one point read per id
            removed = tuple(removed)
            if len(removed) > FETCH_ONE_BY_ONE:
                linked = {link.sf_id for link in engine.links.list(mailbox) if link.sf_id}
                removed = tuple(i for i in removed if i in linked)
            else:
                removed = tuple(i for i in removed if engine.links.get(mailbox, side, i) is not None)
        # a record at the version its link was saved with has not changed since we synced it (our own write
        # coming back, or a row the feed reports again): nothing to read or decide, no API call
        fresh = [r.id for r in records if not _at_link_version(engine, mailbox, r)]
        for item_id in [*fresh, *removed]:
            self.hints.setdefault((side, item_id), ContactChange(
                source=side, item_id=item_id, mailbox=mailbox if side is Side.M365 else None))


def _decide_gone(engine: Engine, mailbox: str, gone_m365: list[str]) -> None:
    """Outlook copies deleted since the last pass, while their links were lost: decided before the full pass (which
    would otherwise take their Salesforce contacts for new ones and copy them back)."""
    for item_id in gone_m365:
        try:
            engine.sync_contact(ContactChange(source=Side.M365, item_id=item_id, mailbox=mailbox))
        except SyncError as exc:
            logger.warning("reconcile %s: %s on a hint before the rebuild", mailbox_ref(mailbox),
                           type(exc).__name__)


def _delta_pass(engine: Engine, mailbox: str, hints: list[ContactChange], *, dry_run: bool,
                force: bool) -> ReconcileReport:
    """Decide every hint of the feeds as a hint would, judge the plans with the breaker, apply them in bulk."""
    report = ReconcileReport(mailbox, dry_run, ran="delta")
    plans: list[tuple[Situation, Plan]] = []
    creating = MatchIndex()
    decided: set[str] = set()
    for hint in hints:
        s = engine.read(hint, mailbox)
        if s is not None:
            # one person can be in both feeds (an Outlook and a Salesforce change of one link): decide it once
            key = s.link.primary_key() if s.link is not None else row_key(hint.source, hint.item_id)
            if key in decided:
                continue
            decided.add(key)
            p = plan(s, engine.policy)
            source = s.m365 if s.m365 is not None else s.sf
            plans.append((s, _unless_twin(p, source, creating) if source is not None else p))
    report.visited = len(plans)
    for _, p in plans:
        report.planned.update(_kinds(p))
    if sum(p.destructive for _, p in plans) >= engine.policy.breaker.min_count:
        report.linked_before = sum(1 for link in engine.links.list(mailbox) if link.state is LinkState.LINKED)
        check_breaker(mailbox, [p for _, p in plans], report.linked_before, engine.policy.breaker, force=force)
    if not dry_run:
        _apply(engine, mailbox, plans, report)
    return report


def _unless_twin(p: Plan, rec: SideRecord, creating: MatchIndex) -> Plan:
    """Two unlinked records on one side that look like the same person must not both be copied: the first is,
    the next goes to review (a user's own duplicate stays theirs; we do not double it)."""
    if not any(isinstance(a, Create) for a in p.actions):
        return p
    twin = next(iter(creating.matches(rec)), None)
    if twin is None:
        creating.add(rec)
        return p
    reason = (f"another {rec.side.label} contact ({twin}) matching it by email or name and company is being "
              f"copied in this pass; not creating a duplicate")
    return Plan(p.mailbox, (Review(reason, (twin,)),), LinkAfter.KEEP, reason, synced_fields=p.synced_fields)


def _hint_for(s: Situation) -> ContactChange:
    if s.m365 is not None or (s.link is not None and s.link.m365_id):
        item_id = s.m365.id if s.m365 is not None else (s.link.m365_id if s.link else None) or ""
        return ContactChange(source=Side.M365, item_id=item_id, mailbox=s.mailbox)
    item_id = s.sf.id if s.sf is not None else (s.link.sf_id if s.link else None) or ""
    return ContactChange(source=Side.SALESFORCE, item_id=item_id)
