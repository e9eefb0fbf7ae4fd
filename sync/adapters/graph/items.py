"""What a contact read or written through the sync folder's path tells: whether it is in that folder (Graph resolves
item ids in the whole mailbox, so the path guards nothing) and whether an extended property is our marker.

Section numbers (§) refer to docs/reference/graph.md.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sync.adapters.graph.transport import _Failure, _mb

logger = logging.getLogger(__name__)


def in_folder(doc: Mapping[str, Any], folder: str) -> bool:
    """Whether a contact read or written through the folder's path is in that folder (ids are mailbox-wide, §1.8)."""
    parent = doc.get("parentFolderId")
    return parent is None or parent == folder


def check_landed(mailbox: str, folder: str, doc: Mapping[str, Any], *, raise_: bool = True) -> None:
    """A PATCH answer whose contact is not in the folder: the rep moved it between our guard read and our write."""
    if in_folder(doc, folder):
        return
    logger.warning("contact %s of mailbox %s was moved out of the sync folder while we wrote it", doc.get("id"),
                   _mb(mailbox))
    if raise_:
        raise _Failure(404, "ErrorItemNotFound")


def same_property(a: str, b: str) -> bool:
    """Whether two extended property ids name one property: ``"<Type> {<GUID>} Name <name>"`` with the type and the
    GUID compared case-insensitively and the name exactly (§1.7: "Filtering the string name (Name) ... is
    case-sensitive")."""
    pa, pb = a.split(maxsplit=3), b.split(maxsplit=3)
    if len(pa) != 4 or len(pb) != 4 or pa[2].casefold() != "name":
        return a.casefold() == b.casefold()
    return [p.casefold() for p in pa[:3]] == [p.casefold() for p in pb[:3]] and pa[3] == pb[3]


def marker_of(doc: Mapping[str, Any], marker_id: str, known: str | None) -> str | None:
    """The value of the marker property among the contact's expanded extended properties, else ``known``."""
    for prop in doc.get("singleValueExtendedProperties") or []:
        if isinstance(prop, Mapping) and same_property(str(prop.get("id", "")), marker_id):
            known = prop.get("value")
    return known


def modified_at(doc: Mapping[str, Any], name: str = "lastModifiedDateTime") -> datetime | None:
    """``lastModifiedDateTime`` (or another timestamp ``name``) as an aware datetime (UTC when Graph gives no
    offset), or None."""
    try:
        modified = datetime.fromisoformat(str(doc[name]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return None
    return modified if modified.tzinfo is not None else modified.replace(tzinfo=UTC)
