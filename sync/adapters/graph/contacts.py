"""``GraphContactSide``: the ``ContactSide`` port on one contact folder (``Salesforce_Sync``) of each Outlook mailbox.

It reads, finds, writes and follows the change feed of that folder in raw Graph JSON (``sync.mapping`` converts);
HTTP and retries are ``transport``'s job, ``$batch`` scheduling ``batch``'s. What a reader must know:
* The marker (the Salesforce id on the Outlook contact) is a single-value extended property with a fixed GUID
  (``MARKER_PROPERTY_ID``), written with the contact and read back with ``$expand``. Delta cannot expand extended
  properties, so change-feed records carry no marker (``get`` has it).
* A create that got an ambiguous answer (5xx, no answer) is not re-sent blindly. A create with a marker also stamps
  a fresh create key (``CREATE_KEY_PROPERTY_ID``), looks it up and re-sends only when nothing was created. The key,
  not the marker: two workers creating the same person stamp the same marker, and a lookup by marker would hand one
  of them the other's copy. A create without a marker raises ``Transient`` (the engine matches before it creates).
  The key also tells a copy this sync made (``made_here``: no other contact carries it) from a rep's copy of one.
* Item ids are mailbox-wide (§1.8): the folder path finds a contact the rep moved elsewhere. A read of one that is
  not in the sync folder (``parentFolderId``) is None, and every PATCH and DELETE is guarded by a read just before
  it (in the folder, at the ``changeKey`` decided on; If-Match is sent too but is undocumented for contacts, §1.5),
  and before each retry of it (a throttled PATCH or DELETE waits out Retry-After, time for a rep's edit), and the
  PATCH answer's folder is checked again.
* A linked contact missing from the folder may have left *with* it (the rep deleted or moved the sync folder):
  ``left_with_folder`` finds it by id in a folder carrying our stamp (``folders``), which the engine never takes for
  a delete. A full pass re-reads the folder (``_Folders.refresh``), a delta pass only when it is due (every
  ``FOLDER_CHECK_EVERY_S`` per process) or the delta shows a sign: Graph dropped the delta link (410 and the like),
  the folder path answers 404, or the stored link names another folder than the one known. So a no-change delta
  pass is one Graph request. A delta link of a replaced folder starts over.
* ``changes`` returns the ``@odata.deltaLink`` as the checkpoint and starts over with ``full=True`` when Graph
  dropped the token (410, or the code ``syncStateNotFound`` / ``SyncStateInvalid`` / ``resyncRequired`` in any case;
  §3.3), also in the middle of a round, up to ``MAX_DELTA_RESTARTS`` times a call.
Logs carry contact ids, statuses and a digest of the mailbox, never names, emails or UPNs.
Section numbers (§) refer to docs/reference/graph.md.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Coroutine, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import quote

from sync.adapters.graph.batch import _Batches, _Op, item_error
from sync.adapters.graph.folders import FOLDER_CHECK_EVERY_S, _Folders
from sync.adapters.graph.items import check_landed, in_folder, marker_of, modified_at
from sync.adapters.graph.names import DEFAULT_MAX_AGE_S, NameIndex, NameKey
from sync.adapters.graph.permits import SharedPermits
from sync.adapters.graph.transport import (
    _Failure,
    _GraphHttp,
    _map_error,
    _mb,
    _Response,
    odata_query,
    odata_str,
    user_path,
)
from sync.errors import AuthFailed, NotFound, SyncError
from sync.mapping import contact_to_graph, graph_to_contact
from sync.model import STANDARD_FIELDS, Contact, Side, case_safe_id
from sync.policy import FieldMap
from sync.ports import ChangePage, CreateRequest, SideRecord, UpdateRequest
from sync.scope import MailboxList

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

MARKER_PROPERTY_ID = "String {0463b54a-5dcb-4781-9d3f-29b43773c27c} Name SalesforceId"
# A fresh value per create call, so a create whose answer was lost finds *its own* contact, not another worker's
# copy of the same person (which carries the same marker); docs/reference/graph.md §7.4 "stamp a sync key ... look it
# up".
CREATE_KEY_PROPERTY_ID = "String {0463b54a-5dcb-4781-9d3f-29b43773c27c} Name SyncCreateKey"
DEFAULT_BASE_URL = "https://graph.microsoft.com/v1.0"
DEFAULT_FOLDER_NAME = "Salesforce_Sync"
LIST_PAGE_SIZE = 500  # §5: $top <= 999 recommended
MAX_DELTA_RESTARTS = 3  # fresh delta rounds per ``changes`` call after Graph dropped the token (§3.3)
# Contact properties read everywhere (mapping.py's correspondence plus the version and bookkeeping ones).
_SELECT_BASE: tuple[str, ...] = (
    "id", "changeKey", "createdDateTime", "lastModifiedDateTime", "parentFolderId", "displayName", "givenName",
    "surname",
    "emailAddresses", "businessPhones", "homePhones", "mobilePhone", "companyName", "jobTitle", "department",
    "personalNotes", "businessAddress",
)



def _names_folder(delta_link: str, folder: str) -> bool:
    """Whether a stored delta link reads ``folder`` (its id in the path, raw or percent-encoded)."""
    return f"/contactFolders/{folder}/" in delta_link or quote(folder, safe="") in delta_link


def _name_key(doc: Mapping[str, Any]) -> NameKey | None:
    """(first, last, company) case-folded of a Graph contact, None without a last name or a company."""
    last, company = doc.get("surname") or "", doc.get("companyName") or ""
    if not last or not company:
        return None
    return (doc.get("givenName") or "").casefold(), last.casefold(), company.casefold()


class GraphContactSide:
    """``ContactSide`` on Microsoft Graph: one folder (``folder_name``) per mailbox. See the module docstring.

    ``credential``: an azure-identity TokenCredential (sync or async ``get_token``), e.g. from
    ``credential_from_settings``. ``mailboxes``: when given, calls for any other mailbox raise AuthFailed.
    ``max_attempts`` / ``max_wait``: the retry bounds (tries per request or batch item; longest single wait in
    seconds - a longer Retry-After is raised at once as ``Throttled(retry_after)`` for the caller to reschedule).
    ``stats`` counts requests, batches, retries, throttled answers and the time waited. ``permits``: the per-mailbox
    slots shared by every instance (``permits.SharedPermits``); None keeps the limit of 4 per process only.
    ``folder_check_every_s`` and ``clock`` (monotonic seconds): when a delta pass checks the sync folder again.
    """

    side = Side.M365
    carries_markers = True  # a single-value extended property (docs/reference/graph.md §1.1)

    def __init__(
        self,
        credential: Any,
        *,
        base_url: str = DEFAULT_BASE_URL,
        folder_name: str = DEFAULT_FOLDER_NAME,
        mailboxes: Iterable[str] | None = None,
        marker_property_id: str = MARKER_PROPERTY_ID,
        field_map: FieldMap | None = None,
        page_size: int = 100,
        max_attempts: int = 5,
        max_wait: float = 30.0,
        timeout_s: float = 60.0,
        permits: SharedPermits | None = None,
        folder_check_every_s: float = FOLDER_CHECK_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
        name_index_max_age: float = DEFAULT_MAX_AGE_S,
    ) -> None:
        # a MailboxList stays live (sync.scope: the group scope changes while the process runs)
        self._scope: Collection[str] | None = (
            mailboxes if isinstance(mailboxes, MailboxList)
            else {m.casefold() for m in mailboxes} if mailboxes is not None else None)
        self._marker_id = marker_property_id
        self._field_map = field_map or FieldMap()
        self._page_size = page_size
        custom = tuple(self._field_map.graph_custom().values())
        self._select = ",".join(dict.fromkeys(_SELECT_BASE + custom))
        self._fields = STANDARD_FIELDS + tuple(self._field_map.graph_custom())
        self._expand = f"singleValueExtendedProperties($filter=id eq {odata_str(marker_property_id)})"
        self._http = _GraphHttp(
            credential, base_url, max_attempts=max_attempts, max_wait=max_wait, timeout_s=timeout_s, shared=permits
        )
        self._folders = _Folders(self._http, folder_name, self._http.stats, check_every_s=folder_check_every_s,
                                 clock=clock)
        self._batches = _Batches(self._http, self._by_create_key)
        self._names = NameIndex(self._name_rows, max_age=name_index_max_age)

    # --- plumbing -----------------------------------------------------------------------------------------
    @property
    def stats(self) -> Counter[str]:
        return self._http.stats

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> GraphContactSide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, coro: Coroutine[Any, Any, _T], item_id: str | None = None) -> _T:
        try:
            return self._http.run(coro)
        except _Failure as failure:
            raise failure.error(item_id) from None

    def _check_scope(self, mailbox: str) -> None:
        if self._scope is not None and mailbox.casefold() not in self._scope:
            raise AuthFailed("mailbox is not in the configured sync scope", side=Side.M365.value)

    def _contacts_path(self, mailbox: str, folder_id: str) -> str:
        return f"{user_path(mailbox)}/contactFolders/{quote(folder_id, safe='')}/contacts"

    def _contact_path(self, mailbox: str, folder_id: str, item_id: str) -> str:
        return f"{self._contacts_path(mailbox, folder_id)}/{quote(item_id, safe='')}"

    def _read_query(self, **extra: str) -> str:
        return odata_query(**extra, select=self._select, expand=self._expand)

    def _record(self, mailbox: str, doc: Mapping[str, Any], marker: str | None = None) -> SideRecord:
        version = doc.get("changeKey")
        if not version:
            etag = str(doc.get("@odata.etag") or "")
            version = etag[3:-1] if etag.startswith('W/"') else etag or None
        marker = marker_of(doc, self._marker_id, marker)
        return SideRecord(
            side=Side.M365, id=str(doc["id"]), contact=graph_to_contact(doc, self._field_map), version=version,
            owner=mailbox, modified_at=modified_at(doc), created_at=modified_at(doc, "createdDateTime"),
            marker=case_safe_id(marker) if marker else marker,
        )

    # --- folder and user --------------------------------------------------------------------------------------
    def folder_id(self, mailbox: str) -> str:
        """The sync folder's id in ``mailbox`` (created when missing)."""
        self._check_scope(mailbox)
        return self._run(self._folders.find_or_create(mailbox))

    # --- reads --------------------------------------------------------------------------------------------------
    def get(self, mailbox: str, item_id: str) -> SideRecord | None:
        self._check_scope(mailbox)
        return self._run(self._get(mailbox, item_id), item_id)

    async def _get_doc(self, mailbox: str, item_id: str) -> dict[str, Any] | None:
        folder = await self._folders.find_or_create(mailbox)
        try:
            resp = await self._http.call(
                "GET", self._contact_path(mailbox, folder, item_id) + self._read_query(), mailbox=mailbox
            )
        except _Failure as failure:
            if isinstance(failure.error(), NotFound):
                return None  # deleted or never existed
            raise
        doc: dict[str, Any] = resp.body
        if not in_folder(doc, folder):
            # ids are mailbox-wide (§1.8): a contact moved to another folder still answers here; it left the folder
            self.stats["guard: not in the folder"] += 1
            logger.info("contact %s left the sync folder of mailbox %s", item_id, _mb(mailbox))
            return None
        return doc

    def left_with_folder(self, mailbox: str, item_id: str) -> bool:
        """Whether a contact the sync folder does not hold is in a folder carrying our stamp: it left with the sync
        folder the user deleted (Deleted Items, §2.3) or moved, and was not deleted (module docstring)."""
        self._check_scope(mailbox)
        return self._run(self._folders.left_with_folder(mailbox, item_id), item_id)

    def made_here(self, mailbox: str, item_id: str) -> bool:
        """Whether this sync created the contact and nobody copied it since: it carries a create key (every create
        with a marker stamps a fresh one) that no other contact of the folder carries (a rep's copy of a contact
        keeps its extended properties). A read of the key and a filtered listing (§1.7); asked only of an unlinked
        second copy of a synced contact (docs/sync-rules.md row 41)."""
        self._check_scope(mailbox)
        return self._run(self._made_here(mailbox, item_id), item_id)

    async def _made_here(self, mailbox: str, item_id: str) -> bool:
        folder = await self._folders.find_or_create(mailbox)
        expand = f"singleValueExtendedProperties($filter=id eq {odata_str(CREATE_KEY_PROPERTY_ID)})"
        try:
            resp = await self._http.call(
                "GET", self._contact_path(mailbox, folder, item_id) + odata_query(select="id", expand=expand),
                mailbox=mailbox,
            )
        except _Failure as failure:
            if isinstance(failure.error(), NotFound):
                return False
            raise
        key = marker_of(resp.body or {}, CREATE_KEY_PROPERTY_ID, None)
        if not key or not in_folder(resp.body, folder):
            return False
        flt = (f"singleValueExtendedProperties/any(ep: ep/id eq {odata_str(CREATE_KEY_PROPERTY_ID)} "
               f"and ep/value eq {odata_str(str(key))})")
        rows, _ = await self._list(mailbox, self._contacts_path(mailbox, folder) + odata_query(
            filter=flt, select="id", top="2"))
        return [str(row.get("id")) for row in rows] == [item_id]

    async def _get(self, mailbox: str, item_id: str) -> SideRecord | None:
        doc = await self._get_doc(mailbox, item_id)
        return self._record(mailbox, doc) if doc is not None else None

    async def _list(self, mailbox: str, url: str) -> tuple[list[dict[str, Any]], str | None]:
        resp = await self._http.call("GET", url, mailbox=mailbox)
        body = resp.body or {}
        return list(body.get("value") or []), body.get("@odata.nextLink")

    async def _first_list_url(self, mailbox: str, **params: str) -> str:
        folder = await self._folders.find_or_create(mailbox)
        return self._contacts_path(mailbox, folder) + odata_query(**params)

    def _pages(self, mailbox: str, first: Coroutine[Any, Any, str]) -> Iterator[list[dict[str, Any]]]:
        url: str | None = self._run(first)
        while url:
            rows, url = self._run(self._list(mailbox, url))
            yield rows

    def find(self, mailbox: str, contact: Contact) -> list[SideRecord]:
        # One $filter per email address (the only documented contact filter, §1.9); first + last name + company have
        # none: a listing of those three properties, read once per ``NameIndex`` life beside the live email filter
        # (``names`` module docstring), and for every find of a contact without an address.
        self._check_scope(mailbox)
        found: dict[str, SideRecord] = {}
        for address in contact.emails:
            flt = f"emailAddresses/any(a:a/address eq {odata_str(address)})"
            first = self._first_list_url(mailbox, filter=flt, select=self._select, expand=self._expand)
            for rows in self._pages(mailbox, first):
                for doc in rows:
                    found.setdefault(str(doc["id"]), self._record(mailbox, doc))
        key = contact.name_company_key()
        if key is None:
            return list(found.values())
        if contact.emails:
            ids = self._names.ids(mailbox, key)
        else:
            ids = [item_id for item_id, theirs in self._name_rows(mailbox) if theirs == key]
        for item_id in ids:
            if item_id not in found:
                record = self.get(mailbox, item_id)
                if record is not None and record.contact.name_company_key() == key:
                    found[record.id] = record
        return list(found.values())

    def _name_rows(self, mailbox: str) -> Iterator[tuple[str, NameKey | None]]:
        """Every contact of the folder as (id, (first, last, company) case-folded), or (id, None) without a last name
        or a company, as ``Contact.name_company_key`` makes them."""
        first = self._first_list_url(mailbox, select="id,givenName,surname,companyName", top=str(LIST_PAGE_SIZE))
        for rows in self._pages(mailbox, first):
            for doc in rows:
                yield str(doc["id"]), _name_key(doc)

    def stream(self, mailbox: str) -> Iterator[SideRecord]:
        self._check_scope(mailbox)
        self._run(self._folders.refresh(mailbox))  # a folder the user deleted: a new one (module docstring)
        first = self._first_list_url(mailbox, select=self._select, expand=self._expand, top=str(LIST_PAGE_SIZE))
        for rows in self._pages(mailbox, first):
            for doc in rows:
                yield self._record(mailbox, doc)

    async def _by_marker(self, mailbox: str, marker: str) -> dict[str, Any] | None:
        # Graph compares the value case-insensitively (§1.7): only the 18-character id tells two Salesforce ids apart
        return await self._by_property(mailbox, self._marker_id, case_safe_id(marker))

    async def _by_property(self, mailbox: str, property_id: str, value: str) -> dict[str, Any] | None:
        """The first contact of the folder whose extended property ``property_id`` holds ``value``."""
        flt = (
            f"singleValueExtendedProperties/any(ep: ep/id eq {odata_str(property_id)} "
            f"and ep/value eq {odata_str(value)})"
        )
        url = await self._first_list_url(mailbox, filter=flt, select=self._select, expand=self._expand)
        rows, _ = await self._list(mailbox, url)
        return rows[0] if rows else None

    async def _by_create_key(self, mailbox: str, key: str) -> dict[str, Any] | None:
        return await self._by_property(mailbox, CREATE_KEY_PROPERTY_ID, key)

    def find_by_marker(self, mailbox: str, marker: str) -> SideRecord | None:
        """The contact stamped with ``marker`` (a Salesforce id) in the sync folder, if any."""
        self._check_scope(mailbox)
        doc = self._run(self._by_marker(mailbox, marker))
        return self._record(mailbox, doc) if doc is not None else None

    # --- writes -------------------------------------------------------------------------------------------------
    def _create_body(self, contact: Contact, marker: str | None, key: str | None = None) -> dict[str, Any]:
        body, truncations = contact_to_graph(contact, self._fields, None, self._field_map)
        if truncations:
            logger.info("create: %d value(s) did not fit Outlook and were cut", len(truncations))
        body = {k: v for k, v in body.items() if v is not None}
        if marker is not None:
            body["singleValueExtendedProperties"] = [{"id": self._marker_id, "value": case_safe_id(marker)}]
            if key is not None:
                body["singleValueExtendedProperties"].append({"id": CREATE_KEY_PROPERTY_ID, "value": key})
        return body

    def _patch_body(
        self, contact: Contact, fields: frozenset[str], current: Mapping[str, Any], marker: str | None
    ) -> dict[str, Any]:
        body, truncations = contact_to_graph(contact, fields, current, self._field_map)
        if truncations:
            logger.info("update: %d value(s) did not fit Outlook and were cut", len(truncations))
        if marker is not None:
            body["singleValueExtendedProperties"] = [{"id": self._marker_id, "value": case_safe_id(marker)}]
        return body

    def _guard(self, current: dict[str, Any] | None, if_match: str | None) -> dict[str, Any]:
        """The read before a write: gone or out of the folder → 404, another ``changeKey`` → 412 (counted)."""
        if current is None:
            raise _Failure(404, "ErrorItemNotFound")
        if if_match and current.get("changeKey") != if_match:
            self.stats["guard: changed since read"] += 1
            raise _Failure(412, "ErrorIrresolvableConflict")
        return current

    @staticmethod
    def _if_match(version: str | None) -> dict[str, str]:
        return {"If-Match": f'W/"{version}"'} if version else {}

    def create(self, mailbox: str, contact: Contact, *, marker: str | None = None) -> SideRecord:
        """Create in the sync folder. Ambiguous failures are resolved through the create key (module docstring)."""
        self._check_scope(mailbox)
        return self._run(self._create(mailbox, contact, marker))

    async def _create(self, mailbox: str, contact: Contact, marker: str | None) -> SideRecord:
        folder = await self._folders.find_or_create(mailbox)
        key = uuid.uuid4().hex
        body = self._create_body(contact, marker, key)
        attempt = 0
        while True:
            attempt += 1
            try:
                resp = await self._http.call(
                    "POST", self._contacts_path(mailbox, folder), body=body, mailbox=mailbox, only_throttled=True
                )
                self._names.note(mailbox, str(resp.body["id"]), _name_key(resp.body))
                return self._record(mailbox, resp.body, marker)
            except _Failure as failure:
                if not failure.ambiguous or marker is None:
                    raise  # not executed (typed as usual), or no marker: the engine's match-before-create protects
                wait = self._http.wait_for(failure, attempt)
                found = await self._by_create_key(mailbox, key)
                if found is not None:
                    logger.info("create answered %s but had happened: contact %s", failure.status, found.get("id"))
                    self._names.note(mailbox, str(found["id"]), _name_key(found))
                    return self._record(mailbox, found, marker)
                if wait is None:
                    raise
                await self._http.pause(wait, failure)

    def update(
        self,
        mailbox: str,
        item_id: str,
        contact: Contact,
        *,
        fields: frozenset[str],
        if_match: str | None,
        marker: str | None = None,
    ) -> SideRecord:
        self._check_scope(mailbox)
        return self._run(self._update(mailbox, item_id, contact, fields, if_match, marker), item_id)

    async def _update(
        self,
        mailbox: str,
        item_id: str,
        contact: Contact,
        fields: frozenset[str],
        if_match: str | None,
        marker: str | None,
    ) -> SideRecord:
        folder = await self._folders.find_or_create(mailbox)
        current = self._guard(await self._get_doc(mailbox, item_id), if_match)  # in the folder, at our version
        if not fields and marker is None:
            return self._record(mailbox, current)
        body = self._patch_body(contact, fields, current, marker)
        path = self._contact_path(mailbox, folder, item_id)
        attempt = 0
        while True:
            attempt += 1
            try:
                resp = await self._http.send("PATCH", path, body=body, headers=self._if_match(if_match),
                                             mailbox=mailbox)
                if resp.status < 400:
                    answer: dict[str, Any] = resp.body
                    break
                failure = self._http.failure(resp.status, resp.headers, resp.body)
            except _Failure as lost:
                failure = lost
            wait = self._http.wait_for(failure, attempt) if failure.retryable else None
            if wait is None:
                raise failure
            logger.info("graph PATCH answered %s, retry %d in %.1fs", failure.status, attempt, wait)
            await self._http.pause(wait, failure)
            landed = await self._guard_retry(mailbox, item_id, current, body if failure.ambiguous else None)
            if landed is not None:
                answer = landed
                break
        check_landed(mailbox, folder, answer)
        if marker is None:  # the resource read knows the marker (a PATCH answer carries none)
            marker = self._record(mailbox, current).marker
        return self._record(mailbox, answer, marker)

    def _retry_guard(self, mailbox: str, item_id: str,
                     current: Mapping[str, Any]) -> Callable[[_Op], Awaitable[_Response | _Failure | None]]:
        """``_guard_retry`` for a PATCH of a ``$batch`` (``_Op.before_retry``)."""
        async def check(op: _Op) -> _Response | _Failure | None:
            landed = await self._guard_retry(mailbox, item_id, dict(current), op.body)
            return _Response(200, {}, landed) if landed is not None else None
        return check

    async def _guard_retry(self, mailbox: str, item_id: str, current: dict[str, Any],
                           body: dict[str, Any] | None) -> dict[str, Any] | None:
        """The guard read again before a retried PATCH or DELETE: If-Match may be ignored on contacts (§1.5), and a
        rep's edit during the pause (a throttled write waits out Retry-After) must not be written over or deleted.
        Returns the contact when an earlier attempt of this PATCH ran although its answer was lost (``body``: the
        PATCH, given after an ambiguous failure; it then holds every value sent); raises 412 when it changed
        otherwise, 404 when it is gone or left the folder."""
        again = await self._get_doc(mailbox, item_id)
        if again is not None and again.get("changeKey") != current.get("changeKey") and body is not None and all(
                again.get(k) == v for k, v in body.items() if k != "singleValueExtendedProperties"):
            return again
        self._guard(again, str(current.get("changeKey") or "") or None)
        return None

    def delete(self, mailbox: str, item_id: str, *, if_match: str | None) -> None:
        self._check_scope(mailbox)
        self._run(self._delete(mailbox, item_id, if_match), item_id)

    async def _delete(self, mailbox: str, item_id: str, if_match: str | None) -> None:
        folder = await self._folders.find_or_create(mailbox)
        current = self._guard(await self._get_doc(mailbox, item_id), if_match)  # never a contact outside the folder
        path = self._contact_path(mailbox, folder, item_id)
        attempt = 0
        while True:
            attempt += 1
            try:
                resp = await self._http.send("DELETE", path, headers=self._if_match(if_match), mailbox=mailbox)
                if resp.status < 400:
                    return
                failure = self._http.failure(resp.status, resp.headers, resp.body)
            except _Failure as lost:
                failure = lost
            if attempt > 1 and failure.status == 404:
                return  # an earlier attempt of this delete went through
            wait = self._http.wait_for(failure, attempt) if failure.retryable else None
            if wait is None:
                raise failure
            await self._http.pause(wait, failure)
            try:
                await self._guard_retry(mailbox, item_id, current, None)
            except _Failure as changed:
                if changed.status == 404:
                    return  # an earlier attempt went through (or it is gone otherwise): the goal is reached
                raise

    # --- bulk ---------------------------------------------------------------------------------------------------
    def create_many(self, mailbox: str, items: Sequence[CreateRequest]) -> list[SideRecord | SyncError]:
        self._check_scope(mailbox)
        return self._run(self._create_many(mailbox, items))

    async def _create_many(self, mailbox: str, items: Sequence[CreateRequest]) -> list[SideRecord | SyncError]:
        folder = await self._folders.find_or_create(mailbox)
        url = self._contacts_path(mailbox, folder)
        keys = [uuid.uuid4().hex if i.marker is not None else None for i in items]
        ops = [
            _Op("POST", url, self._create_body(i.contact, i.marker, key), marker=i.marker, create=True, key=key)
            for i, key in zip(items, keys, strict=True)
        ]
        await self._batches.run(mailbox, ops)
        out: list[SideRecord | SyncError] = []
        for op in ops:
            if isinstance(op.result, _Response):
                self._names.note(mailbox, str(op.result.body["id"]), _name_key(op.result.body))
                out.append(self._record(mailbox, op.result.body, op.marker))
            else:
                out.append(item_error(op.result, None))
        logger.info("create_many in mailbox %s: %d items, %d failed", _mb(mailbox), len(ops),
                    sum(isinstance(r, SyncError) for r in out))
        return out

    def update_many(self, mailbox: str, items: Sequence[UpdateRequest]) -> list[SideRecord | SyncError]:
        self._check_scope(mailbox)
        return self._run(self._update_many(mailbox, items))

    async def _update_many(self, mailbox: str, items: Sequence[UpdateRequest]) -> list[SideRecord | SyncError]:
        folder = await self._folders.find_or_create(mailbox)
        out: list[SideRecord | SyncError | None] = [None] * len(items)
        # Phase 1: the write guard (in the folder, at our version; the PATCH body of collections and the address
        # depends on the current resource too).
        reads = {
            n: _Op("GET", self._contact_path(mailbox, folder, i.item_id) + self._read_query())
            for n, i in enumerate(items)
        }
        await self._batches.run(mailbox, list(reads.values()))
        currents: dict[int, Mapping[str, Any]] = {}
        for n, item in enumerate(items):
            op = reads[n]
            if not isinstance(op.result, _Response):
                out[n] = item_error(op.result, item.item_id)
            elif not in_folder(op.result.body, folder):
                self.stats["guard: not in the folder"] += 1
                out[n] = _map_error(404, "ErrorItemNotFound", item_id=item.item_id)
            elif item.if_match and op.result.body.get("changeKey") != item.if_match:
                self.stats["guard: changed since read"] += 1
                out[n] = _map_error(412, "ErrorIrresolvableConflict", item_id=item.item_id)
            elif not item.fields and item.marker is None:
                out[n] = self._record(mailbox, op.result.body)
            else:
                currents[n] = op.result.body
        # Phase 2: the PATCHes.
        patches = {
            n: _Op(
                "PATCH", self._contact_path(mailbox, folder, items[n].item_id),
                self._patch_body(items[n].contact, items[n].fields, current, items[n].marker),
                headers=self._if_match(items[n].if_match),
                before_retry=self._retry_guard(mailbox, items[n].item_id, current),
            )
            for n, current in currents.items()
        }
        await self._batches.run(mailbox, list(patches.values()))
        for n, op in patches.items():
            item = items[n]
            if isinstance(op.result, _Response) and not in_folder(op.result.body, folder):
                check_landed(mailbox, folder, op.result.body, raise_=False)
                out[n] = _map_error(404, "ErrorItemNotFound", item_id=item.item_id)
            elif isinstance(op.result, _Response):
                known = item.marker if item.marker is not None else self._record(mailbox, currents[n]).marker
                out[n] = self._record(mailbox, op.result.body, known)
            else:
                out[n] = item_error(op.result, item.item_id)
        return [r if r is not None else _map_error(None, item_id=items[n].item_id) for n, r in enumerate(out)]

    # --- change feed --------------------------------------------------------------------------------------------
    def changes(self, mailbox: str, checkpoint: str | None) -> Iterator[ChangePage]:
        """Graph delta on the sync folder; the checkpoint is the deltaLink (module docstring)."""
        self._check_scope(mailbox)
        if self._folders.due(mailbox):
            self._run(self._folders.refresh(mailbox))
        folder = self._run(self._folders.find_or_create(mailbox))
        if checkpoint and not _names_folder(checkpoint, folder):
            # a sign: another worker may have replaced a deleted folder since this one last checked it
            self._run(self._folders.refresh(mailbox))
            folder = self._run(self._folders.find_or_create(mailbox))
        if checkpoint and not _names_folder(checkpoint, folder):
            logger.info("delta token of mailbox %s is for a former sync folder: full resync", _mb(mailbox))
            checkpoint = None  # the folder was replaced: its delta link reads the old one
        full = checkpoint is None
        url = checkpoint or self._run(self._delta_start(mailbox))
        prefer = {"Prefer": f"odata.maxpagesize={self._page_size}"}  # re-sent on every page
        restarts = 0
        while True:  # nextLinks are followed here: the SDK's PageIterator stops on an empty page (§7.5)
            try:
                resp = self._http.run(self._http.call("GET", url, headers=prefer, mailbox=mailbox))
            except _Failure as failure:
                gone = isinstance(failure.error(), NotFound)  # the folder path itself: deleted for good (§2.3)
                if (failure.resync or gone) and restarts < MAX_DELTA_RESTARTS:
                    # §3.3: the token is gone (also a skip token in the middle of a full round): drop it, start a
                    # fresh round; the pages say ``full`` so the caller runs a full pass of the mailbox. A dropped
                    # token or a 404 may mean the user deleted the folder (the emulator drops its tokens then):
                    # the folder is checked again first
                    restarts += 1
                    logger.info("delta token of mailbox %s dropped by Graph (%s %s): full resync", _mb(mailbox),
                                failure.status, failure.code)
                    full = True
                    self._run(self._folders.refresh(mailbox))
                    url = self._run(self._delta_start(mailbox))
                    continue
                raise failure.error() from None
            body = resp.body or {}
            records: list[SideRecord] = []
            removed: list[str] = []
            for doc in body.get("value") or []:
                if "@removed" in doc:
                    removed.append(str(doc["id"]))
                else:
                    records.append(self._record(mailbox, doc))
            next_link = body.get("@odata.nextLink")
            if next_link:
                if records or removed:
                    yield ChangePage(records=tuple(records), removed=tuple(removed), full=full)
                url = next_link
                continue
            delta_link = body.get("@odata.deltaLink")
            if not delta_link:
                raise _map_error(502, "NoDeltaLink")
            yield ChangePage(records=tuple(records), removed=tuple(removed), checkpoint=delta_link, full=full)
            return

    async def _delta_start(self, mailbox: str) -> str:
        folder = await self._folders.find_or_create(mailbox)
        delta_select = ",".join(p for p in self._select.split(",") if p != "parentFolderId")
        return self._contacts_path(mailbox, folder) + "/delta" + odata_query(select=delta_select)

