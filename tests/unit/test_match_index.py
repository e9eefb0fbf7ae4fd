"""Reconcile's match index answers exactly what the pairwise ``_matches`` scan answered, in the same order."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sync.match_index import MatchIndex
from sync.model import Contact, Side
from sync.ports import SideRecord


def _matches(a: SideRecord, b: SideRecord) -> bool:
    """The pairwise rule reconcile used before the index: could ``b`` be the same person as ``a``?"""
    if (a.marker and a.marker == b.id) or (b.marker and b.marker == a.id):
        return True
    if a.contact.email_keys() & b.contact.email_keys():
        return True
    key = a.contact.name_company_key()
    return key is not None and key == b.contact.name_company_key()


IDS = ["a", "b", "c", "d", "e"]
EMAILS = ["x@example.com", "X@Example.com", "y@example.com", "z@example.com"]


@st.composite
def records(draw: st.DrawFn) -> list[SideRecord]:
    out = []
    for item_id in draw(st.lists(st.sampled_from(IDS), unique=True, max_size=5)):
        contact = Contact(
            first_name=draw(st.sampled_from([None, "Ada", "ada"])),
            last_name=draw(st.sampled_from([None, "Byron"])),
            company=draw(st.sampled_from([None, "Acme", "ACME"])),
            emails=draw(st.lists(st.sampled_from(EMAILS), max_size=2, unique=True)),
        )
        out.append(SideRecord(side=Side.SALESFORCE, id=item_id, contact=contact, version="1",
                              marker=draw(st.sampled_from([None, *IDS]))))
    return out


@given(records(), records())
def test_the_index_finds_what_the_scan_finds(indexed: list[SideRecord], probes: list[SideRecord]) -> None:
    index = MatchIndex(indexed)
    for a in probes:
        assert index.matches(a) == [b.id for b in indexed if _matches(a, b)]
