"""Entra groups for the Graph emulator: groups, nested groups, ``members`` and ``transitiveMembers`` with paging.

Follows docs/reference/graph.md §6.5 (Learn "List group transitive members", "List group members", "Limited
information returned for inaccessible member objects"):

- The call needs one of ``GROUP_MEMBER_ROLES`` in the token, else 403 ``Authorization_RequestDenied``; an unknown
  group is 404 ``Request_ResourceNotFound``.
- A user member's properties are returned only with a role that reads users (``USER_READ_ROLES``); otherwise the
  member comes back with its ``@odata.type`` and ``id`` and every other selected property null ("limited
  information"). Which roles count as reading users is partly a guess (docs/emulator-fidelity-graph.md).
- ``transitiveMembers`` flattens nested groups (each object once, the nested groups themselves included; cycles are
  harmless). ``$top`` 1..999 (default 100), ``$skip`` refused, ``@odata.nextLink`` carries an opaque
  ``$skiptoken``. The OData cast (``/transitiveMembers/microsoft.graph.user``) needs ``ConsistencyLevel: eventual``
  and ``$count=true`` (advanced query), else 400 ``Request_UnsupportedQuery``.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from .store import GraphError, Mailbox

GROUP_MEMBER_ROLES = frozenset({"GroupMember.Read.All", "GroupMember.ReadWrite.All", "Group.Read.All",
                                "Group.ReadWrite.All", "Directory.Read.All", "Directory.ReadWrite.All"})
USER_READ_ROLES = frozenset({"User.ReadBasic.All", "User.Read.All", "User.ReadWrite.All", "Directory.Read.All",
                             "Directory.ReadWrite.All"})
DEFAULT_PAGE = 100
MAX_PAGE = 999
CASTS = {"microsoft.graph.user": "#microsoft.graph.user", "microsoft.graph.group": "#microsoft.graph.group"}
DENIED = ("Authorization_RequestDenied", "Insufficient privileges to complete the operation.")


@dataclass
class Group:
    id: str
    display_name: str
    members: list[str] = field(default_factory=list)  # object ids: users (mailboxes), groups, or other objects


@dataclass
class Directory:
    """Groups and other directory objects (e.g. a device) beside the store's users. Guarded by ``Store.lock``."""

    groups: dict[str, Group] = field(default_factory=dict)
    others: dict[str, str] = field(default_factory=dict)  # object id -> @odata.type (devices, contacts, ...)

    def add_group(self, display_name: str, members: list[str] | None = None, group_id: str | None = None) -> Group:
        group = Group(group_id or str(uuid.uuid4()), display_name, list(members or []))
        self.groups[group.id] = group
        return group

    def group(self, group_id: str) -> Group:
        found = self.groups.get(group_id) or next((g for g in self.groups.values() if g.id.lower() ==
                                                   group_id.lower()), None)
        if found is None:
            # [OBSERVED-IN-WILD] the directory's answer to an unknown object id
            raise GraphError(404, "Request_ResourceNotFound", f"Resource '{group_id}' does not exist or one of its "
                                                              "queried reference-property objects are not present.")
        return found

    def transitive(self, group: Group) -> list[str]:
        """Every object under ``group``, nested groups flattened, each once, in breadth-first order."""
        out: list[str] = []
        seen = {group.id}
        queue = [group]
        while queue:
            current = queue.pop(0)
            for member in current.members:
                if member in seen:
                    continue
                seen.add(member)
                out.append(member)
                nested = self.groups.get(member)
                if nested is not None:
                    queue.append(nested)
        return out


def _token(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"o": offset}).encode()).decode().rstrip("=")


def _offset(token: str) -> int:
    try:
        return int(json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))["o"])
    except (ValueError, KeyError, TypeError) as exc:
        raise GraphError(400, "Request_BadRequest", "Invalid skip token.") from exc


def page_size(top: str | None) -> int:
    if top is None or top == "":
        return DEFAULT_PAGE
    try:
        n = int(top)
    except ValueError as exc:
        raise GraphError(400, "Request_BadRequest", f"Invalid page size specified: '{top}'.") from exc
    if not 1 <= n <= MAX_PAGE:  # message text is a guess (docs/emulator-fidelity-graph.md)
        raise GraphError(400, "Request_BadRequest",
                         f"Invalid page size specified: '{top}'. Must be between 1 and {MAX_PAGE} inclusive.")
    return n


def render(directory: Directory, users: dict[str, Mailbox], object_id: str, select: list[str] | None,
           reads_users: bool) -> dict[str, Any] | None:
    """One member as the directory returns it; None for an id that no longer exists."""
    mb = users.get(object_id)
    if mb is not None:
        full: dict[str, Any] = {"id": mb.id, "userPrincipalName": mb.upn, "displayName": mb.display_name,
                                "mail": mb.upn}
        if not reads_users:  # limited information: type and id only
            full = {k: (v if k == "id" else None) for k, v in full.items()}
        kind = "#microsoft.graph.user"
    elif object_id in directory.groups:
        g = directory.groups[object_id]
        full, kind = {"id": g.id, "displayName": g.display_name, "mail": None}, "#microsoft.graph.group"
    elif object_id in directory.others:
        full, kind = {"id": object_id, "displayName": None}, directory.others[object_id]
    else:
        return None
    if select:
        wanted = {s.lower() for s in select} | {"id"}
        full = {k: full.get(k) for k in {**{s: None for s in select}, **full} if k.lower() in wanted}
    return {"@odata.type": kind, **full}


def check_cast(cast: str | None, headers: dict[str, str], query: dict[str, str]) -> str | None:
    """The @odata.type a cast keeps (None: no cast); 400 when the advanced-query headers are missing."""
    if cast is None:
        return None
    kind = CASTS.get(cast.lower())
    if kind is None:
        raise GraphError(400, "Request_BadRequest", f"Resource not found for the segment '{cast}'.")
    if headers.get("consistencylevel", "").lower() != "eventual" or query.get("count", "").lower() != "true":
        # §6.5: an OData cast on a directory relationship is an advanced query (message text is a guess)
        raise GraphError(400, "Request_UnsupportedQuery", "The specified OData cast is only supported with the "
                                                          "ConsistencyLevel:eventual header and $count=true.")
    return kind


def refuse_skip(query: dict[str, str]) -> None:
    if "skip" in query:
        raise GraphError(400, "Request_BadRequest", "'$skip' is not supported by the service.")


def page(rows: list[dict[str, Any]], query: dict[str, str], next_base: str) -> dict[str, Any]:
    """One page of ``rows``; ``next_base`` is the request URL without ``$skiptoken``."""
    size = page_size(query.get("top"))
    start = _offset(query["skiptoken"]) if query.get("skiptoken") else 0
    body: dict[str, Any] = {"value": rows[start:start + size]}
    if query.get("count", "").lower() == "true":
        body["@odata.count"] = len(rows)
    if start + size < len(rows):
        sep = "&" if "?" in next_base else "?"
        body["@odata.nextLink"] = f"{next_base}{sep}$skiptoken={_token(start + size)}"
    return body
