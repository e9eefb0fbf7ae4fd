"""The sync folder of each mailbox, found by name or created when missing.

It is looked up once per mailbox and kept for the life of the adapter. Two workers may create the folder at the
same moment: when the create answers ``ErrorFolderExists`` (or ambiguously), the folder is looked up again instead of
failing (§2.2). Section numbers (§) refer to docs/reference/graph.md.
"""

from __future__ import annotations

import asyncio
import logging

from sync.adapters.graph.transport import _Failure, _GraphHttp, _mb, odata_query, odata_str, user_path

logger = logging.getLogger(__name__)


class _Folders:
    """Folder ids per mailbox (casefolded), fetched through ``http`` on first use."""

    def __init__(self, http: _GraphHttp, folder_name: str) -> None:
        self._http = http
        self._name = folder_name
        self._ids: dict[str, str] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def find_or_create(self, mailbox: str) -> str:
        key = mailbox.casefold()
        if key in self._ids:
            return self._ids[key]
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            if key in self._ids:
                return self._ids[key]
            folder = await self._find(mailbox)
            if folder is None:
                try:
                    resp = await self._http.call(
                        "POST", f"{user_path(mailbox)}/contactFolders", body={"displayName": self._name},
                        mailbox=mailbox, only_throttled=True,
                    )
                    folder = str(resp.body["id"])
                    logger.info("created the sync folder %s in mailbox %s", folder, _mb(mailbox))
                except _Failure as failure:
                    # Someone created it meanwhile (or our ambiguous POST did): look again (§2.2).
                    if not (failure.code.casefold() == "errorfolderexists" or failure.ambiguous):
                        raise
                    folder = await self._find(mailbox)
                    if folder is None:
                        raise
            self._ids[key] = folder
            return folder

    async def _find(self, mailbox: str) -> str | None:
        query = odata_query(filter=f"displayName eq {odata_str(self._name)}", select="id,displayName")
        resp = await self._http.call("GET", f"{user_path(mailbox)}/contactFolders{query}", mailbox=mailbox)
        for row in (resp.body or {}).get("value") or []:
            if str(row.get("displayName", "")).casefold() == self._name.casefold():
                return str(row["id"])
        return None
