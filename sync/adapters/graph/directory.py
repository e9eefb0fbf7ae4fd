"""The one directory read of the app: the transitive user members of the mailbox group (docs/reference/graph.md §6.5).

``GET /groups/{id}/transitiveMembers?$select=id,userPrincipalName&$top=999``, following ``@odata.nextLink`` to the
end. Members that are not users (nested groups are flattened by Graph; devices, contacts, service principals) are
skipped by their ``@odata.type``. The OData cast ``/transitiveMembers/microsoft.graph.user`` would filter on the
server but needs the advanced-query headers (``ConsistencyLevel: eventual`` and ``$count=true``), which read an
index that may lag behind recent changes (§6.5); the plain listing needs neither. Needs the application permission
``GroupMember.Read.All`` (403 ``Authorization_RequestDenied`` without, an ``AuthFailed``); an unknown group is 404
``Request_ResourceNotFound``, a ``NotFound`` naming the setting. Logs count members, never names them.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

from sync.adapters.graph.contacts import GraphContactSide
from sync.adapters.graph.transport import _Failure, odata_query
from sync.errors import AuthFailed, NotFound

logger = logging.getLogger(__name__)

PAGE_SIZE = 999  # §6.5: directory collections page at most 999 objects
USER_TYPE = "#microsoft.graph.user"


class GraphGroupReader:
    """``sync.scope.GroupReader`` over the Graph adapter's HTTP client (token, retries, the one error map)."""

    def __init__(self, side: GraphContactSide) -> None:
        self._side = side
        self._http = side._http

    def transitive_users(self, group_id: str) -> list[tuple[str, str | None]]:
        return self._side._run(self._read(group_id), group_id)

    async def _read(self, group_id: str) -> list[tuple[str, str | None]]:
        url: str | None = (f"/groups/{quote(group_id, safe='')}/transitiveMembers"
                           + odata_query(select="id,userPrincipalName", top=str(PAGE_SIZE)))
        out: list[tuple[str, str | None]] = []
        pages = 0
        while url:
            try:
                resp = await self._http.call("GET", url)
            except _Failure as failure:
                if failure.status == 404:
                    raise NotFound(f"the group SYNC_MAILBOX_GROUP_ID names does not exist (graph 404 "
                                   f"{failure.code or 'Request_ResourceNotFound'})", side="m365",
                                   item_id=group_id) from None
                if failure.status == 403 and failure.code.casefold() == "authorization_requestdenied":
                    raise AuthFailed("the app may not read the group's members: grant the Graph application "
                                     "permission GroupMember.Read.All (graph 403 Authorization_RequestDenied)",
                                     side="m365") from None
                raise
            pages += 1
            body: dict[str, Any] = resp.body or {}
            for obj in body.get("value") or []:
                if str(obj.get("@odata.type") or "").casefold() == USER_TYPE.casefold() and obj.get("id"):
                    upn = obj.get("userPrincipalName")
                    out.append((str(obj["id"]), str(upn) if upn else None))
            url = body.get("@odata.nextLink")
        logger.info("group %s: %d user member(s) in %d page(s)", group_id, len(out), pages)
        return out
