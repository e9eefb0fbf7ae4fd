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
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from sync.engine import Engine
from sync.errors import AlreadyExists, PreconditionFailed, SyncError
from sync.planner import Adopt, Candidate, Create, LinkAfter, Nothing, Plan, Review, Situation, check_breaker, plan
from sync.policy import Side
from sync.ports import CheckpointStore, ContactChange, LinkState, SideRecord, row_key

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
    out = []
    for a in p.actions:
        kind = type(a).__name__.lower()
        side = getattr(a, "side", None)
        out.append(f"{kind}:{side.value}" if isinstance(side, Side) else kind)
    return out


def reconcile_mailbox(engine: Engine, mailbox: str, *, dry_run: bool = False, force: bool = False) -> ReconcileReport:
    mailbox = mailbox.casefold()
    m365, sf = engine.sides[Side.M365], engine.sides[Side.SALESFORCE]
    report = ReconcileReport(mailbox, dry_run)

    # The links first: a record read before a link could be older than it (a worker wrote both in between), and
    # its old values would pass for an edit back to them. Records read after the link are as new or newer.
    links = list(engine.links.list(mailbox))
    m_recs: dict[str, SideRecord] = {r.id: r for r in m365.stream(mailbox)}
    f_recs: dict[str, SideRecord] = {r.id: r for r in sf.stream(mailbox)}
    report.linked_before = sum(1 for link in links if link.state is LinkState.LINKED)

    situations: list[Situation] = []
    linked_m: set[str] = set()
    linked_f: set[str] = set()
    for link in links:
        m = m_recs.get(link.m365_id) if link.m365_id else None
        f = f_recs.get(link.sf_id) if link.sf_id else None
        if link.sf_id and f is None:
            f = sf.get(mailbox, link.sf_id)  # owner changed, or deleted
        if link.m365_id:
            linked_m.add(link.m365_id)
        if link.sf_id:
            linked_f.add(link.sf_id)
        if (f is not None and f.owner != mailbox) or (m is None) != (f is None):
            situations.append(engine.situation(mailbox, link, m, f))  # owner change, or a delete to decide on
        else:
            situations.append(Situation(mailbox, link, m, f))

    # unlinked records: Outlook first (they may adopt a Salesforce record), then Salesforce ones left over
    consumed_f: set[str] = set()
    consumed_m: set[str] = set()
    creating = _MatchIndex()  # unlinked records this pass will copy to the other side
    plans: list[tuple[Situation, Plan]] = []
    quiet: Counter[str] = Counter()  # plans that neither write nor audit (unchanged pairs): counted, not kept
    for s in situations:
        p = plan(s, engine.policy)
        survivor = s.m365 if s.m365 is not None else s.sf
        if survivor is not None and any(isinstance(a, Create) for a in p.actions):
            creating.add(survivor)  # a re-create: an unlinked twin of it must not be copied too
        if p.link_after is LinkAfter.KEEP and not p.writes and all(isinstance(a, Nothing) for a in p.actions):
            quiet.update(_kinds(p))
            continue
        plans.append((s, p))
    del situations
    rebuilding = engine.links.rebuilding(mailbox)
    f_index, m_index = _MatchIndex(f_recs.values()), _MatchIndex(m_recs.values())
    for rec in (r for i, r in m_recs.items() if i not in linked_m):
        lost = _lost(engine, mailbox, rec, f_recs) if rebuilding else None
        if lost is not None:  # its marker names a Salesforce contact deleted or moved away while links were lost
            consumed_m.add(rec.id)
            plans.append((lost, plan(lost, engine.policy)))
            continue
        local = [Candidate(c, linked=c.id in linked_f) for c in f_index.matches(rec)]
        remote = [Candidate(c, linked=engine.links.get(mailbox, Side.SALESFORCE, c.id) is not None)
                  for c in sf.find(mailbox, rec.contact) if c.id not in f_recs]
        s = Situation(mailbox, None, rec, None, tuple(local + remote))
        p = _unless_twin(plan(s, engine.policy), rec, creating)
        consumed_f.update(a.sf_id for a in p.actions if isinstance(a, Adopt))
        consumed_m.add(rec.id)
        plans.append((s, p))
    for rec in (r for i, r in f_recs.items() if i not in linked_f and i not in consumed_f):
        lost = _lost(engine, mailbox, rec, m_recs) if rebuilding else None
        if lost is not None:  # its marker names an Outlook copy deleted from this folder while links were lost
            plans.append((lost, plan(lost, engine.policy)))
            continue
        cands = tuple(Candidate(c, linked=c.id in linked_m or c.id in consumed_m)
                      for c in m_index.matches(rec))
        s = Situation(mailbox, None, None, rec, cands)
        plans.append((s, _unless_twin(plan(s, engine.policy), rec, creating)))

    del m_recs, f_recs, m_index, f_index, creating, links  # what the plans need, their situations hold
    report.visited = len(plans) + sum(quiet.values())
    report.planned.update(quiet)
    for _, p in plans:
        report.planned.update(_kinds(p))
    check_breaker(mailbox, [p for _, p in plans], report.linked_before, engine.policy.breaker, force=force)
    if dry_run:
        return report
    report.applied.update(quiet)
    _apply(engine, mailbox, plans, report)
    if rebuilding and not report.errors:
        engine.links.mark_rebuilt(mailbox)
        logger.info("links of mailbox %s rebuilt from the markers", mailbox)
    logger.info("%s", report.summary())
    return report


