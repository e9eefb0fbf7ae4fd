"""The Salesforce org as a ``ContactSide`` (``sync.ports``): Contact records read and written over REST.

- Version = ``SystemModstamp`` + a digest of the row we read (``row_version``): Contact has no ETag and the stamp
  keeps whole seconds (docs/reference/salesforce.md §1.1, §2.7), so an edit in the same second as our read keeps the
  stamp but changes the digest. An update/delete with ``if_match`` re-reads and compares it just before the write and
  before each retry (``PreconditionFailed`` on a mismatch); a single-record update also sends ``If-Unmodified-Since``
  (the LastModifiedDate of that check), so an edit in a later second between the check and the PATCH is refused by
  Salesforce (412). What remains: an edit in the same second between that check and our PATCH (milliseconds) is
  overwritten, and collection PATCHes have no such header; the next CDC event or reconcile repairs what it can.
- Salesforce answers a write with the id only: every write is followed by a re-read (``_as_left``).
- Owner: a record belongs to the mailbox whose User owns it (``directory``); anyone else's has ``owner=None``.
- Company: ``Account.Name`` is read with every record; on write the name is resolved to an Account (``directory``)
  and never silently dropped: an unresolved company fails the item with ``BadData`` and its id is appended to
  ``unresolved_accounts``. ``company=None`` clears AccountId.
- ``untouched``: created by the integration user and last modified by it or by Automated Process (flows).
- Marker: the Outlook id in ``marker_field`` (e.g. ``Outlook_Id__c``) when configured, ignored otherwise.
- ``soql_filter`` (``SF_SOQL_FILTER``): an extra condition on Contact, checked locally when the side is made
  (``soql.check_filter``) and by Salesforce before the first read (``SELECT Id FROM Contact WHERE (<filter>)
  LIMIT 1``; a refusal is a ``ConfigError`` naming the setting, and no read runs until it is fixed). The owner's
  listings (``stream``, a full ``changes``) carry it; a record read by id or found by a search is asked again with
  ``Id IN (...) AND (<filter>)``, and one outside it has ``owner=None`` and ``out_of_filter=True``: it leaves scope
  like a contact of a user we do not sync (docs/sync-rules.md, row 43).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from email.utils import format_datetime
from typing import Any

from sync.adapters.salesforce.addresses import address_codes
from sync.adapters.salesforce.auth import TokenProvider
from sync.adapters.salesforce.changes import ChangeFeed, row_version
from sync.adapters.salesforce.directory import Directory, domain_hints
from sync.adapters.salesforce.duplicates import ALLOW_SAVE, alert_note, alerted, alerts, noted
from sync.adapters.salesforce.errors import SIDE, DuplicateFound, collection_error
from sync.adapters.salesforce.rest import API_VERSION, MAX_COLLECTION, RestClient, chunks
from sync.adapters.salesforce.schema import ContactSchema
from sync.adapters.salesforce.soql import FILTER_SETTING, check_filter, parse_dt, soql_quote
from sync.config import ConfigError
from sync.errors import AlreadyExists, BadData, NotFound, PreconditionFailed, SyncError, Transient
from sync.mapping import contact_to_salesforce, salesforce_to_contact
from sync.model import Contact, Side
from sync.policy import DEFAULT_SALESFORCE_LENGTHS, FieldMap
from sync.ports import ChangePage, CreateRequest, SideRecord, UpdateRequest

logger = logging.getLogger(__name__)

_FILTER_FIXES = {  # what to do about Salesforce's refusal of SF_SOQL_FILTER, by errorCode
    "INVALID_FIELD": "a field or relationship in it does not exist on Contact, or the integration user cannot read it "
                     "(field-level security); use API names, e.g. RecordType.Name, Account.Type, Region__c",
    "MALFORMED_QUERY": "it is not a valid SOQL condition (mixing AND and OR needs parentheses; strings take single "
                       "quotes)",
    "INVALID_QUERY_FILTER_OPERATOR": "an operator does not suit its field (LIKE on a non-text field, a quoted "
                                     "value for a number or date, an invalid id)",
}
FILTER_NOTE = ("created in Salesforce outside SF_SOQL_FILTER: it leaves this mailbox's sync folder when it is next "
               "read; choose a filter that contacts created from Outlook meet")
DESCRIBE_RETRY_S = 60.0  # after a failed Contact describe, the next try waits this long (each try has its own retries)
MAX_IDS_PER_SOQL = 200  # ids in one ``WHERE Id IN (...)`` (keeps the GET URL short)
_ID = re.compile(r"^[a-zA-Z0-9]{15}(?:[a-zA-Z0-9]{3})?$")


def written_since(row: Mapping[str, Any], version: str) -> bool:
    """Whether someone wrote the record after we read it at ``version`` (``row_version``: its SystemModstamp and a
    digest of the values we read, so an edit in the same second still counts). A moved SystemModstamp with every
    value we read unchanged is automation that changed no field (roll-ups, sharing, bounce processing): not a write,
    so it fails no guard and is never reported as a conflict."""
    if row_version(row) == version:
        return False
    stamp = version.partition("#")[0]
    return row_version({**row, "SystemModstamp": stamp}) != version


class _NothingToRetry(SyncError):
    """Internal: a retried collection chunk has no record left to send (each one changed or vanished)."""


class _AlreadyMade(SyncError):
    """Internal: the contact a create makes turned out to exist (another worker's create, or our lost answer's)."""


class SalesforceContactSide:
    """The Salesforce org as a ``ContactSide`` (see the module docstring for every choice).

    ``mailboxes``: the synced mailboxes (or a callable returning them). ``calls`` counts REST calls by kind
    (``query``, ``query_more``, ``composite``, ``write``, ``describe``); ``retries`` counts backoffs.
    """

    side = Side.SALESFORCE

    def __init__(
        self,
        tokens: TokenProvider,
        *,
        mailboxes: Sequence[str] | Callable[[], Sequence[str]],
        session: Any = None,
        verify: bool | str = True,
        client_name: str = "m365-sync",
        api_version: str = API_VERSION,
        field_map: FieldMap | None = None,
        marker_field: str | None = None,
        soql_filter: str | None = None,
        allow_duplicates: bool = True,
        create_missing_accounts: bool = True,
        lengths: Mapping[str, int] | None = None,
        use_describe_lengths: bool = True,
        max_retries: int = 4,
        backoff_s: float = 0.5,
        backoff_cap_s: float = 8.0,
        sleep: Callable[[float], None] = time.sleep,
        user_cache_ttl_s: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rest = RestClient(tokens, session=session, verify=verify, client_name=client_name,
                                api_version=api_version, max_retries=max_retries,
                                backoff_s=backoff_s, backoff_cap_s=backoff_cap_s, sleep=sleep)
        self._directory = Directory(self._rest, mailboxes, create_missing_accounts=create_missing_accounts,
                                    user_cache_ttl_s=user_cache_ttl_s, clock=clock)
        self.client_name = client_name
        self._allow_duplicates = allow_duplicates
        self._field_map = field_map or FieldMap()
        self._marker_field = marker_field
        self.carries_markers = bool(marker_field)  # the Outlook id needs a Contact text field (SF_OUTLOOK_ID_FIELD)
        self._lengths: Mapping[str, int] = dict(lengths or DEFAULT_SALESFORCE_LENGTHS)
        self._use_describe_lengths = use_describe_lengths and lengths is None
        self._describe_pending = self._use_describe_lengths or bool(marker_field)
        self._describe_not_before = 0.0
        self._schema = ContactSchema()
        self._filter_problem: str | None = None
        try:
            self._filter = check_filter(soql_filter)
        except ConfigError as exc:  # reported by every read and by ``check`` (the status page), not at import
            self._filter, self._filter_problem = None, str(exc).rpartition("- ")[2]
        self._filter_checked = self._filter is None
        self.unresolved_accounts: list[str | None] = []  # item ids (None: not created yet) whose company failed
        fields = ["Id", "OwnerId", "SystemModstamp", "LastModifiedDate", "CreatedById", "LastModifiedById", "IsDeleted",
                  "AccountId", "LastModifiedBy.UserType",
                  *self._field_map.salesforce_fields().values()]
        if marker_field:
            fields.append(marker_field)
        self._select = ", ".join(dict.fromkeys(fields))
        self._feed = ChangeFeed(self._rest, self._select, self._record, soql_filter=self._filter,
                                in_filter=self._in_filter)

    @property
    def calls(self) -> dict[str, int]:
        return self._rest.calls

    @property
    def retries(self) -> int:
        return self._rest.retries

    @property
    def created_accounts(self) -> list[str]:
        return self._directory.created_accounts

    def refresh_users(self) -> None:
        """Re-read the Users of the synced mailboxes (see ``Directory.refresh_users``)."""
        self._directory.refresh_users()

    def _schema_now(self) -> ContactSchema:
        """Contact's describe, read once (again after a failed read when the marker field still needs checking).
        Raises ``ConfigError`` when the marker field cannot be used (``ContactSchema``): every read selects it."""
        if self._describe_pending and time.monotonic() >= self._describe_not_before:
            try:
                desc = self._rest.call("describe", lambda sf: sf.Contact.describe())
                self._describe_pending = False
                self._schema = ContactSchema.of(desc, self._marker_field)
                if self._use_describe_lengths:
                    self._lengths = {**self._lengths, **self._schema.lengths}
                if self._schema.marker_problem:
                    logger.error("salesforce marker field unusable: %s", self._schema.marker_problem)
            except SyncError as exc:  # tried again after a pause, not by every read of every write meanwhile
                self._describe_pending = bool(self._marker_field)
                self._describe_not_before = time.monotonic() + DESCRIBE_RETRY_S
                logger.warning("Contact describe failed (%s); using the default field lengths", type(exc).__name__)
        self._schema.raise_for_marker()
        self._check_filter()
        return self._schema

    def _check_filter(self) -> None:
        """``SF_SOQL_FILTER`` asked of Salesforce once (``LIMIT 1``, docs/reference/salesforce.md §2.10): a query it
        refuses (``MALFORMED_QUERY``, ``INVALID_FIELD``, ...) is a ``ConfigError`` naming the setting; every read
        raises it until the app restarts with a fixed filter. Any other failure is raised as it is (the read would
        fail the same way) and the check runs again next time."""
        if not self._filter_checked and self._filter is not None:
            try:
                self._rest.query(f"SELECT Id FROM Contact WHERE ({self._filter}) LIMIT 1")
            except BadData as exc:
                code = exc.code or "refused"
                self._filter_problem = (
                    f"{FILTER_SETTING}: Salesforce refused it as a Contact condition ({code}): "
                    + _FILTER_FIXES.get(code, "check it in the Developer Console as "
                                              "SELECT Id FROM Contact WHERE <filter>"))
                logger.error("salesforce contact filter unusable: %s", self._filter_problem)
            self._filter_checked = True
        if self._filter_problem:
            raise ConfigError(f"invalid app settings:\n  - {self._filter_problem}")

    def check(self) -> str | None:
        """What stops this side from working, for the status page (None: nothing known)."""
        try:
            self._schema_now()
        except ConfigError as exc:
            return str(exc).rpartition("- ")[2]
        except SyncError:
            return self._filter_problem  # Salesforce unreachable: the sign-in check reports that
        return None

    def _lengths_now(self) -> Mapping[str, int]:
        self._schema_now()
        return self._lengths

    # --- reading ----------------------------------------------------------------------------------------------
    def _record(self, row: Mapping[str, Any], in_filter: bool = True) -> SideRecord:
        """A row as a ``SideRecord``; ``in_filter=False``: it does not match ``SF_SOQL_FILTER``, so it belongs to no
        mailbox (``owner=None``, ``out_of_filter`` when its owner is a synced rep)."""
        marker = row.get(self._marker_field) if self._marker_field else None
        owner = self._directory.mailbox_of(row.get("OwnerId"))
        return SideRecord(
            side=Side.SALESFORCE, id=str(row["Id"]), contact=salesforce_to_contact(row, self._field_map),
            version=row_version(row), owner=owner if in_filter else None,
            out_of_filter=not in_filter and owner is not None,
            modified_at=parse_dt(row.get("LastModifiedDate")), marker=str(marker) if marker else None,
            untouched=self._is_us(row.get("CreatedById")) is True and self._by_us_or_automation(row),
        )

    def _by_us_or_automation(self, row: Mapping[str, Any]) -> bool:
        """Last written by us, or by the Automated Process user (a scheduled or event-triggered flow): automation
        holds no one's work, and what it derived it derives again on the copy that stays. A ``SystemModstamp``-only
        bump (roll-ups, sharing) leaves ``LastModifiedById`` alone, so it never counts as a write."""
        by = row.get("LastModifiedBy")
        return self._is_us(row.get("LastModifiedById")) is True or (
            isinstance(by, Mapping) and by.get("UserType") == "AutomatedProcess")

    def _is_us(self, user_id: object) -> bool | None:
        """Whether a CreatedById / LastModifiedById is the integration user (15- or 18-character ids compared on
        their first 15 characters, docs/reference/salesforce.md §1.1); None when it or our own user id is unknown."""
        token = self._rest.token
        me = token.user_id if token is not None else ""
        by = str(user_id or "")
        return by[:15] == me[:15] if me and by else None

    def _rows_by_id(self, ids: Sequence[str], where: str | None = None) -> dict[str, dict[str, Any]]:
        """Rows by id (18- and 15-character keys); ``where``: only those that also meet this condition."""
        self._schema_now()
        out: dict[str, dict[str, Any]] = {}
        valid = [i for i in ids if _ID.match(i)]
        extra = f" AND ({where})" if where else ""
        for chunk in chunks(valid, MAX_IDS_PER_SOQL):
            lits = ", ".join(soql_quote(i) for i in chunk)
            for row in self._rest.query(f"SELECT {self._select} FROM Contact WHERE Id IN ({lits}){extra}"):
                out[str(row["Id"])] = row
                out[str(row["Id"])[:15]] = row
        return out

    def _in_filter(self, ids: Iterable[str]) -> set[str]:
        """The ids (first 15 characters) among ``ids`` that meet ``SF_SOQL_FILTER``; all of them without one. One
        ``SELECT Id ... WHERE Id IN (...) AND (<filter>)`` per 200 ids: only Salesforce evaluates the filter (it may
        name fields we do not read, or a parent's, such as Account.Type)."""
        wanted = sorted({i for i in ids if _ID.match(i)})
        if self._filter is None:
            return {i[:15] for i in wanted}
        self._schema_now()
        out: set[str] = set()
        for chunk in chunks(wanted, MAX_IDS_PER_SOQL):
            lits = ", ".join(soql_quote(i) for i in chunk)
            out.update(str(r["Id"])[:15] for r in self._rest.query(
                f"SELECT Id FROM Contact WHERE Id IN ({lits}) AND ({self._filter})"))
        return out

    def _scoped(self, rows: Iterable[Mapping[str, Any]]) -> list[SideRecord]:
        """Rows as records, those of synced reps outside ``SF_SOQL_FILTER`` without their owner (``_record``)."""
        rows = list(rows)
        ours = self._in_filter(str(r["Id"]) for r in rows if self._directory.mailbox_of(r.get("OwnerId")))
        return [self._record(r, self._filter is None or str(r["Id"])[:15] in ours
                             or not self._directory.mailbox_of(r.get("OwnerId"))) for r in rows]

    def get(self, mailbox: str, item_id: str) -> SideRecord | None:
        """The record, read with ``SF_SOQL_FILTER`` first: a record that meets it costs one query; one that does not
        (or is gone) is read again without it and comes back without its owner (``out_of_filter``)."""
        if self._filter is not None:
            row = self._rows_by_id([item_id], where=self._filter).get(item_id)
            if row is not None:
                return self._record(row)
            row = self._rows_by_id([item_id]).get(item_id)
            return self._record(row, in_filter=False) if row is not None else None
        row = self._rows_by_id([item_id]).get(item_id)
        return self._record(row) if row is not None else None

    def find(self, mailbox: str, contact: Contact) -> list[SideRecord]:
        """Same email (any of the contact's addresses vs Contact.Email), or same first + last name + Account name."""
        clauses = []
        if contact.emails:
            clauses.append(f"Email IN ({', '.join(soql_quote(e) for e in contact.emails)})")
        key = contact.name_company_key()
        if key and contact.last_name and contact.company:
            first = f"FirstName = {soql_quote(contact.first_name)}" if contact.first_name else "FirstName = null"
            clauses.append(f"({first} AND LastName = {soql_quote(contact.last_name)} AND "
                           f"Account.Name = {soql_quote(contact.company)})")
        if not clauses:
            return []
        self._schema_now()
        rows = self._rest.query(f"SELECT {self._select} FROM Contact WHERE {' OR '.join(clauses)} ORDER BY Id")
        emails = contact.email_keys()
        out = []
        for rec in self._scoped(rows):
            if (emails & rec.contact.email_keys()) or (key and rec.contact.name_company_key() == key):
                out.append(rec)
        return out

    def left_with_folder(self, mailbox: str, item_id: str) -> bool:
        return False  # Salesforce has no folders

    def made_here(self, mailbox: str, item_id: str) -> bool:
        return False  # a record names its author: ``SideRecord.untouched`` (CreatedById, LastModifiedById)

    def find_by_marker(self, mailbox: str, marker: str) -> SideRecord | None:
        """The contact whose marker field holds ``marker`` (an Outlook id), org-wide; None without a marker field."""
        if not self._marker_field or not marker:
            return None
        self._schema_now()
        rows = self._rest.query(f"SELECT {self._select} FROM Contact WHERE {self._marker_field} = {soql_quote(marker)} "
                           "ORDER BY Id LIMIT 1")
        return self._scoped(rows[:1])[0] if rows else None

    def stream(self, mailbox: str) -> Iterator[SideRecord]:
        self._schema_now()
        uid = self._directory.user_of(mailbox)
        scope = f" AND ({self._filter})" if self._filter else ""
        soql = f"SELECT {self._select} FROM Contact WHERE OwnerId = {soql_quote(uid)}{scope} ORDER BY Id"
        for page in self._rest.query_pages(soql):
            for row in page:
                yield self._record(row)

    # --- writing ----------------------------------------------------------------------------------------------
    def _values(self, contact: Contact, fields: Iterable[str], item_id: str | None, *, creating: bool,
                accounts: Mapping[str, str | SyncError] | None = None) -> tuple[dict[str, Any], str | None]:
        """Field values to send, and the review note of an address that cannot be written (``addresses``); raises
        the account resolution error of this item (never drops the company)."""
        write = contact_to_salesforce(contact, fields, self._field_map, self._lengths_now())
        for t in write.truncations:
            logger.warning("salesforce %s: %s cut from %d to %d characters", item_id or "(new contact)", t.target,
                           t.length, t.limit)
        values: dict[str, Any] = dict(write.values)
        held = address_codes(values, contact, self._schema_now(), item_id)
        if write.set_account:
            if write.account_name is None:
                values["AccountId"] = None
            else:
                if accounts is None:
                    accounts = self._directory.resolve_accounts([write.account_name], domain_hints([contact]))
                resolved = accounts.get(write.account_name.casefold())
                if not isinstance(resolved, str):
                    self.unresolved_accounts.append(item_id)
                    logger.warning("salesforce %s: company not resolved to an Account", item_id or "(new contact)")
                    raise resolved or BadData("company not resolved", fields=("company",), side=SIDE,
                                              item_id=item_id)
                values["AccountId"] = resolved
        if creating:
            values = {k: v for k, v in values.items() if v is not None}
        return values, held

    def _all_fields(self) -> list[str]:
        return list(self._field_map.salesforce_fields())

    def _check_version(self, item_id: str, if_match: str | None) -> dict[str, Any]:
        """The row now; ``PreconditionFailed`` when its version is not ``if_match``."""
        row = self._rows_by_id([item_id]).get(item_id)
        if row is None:
            raise NotFound("contact not found", side=SIDE, item_id=item_id)
        if if_match is not None and written_since(row, if_match):
            raise PreconditionFailed("changed since it was read (SystemModstamp)", side=SIDE, item_id=item_id)
        return row

    def _reread(self, item_id: str, written: Mapping[str, Any], *, found: bool = False) -> SideRecord:
        row = self._rows_by_id([item_id]).get(item_id)
        if row is None:
            raise NotFound("contact vanished right after the write", side=SIDE, item_id=item_id)
        return self._as_left(row, written, found=found)

    def _as_left(self, row: Mapping[str, Any], written: Mapping[str, Any], *, found: bool = False) -> SideRecord:
        """The record as our write left it, from the re-read after it. Salesforce answers a write with the id only,
        so the values and the new SystemModstamp come from a re-read, and a user's write between ours and the
        re-read would be in it: taken as what we wrote, their value would pass for synced and never reach the
        other side. ``LastModifiedById`` tells (docs/reference/salesforce.md §1.1): when it is not the integration user,
        the fields we wrote are taken as we wrote them and the record has no version, so the next pass sees their
        edit.

        ``found``: a create that found its contact made already (refused with ``DUPLICATE_VALUE``, or the lookup
        before its retry): another worker's create or our earlier attempt whose answer was lost, and anyone's write
        since. Taken as we wrote it too (a create's ``written`` names every field, empty ones as None), so a user's
        edit made meanwhile is not passed for synced (the short soak: a city a rep typed between the lost answer and
        the retry never reached Outlook)."""
        record = self._record(row)
        if not found and self._is_us(row.get("LastModifiedById")) is not False:  # ours, or unknown: as read
            return record
        logger.info("salesforce %s was written by another user around our write: its version is not kept", row["Id"])
        ours = salesforce_to_contact({**row, **{k: v for k, v in written.items() if k in row}}, self._field_map)
        return record.model_copy(update={"contact": ours, "version": None})

    def create(self, mailbox: str, contact: Contact, *, marker: str | None = None) -> SideRecord:
        values, held = self._values(contact, self._all_fields(), None, creating=True)
        values["OwnerId"] = self._directory.user_of(mailbox)
        if marker is not None and self._marker_field:
            values[self._marker_field] = marker
        if marker is not None and self._marker_field and self._schema_now().marker_upsert:
            (rid, made), note = self._create_unique(marker, values)
        else:
            made = True
            rid, note = alerted(self._allow_duplicates, None, lambda h: str(self._rest.call(
                "write", lambda sf: sf.Contact.create(values, headers=h), idempotent=False)["id"]))
        rec = noted(self._reread(rid, self._created(contact, values), found=not made), note, held)
        return rec if self._filter is None or rec.id[:15] in self._in_filter([rec.id]) else noted(rec, FILTER_NOTE)

    def _outside_filter(self, made: list[SideRecord | SyncError]) -> list[SideRecord | SyncError]:
        """Contacts just created from Outlook that do not meet ``SF_SOQL_FILTER`` get an audit note: the next read
        of them takes them out of the folder (docs/sync-rules.md row 43), so the audit says why at the create."""
        if self._filter is None:
            return made
        created = [r.id for r in made if isinstance(r, SideRecord)]
        inside = self._in_filter(created) if created else set()
        return [noted(r, FILTER_NOTE) if isinstance(r, SideRecord) and r.id[:15] not in inside else r for r in made]

    def _created(self, contact: Contact, values: Mapping[str, Any]) -> dict[str, Any]:
        """What a create wrote: the values sent, and None for every other synced field (a create leaves it empty)."""
        every = contact_to_salesforce(contact, self._all_fields(), self._field_map, self._lengths_now()).values
        return {**dict.fromkeys(every), **values}

    def _marker_holder(self, marker: str) -> str | None:
        """The id of the live contact whose marker field holds ``marker`` (org-wide, any owner or filter)."""
        rows = self._rest.query(f"SELECT Id FROM Contact WHERE {self._marker_field} = {soql_quote(marker)} "
                                "ORDER BY Id LIMIT 1")
        return str(rows[0]["Id"]) if rows else None

    def _create_unique(self, marker: str, values: Mapping[str, Any]) -> tuple[tuple[str, bool], str | None]:
        """A plain create (POST) carrying the marker, on a unique External ID marker field
        (docs/reference/salesforce.md §2.4). A contact that holds this Outlook id already (another worker's create of
        the same Outlook contact, or our earlier attempt whose answer was lost) makes Salesforce refuse it with
        ``DUPLICATE_VALUE``; it is then looked up and returned as found, never written: an upsert would overwrite it
        with the values this worker read, over a rep's edit made since (docs/sync-rules.md, races). Before a retry
        the contact is looked up first, the same way. A duplicate-rule refusal is checked the same way first: the
        contact it matches may be that copy. Returns ((id, whether this call created it), the alert note)."""

        def made_already() -> None:
            held = self._marker_holder(marker)
            if held is not None:
                raise _AlreadyMade("the contact holds this Outlook id already", side=SIDE, item_id=held)

        def send(headers: dict[str, str]) -> str:
            try:
                return str(self._rest.call(  # safe to retry: the lookup first, and the marker is unique
                    "write", lambda sf: sf.Contact.create(dict(values), headers=headers),
                    before_retry=made_already)["id"])
            except (AlreadyExists, DuplicateFound):
                made_already()
                raise

        try:
            rid, note = alerted(self._allow_duplicates, None, send)
        except _AlreadyMade as made:
            return (str(made.item_id), False), None
        return (rid, True), note

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
        headers: dict[str, str] = {}
        if if_match is not None:
            checked = parse_dt(self._check_version(item_id, if_match).get("LastModifiedDate"))
            if checked is not None:  # docs/reference/salesforce.md §2.7: 412 when modified after this date
                headers["If-Unmodified-Since"] = format_datetime(checked, usegmt=True)
        values, held = self._values(contact, fields, item_id, creating=False)
        if marker is not None and self._marker_field:
            values[self._marker_field] = marker
        note = None
        if values:
            _, note = alerted(self._allow_duplicates, item_id, lambda h: self._rest.call(
                "write", lambda sf: sf.Contact.update(item_id, values, headers={**headers, **h}), item_id=item_id,
                before_retry=self._version_guard(item_id, if_match)))
        return noted(self._reread(item_id, values), note, held)

    def delete(self, mailbox: str, item_id: str, *, if_match: str | None) -> None:
        """Soft delete (Recycle Bin). With ``if_match`` the SystemModstamp is compared first (and before each retry)."""
        if if_match is not None:
            self._check_version(item_id, if_match)
        self._rest.call("write", lambda sf: sf.Contact.delete(item_id), item_id=item_id,
                   before_retry=self._version_guard(item_id, if_match))

    def _version_guard(self, item_id: str, if_match: str | None) -> Callable[[], object] | None:
        """The ``before_retry`` of a guarded write: compare SystemModstamp again (None when unguarded). An edit made
        during the backoff gives ``PreconditionFailed`` instead of being overwritten; so does a failed attempt that in
        fact ran (our own write moved the stamp), and the engine re-reads."""
        if if_match is None:
            return None
        return lambda: self._check_version(item_id, if_match)

    def _finish(self, results: list[SideRecord | SyncError | str], written: Mapping[int, Mapping[str, Any]],
                notes: Mapping[int, str], held: Mapping[int, str | None],
                found: set[int] | frozenset[int] = frozenset()) -> list[SideRecord | SyncError]:
        """Replace the written ids by the records as our writes left them (one SOQL per 200 ids; ``_as_left``).
        ``written``: the values sent, by index in ``results``; ``found``: creates whose contact existed already."""
        ids = [r for r in results if isinstance(r, str)]
        rows = self._rows_by_id(ids)
        out: list[SideRecord | SyncError] = []
        for n, r in enumerate(results):
            if isinstance(r, str):
                row = rows.get(r)
                out.append(noted(self._as_left(row, written.get(n, {}), found=n in found), notes.get(n), held.get(n))
                           if row
                           else NotFound("vanished after the write", side=SIDE, item_id=r))
            else:
                out.append(r)
        return out

    def create_many(self, mailbox: str, items: Sequence[CreateRequest]) -> list[SideRecord | SyncError]:
        """sObject Collections POST, ≤ 200 per call, allOrNone=false; one result per item, in order."""
        owner = self._directory.user_of(mailbox)
        fields = self._all_fields()
        contacts = [i.contact for i in items if i.contact.company]
        accounts = self._directory.resolve_accounts((c.company or "" for c in contacts), domain_hints(contacts))
        results: list[SideRecord | SyncError | str] = []
        pending: list[tuple[int, dict[str, Any]]] = []
        held: dict[int, str | None] = {}
        written: dict[int, dict[str, Any]] = {}
        for item in items:
            try:
                values, held[len(results)] = self._values(item.contact, fields, None, creating=True, accounts=accounts)
            except SyncError as exc:
                results.append(exc)
                continue
            values["OwnerId"] = owner
            if item.marker is not None and self._marker_field:
                values[self._marker_field] = item.marker
            written[len(results)] = self._created(item.contact, values)
            pending.append((len(results), {"attributes": {"type": "Contact"}, **values}))
            results.append(Transient("not attempted", side=SIDE))
        unique = self._marker_field if self._marker_field and self._schema_now().marker_upsert else None
        notes: dict[int, str] = {}
        found: set[int] = set()
        by_marker = [p for p in pending if unique and p[1].get(unique)]  # safe to retry (see _create_chunk)
        plain = [p for p in pending if not (unique and p[1].get(unique))]
        for group, on in ((plain, None), (by_marker, unique)):
            for chunk in chunks(group, MAX_COLLECTION):
                self._create_chunk(chunk, results, on, {}, found)
                again = alerts(self._allow_duplicates, chunk, results)
                if again:
                    self._create_chunk([(i, rec) for i, rec, _ in again], results, on, dict(ALLOW_SAVE), found)
                    notes.update({i: alert_note(dup) for i, _, dup in again if i not in found})
        return self._outside_filter(self._finish(results, written, notes, held, found))

    def _marker_holders(self, markers: Iterable[str]) -> dict[str, str]:
        """Marker -> id of the live contact holding it, org-wide (50 markers per SOQL: Graph ids are long)."""
        out: dict[str, str] = {}
        for chunk in chunks(sorted(set(markers)), 50):
            lits = ", ".join(soql_quote(m) for m in chunk)
            for row in self._rest.query(f"SELECT Id, {self._marker_field} FROM Contact "
                                        f"WHERE {self._marker_field} IN ({lits})"):
                out[str(row[str(self._marker_field)])] = str(row["Id"])
        return out

    def _create_chunk(self, chunk: Sequence[tuple[int, dict[str, Any]]], results: list[SideRecord | SyncError | str],
                      unique: str | None, headers: dict[str, str], found: set[int]) -> None:
        """One sObject Collections create (POST, allOrNone=false). ``unique``: the marker field, a unique External
        ID, which every record of the chunk carries (docs/reference/salesforce.md §2.4-2.5): a record whose Outlook
        id a contact holds already (another worker's create, or our earlier attempt whose answer was lost) is
        refused with ``DUPLICATE_VALUE`` and then looked up and put into ``found``, never written over (an upsert
        would overwrite a rep's edit made since). The call is then safe to retry: before a retry the records
        already made are looked up and left out."""
        left = list(chunk)

        def take_made() -> None:
            holders = self._marker_holders(str(rec[str(unique)]) for _, rec in left if rec.get(str(unique)))
            for index, rec in list(left):
                held = holders.get(str(rec.get(str(unique))))
                if held is not None:
                    results[index] = held
                    found.add(index)
                    left.remove((index, rec))
            if not left:
                raise _AlreadyMade("every record of the chunk was made already", side=SIDE)

        try:
            answers = self._rest.restful("POST", lambda: {"allOrNone": False, "records": [rec for _, rec in left]},
                                         take_made if unique else None, headers=headers, retry_post=bool(unique))
        except _AlreadyMade:
            return
        except SyncError as exc:
            for index, _ in left:
                results[index] = exc
            return
        refused: list[tuple[int, dict[str, Any]]] = []
        for (index, rec), res in zip(left, answers, strict=False):
            results[index] = str(res["id"]) if res.get("success") else collection_error(res, None)
            if unique and rec.get(unique) and isinstance(results[index], AlreadyExists | DuplicateFound):
                refused.append((index, rec))
        if refused:  # one lookup: the contacts that hold these Outlook ids (a duplicate rule may match that copy too)
            holders = self._marker_holders(str(rec[unique]) for _, rec in refused if unique)
            for index, rec in refused:
                held = holders.get(str(rec[str(unique)]))
                if held is not None:
                    results[index] = held
                    found.add(index)

    def update_many(self, mailbox: str, items: Sequence[UpdateRequest]) -> list[SideRecord | SyncError]:
        """Versions checked with one SOQL per 200 ids, then sObject Collections PATCH (≤ 200, allOrNone=false).

        A chunk retried after a backoff is re-checked first (one SOQL): records whose SystemModstamp moved since
        (``PreconditionFailed``) or that are gone (``NotFound``) are dropped from the retry; the rest are re-sent."""
        current = self._rows_by_id([i.item_id for i in items])
        changing = [i.contact for i in items if "company" in i.fields and i.contact.company]
        accounts = (self._directory.resolve_accounts((c.company or "" for c in changing), domain_hints(changing))
                    if changing else {})
        results: list[SideRecord | SyncError | str] = []
        pending: list[tuple[int, dict[str, Any]]] = []  # (index of the item and of its result, record)
        held: dict[int, str | None] = {}
        for item in items:
            row = current.get(item.item_id)
            if row is None:
                results.append(NotFound("contact not found", side=SIDE, item_id=item.item_id))
                continue
            if item.if_match is not None and written_since(row, item.if_match):
                results.append(PreconditionFailed("changed since it was read (SystemModstamp)", side=SIDE,
                                                  item_id=item.item_id))
                continue
            try:
                values, held[len(results)] = self._values(item.contact, item.fields, item.item_id, creating=False,
                                                          accounts=accounts)
            except SyncError as exc:
                results.append(exc)
                continue
            if item.marker is not None and self._marker_field:
                values[self._marker_field] = item.marker
            if not values:
                results.append(str(row["Id"]))
                continue
            pending.append((len(results), {"attributes": {"type": "Contact"}, "Id": str(row["Id"]), **values}))
            results.append(Transient("not attempted", side=SIDE, item_id=item.item_id))
        notes: dict[int, str] = {}
        for chunk in chunks(pending, MAX_COLLECTION):
            self._patch_chunk(items, chunk, results, {})
            again = alerts(self._allow_duplicates, chunk, results)
            if again:
                self._patch_chunk(items, [(i, rec) for i, rec, _ in again], results, dict(ALLOW_SAVE))
                notes.update({i: alert_note(dup) for i, _, dup in again})
        return self._finish(results, dict(pending), notes, held)

    def _patch_chunk(self, items: Sequence[UpdateRequest], chunk: Sequence[tuple[int, dict[str, Any]]],
                     results: list[SideRecord | SyncError | str], headers: dict[str, str]) -> None:
        """One sObject Collections PATCH of ``update_many``; fills ``results`` at the chunk's indexes."""
        sent = list(chunk)  # what the next attempt sends (a retry drops the records changed meanwhile)

        def recheck() -> None:
            rows = self._rows_by_id([rec["Id"] for _, rec in sent])
            keep = []
            for index, rec in sent:
                item, row = items[index], rows.get(rec["Id"])
                if row is None:
                    results[index] = NotFound("contact not found", side=SIDE, item_id=item.item_id)
                elif item.if_match is not None and written_since(row, item.if_match):
                    results[index] = PreconditionFailed("changed since it was read (SystemModstamp)",
                                                        side=SIDE, item_id=item.item_id)
                else:
                    keep.append((index, rec))
            sent[:] = keep
            if not sent:
                raise _NothingToRetry("every record of the chunk changed during the backoff", side=SIDE)

        def body() -> dict[str, Any]:
            return {"allOrNone": False, "records": [rec for _, rec in sent]}

        try:
            answers = self._rest.restful("PATCH", body, before_retry=recheck, headers=headers)
        except _NothingToRetry:
            return
        except SyncError as exc:
            for index, _ in sent:
                results[index] = exc
            return
        for (index, rec), res in zip(sent, answers, strict=False):
            results[index] = str(res.get("id") or rec["Id"]) if res.get("success") else \
                collection_error(res, rec["Id"])

    # --- change feed ------------------------------------------------------------------------------------------
    def changes(self, mailbox: str, checkpoint: str | None) -> Iterator[ChangePage]:
        self._schema_now()
        yield from self._feed.pages(mailbox, self._directory.user_of(mailbox), checkpoint)


__all__ = ["SalesforceContactSide", "row_version"]
