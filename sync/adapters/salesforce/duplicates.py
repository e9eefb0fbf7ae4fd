"""Duplicate rules on our writes (docs/reference/salesforce.md §1.3).

A write goes out without ``Sforce-Duplicate-Rule-Header``. An Alert rule's refusal (``DuplicateFound`` with
``allow_save``) is sent again with ``allowSave=true``, and the record it returns carries a note naming the matched
ids, which the audit keeps. A Block rule's refusal is the item's error: the executor puts it in review.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from sync.adapters.salesforce.errors import DuplicateFound
from sync.errors import SyncError
from sync.ports import SideRecord

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
ALLOW_SAVE = {"Sforce-Duplicate-Rule-Header": "allowSave=true"}


def alert_note(dup: DuplicateFound) -> str:
    return f"saved despite the Salesforce duplicate rule (alert): it matches {', '.join(dup.matches) or 'records'}"


def alerted(allow: bool, item_id: str | None, send: Callable[[dict[str, str]], _T]) -> tuple[_T, str | None]:
    """``send(headers)`` once without the header; again with ``allowSave=true`` after an Alert refusal when ``allow``.
    Returns the answer and the audit note (None when no rule fired). A Block refusal propagates."""
    try:
        return send({}), None
    except DuplicateFound as dup:
        if not (dup.allow_save and allow):
            raise
        logger.info("salesforce %s: duplicate rule alert (matches %s), saved anyway", item_id or "(new contact)",
                    ", ".join(dup.matches))
        return send(dict(ALLOW_SAVE)), alert_note(dup)


def alerts(allow: bool, chunk: Sequence[tuple[int, dict[str, Any]]], results: Sequence[SideRecord | SyncError | str],
           ) -> list[tuple[int, dict[str, Any], DuplicateFound]]:
    """The records of a collection chunk an Alert rule refused (``results`` by index), to send again with
    ``allowSave=true``, each with its refusal for the note."""
    if not allow:
        return []
    return [(i, rec, r) for i, rec in chunk if isinstance(r := results[i], DuplicateFound) and r.allow_save]


def noted(record: SideRecord, *notes: str | None) -> SideRecord:
    """``record`` with the given notes (None: none) added."""
    add = tuple(n for n in notes if n)
    return record.model_copy(update={"notes": (*record.notes, *add)}) if add else record
