"""Reconcile one mailbox: stream both sides, pair them through the links, plan everything, check the circuit
breaker, then apply (or only report, for a dry run).

Public API:
    reconcile_mailbox(engine, mailbox, *, dry_run=False, force=False) -> ReconcileReport        full pass
    reconcile_mailbox_delta(engine, mailbox, checkpoints, *, dry_run=False, force=False)       what changed since
        the last delta pass (Graph delta link, Salesforce SystemModstamp watermark); falls back to a full pass when
        a change feed starts over (first run, expired delta token, old watermark) or the links are being rebuilt

After the links table was lost (it comes back with the tombstones only; ``LinkStore.rebuilding``), a full pass
rebuilds the links from the markers: a marker whose partner is here adopts it; an Outlook copy whose Salesforce partner
was deleted or moved to another owner is read as the lost link (``Engine.lost_link``), so deletes and owner changes
are not undone. A pass without errors ends the rebuild.

Like vdirsyncer's sync over its status table: every link and every record on either side is visited once.
The plans are applied together (``Engine.execute_many``): creates and updates go out in bulk (Graph ``$batch``,
Salesforce sObject Collections), each plan keeping its own all-or-nothing link commit.
Unlinked records are matched in memory against the other side's unlinked records of this mailbox; unlinked Outlook
records also ask Salesforce (org-wide) so a contact owned by another rep is reviewed, never duplicated.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Container, Iterable
from dataclasses import dataclass, field
from typing import Literal

from sync.engine import Engine
from sync.errors import AlreadyExists, PreconditionFailed, SyncError
from sync.model import fingerprint
from sync.planner import (
    Adopt,
    Candidate,
    Create,
    LinkAfter,
    Nothing,
    Plan,
    Review,
    Situation,
    check_breaker,
    plan,
)
from sync.policy import Side
from sync.ports import CheckpointStore, ContactChange, ContactSide, Link, LinkState, SideRecord, row_key

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
        return (f"mailbox {self.mailbox} ({self.ran} pass): {self.visited} visited, {self.linked_before} linked "
                f"before; {mode}: {done}; {len(self.errors)} error(s)")


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
    """A full pass over one mailbox, streaming: memory grows with the contacts that changed, not with the mailbox.

    1. The links are read first, compactly (``_Ref``): a record read before its link could be older than the link
       (a worker wrote both in between) and its old values would pass for an edit back to them.
    2. Outlook is streamed: a linked copy whose fingerprint is the one it was synced at is kept as its id only;
       every other copy is kept whole. Every copy's match keys go into an index (hashes and ids, no values).
    3. Salesforce is streamed: a linked contact unchanged on both sides is only counted. An unlinked contact that
       matches nothing in Outlook is planned at once (a create, or a skip or review) and applied a chunk at a time
       while the stream is read; the circuit breaker judges deletes and clears, which only linked contacts make,
       and a create is neither. Every other contact is kept whole.
    4. What was kept is planned as before: links read again (a link that moved on since step 1 is decided again by
       a fresh read), Outlook copies unchanged but needed read again, unlinked Outlook copies matched against
       Salesforce. The breaker judges these plans before any of them is applied.
    """
    mailbox = mailbox.casefold()
    outlook_side, sf_side = engine.sides[Side.M365], engine.sides[Side.SALESFORCE]
    report = ReconcileReport(mailbox, dry_run)
    scope = engine.scope(mailbox)
    synced = scope.keys
    rebuilding = engine.links.rebuilding(mailbox)
    quiet: Counter[str] = Counter()  # plans that neither write nor audit (unchanged pairs): counted, not kept

    # 1. the links, first
    by_outlook: dict[str, _Ref] = {}
    by_sf: dict[str, _Ref] = {}
    for link in engine.links.list(mailbox):
        ref = _Ref(link)
        if ref.m365_id:
            by_outlook[ref.m365_id] = ref
        if ref.sf_id:
            by_sf[ref.sf_id] = ref
        report.linked_before += ref.linked

    # 2. Outlook
    outlook_same: set[str] = set()  # linked copies unchanged since the sync: ids only
    outlook_kept: dict[str, SideRecord] = {}
    outlook_index = _MatchIndex()  # every copy in the folder
    for outlook in outlook_side.stream(mailbox):
        outlook_index.add(outlook)
        outlook_ref = by_outlook.get(outlook.id)
        if (outlook_ref is not None and outlook_ref.linked
                and outlook_ref.m365_fp == _fp64(fingerprint(outlook.contact, synced))):
            outlook_same.add(outlook.id)
        else:
            outlook_kept[outlook.id] = outlook

    # 3. Salesforce
    sf_kept: dict[str, SideRecord] = {}
    sf_new = _MatchIndex()  # unlinked contacts of this owner whose Outlook match is decided after the stream
    sf_all: set[str] = set()  # every contact of this owner, only while rebuilding (markers are read then)
    creating = _MatchIndex()  # unlinked records this pass copies to the other side
    early: list[tuple[Situation, Plan]] = []
    for salesforce in sf_side.stream(mailbox):
        if rebuilding:
            sf_all.add(salesforce.id)
        sf_ref = by_sf.get(salesforce.id)
        if sf_ref is not None:
            sf_ref.seen = True
            if salesforce.owner == mailbox and (
                (sf_ref.linked and sf_ref.m365_id in outlook_same
                 and sf_ref.sf_fp == _fp64(fingerprint(salesforce.contact, synced)))
                or (not sf_ref.linked and not sf_ref.m365_id)  # a tombstone that kept this contact, still here
            ):
                quiet["nothing"] += 1
            else:
                sf_kept[salesforce.id] = salesforce
            continue
        if rebuilding or outlook_index.matches(salesforce):
            sf_kept[salesforce.id] = salesforce  # its Outlook match (or lost link) is decided after the stream
            sf_new.add(salesforce)
            continue
        s = Situation(mailbox, None, None, salesforce, (), scope)
        p = _unless_twin(plan(s, engine.policy), salesforce, creating)
        if _quiet(p, quiet):
            continue
        report.visited += 1
        report.planned.update(_kinds(p))
        if not dry_run:
            early.append((s, p))
            if len(early) >= APPLY_CHUNK:
                _apply(engine, mailbox, early, report)
    _apply(engine, mailbox, early, report)

    # 4. what changed, planned as a whole
    refs = [*by_sf.values(), *(r for r in by_outlook.values() if not r.sf_id)]
    linked_outlook, linked_sf = set(by_outlook), set(by_sf)
    del by_outlook, by_sf
    pending: list[_Ref] = []
    for ref in refs:
        if ref.seen and ref.sf_id not in sf_kept:
            continue  # counted above: unchanged
        if not ref.linked and not ref.sf_id and ref.m365_id in outlook_kept:
            quiet["nothing"] += 1  # a tombstone that kept this Outlook copy, still here
            continue
        if ref.sf_id and not ref.seen:
            moved = sf_side.get(mailbox, ref.sf_id)  # owner changed, or deleted
            if moved is not None:
                sf_kept[moved.id] = moved
        pending.append(ref)
    del refs
    outlook_kept.update(_fetch(outlook_side, mailbox,
                               {r.m365_id for r in pending if r.m365_id and r.m365_id in outlook_same}))
    full_links = _relinks(engine, mailbox, pending)
    plans: list[tuple[Situation, Plan]] = []
    rereads: list[ContactChange] = []
    for ref in pending:
        full = full_links.get(ref.key())
        if full is None or ref.moved_on(full):
            # the link moved on since the pass read it (a worker synced this person meanwhile): the records read
            # since may be older than it, so this person is read and decided afresh
            rereads.append(ContactChange(source=Side.M365, item_id=ref.m365_id, mailbox=mailbox) if ref.m365_id
                           else ContactChange(source=Side.SALESFORCE, item_id=ref.sf_id or ""))
            continue
        outlook_rec = outlook_kept.get(full.m365_id) if full.m365_id else None
        sf_rec = sf_kept.get(full.sf_id) if full.sf_id else None
        if (sf_rec is not None and sf_rec.owner != mailbox) or (outlook_rec is None) != (sf_rec is None):
            s = engine.situation(mailbox, full, outlook_rec, sf_rec)  # owner change, or a delete to decide on
        else:
            s = Situation(mailbox, full, outlook_rec, sf_rec, (), scope)
        p = plan(s, engine.policy)
        survivor = s.m365 if s.m365 is not None else s.sf
        if survivor is not None and any(isinstance(a, Create) for a in p.actions):
            p = _unless_twin(p, survivor, creating)  # a re-create: an unlinked twin may be copied already
        if not _quiet(p, quiet):
            plans.append((s, p))
    del full_links, pending

    # unlinked records: Outlook first (they may adopt a Salesforce record), then Salesforce ones left over
    adopted_sf: set[str] = set()
    decided_outlook: set[str] = set()
    unlinked_outlook = [r for i, r in outlook_kept.items() if i not in linked_outlook]
    for rec in unlinked_outlook:
        lost = _lost(engine, mailbox, rec, sf_all) if rebuilding else None
        if lost is not None:  # its marker names a Salesforce contact deleted or moved away while links were lost
            decided_outlook.add(rec.id)
            plans.append((lost, plan(lost, engine.policy)))
            continue
        # this owner's unlinked contacts it may be, then Salesforce's search (org-wide: the linked and the other
        # owners' contacts it may be, so that it is reviewed, never doubled)
        local = [Candidate(sf_kept[i]) for i in sf_new.matches(rec) if i in sf_kept]
        found = {c.id: c for c in sf_side.find(mailbox, rec.contact) if c.id not in sf_new}
        if rec.marker and rec.marker not in sf_new and rec.marker not in found:
            marked = sf_side.get(mailbox, rec.marker)  # the contact its marker names (a copy of a linked copy, say)
            if marked is not None:
                found[marked.id] = marked
        remote = [Candidate(c, linked=c.id in linked_sf or engine.links.get(mailbox, Side.SALESFORCE, c.id) is not None)
                  for c in found.values()]
        s = Situation(mailbox, None, rec, None, tuple(local + remote), scope)
        p = _unless_twin(plan(s, engine.policy), rec, creating)
        adopted_sf.update(a.sf_id for a in p.actions if isinstance(a, Adopt))
        decided_outlook.add(rec.id)
        plans.append((s, p))
    unlinked_sf = [r for i, r in sf_kept.items() if i not in linked_sf and i not in adopted_sf and i in sf_new]
    outlook_kept.update(_fetch(outlook_side, mailbox,
                               {i for r in unlinked_sf for i in outlook_index.matches(r) if i not in outlook_kept}))
    for rec in unlinked_sf:
        lost = _lost(engine, mailbox, rec, outlook_index) if rebuilding else None
        if lost is not None:  # its marker names an Outlook copy deleted from this folder while links were lost
            plans.append((lost, plan(lost, engine.policy)))
            continue
        cands = tuple(Candidate(outlook_kept[i], linked=i in linked_outlook or i in decided_outlook)
                      for i in outlook_index.matches(rec) if i in outlook_kept)
        s = Situation(mailbox, None, None, rec, cands, scope)
        plans.append((s, _unless_twin(plan(s, engine.policy), rec, creating)))

    # what the plans need, their situations hold
    del outlook_kept, sf_kept, outlook_index, sf_new, sf_all, creating, outlook_same
    report.visited += len(plans) + len(rereads) + sum(quiet.values())
    report.planned.update(quiet)
    for _, p in plans:
        report.planned.update(_kinds(p))
    check_breaker(mailbox, [p for _, p in plans], report.linked_before, engine.policy.breaker, force=force)
    if dry_run:
        return report
    report.applied.update(quiet)
    _apply(engine, mailbox, plans, report)
    for hint in rereads:
        _decide_again(engine, mailbox, hint, report)
    if rebuilding and not report.errors:
        engine.links.mark_rebuilt(mailbox)
        logger.info("links of mailbox %s rebuilt from the markers", mailbox)
    logger.info("%s", report.summary())
    return report


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
        if isinstance(result, PreconditionFailed | AlreadyExists):
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
    except SyncError as exc:
        _failed(mailbox, exc, ids or hint.item_id, report)


def _failed(mailbox: str, exc: SyncError, ids: str, report: ReconcileReport) -> None:
    report.errors.append(f"{type(exc).__name__} {ids}: {exc}")
    logger.warning("reconcile %s: %s on %s", mailbox, type(exc).__name__, ids)


def reconcile_mailbox_delta(
    engine: Engine, mailbox: str, checkpoints: CheckpointStore, *, dry_run: bool = False, force: bool = False
) -> ReconcileReport:
    """Reconcile only what changed in this mailbox since the last delta pass, on both sides.

    Reads each side's change feed from its checkpoint (Graph: the folder's delta link; Salesforce: a SystemModstamp
    watermark), then decides every changed or removed contact as a hint would (the same planner, the same
    circuit breaker, bulk writes). When a feed starts over (first run, Graph's 410 syncStateNotFound, a watermark
    older than the Recycle Bin) the whole mailbox is reconciled instead (``ran == "full"``). The checkpoints advance
    only after a pass without errors, and never on a dry run, so nothing is skipped.
    """
    mailbox = mailbox.casefold()
    feeds: list[tuple[str, str | None]] = []
    hints: dict[tuple[Side, str], ContactChange] = {}
    rebuilding = engine.links.rebuilding(mailbox)
    gone_m365: list[str] = []  # Outlook removals the feed reports
    starts_over = rebuilding  # after a links table loss, a full pass rebuilds the links
    for side in (Side.M365, Side.SALESFORCE):
        name = f"reconcile-delta:{side.value}"
        last: str | None = None
        for page in engine.sides[side].changes(mailbox, checkpoints.get(mailbox, name)):
            starts_over = starts_over or page.full
            removed = page.removed
            if side is Side.M365:
                gone_m365.extend(removed)
            if side is Side.SALESFORCE:
                # the Salesforce feed is org-wide: a removal concerns this mailbox only if the contact is linked here
                removed = tuple(i for i in removed if engine.links.get(mailbox, side, i) is not None)
            # a record at the version its link was saved with has not changed since we synced it (our own write
            # coming back, or a row the feed reports again): nothing to read or decide, no API call
            fresh = [r.id for r in page.records if not _at_link_version(engine, mailbox, r)]
            for item_id in [*fresh, *removed]:
                hints.setdefault((side, item_id), ContactChange(
                    source=side, item_id=item_id, mailbox=mailbox if side is Side.M365 else None))
            last = page.checkpoint or last
        feeds.append((name, last))
    if starts_over:
        if rebuilding and not dry_run:
            # Outlook copies deleted since the last pass, while their links were lost: decided before the full pass
            # (which would otherwise take their Salesforce contacts for new ones and copy them back)
            for item_id in gone_m365:
                try:
                    engine.sync_contact(ContactChange(source=Side.M365, item_id=item_id, mailbox=mailbox))
                except SyncError as exc:
                    logger.warning("reconcile %s: %s on a hint before the rebuild", mailbox, type(exc).__name__)
        report = reconcile_mailbox(engine, mailbox, dry_run=dry_run, force=force)
    else:
        report = ReconcileReport(mailbox, dry_run, ran="delta")
        plans: list[tuple[Situation, Plan]] = []
        creating = _MatchIndex()
        decided: set[str] = set()
        for hint in hints.values():
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
    if not dry_run and not report.errors:
        for name, last in feeds:
            if last is not None:
                checkpoints.put(mailbox, name, last)
    logger.info("%s", report.summary())
    return report


def _unless_twin(p: Plan, rec: SideRecord, creating: _MatchIndex) -> Plan:
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


class _MatchIndex:
    """Ids of records by the keys that may make two records one person (id and marker, each email, first + last
    name + company), so finding the records that may be the same person as another is a few lookups, not a scan of
    the mailbox (a pairwise scan made a 20,000-contact initial sync quadratic). Keys are kept as hashes, and ids
    as the record's own strings, so a mailbox's index holds no contact values and little memory; a hash collision
    only adds a candidate, which the planner's own matching rules then reject. ``matches`` answers in insertion
    order; ``in`` tells whether a record was added."""

    def __init__(self, records: Iterable[SideRecord] = ()) -> None:
        self._order: dict[str, int] = {}
        self._by: dict[int, str | list[str]] = {}
        for rec in records:
            self.add(rec)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._order

    def add(self, rec: SideRecord) -> None:
        self._order.setdefault(rec.id, len(self._order))  # also answers the ("id", ...) key
        keys: list[tuple[str, object]] = [("email", e) for e in rec.contact.email_keys()]
        if rec.marker:
            keys.append(("marker", rec.marker))
        name = rec.contact.name_company_key()
        if name is not None:
            keys.append(("name", name))
        for key in keys:
            h = hash(key)
            held = self._by.get(h)
            if held is None:
                self._by[h] = rec.id
            elif isinstance(held, str):
                if held != rec.id:
                    self._by[h] = [held, rec.id]
            elif rec.id not in held:
                held.append(rec.id)

    def matches(self, a: SideRecord) -> list[str]:
        """The ids of the records ``b`` that may be ``a``: ``a``'s marker is ``b``'s id or ``b``'s marker is ``a``'s
        id, they share an email, or they have the same first + last name + company (``a``'s key not None)."""
        keys: list[tuple[str, object]] = [("marker", a.id), *(("email", e) for e in a.contact.email_keys())]
        name = a.contact.name_company_key()
        if name is not None:
            keys.append(("name", name))
        found: set[str] = {a.marker} if a.marker and a.marker in self._order else set()
        for key in keys:
            held = self._by.get(hash(key))
            if isinstance(held, str):
                found.add(held)
            elif held is not None:
                found.update(held)
        return sorted(found, key=self._order.__getitem__)
