"""The review inbox over the memory engine: items open, close themselves, and each decision is honoured by the
engine (hint and full reconcile) until the record changes."""

from __future__ import annotations

import pytest

from sync.model import Contact, Side
from sync.ports import ReviewItem
from sync.reconcile import reconcile_mailbox
from sync.review import BadDecision, decide
from tests.world import ANN, World, memory_world

ADA = Contact(first_name="Ada", last_name="Byron", emails=["ada@example.com"], company="Acme")


def _ambiguous(w: World) -> tuple[str, list[str]]:
    """An Outlook contact matching two Salesforce contacts of its owner by email: one open item."""
    sf_ids = [w.sf.user_create(ANN, ADA), w.sf.user_create(ANN, ADA.with_values({"job_title": "CTO"}))]
    m_id = w.m365.user_create(ANN, ADA)
    reconcile_mailbox(w.engine, ANN)
    return m_id, sf_ids


def _items(w: World, side: Side) -> list[ReviewItem]:
    return [i for i in w.reviews.items(ANN) if i.side is side]


def _decide(w: World, m_id: str, decision: str, chosen: tuple[str, ...] = ()) -> ReviewItem:
    item = w.reviews.get(ANN, Side.M365, m_id)
    assert item is not None and item.open
    record = w.m365.get(ANN, m_id)
    assert record is not None
    decided = decide(item, decision, chosen, "key ops-ann", record, w.engine.scope(ANN).keys, w.clock())
    w.reviews.put(decided)
    return decided


def test_an_ambiguous_contact_is_one_item_however_often_it_is_seen() -> None:
    w = memory_world()
    m_id, sf_ids = _ambiguous(w)
    reconcile_mailbox(w.engine, ANN)
    w.hint_m365(m_id)
    (item,) = _items(w, Side.M365)
    assert item.record_id == m_id and item.side is Side.M365 and set(item.candidate_ids) == set(sf_ids)
    assert item.open and item.first_seen <= item.last_seen and "ambiguous" in item.reason
    assert sum(e.outcome == "review" and e.m365_id == m_id for e in w.audit.entries) == 3  # three rows, one item
    # the two Salesforce contacts match an Outlook copy spoken for: each is an item of its own
    assert {i.record_id for i in _items(w, Side.SALESFORCE)} == set(sf_ids)


def test_an_item_closes_itself_when_the_ambiguity_goes_away() -> None:
    w = memory_world()
    m_id, sf_ids = _ambiguous(w)
    w.sf.user_delete(sf_ids[1])  # someone removed the duplicate
    w.hint_m365(m_id)
    assert _items(w, Side.M365) == []
    link = w.links.get(ANN, Side.M365, m_id)
    assert link is not None and link.sf_id == sf_ids[0]
    reconcile_mailbox(w.engine, ANN)  # a full pass closes the items of records linked since, or gone
    assert w.reviews.items(ANN) == []


def test_decision_link_pins_the_chosen_pair() -> None:
    w = memory_world()
    m_id, sf_ids = _ambiguous(w)
    _decide(w, m_id, "link", (sf_ids[1],))
    w.hint_m365(m_id)
    link = w.links.get(ANN, Side.M365, m_id)
    assert link is not None and link.sf_id == sf_ids[1]
    assert _items(w, Side.M365) == []  # honoured: the link carries it on
    adopt = [e for e in w.audit.entries if e.action == "adopt"]
    assert adopt and adopt[-1].rule == "decided in review by key ops-ann"


def test_decision_create_makes_a_new_contact_despite_the_matches() -> None:
    w = memory_world()
    m_id, sf_ids = _ambiguous(w)
    _decide(w, m_id, "create")
    reconcile_mailbox(w.engine, ANN)
    link = w.links.get(ANN, Side.M365, m_id)
    assert link is not None and link.sf_id not in sf_ids and len(w.sf.snapshot()) == 3
    assert _items(w, Side.M365) == []


def test_decision_separate_is_a_never_match_pair_until_the_record_changes() -> None:
    w = memory_world()
    m_id, sf_ids = _ambiguous(w)
    decided = _decide(w, m_id, "separate")
    assert set(decided.chosen) == set(sf_ids)  # by default: apart from every candidate
    w.hint_m365(m_id)
    # kept apart from both: nothing else matches, so it is copied to Salesforce as a person of its own
    link = w.links.get(ANN, Side.M365, m_id)
    assert link is not None and link.sf_id not in sf_ids
    w2 = memory_world()
    m2, sf2 = _ambiguous(w2)
    _decide(w2, m2, "separate", (sf2[0],))
    w2.hint_m365(m2)
    link2 = w2.links.get(ANN, Side.M365, m2)
    assert link2 is not None and link2.sf_id == sf2[1]  # the other candidate is the only match left


def test_decision_ignore_holds_until_the_record_changes() -> None:
    w = memory_world()
    m_id, _ = _ambiguous(w)
    _decide(w, m_id, "ignore")
    writes = (len(w.m365.writes), len(w.sf.writes))
    w.hint_m365(m_id)
    reconcile_mailbox(w.engine, ANN)
    assert (len(w.m365.writes), len(w.sf.writes)) == writes and w.links.get(ANN, Side.M365, m_id) is None
    (item,) = _items(w, Side.M365)
    assert item.decision == "ignore" and not item.open  # kept (it must hold), but no longer waiting
    assert any(e.action == "skip" and "ignored: decided in review by key ops-ann" in e.reason
               for e in w.audit.entries)
    w.m365.user_edit(m_id, {"job_title": "Countess"})  # the data changed: the planner decides afresh
    w.hint_m365(m_id)
    (item,) = _items(w, Side.M365)
    assert item.open and item.decision is None  # still ambiguous: the item is open again


def test_a_decision_that_does_not_fit_the_item_is_refused() -> None:
    w = memory_world()
    m_id, sf_ids = _ambiguous(w)
    item = w.reviews.get(ANN, Side.M365, m_id)
    record = w.m365.get(ANN, m_id)
    assert item is not None and record is not None
    keys = w.engine.scope(ANN).keys
    for decision, chosen in [("link", ()), ("link", tuple(sf_ids)), ("link", ("003nope",)), ("ignore", sf_ids[:1]),
                             ("merge", ())]:
        with pytest.raises(BadDecision):
            decide(item, decision, chosen, "k", record, keys, w.clock())
