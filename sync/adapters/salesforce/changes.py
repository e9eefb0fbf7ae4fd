"""The change feed behind ``SalesforceContactSide.changes``.

The checkpoint is a SystemModstamp watermark plus the ids seen at exactly that stamp, so ``>=`` queries do not repeat
them; past ``_Watermark.MAX_IDS`` rows in one second it becomes a keyset on (SystemModstamp, Id). One org-wide
queryAll of what moved since is split: live and owned by the mailbox's User -> changed; deleted (Recycle Bin) or
owned by someone else -> ``removed``. SOQL cannot tell who owned a record before, so ``removed`` is a superset (the
consumer ignores ids it has no link for). With ``SF_SOQL_FILTER`` the full listing carries the filter, and the owner's
rows of an incremental page are asked again with ``Id IN (...) AND (<filter>)``: those outside it are ``removed``
too (they left the filter, or never met it), so a contact leaving the filter is decided like an owner change and one
entering it comes back as changed. A change of a parent's field (``Account.Type``) does not move the Contact's
SystemModstamp: the full pass sees it. No checkpoint, a bad one, or one older than the Recycle Bin window -> a
full listing (``full=True``).

Known gap: a transaction that commits after our query with a SystemModstamp at or before the watermark is missed
here; CDC delivers it and the periodic full reconcile is the backstop.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sync.adapters.salesforce.rest import RestClient
from sync.adapters.salesforce.soql import parse_dt, soql_datetime, soql_quote
from sync.model import mailbox_ref
from sync.ports import ChangePage, SideRecord

logger = logging.getLogger(__name__)

RECYCLE_BIN_DAYS = 15  # queryAll sees deleted rows this long (docs/reference/salesforce.md §2.3)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class _Watermark:
    """The ``changes`` checkpoint: SystemModstamp of the newest row seen, the rows seen at exactly that stamp (as
    ``id#digest`` of their values, so a row edited again in the same second is reported again), and the last of them
    in query order (``ORDER BY SystemModstamp, Id``).

    SystemModstamp keeps whole seconds and SOQL compares at second precision (docs/reference/salesforce.md §1.1,
    §2.2), so a bulk load shares one stamp. Up to ``MAX_IDS`` ids are kept and the next query is ``>= stamp``
    without them; beyond that the checkpoint keeps only ``after`` (the last id) and the next query is the keyset
    ``SystemModstamp > stamp OR (SystemModstamp = stamp AND Id > after)``: nothing is reported twice and nothing in
    the second is skipped, except a row committed later in that same second with a smaller Id (CDC and the periodic
    full pass see it)."""

    stamp: datetime
    ids: frozenset[str]
    after: str | None = None  # keyset mode (ids is empty then)
    last: str | None = None  # the last id at ``stamp`` in query order (kept in memory, not dumped)

    MAX_IDS = 500

    def dump(self) -> str:
        ids, after = sorted(self.ids), self.after
        if len(ids) > self.MAX_IDS:
            ids, after = [], self.last
        data: dict[str, Any] = {"v": 1, "wm": soql_datetime(self.stamp), "ids": ids}
        if after:
            data["after"] = after
        raw = json.dumps(data, separators=(",", ":"))
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
            after = str(data["after"]) if data.get("after") else None
            return cls(stamp, frozenset(str(i) for i in data.get("ids") or ()), after, after)
        except (ValueError, KeyError, TypeError):
            return None

    def where(self) -> str:
        """The SOQL condition for what moved at or after this watermark."""
        if self.after:
            stamp = soql_datetime(self.stamp)
            return f"(SystemModstamp > {stamp} OR (SystemModstamp = {stamp} AND Id > {soql_quote(self.after)}))"
        return f"SystemModstamp >= {soql_datetime(self.stamp)}"

    def seen(self, token: str, stamp: datetime) -> bool:
        """Reported, as it is now, by the run that made this watermark."""
        return stamp == self.stamp and token in self.ids

    def advanced(self, rows: Iterable[tuple[str, str, datetime]]) -> _Watermark:
        """After ``rows`` (``(id, id#digest, stamp)``), in query order (``ORDER BY SystemModstamp, Id``)."""
        stamp, ids, after, last = self.stamp, set(self.ids), self.after, self.last
        for rid, token, ts in rows:
            if ts > stamp:
                stamp, ids, after = ts, {token}, None
            elif ts < stamp:
                continue
            elif after is not None:
                after = rid  # keyset mode: rows at the stamp come in Id order
            else:
                ids.add(token)
            last = rid
        return _Watermark(stamp, frozenset(ids), after, last)


def row_version(row: Mapping[str, Any]) -> str:
    """A record's version: its SystemModstamp (whole seconds) and a digest of every value we read, so an edit in the
    same second as our read still changes it (docs/reference/salesforce.md §1.1)."""
    values = {k: v for k, v in row.items() if k != "attributes"}
    digest = hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"{row['SystemModstamp']}#{digest}"


def _token(row: Mapping[str, Any]) -> str:
    """How a watermark remembers a row at its stamp: its id and a short digest of its values."""
    return f"{row['Id']}#{row_version(row).rpartition('#')[2][:8]}"


class ChangeFeed:
    """``changes`` of the contact side: ``select`` is its field list, ``record`` turns a row into a ``SideRecord``."""

    def __init__(self, rest: RestClient, select: str, record: Callable[[Mapping[str, Any]], SideRecord], *,
                 soql_filter: str | None = None, in_filter: Callable[[Iterable[str]], set[str]] | None = None) -> None:
        self._rest, self._select, self._record = rest, select, record
        self._filter, self._in_filter = soql_filter, in_filter

    def pages(self, mailbox: str, owner_id: str, checkpoint: str | None) -> Iterator[ChangePage]:
        mark = _Watermark.load(checkpoint)
        if mark is not None and mark.stamp < datetime.now(UTC) - timedelta(days=RECYCLE_BIN_DAYS):
            logger.warning("salesforce change checkpoint of %s is older than the Recycle Bin window: full listing",
                           mailbox_ref(mailbox))
            mark = None
        if mark is None:
            yield from self._full(owner_id)
        else:
            yield from self._since(mark, owner_id)

    def _head(self) -> _Watermark:
        """The newest (SystemModstamp, Id) in the org (deleted rows too), taken before a full listing."""
        limit = _Watermark.MAX_IDS + 1
        rows = next(self._rest.query_pages("SELECT Id, SystemModstamp FROM Contact ORDER BY SystemModstamp DESC, "
                                           f"Id DESC LIMIT {limit}", include_deleted=True), [])
        stamps = [(str(r["Id"]), str(r["Id"]), parse_dt(r["SystemModstamp"]) or _EPOCH) for r in reversed(rows)]
        mark = _Watermark(_EPOCH, frozenset()).advanced(stamps)
        if len(rows) == limit and len(mark.ids) == limit:
            # more rows than we keep share the newest stamp: the full listing after this reports all of them
            return _Watermark(mark.stamp, frozenset(), mark.last, mark.last)
        return mark

    def _full(self, owner_id: str) -> Iterator[ChangePage]:
        """Every record of the owner (``full=True``); the last page carries the head taken before the listing."""
        head = self._head()
        scope = f" AND ({self._filter})" if self._filter else ""
        pages = [[self._record(r) for r in page] for page in self._rest.query_pages(
            f"SELECT {self._select} FROM Contact WHERE OwnerId = {soql_quote(owner_id)}{scope} ORDER BY Id")]
        for n, page_records in enumerate(pages):
            last = n == len(pages) - 1
            yield ChangePage(records=tuple(page_records), checkpoint=head.dump() if last else None, full=True)

    def _since(self, mark: _Watermark, owner_id: str) -> Iterator[ChangePage]:
        """What moved at or after the watermark, org-wide: the owner's live records, the rest as ``removed``."""
        soql = f"SELECT {self._select} FROM Contact WHERE {mark.where()} ORDER BY SystemModstamp, Id"
        new_mark = mark
        buffered: ChangePage | None = None
        for rows in self._rest.query_pages(soql, include_deleted=True):
            records: list[SideRecord] = []
            removed: list[str] = []
            seen: list[tuple[str, str, datetime]] = []
            owned: list[dict[str, Any]] = []
            for row in rows:
                rid, stamp, token = str(row["Id"]), parse_dt(row["SystemModstamp"]) or _EPOCH, _token(row)
                seen.append((rid, token, stamp))
                if mark.seen(token, stamp):
                    continue  # reported by the previous run
                if not row.get("IsDeleted") and row.get("OwnerId") == owner_id:
                    owned.append(row)
                else:
                    removed.append(rid)  # deleted, or owned by someone else (a superset, see module docstring)
            inside = (self._in_filter(str(r["Id"]) for r in owned)
                      if self._filter and self._in_filter is not None and owned else None)
            for row in owned:
                if inside is None or str(row["Id"])[:15] in inside:
                    records.append(self._record(row))
                else:
                    removed.append(str(row["Id"]))  # outside SF_SOQL_FILTER: out of scope (module docstring)
            new_mark = new_mark.advanced(seen)
            if buffered is not None:
                yield buffered
            buffered = ChangePage(records=tuple(records), removed=tuple(removed))
        final = buffered if buffered is not None else ChangePage()
        yield final.model_copy(update={"checkpoint": new_mark.dump()})
