"""The change feed behind ``SalesforceContactSide.changes``.

The checkpoint is a SystemModstamp watermark plus the ids seen at exactly that stamp, so ``>=`` queries do not repeat
them. One org-wide queryAll of ``SystemModstamp >= watermark`` is split: live and owned by the mailbox's User ->
changed; deleted (Recycle Bin) or owned by someone else -> ``removed``. SOQL cannot tell who owned a record before,
so ``removed`` is a superset (the consumer ignores ids it has no link for). No checkpoint, a bad one, or one older
than the Recycle Bin window -> a full listing (``full=True``).

Known gap: a transaction that commits after our query with a SystemModstamp at or before the watermark is missed
here; CDC delivers it and the periodic full reconcile is the backstop.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sync.adapters.salesforce.rest import RestClient
from sync.adapters.salesforce.soql import parse_dt, soql_datetime, soql_quote
from sync.ports import ChangePage, SideRecord

logger = logging.getLogger(__name__)

RECYCLE_BIN_DAYS = 15  # queryAll sees deleted rows this long (docs/reference/salesforce.md §2.3)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class _Watermark:
    """The ``changes`` checkpoint: SystemModstamp of the newest row seen + the ids seen at exactly that stamp."""

    stamp: datetime
    ids: frozenset[str]

    MAX_IDS = 500  # beyond this (a bulk load in one second) the stamp moves 1 ms past them instead, see dump

    def dump(self) -> str:
        stamp, ids = self.stamp, sorted(self.ids)
        if len(ids) > self.MAX_IDS:
            # every row at this stamp was reported: step past it rather than report them all again on every run
            # (only a row committed later with this very stamp would be missed; CDC and the weekly full pass see it)
            stamp, ids = stamp + timedelta(milliseconds=1), []
        raw = json.dumps({"v": 1, "wm": soql_datetime(stamp), "ids": ids}, separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode()

    @classmethod
    def load(cls, text: str | None) -> _Watermark | None:
        if not text:
            return None
        try:
            data = json.loads(base64.urlsafe_b64decode(text.encode()))
            stamp = parse_dt(data["wm"])
            if data.get("v") != 1 or stamp is None:
                return None
            return cls(stamp, frozenset(str(i) for i in data.get("ids") or ()))
        except (ValueError, KeyError, TypeError):
            return None

    def advanced(self, rows: Iterable[tuple[str, datetime]]) -> _Watermark:
        stamp, ids = self.stamp, set(self.ids)
        for rid, ts in rows:
            if ts > stamp:
                stamp, ids = ts, {rid}
            elif ts == stamp:
                ids.add(rid)
        return _Watermark(stamp, frozenset(ids))


class ChangeFeed:
    """``changes`` of the contact side: ``select`` is its field list, ``record`` turns a row into a ``SideRecord``."""

    def __init__(self, rest: RestClient, select: str, record: Callable[[Mapping[str, Any]], SideRecord]) -> None:
        self._rest, self._select, self._record = rest, select, record

    def pages(self, mailbox: str, owner_id: str, checkpoint: str | None) -> Iterator[ChangePage]:
        mark = _Watermark.load(checkpoint)
        if mark is not None and mark.stamp < datetime.now(UTC) - timedelta(days=RECYCLE_BIN_DAYS):
            logger.warning("salesforce change checkpoint of %s is older than the Recycle Bin window: full listing",
                           mailbox)
            mark = None
        if mark is None:
            yield from self._full(owner_id)
        else:
            yield from self._since(mark, owner_id)

    def _head(self) -> _Watermark:
        """The newest SystemModstamp in the org (deleted rows too), taken before a full listing."""
        limit = _Watermark.MAX_IDS + 1
        rows = next(self._rest.query_pages("SELECT Id, SystemModstamp FROM Contact ORDER BY SystemModstamp DESC, Id "
                                           f"LIMIT {limit}", include_deleted=True), [])
        stamps = [(str(r["Id"]), parse_dt(r["SystemModstamp"]) or _EPOCH) for r in rows]
        mark = _Watermark(_EPOCH, frozenset()).advanced(stamps)
        if len(rows) == limit and len(mark.ids) == limit:
            # more rows than we keep share the newest stamp: the full listing after this reports all of them
            return _Watermark(mark.stamp + timedelta(milliseconds=1), frozenset())
        return mark

    def _full(self, owner_id: str) -> Iterator[ChangePage]:
        """Every record of the owner (``full=True``); the last page carries the head taken before the listing."""
        head = self._head()
        pages = [[self._record(r) for r in page] for page in self._rest.query_pages(
            f"SELECT {self._select} FROM Contact WHERE OwnerId = {soql_quote(owner_id)} ORDER BY Id")]
        for n, page_records in enumerate(pages):
            last = n == len(pages) - 1
            yield ChangePage(records=tuple(page_records), checkpoint=head.dump() if last else None, full=True)

    def _since(self, mark: _Watermark, owner_id: str) -> Iterator[ChangePage]:
        """What moved at or after the watermark, org-wide: the owner's live records, the rest as ``removed``."""
        soql = (f"SELECT {self._select} FROM Contact WHERE SystemModstamp >= {soql_datetime(mark.stamp)} "
                f"ORDER BY SystemModstamp, Id")
        new_mark = mark
        buffered: ChangePage | None = None
        for rows in self._rest.query_pages(soql, include_deleted=True):
            records: list[SideRecord] = []
            removed: list[str] = []
            seen: list[tuple[str, datetime]] = []
            for row in rows:
                rid, stamp = str(row["Id"]), parse_dt(row["SystemModstamp"]) or _EPOCH
                if stamp == mark.stamp and rid in mark.ids:
                    continue  # reported by the previous run
                seen.append((rid, stamp))
                if not row.get("IsDeleted") and row.get("OwnerId") == owner_id:
                    records.append(self._record(row))
                else:
                    removed.append(rid)  # deleted, or owned by someone else (a superset, see module docstring)
            new_mark = new_mark.advanced(seen)
            if buffered is not None:
                yield buffered
            buffered = ChangePage(records=tuple(records), removed=tuple(removed))
        final = buffered if buffered is not None else ChangePage()
        yield final.model_copy(update={"checkpoint": new_mark.dump()})
