"""An index of records by the keys that may make two records one person: id and marker, each email, first + last
name + company.

Public API:
    MatchIndex(records=())    .add(record), .matches(record) -> ids in insertion order, ``id in index``

Finding the records that may be the same person as another is a few lookups, not a scan of the mailbox (reconcile
matches every unlinked record of a mailbox against the other side). Keys are kept as hashes and ids as the records'
own strings, so an index holds no contact values and little memory; a hash collision only adds a candidate, which
the planner's own matching rules then reject.
"""

from __future__ import annotations

from collections.abc import Iterable

from sync.ports import SideRecord


class MatchIndex:
    """Ids of records by the keys that may make two records one person. ``matches`` answers in insertion order;
    ``in`` tells whether a record was added."""

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
