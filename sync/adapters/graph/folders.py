"""The sync folder of each mailbox: found (our stamp first, then by name) or created, and checked again when due.

The folder we create (or adopt by name) carries an extended property, ``SYNC_FOLDER_PROPERTY_ID``: a rename by the
user is followed (the stamped folder is the sync folder whatever its name), and a contact found in a stamped folder
that is no longer the sync folder left with it. A folder the user deletes goes to Deleted Items with its contacts
(§2.3): ``refresh`` sees it gone (404, or no longer under the folder it was found in) and the next use makes a new
one. ``refresh`` runs on every full pass and every "left with the folder" check; a delta pass runs it only when
``due`` (the folder was last found or checked by this process ``FOLDER_CHECK_EVERY_S`` ago, or never) or when the
delta itself shows a sign (``GraphContactSide.changes``): what a delta link of a deleted folder answers is not
documented (§2.3), so the time bound is what guarantees a deleted folder is noticed. Two workers may create the
folder at the same moment: when the create answers ``ErrorFolderExists`` (or ambiguously), the folder is looked up
again instead of failing (§2.2). Section numbers (§) refer to docs/reference/graph.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from sync.adapters.graph.items import same_property
from sync.adapters.graph.transport import _Failure, _GraphHttp, _mb, odata_query, odata_str, user_path
from sync.errors import NotFound

logger = logging.getLogger(__name__)

SYNC_FOLDER_PROPERTY_ID = "String {0463b54a-5dcb-4781-9d3f-29b43773c27c} Name SyncFolder"
_STAMP = [{"id": SYNC_FOLDER_PROPERTY_ID, "value": "true"}]
_EXPAND = f"singleValueExtendedProperties($filter=id eq {odata_str(SYNC_FOLDER_PROPERTY_ID)})"
# A delta pass reads the folder again (one more Graph request) only when this process last found or checked it this
# long ago: a folder the user deleted is noticed by the first delta pass after that (docs/sync-rules.md, "The sync
# folder deleted or renamed"), so within 2 hours plus one reconcile interval, or at once on a sign from the delta.
FOLDER_CHECK_EVERY_S = 2 * 3600.0


def _stamped(doc: dict[str, Any]) -> bool:
    return any(same_property(str(ep.get("id", "")), SYNC_FOLDER_PROPERTY_ID)
               for ep in doc.get("singleValueExtendedProperties") or [])


class _Folders:
    """Folder ids per mailbox (casefolded), fetched through ``http`` on first use, with the parent each was found
    under."""

    def __init__(self, http: _GraphHttp, folder_name: str, stats: Counter[str], *,
                 check_every_s: float = FOLDER_CHECK_EVERY_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._http = http
        self._name = folder_name
        self._stats = stats
        self._ids: dict[str, tuple[str, str]] = {}  # mailbox -> (folder id, parent folder id)
        self._checked: dict[str, float] = {}  # mailbox -> when Graph last confirmed its folder (``clock``)
        self._locks: dict[str, asyncio.Lock] = {}
        self._check_every_s = check_every_s
        self._clock = clock

    def due(self, mailbox: str) -> bool:
        """Whether the folder of ``mailbox`` should be checked again (``refresh``) before a delta pass uses it: not
        known yet (the lookup checks it), or last confirmed ``check_every_s`` ago."""
        at = self._checked.get(mailbox.casefold())
        return at is None or self._clock() - at >= self._check_every_s

    async def find_or_create(self, mailbox: str) -> str:
        key = mailbox.casefold()
        if key in self._ids:
            return self._ids[key][0]
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            if key not in self._ids:
                self._ids[key] = await self._find(mailbox) or await self._create(mailbox)
                self._checked[key] = self._clock()
            return self._ids[key][0]

    async def _create(self, mailbox: str) -> tuple[str, str]:
        try:
            resp = await self._http.call(
                "POST", f"{user_path(mailbox)}/contactFolders", body={"displayName": self._name,
                                                                      "singleValueExtendedProperties": _STAMP},
                mailbox=mailbox, only_throttled=True,
            )
            logger.info("created the sync folder %s in mailbox %s", resp.body["id"], _mb(mailbox))
            return str(resp.body["id"]), str(resp.body.get("parentFolderId") or "")
        except _Failure as failure:
            # Someone created it meanwhile (or our ambiguous POST did): look again (§2.2).
            if not (failure.code.casefold() == "errorfolderexists" or failure.ambiguous):
                raise
            found = await self._find(mailbox)
            if found is None:
                raise
            return found

    async def _find(self, mailbox: str) -> tuple[str, str] | None:
        """The stamped folder (renamed or not), else the one named as configured (stamped now, so a later rename
        is followed)."""
        url: str | None = f"{user_path(mailbox)}/contactFolders" + odata_query(
            select="id,displayName,parentFolderId", expand=_EXPAND)
        named: dict[str, Any] | None = None
        while url:
            resp = await self._http.call("GET", url, mailbox=mailbox)
            for row in (resp.body or {}).get("value") or []:
                if _stamped(row):
                    return str(row["id"]), str(row.get("parentFolderId") or "")
                if named is None and str(row.get("displayName", "")).casefold() == self._name.casefold():
                    named = row
            url = (resp.body or {}).get("@odata.nextLink")
        if named is None:
            return None
        await self._http.call("PATCH", f"{user_path(mailbox)}/contactFolders/{quote(str(named['id']), safe='')}",
                              body={"singleValueExtendedProperties": _STAMP}, mailbox=mailbox)
        return str(named["id"]), str(named.get("parentFolderId") or "")

    async def refresh(self, mailbox: str) -> None:
        """Forget the folder when the user deleted it (§2.3: moved to Deleted Items, or gone) or moved it away; the
        next use finds or makes the sync folder again. A rename is followed (same id)."""
        key = mailbox.casefold()
        known = self._ids.get(key)
        if known is None:
            return
        folder, parent = known
        try:
            resp = await self._http.call("GET", f"{user_path(mailbox)}/contactFolders/{quote(folder, safe='')}"
                                         + odata_query(select="id,displayName,parentFolderId"), mailbox=mailbox)
            now = str(resp.body.get("parentFolderId") or "")
            if not parent or not now or now == parent:
                if self._ids.get(key) == known:
                    self._checked[key] = self._clock()
                return
        except _Failure as failure:
            if not isinstance(failure.error(), NotFound):
                raise
        self._stats["sync folder gone"] += 1
        logger.warning("the sync folder %s of mailbox %s was deleted or moved by the user: a new one is used",
                       folder, _mb(mailbox))
        if self._ids.get(key) == known:
            del self._ids[key]
            self._checked.pop(key, None)

    async def is_ours(self, mailbox: str, folder_id: str) -> bool:
        """Whether ``folder_id`` carries our stamp: a (former) sync folder."""
        try:
            resp = await self._http.call("GET", f"{user_path(mailbox)}/contactFolders/{quote(folder_id, safe='')}"
                                         + odata_query(select="id", expand=_EXPAND), mailbox=mailbox)
        except _Failure as failure:
            if isinstance(failure.error(), NotFound):
                return False
            raise
        return _stamped(resp.body or {})

    async def left_with_folder(self, mailbox: str, item_id: str) -> bool:
        """Whether contact ``item_id`` is in a stamped folder other than the sync folder: it left with it."""
        await self.refresh(mailbox)
        folder = await self.find_or_create(mailbox)
        try:  # ids are mailbox-wide (§1.8): the mailbox's contacts path finds it in any folder
            resp = await self._http.call("GET", f"{user_path(mailbox)}/contacts/{quote(item_id, safe='')}"
                                         + odata_query(select="id,parentFolderId"), mailbox=mailbox)
        except _Failure as failure:
            if isinstance(failure.error(), NotFound):
                return False  # deleted (or purged from Deleted Items)
            raise
        parent = str((resp.body or {}).get("parentFolderId") or "")
        if not parent or parent == folder or not await self.is_ours(mailbox, parent):
            return False
        self._stats["left with the sync folder"] += 1
        logger.info("contact %s of mailbox %s left with a former sync folder", item_id, _mb(mailbox))
        return True
