"""Reconcile one mailbox: stream both sides, pair them through the links, plan everything, check the circuit
breaker, then apply (or only report, for a dry run).

Public API:
    reconcile_mailbox(engine, mailbox, *, dry_run=False, force=False) -> ReconcileReport

Like vdirsyncer's sync over its status table: every link and every record on either side is visited once.
Unlinked records are matched in memory against the other side's unlinked records of this mailbox; unlinked Outlook
records also ask Salesforce (org-wide) so a contact owned by another rep is reviewed, never duplicated.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from sync.engine import Engine
from sync.errors import SyncError
from sync.planner import Adopt, Candidate, Plan, Situation, check_breaker, plan
from sync.policy import Side
from sync.ports import LinkState, SideRecord

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

    def summary(self) -> str:
        planned = ", ".join(f"{k} {v}" for k, v in sorted(self.planned.items())) or "nothing"
        mode = "dry run, planned" if self.dry_run else "applied"
        return (f"mailbox {self.mailbox}: {self.visited} visited, {self.linked_before} linked before; {mode}: "
                f"{planned}; {len(self.errors)} error(s)")


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

    m_recs: dict[str, SideRecord] = {r.id: r for r in m365.stream(mailbox)}
    f_recs: dict[str, SideRecord] = {r.id: r for r in sf.stream(mailbox)}
    links = list(engine.links.list(mailbox))
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
        situations.append(engine.situation(mailbox, link, m, f) if f is not None and f.owner != mailbox
                          else Situation(mailbox, link, m, f))

    # unlinked records: Outlook first (they may adopt a Salesforce record), then Salesforce ones left over
    consumed_f: set[str] = set()
    consumed_m: set[str] = set()
    plans: list[tuple[Situation, Plan]] = [(s, plan(s, engine.policy)) for s in situations]
    for rec in (r for i, r in m_recs.items() if i not in linked_m):
        local = [Candidate(c, linked=c.id in linked_f) for c in f_recs.values() if _matches(rec, c)]
        remote = [Candidate(c, linked=engine.links.get(mailbox, Side.SALESFORCE, c.id) is not None)
                  for c in sf.find(mailbox, rec.contact) if c.id not in f_recs]
        s = Situation(mailbox, None, rec, None, tuple(local + remote))
        p = plan(s, engine.policy)
        consumed_f.update(a.sf_id for a in p.actions if isinstance(a, Adopt))
        consumed_m.add(rec.id)
        plans.append((s, p))
    for rec in (r for i, r in f_recs.items() if i not in linked_f and i not in consumed_f):
        cands = tuple(Candidate(c, linked=c.id in linked_m or c.id in consumed_m)
                      for c in m_recs.values() if _matches(rec, c))
        s = Situation(mailbox, None, None, rec, cands)
        plans.append((s, plan(s, engine.policy)))

    report.visited = len(plans)
    for _, p in plans:
        report.planned.update(_kinds(p))
    check_breaker(mailbox, [p for _, p in plans], report.linked_before, engine.policy.breaker, force=force)
    if dry_run:
        return report
    for s, p in plans:
        try:
            engine.execute(s, p)
            report.applied.update(_kinds(p))
        except SyncError as exc:
            ids = " ".join(x for x in (p.m365_id, p.sf_id) if x)
            report.errors.append(f"{type(exc).__name__} {ids}: {exc}")
            logger.warning("reconcile %s: %s on %s", mailbox, type(exc).__name__, ids)
    logger.info("%s", report.summary())
    return report


def _matches(a: SideRecord, b: SideRecord) -> bool:
    """Could ``b`` be the same person as ``a`` (marker, email or name + company)?"""
    if (a.marker and a.marker == b.id) or (b.marker and b.marker == a.id):
        return True
    if a.contact.email_keys() & b.contact.email_keys():
        return True
    key = a.contact.name_company_key()
    return key is not None and key == b.contact.name_company_key()