def _lost(engine: Engine, mailbox: str, rec: SideRecord, others: dict[str, SideRecord]) -> Situation | None:
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
            try:
                for outcome in engine.sync_contact(_hint_for(s)):
                    report.applied.update(_kinds(outcome.plan))
            except SyncError as exc:
                result = exc
            else:
                continue
        if isinstance(result, SyncError):
            ids = " ".join(x for x in (p.m365_id, p.sf_id) if x)
            report.errors.append(f"{type(result).__name__} {ids}: {result}")
            logger.warning("reconcile %s: %s on %s", mailbox, type(result).__name__, ids)
        else:
            report.applied.update(_kinds(p))


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
    reason = (f"another {rec.side.label} contact ({twin.id}) matching it by email or name and company is being "
              f"copied in this pass; not creating a duplicate")
    return Plan(p.mailbox, (Review(reason, (twin.id,)),), LinkAfter.KEEP, reason, synced_fields=p.synced_fields)


def _hint_for(s: Situation) -> ContactChange:
    if s.m365 is not None or (s.link is not None and s.link.m365_id):
        item_id = s.m365.id if s.m365 is not None else (s.link.m365_id if s.link else None) or ""
        return ContactChange(source=Side.M365, item_id=item_id, mailbox=s.mailbox)
    item_id = s.sf.id if s.sf is not None else (s.link.sf_id if s.link else None) or ""
    return ContactChange(source=Side.SALESFORCE, item_id=item_id)


class _MatchIndex:
    """Records by the keys that may make two records one person (id and marker, each email, first + last name
    + company), so
    finding the records that may be the same person as another is a few lookups, not a scan of the mailbox (a
    pairwise scan made a 20,000-contact initial sync quadratic). ``matches`` answers in insertion order."""

    def __init__(self, records: Iterable[SideRecord] = ()) -> None:
        self._order: dict[str, int] = {}
        self._by: dict[tuple[str, object], list[SideRecord]] = {}
        for rec in records:
            self.add(rec)

    def add(self, rec: SideRecord) -> None:
        self._order.setdefault(rec.id, len(self._order))
        keys: list[tuple[str, object]] = [("id", rec.id), *(("email", e) for e in rec.contact.email_keys())]
        if rec.marker:
            keys.append(("marker", rec.marker))
        name = rec.contact.name_company_key()
        if name is not None:
            keys.append(("name", name))
        for key in keys:
            self._by.setdefault(key, []).append(rec)

    def matches(self, a: SideRecord) -> list[SideRecord]:
        """The records ``b`` that may be ``a``: ``a``'s marker is ``b``'s id or ``b``'s marker is ``a``'s id, they share
        an email, or they have the same first + last name + company (``a``'s key not None)."""
        keys: list[tuple[str, object]] = [("marker", a.id), *(("email", e) for e in a.contact.email_keys())]
        if a.marker:
            keys.append(("id", a.marker))
        name = a.contact.name_company_key()
        if name is not None:
            keys.append(("name", name))
        found = {b.id: b for key in keys for b in self._by.get(key, ())}
        return sorted(found.values(), key=lambda b: self._order[b.id])
