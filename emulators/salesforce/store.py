"""In-memory org: records, users, tokens, query cursors, the CDC event log, limits, faults and counters.

Every write (REST, collections, admin API) goes through :class:`Org` inside a :meth:`Org.transaction`, which validates
(docs/reference/salesforce.md §1.1, §1.3, §2.1), stamps system fields (§1.1), and on commit publishes
ContactChangeEvents (§4.2–§4.5) into the replayable log read by the Pub/Sub servicer. One lock guards everything;
``changed`` (a Condition on that lock) wakes subscribers.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
import random
import secrets
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from emulators.salesforce.addresses import CODE_FIELDS, AddressError, resolve_address
from emulators.salesforce.cdc import ChangeEventCodec
from emulators.salesforce.duplicates import duplicates_of
from emulators.salesforce.ids import PREFIX_TYPE, IdFactory, fmt_datetime, looks_like_id, to18
from emulators.salesforce.sobjects import SObjectType, build_types
from emulators.salesforce.soql import Evaluator, SoqlError, parse

# Fields the standard Contact matching rule reads: an edit touching none of them is not checked again
MATCH_FIELDS = ("FirstName", "LastName", "Email", "Phone", "Title", "AccountId", "MailingStreet", "MailingCity",
                "MailingPostalCode")
RETENTION = timedelta(hours=72)  # event bus retention, docs/reference/salesforce.md §4.5
CURSOR_LIFETIME = timedelta(days=2)  # query cursor lifetime, docs/reference/salesforce.md §2.2
SESSION_LIFETIME = timedelta(hours=2)  # default org session timeout, docs/reference/salesforce.md §3.2
# What Lightning Experience edits carry (example header in docs/reference/salesforce.md §4.2); used for admin "UI"
# writes.
UI_ORIGIN = "com/salesforce/api/soap/67.0;client=SfdcInternalAPI/"


class SfError(Exception):
    """A REST error: HTTP status + the error array of docs/reference/salesforce.md §2.1 (``errorCode``; collections use
    ``statusCode``, see :meth:`as_collection_errors`)."""

    def __init__(self, status: int, code: str, message: str, fields: list[str] | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message, self.fields, self.extra = status, code, message, fields, extra or {}

    def as_rest(self) -> list[dict[str, Any]]:
        item: dict[str, Any] = {"message": self.message, "errorCode": self.code}
        if self.fields is not None:
            item["fields"] = self.fields
        item.update(self.extra)
        return [item]

    def as_collection_errors(self) -> list[dict[str, Any]]:
        item: dict[str, Any] = {"statusCode": self.code, "message": self.message, "fields": self.fields or []}
        item.update(self.extra)
        return [item]


@dataclass
class Token:
    access_token: str
    user_id: str
    client_id: str
    issued: datetime
    expires: datetime


@dataclass
class StoredEvent:
    replay: int
    created: datetime
    event_uuid: str
    payload: bytes
    header: dict[str, Any]
    body: dict[str, Any]

    @property
    def replay_id(self) -> bytes:
        return replay_bytes(self.replay)


def replay_bytes(n: int) -> bytes:
    """Replay ids are opaque bytes to clients (docs/reference/salesforce.md §4.5); here an 8-byte big-endian counter
    (§7.2)."""
    return n.to_bytes(8, "big")


@dataclass
class Faults:
    """Knobs. Set attributes directly, or use the helpers; all are read under the org lock."""

    rest_failures: list[dict[str, Any]] = field(default_factory=list)
    invalid_session_next: int = 0  # next N authenticated REST calls answer 401 INVALID_SESSION_ID
    latency_seconds: float = 0.0
    drop_next_events: int = 0  # lost events (no replay id assigned)
    duplicate_next_events: int = 0  # each is stored twice (two replay ids)
    gap_next_events: int = 0  # turned into GAP_<type> with header only (docs/reference/salesforce.md §4.3)
    overflow_threshold: int = 100_000  # changes per transaction before GAP_OVERFLOW (docs/reference/salesforce.md §4.3)
    grpc_failures: list[dict[str, Any]] = field(default_factory=list)
    duplicate_rule: bool = True  # False: the duplicate rule is off whatever ``OrgSettings.duplicate_rule`` says
    # Random faults for soak tests, probabilities in [0, 1], each counted in ``Counters``:
    # REST (/services/data): 403 REQUEST_LIMIT_EXCEEDED (docs/reference/salesforce.md §2.1, §6: "Salesforce may allow
    # temporary overage, then returns 403 REQUEST_LIMIT_EXCEEDED"; Salesforce sends no Retry-After) -> "rest.fault.403";
    # 503 SERVER_UNAVAILABLE (§2.1 status list) -> "rest.fault.503"; a connection reset (the socket is closed without
    # an answer; a share ``reset_after_share`` after the request ran: an ambiguous write) -> "rest.reset.before" /
    # "rest.reset.after".
    limit_rate: float = 0.0
    unavailable_rate: float = 0.0
    reset_rate: float = 0.0
    reset_after_share: float = 0.5
    # CDC: lost events (no replay id) -> "events.dropped"; stored twice (§4.5 at-least-once) -> "events.duplicated";
    # held back and published after the next event, so replay order differs from commit order (what a subscriber
    # sees when a gap is filled late) -> "events.reordered". A held event is released by the next publish, or after
    # ``reorder_hold_s`` when a subscriber reads.
    event_drop_rate: float = 0.0
    event_duplicate_rate: float = 0.0
    event_reorder_rate: float = 0.0
    reorder_hold_s: float = 0.5
    seed: int = 0
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def __post_init__(self) -> None:
        self.rng.seed(self.seed)

    def chance(self, p: float) -> bool:
        """Read under the org lock, like every knob."""
        return p > 0 and self.rng.random() < p

    def roll_rest(self) -> tuple[str | None, dict[str, Any] | None]:
        """For one REST call: (``"before"`` / ``"after"`` / None: drop the connection then), (a failure to answer)."""
        reset = None
        if self.chance(self.reset_rate):
            reset = "after" if self.chance(self.reset_after_share) else "before"
        if reset is not None:
            return reset, None
        if self.chance(self.limit_rate):
            return reset, {"status": 403, "errorCode": "REQUEST_LIMIT_EXCEEDED",
                           "message": "TotalRequests Limit exceeded."}
        if self.chance(self.unavailable_rate):
            return reset, {"status": 503, "errorCode": "SERVER_UNAVAILABLE",
                           "message": "Service temporarily unavailable"}
        return reset, None

    def fail_next(self, count: int = 1, status: int = 503, error_code: str = "SERVER_UNAVAILABLE",
                  message: str = "Service temporarily unavailable", path_contains: str = "") -> None:
        self.rest_failures.append({"count": count, "status": status, "errorCode": error_code,
                                   "message": message, "path": path_contains})

    def fail_grpc_next(self, count: int = 1, code: str = "UNAVAILABLE",
                       error_code: str = "sfdc.platform.eventbus.grpc.service.unavailable",
                       message: str = "Service temporarily unavailable", method: str = "Subscribe") -> None:
        self.grpc_failures.append({"count": count, "code": code, "error_code": error_code, "message": message,
                                   "method": method})

    def take_rest_failure(self, path: str) -> dict[str, Any] | None:
        for f in self.rest_failures:
            if f["count"] > 0 and f["path"] in path:
                f["count"] -= 1
                return f
        return None

    def take_grpc_failure(self, method: str) -> dict[str, Any] | None:
        for f in self.grpc_failures:
            if f["count"] > 0 and f["method"] in (method, "*"):
                f["count"] -= 1
                return f
        return None


class Counters:
    """Request and event counters, e.g. ``counters["rest.query"]``, ``counters["grpc.Subscribe"]``."""

    def __init__(self) -> None:
        self._c: Counter[str] = Counter()
        self._lock = threading.Lock()

    def inc(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._c[key] += n

    def __getitem__(self, key: str) -> int:
        with self._lock:
            return self._c[key]

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._c)

    def reset(self) -> None:
        with self._lock:
            self._c.clear()


@dataclass
class WriteContext:
    user_id: str
    origin: str = ""
    allow_save: bool = False  # Sforce-Duplicate-Rule-Header allowSave=true (docs/reference/salesforce.md §1.3)
    include_record_details: bool = False
    validate_duplicates: bool = True


@dataclass
class _Change:
    change_type: str
    record_id: str
    body: dict[str, Any]
    changed: list[str]
    nulled: list[str]
    weight: int  # changes counted toward the overflow threshold (docs/reference/salesforce.md §4.3)


@dataclass
class OrgSettings:
    """Org switches (Setup choices a real org makes), read under the org lock. Defaults are a new org's:

    - ``whole_seconds``: system timestamps keep whole seconds (docs/reference/salesforce.md §1.1); False keeps
      milliseconds.
    - ``duplicate_rule``: the standard Contact duplicate rule's action, ``"alert"`` (allow with the
      ``allowSave=true`` header), ``"block"`` or ``"off"`` (§1.3).
    - ``address_picklists``: State and Country/Territory Picklists on Contact's mailing address (§1.4,
      ``addresses.py``); False: free-text ``MailingState`` / ``MailingCountry`` and no code fields. Taken into account
      by :meth:`Org.apply_settings` (called at every REST request).
    """

    whole_seconds: bool = True
    duplicate_rule: str = "alert"
    address_picklists: bool = True


class Transaction:
    def __init__(self, ctx: WriteContext, now: datetime) -> None:
        self.ctx = ctx
        self.now = now
        self.changes: list[_Change] = []


class Org:
    def __init__(self, *, custom_fields: tuple[str, ...] = ("Outlook_Id__c",), api_max: int = 15_000,
                 delivery_max: int = 10_000, instance_url: str = "https://127.0.0.1",
                 settings: OrgSettings | None = None) -> None:
        self.settings = settings or OrgSettings()
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.types: dict[str, SObjectType] = build_types(custom_fields)
        self.custom_fields = custom_fields
        self.codec = ChangeEventCodec(custom_fields)
        self.ids = IdFactory()
        self.org_id = to18("00D" + "Hs0000000EMU")
        self.instance_url = instance_url
        self.records: dict[str, dict[str, dict[str, Any]]] = {t: {} for t in self.types}
        self.tokens: dict[str, Token] = {}
        self.cursors: dict[str, tuple[list[dict[str, Any]], datetime]] = {}
        self.events: list[StoredEvent] = []
        self.last_replay = 0
        self.purged_upto = 0
        self._held: tuple[dict[str, Any], dict[str, Any], int, float] | None = None  # faults.event_reorder_rate
        self.commit_number = 1_100_670_838_951
        self.api_used = 0
        self.api_max = api_max
        self.delivered = 0
        self.delivery_max = delivery_max
        self.faults = Faults()
        self.counters = Counters()
        self.time_offset = timedelta(0)
        self.jwt_clients: dict[str, dict[str, Any]] = {}
        self.cc_clients: dict[str, dict[str, Any]] = {}
        self._locators = itertools.count(1)
        self.evaluator = Evaluator(self.types, self.resolve)
        self._picklists_on = False
        self.apply_settings()
        self.integration_user_id = self.add_user("integration@example.com", "integration@example.com",
                                                 last_name="Integration", first_name="Sync")
        # flows that run outside a user's transaction (scheduled, platform-event triggered) write as this user
        self.automated_process_user_id = self.add_user(f"autoproc@{self.org_id.lower()}", "autoproc@example.com",
                                                       last_name="Automated Process", user_type="AutomatedProcess")

    def apply_settings(self) -> None:
        """Add or remove Contact's address code fields to match ``settings.address_picklists``. Turning them on
        fills the codes of records whose text is an integration value (Setup's conversion, simplified)."""
        with self.lock:
            on = self.settings.address_picklists
            if on == self._picklists_on:
                return
            self._picklists_on = on
            contact = self.types["Contact"]
            for f in CODE_FIELDS:
                if on:
                    contact.add(f)
                else:
                    contact.remove(f.name)
            for rec in self.records["Contact"].values():
                if not on:
                    for f in CODE_FIELDS:
                        rec.pop(f.name, None)
                    continue
                try:
                    rec.update(resolve_address({"MailingCountry": rec.get("MailingCountry"),
                                                "MailingState": rec.get("MailingState")}, None))
                except AddressError:
                    rec.update({"MailingCountryCode": None, "MailingStateCode": None})

    # -- clock ----------------------------------------------------------------------------------------------------
    def now(self) -> datetime:
        """Salesforce keeps whole seconds in CreatedDate / LastModifiedDate / SystemModstamp (``.000`` on the wire,
        docs/reference/salesforce.md §1.1); ``settings.whole_seconds=False`` keeps milliseconds (the old emulator)."""
        t = datetime.now(UTC) + self.time_offset
        if self.settings.whole_seconds:
            return t.replace(microsecond=0)
        return t.replace(microsecond=t.microsecond // 1000 * 1000)

    # -- users, accounts, auth ------------------------------------------------------------------------------------
    def add_user(self, username: str, email: str, *, last_name: str = "User", first_name: str | None = None,
                 federation_id: str | None = None, active: bool = True, user_type: str = "Standard") -> str:
        with self.lock:
            now = self.now()
            uid = self.ids.new("User")
            creator = getattr(self, "integration_user_id", uid)
            name = " ".join(x for x in (first_name, last_name) if x)
            self.records["User"][uid] = {
                "Id": uid, "Username": username, "Email": email, "FirstName": first_name, "LastName": last_name,
                "Name": name, "FederationIdentifier": federation_id, "IsActive": active, "IsDeleted": False,
                "UserType": user_type,
                "CreatedDate": now, "CreatedById": creator, "LastModifiedDate": now, "LastModifiedById": creator,
                "SystemModstamp": now,
            }
            return uid

    def user_by_username(self, username: str) -> dict[str, Any] | None:
        with self.lock:
            return next((u for u in self.records["User"].values() if u["Username"].lower() == username.lower()),
                        None)

    def issue_token(self, user_id: str, client_id: str = "emulator") -> Token:
        with self.lock:
            now = self.now()
            # Session ids look like "<orgId>!<random>" (docs/reference/salesforce.md §3.1 example "00D...!AR...").
            tok = Token(f"{self.org_id[:15]}!AR{secrets.token_urlsafe(40)}", user_id, client_id, now,
                        now + SESSION_LIFETIME)
            self.tokens[tok.access_token] = tok
            return tok

    def authenticate(self, access_token: str | None) -> Token | None:
        if not access_token:
            return None
        with self.lock:
            tok = self.tokens.get(access_token)
            if tok is None or tok.expires <= self.now():
                return None
            return tok

    def revoke_tokens(self) -> None:
        with self.lock:
            self.tokens.clear()

    # -- reading ----------------------------------------------------------------------------------------------------
    def find(self, any_id: str) -> tuple[str, dict[str, Any]] | None:
        if not looks_like_id(any_id):
            return None
        full = to18(any_id)
        sobject = PREFIX_TYPE.get(full[:3])
        if sobject is None or sobject not in self.records:
            return None
        rec = self.records[sobject].get(full) or next(
            (r for i, r in self.records[sobject].items() if i.lower() == full.lower()), None)
        return (sobject, rec) if rec is not None else None

    def resolve(self, rec: dict[str, Any], path: str) -> Any:
        parts = path.split(".")
        cur: dict[str, Any] | None = rec
        sobject = PREFIX_TYPE.get(str(rec.get("Id", ""))[:3], "Contact")
        for rel in parts[:-1]:
            ref = self.types[sobject].relationships.get(rel.lower())
            if cur is None or ref is None:
                return None
            target = cur.get(ref.name)
            found = self.find(target) if target else None
            cur = found[1] if found else None
            sobject = ref.reference_to or sobject
        if cur is None:
            return None
        f = self.types[sobject].field(parts[-1])
        return cur.get(f.name) if f else None

    def serialize(self, sobject: str, rec: dict[str, Any], fields: list[str] | None, version: str) -> dict[str, Any]:
        t = self.types[sobject]
        out: dict[str, Any] = {"attributes": {"type": sobject,
                                              "url": f"/services/data/v{version}/sobjects/{sobject}/{rec['Id']}"}}
        names = fields if fields is not None else list(t.fields)
        for path in names:
            parts = path.split(".")
            if len(parts) == 1:
                out[parts[0]] = _wire(rec.get(parts[0]))
                continue
            # Relationship fields nest as {"Account": {"attributes": ..., "Name": ...}} or null
            # (docs/reference/salesforce.md §2.2).
            holder, cur_rec, cur_type = out, rec, sobject
            for rel in parts[:-1]:
                ref = self.types[cur_type].relationships[rel.lower()]
                target = cur_rec.get(ref.name) if cur_rec else None
                found = self.find(target) if target else None
                cur_type = ref.reference_to or cur_type
                if found is None:
                    holder[rel] = None
                    break
                cur_rec = found[1]
                if not isinstance(holder.get(rel), dict):
                    holder[rel] = {"attributes": {"type": cur_type, "url": f"/services/data/v{version}/sobjects/"
                                                  f"{cur_type}/{cur_rec['Id']}"}}
                holder = holder[rel]
            else:
                holder[parts[-1]] = _wire(cur_rec.get(parts[-1]))
        return out

    def query(self, soql: str, include_deleted: bool, version: str, batch_size: int) -> dict[str, Any]:
        q = parse(soql)
        with self.lock:
            t = self.evaluator.check(q)
            cheap = self.evaluator.prefilter(t, q.where) if q.where is not None else None
            rows = [r for r in self._candidates(t.name, q.where)
                    if (include_deleted or not r.get("IsDeleted")) and (cheap is None or cheap(r)) and
                    (q.where is None or self.evaluator.matches(t, r, q.where))]
            if q.order:
                key = self.evaluator.sort_key(t, q)
                if q.limit is not None and len(rows) > 4 * (q.offset + q.limit):
                    rows = self._leading(t, q, rows)
                    rows = heapq.nsmallest(q.offset + q.limit, rows, key=key)  # sorted, as sort() would leave them
                else:
                    rows.sort(key=key)
            rows = rows[q.offset:]
            if q.limit is not None:
                rows = rows[: q.limit]
            out = [self.serialize(t.name, r, q.fields, version) for r in rows]
            return self._page(out, 0, version, batch_size, None)

    def _leading(self, t: Any, q: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A speed-up for ``ORDER BY <datetime field> ... LIMIT n`` over many rows: only the rows whose first sort
        value (at whole seconds, as compared) reaches the n-th best can be among the first n."""
        path, desc, _ = q.order[0]
        if "." in path or self.evaluator.field_def(t, path).type != "datetime":
            return rows
        name = self.evaluator.field_def(t, path).name
        values = [r.get(name) for r in rows]
        if any(v is None for v in values):
            return rows
        n = q.offset + q.limit
        nth = (heapq.nlargest if desc else heapq.nsmallest)(n, values)[-1].replace(microsecond=0)
        if desc:
            return [r for r, v in zip(rows, values, strict=True) if v.replace(microsecond=0) >= nth]
        return [r for r, v in zip(rows, values, strict=True) if v.replace(microsecond=0) <= nth]

    def _candidates(self, sobject: str, where: Any) -> Any:
        """The records a WHERE clause can match, in store order. Salesforce finds records by Id through its index;
        so does this emulator when the clause narrows by Id at its top level (``Id = x``, ``Id IN (...)``, alone or
        as one term of an AND): only those records are then evaluated, against the whole clause as before, so the
        answer is the same as a scan's. Anything else (or an id not stored under its canonical 18-character form)
        scans every record."""
        table = self.records[sobject]
        terms = where[1] if where is not None and where[0] == "and" else [where]
        for term in terms:
            if term is None or term[1] != "Id":
                continue
            if term[0] == "cmp" and term[2] == "=":
                values = [term[3]]
            elif term[0] == "in" and not term[3]:
                values = term[2]
            else:
                continue
            keys = [to18(v) for _, v in values if isinstance(v, str) and looks_like_id(v)]
            if len(keys) != len(values) or any(k not in table for k in keys):
                break  # a malformed or differently cased id, or a missing record: let the scan decide
            wanted = set(keys)
            if len(wanted) * 8 > len(table):
                break
            if len(wanted) == 1:
                return [table[keys[0]]]
            return [rec for key, rec in table.items() if key in wanted]  # store order, as the scan
        return table.values()

    def _page(self, rows: list[dict[str, Any]], offset: int, version: str, batch_size: int,
              locator: str | None) -> dict[str, Any]:
        end = offset + batch_size
        page: dict[str, Any] = {"totalSize": len(rows), "done": end >= len(rows), "records": rows[offset:end]}
        if end < len(rows):
            if locator is None:
                locator = f"01gHs{next(self._locators):010d}AAA"
                self.cursors[locator] = (rows, self.now())
            page["nextRecordsUrl"] = f"/services/data/v{version}/query/{locator}-{end}"
        return page

    def query_more(self, locator_and_offset: str, version: str, batch_size: int) -> dict[str, Any]:
        locator, _, offset = locator_and_offset.rpartition("-")
        with self.lock:
            entry = self.cursors.get(locator)
            if entry is None or not offset.isdigit() or entry[1] + CURSOR_LIFETIME < self.now():
                raise SfError(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
            return self._page(entry[0], int(offset), version, batch_size, locator)

    # -- writing ----------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self, ctx: WriteContext, all_or_none: bool = True) -> Iterator[Transaction]:
        """All writes of one request. On error with ``all_or_none`` the records are restored and nothing is
        published; otherwise the caller handles per-record errors and the successful changes are published."""
        with self.lock:
            snapshot = {t: {i: dict(r) for i, r in recs.items()} for t, recs in self.records.items()}
            txn = Transaction(ctx, self.now())
            try:
                yield txn
            except BaseException:
                if all_or_none:
                    self.records = snapshot
                raise
            self._publish(txn)

    def _validate(self, sobject: str, values: dict[str, Any], *, creating: bool, current: dict[str, Any] | None,
                  ctx: WriteContext) -> dict[str, Any]:
        t = self.types[sobject]
        clean: dict[str, Any] = {}
        for key, value in values.items():
            if key == "attributes":
                continue
            f = t.field(key)
            if f is None:
                raise SfError(400, "INVALID_FIELD", f"No such column '{key}' on sobject of type {sobject}")
            if (creating and not f.createable) or (not creating and not f.updateable):
                raise SfError(400, "INVALID_FIELD_FOR_INSERT_UPDATE", f"Unable to create/update fields: {f.name}. "
                              "Please check the security settings of this field and verify that it is read/write "
                              "for your profile or permission set.", [f.name])
            if isinstance(value, str) and value == "" and f.is_text:
                value = None  # the API stores empty strings as null
            if value is not None and f.is_text:
                if not isinstance(value, str):
                    value = json.dumps(value) if isinstance(value, dict | list) else str(value)
                if len(value) > f.length:
                    raise SfError(400, "STRING_TOO_LONG", f"{f.label}: data value too large: {value[:80]} "
                                  f"(max length={f.length})", [f.name])
                if f.type == "email" and not _is_email(value):
                    raise SfError(400, "INVALID_EMAIL_ADDRESS", f"{f.label}: invalid email address: {value}",
                                  [f.name])
            if value is not None and f.type == "reference":
                target = self.find(value) if isinstance(value, str) else None
                if not looks_like_id(value) or (target is None and PREFIX_TYPE.get(to18(value)[:3]) is None):
                    raise SfError(400, "MALFORMED_ID", f"{f.label}: id value of incorrect type: {value}", [f.name])
                if target is None or target[0] != f.reference_to or target[1].get("IsDeleted"):
                    raise SfError(400, "INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", [f.name])
                if f.reference_to == "User" and not target[1].get("IsActive"):
                    raise SfError(400, "INACTIVE_OWNER_OR_USER", "operation performed with inactive user",
                                  [f.name])
                value = target[1]["Id"]
            clean[f.name] = value
        if sobject == "Contact" and self._picklists_on:
            try:
                clean.update(resolve_address(clean, current))
            except AddressError as exc:  # docs/reference/salesforce.md §1.4
                raise SfError(400, "FIELD_INTEGRITY_EXCEPTION", str(exc), [exc.field]) from None
        merged = {**(current or {}), **clean}
        missing = [f.name for f in t.fields.values() if f.required and merged.get(f.name) in (None, "")]
        if missing:
            raise SfError(400, "REQUIRED_FIELD_MISSING", f"Required fields are missing: [{', '.join(missing)}]",
                          missing)
        mode = self.settings.duplicate_rule if self.faults.duplicate_rule else "off"
        if (sobject == "Contact" and ctx.validate_duplicates and mode != "off"
                and not (mode == "alert" and ctx.allow_save)
                and (current is None or any(clean[k] != current.get(k) for k in MATCH_FIELDS if k in clean))):
            self._check_duplicates(merged, ctx, block=mode == "block")
        self._check_unique(sobject, clean, current)
        return clean

    def _check_unique(self, sobject: str, clean: dict[str, Any], current: dict[str, Any] | None) -> None:
        """A value written to a unique field (here: every External ID field, described ``unique``) that another live
        record holds is refused, on create and update alike, single or collection (a second record of the same
        collection included): 400 ``DUPLICATE_VALUE``, ``duplicate value found: <field> duplicates value on record
        with id: <id>``, ``fields`` empty (docs/reference/salesforce.md §2.4). The unique index is checked at save,
        after the duplicate rules. Records in the Recycle Bin are not counted, as in the upsert's match (not checked
        against Salesforce: whether a soft-deleted record holds its unique value)."""
        t = self.types[sobject]
        for name, value in clean.items():
            f = t.field(name)
            if value is None or f is None or not f.external_id:
                continue
            other = next((r for r in self.records[sobject].values() if not r["IsDeleted"] and r.get(name) == value
                          and (current is None or r["Id"] != current["Id"])), None)
            if other is not None:
                raise SfError(400, "DUPLICATE_VALUE", f"duplicate value found: {name} duplicates value on record "
                              f"with id: {other['Id']}", [])

    def _check_duplicates(self, merged: dict[str, Any], ctx: WriteContext, *, block: bool) -> None:
        """The standard Contact duplicate rule (``duplicates.py``): Alert refuses unless ``allowSave=true`` was sent
        (the caller checked), Block always refuses (docs/reference/salesforce.md §1.3)."""
        def account_name(account_id: Any) -> str | None:
            found = self.find(account_id) if account_id else None
            return found[1].get("Name") if found else None

        dups = duplicates_of(merged, self.records["Contact"].values(), account_name)
        if not dups:
            return
        # Shape from docs/reference/salesforce.md §1.3 (⚠ VERIFY there): error array item + duplicateResult.
        v = "67.0"
        match_records = []
        for r in dups:
            rec: dict[str, Any] = {"attributes": {"type": "Contact",
                                                  "url": f"/services/data/v{v}/sobjects/Contact/{r['Id']}"},
                                   "Id": r["Id"]}
            if ctx.include_record_details:
                rec.update({"Name": r.get("Name"), "Email": r.get("Email")})
            match_records.append({"additionalInformation": [], "fieldDiffs": [], "matchConfidence": 100.0,
                                  "record": rec})
        message = "You're creating a duplicate record. We recommend you use an existing record instead." if block \
            else "Use one of these records?"
        raise SfError(400, "DUPLICATES_DETECTED", message, [], {"duplicateResult": {
            "allowSave": not block, "duplicateRule": "Standard_Contact_Duplicate_Rule",
            "duplicateRuleEntityType": "Contact", "errorMessage": message,
            "matchResults": [{"entityType": "Contact", "errors": [], "matchEngine": "FuzzyMatchEngine",
                              "matchRecords": match_records, "rule": "Standard_Contact_Match_Rule_v1_1",
                              "size": len(match_records), "success": True}]}})

    def create(self, txn: Transaction, sobject: str, values: dict[str, Any]) -> str:
        if sobject not in self.types or sobject == "User":
            raise SfError(400 if sobject == "User" else 404, "NOT_FOUND" if sobject != "User" else
                          "INVALID_TYPE_FOR_OPERATION", f"entity type {sobject} does not support create")
        if any(k.lower() == "id" for k in values):
            raise SfError(400, "INVALID_FIELD", "cannot specify Id in an insert call", ["Id"])
        clean = self._validate(sobject, values, creating=True, current=None, ctx=txn.ctx)
        t = self.types[sobject]
        rid = self.ids.new(sobject)
        rec: dict[str, Any] = dict.fromkeys(t.fields)
        rec.update(clean)
        rec.update({"Id": rid, "IsDeleted": False, "CreatedDate": txn.now, "CreatedById": txn.ctx.user_id,
                    "LastModifiedDate": txn.now, "LastModifiedById": txn.ctx.user_id, "SystemModstamp": txn.now})
        if "OwnerId" in t.fields and not rec.get("OwnerId"):
            rec["OwnerId"] = txn.ctx.user_id  # defaults to the creating user (docs/reference/salesforce.md §1.1)
        _compute_name(sobject, rec)
        self.records[sobject][rid] = rec
        if sobject == "Contact":
            body = self.codec.full_body(rec)
            txn.changes.append(_Change("CREATE", rid, body, [], [], 1))
        return rid

    def _live(self, sobject: str, record_id: str) -> dict[str, Any]:
        found = self.find(record_id)
        if found is None or found[0] != sobject:
            raise SfError(404, "NOT_FOUND", "The requested resource does not exist")
        if found[1]["IsDeleted"]:
            raise SfError(404, "ENTITY_IS_DELETED", "entity is deleted")
        return found[1]

    def update(self, txn: Transaction, sobject: str, record_id: str, values: dict[str, Any]) -> str:
        rec = self._live(sobject, record_id)
        clean = self._validate(sobject, values, creating=False, current=rec, ctx=txn.ctx)
        old = dict(rec)
        rec.update(clean)
        _compute_name(sobject, rec)
        rec.update({"LastModifiedDate": txn.now, "LastModifiedById": txn.ctx.user_id, "SystemModstamp": txn.now})
        if sobject == "Contact":
            body, changed, nulled = self.codec.update_body(old, rec)
            names = [n for n in self.codec.position if old.get(n) != rec.get(n)]
            txn.changes.append(_Change("UPDATE", rec["Id"], body, changed, nulled, len(names)))
        return str(rec["Id"])

    def delete(self, txn: Transaction, sobject: str, record_id: str) -> str:
        rec = self._live(sobject, record_id)
        rec.update({"IsDeleted": True, "LastModifiedDate": txn.now, "LastModifiedById": txn.ctx.user_id,
                    "SystemModstamp": txn.now})
        if sobject == "Contact":
            txn.changes.append(_Change("DELETE", rec["Id"], self.codec.empty_body(), [], [], 1))
        return str(rec["Id"])

    def undelete(self, txn: Transaction, sobject: str, record_id: str) -> str:
        found = self.find(record_id)
        if found is None or found[0] != sobject:
            raise SfError(404, "NOT_FOUND", "The requested resource does not exist")
        rec = found[1]
        if not rec["IsDeleted"]:
            raise SfError(400, "UNDELETE_FAILED", "Entity is not in the recycle bin")
        rec.update({"IsDeleted": False, "MasterRecordId": None, "LastModifiedDate": txn.now,
                    "LastModifiedById": txn.ctx.user_id, "SystemModstamp": txn.now})
        if sobject == "Contact":
            txn.changes.append(_Change("UNDELETE", rec["Id"], self.codec.full_body(rec), [], [], 1))
        return str(rec["Id"])

    def purge_recycle_bin(self) -> int:
        with self.lock:
            gone = [i for i, r in self.records["Contact"].items() if r["IsDeleted"]]
            for i in gone:
                del self.records["Contact"][i]
            return len(gone)

    # -- CDC publishing ---------------------------------------------------------------------------------------------
    def _publish(self, txn: Transaction) -> None:
        if not txn.changes:
            return
        # Merged change events: the same change on several records of one transaction -> one event with all ids
        # (docs/reference/salesforce.md §4.2 recordIds). Overflow: changes beyond the threshold -> one GAP_OVERFLOW
        # (§4.3).
        merged: list[tuple[_Change, list[str]]] = []
        index: dict[str, int] = {}
        budget = self.faults.overflow_threshold
        overflow = False
        for ch in txn.changes:
            if budget - ch.weight < 0:
                overflow = True
                continue
            budget -= ch.weight
            key = json.dumps([ch.change_type, ch.body, ch.changed, ch.nulled], sort_keys=True, default=str)
            if key in index:
                merged[index[key]][1].append(ch.record_id)
            else:
                index[key] = len(merged)
                merged.append((ch, [ch.record_id]))
        txn_key = str(uuid.uuid4())
        ts = txn.now
        self.commit_number += 7  # increases with commit order, not contiguous (docs/reference/salesforce.md §4.2)
        specs: list[tuple[str, list[str], dict[str, Any], list[str], list[str]]] = [
            (ch.change_type, ids, ch.body, ch.changed, ch.nulled) for ch, ids in merged]
        if overflow:
            specs.append(("GAP_OVERFLOW", [], self.codec.empty_body(), [], []))
        for seq, (ctype, ids, body, changed, nulled) in enumerate(specs, start=1):
            header = {"entityName": "Contact", "recordIds": ids, "changeType": ctype,
                      "changeOrigin": txn.ctx.origin, "transactionKey": txn_key, "sequenceNumber": seq,
                      "commitTimestamp": int(ts.timestamp() * 1000), "commitNumber": self.commit_number,
                      "commitUser": txn.ctx.user_id, "nulledFields": nulled, "diffFields": [],
                      "changedFields": changed}
            self._append_event(header, body)
        self.changed.notify_all()

    def _append_event(self, header: dict[str, Any], body: dict[str, Any]) -> None:
        f = self.faults
        if f.drop_next_events > 0 or f.chance(f.event_drop_rate):
            f.drop_next_events = max(0, f.drop_next_events - 1)
            self.counters.inc("events.dropped")
            return
        if f.gap_next_events > 0 and not header["changeType"].startswith("GAP_"):
            f.gap_next_events -= 1
            header = {**header, "changeType": "GAP_" + header["changeType"], "changedFields": [],
                      "nulledFields": [], "diffFields": []}
            body = self.codec.empty_body()
        copies = 1
        if f.duplicate_next_events > 0 or f.chance(f.event_duplicate_rate):
            f.duplicate_next_events = max(0, f.duplicate_next_events - 1)
            self.counters.inc("events.duplicated")
            copies = 2
        if self._held is None and f.chance(f.event_reorder_rate):
            self.counters.inc("events.reordered")
            self._held = (header, body, copies, time.monotonic())
            return
        self._store_event(header, body, copies)
        self.release_held_event()

    def release_held_event(self, older_than: float = 0.0) -> None:
        """Publish the event held back by ``faults.event_reorder_rate`` (if held for at least ``older_than`` s)."""
        if self._held is not None and time.monotonic() - self._held[3] >= older_than:
            header, body, copies, _ = self._held
            self._held = None
            self._store_event(header, body, copies)

    def _store_event(self, header: dict[str, Any], body: dict[str, Any], copies: int) -> None:
        for _ in range(copies):
            self.last_replay += 1
            payload = self.codec.encode(header, body)
            self.events.append(StoredEvent(self.last_replay, self.now(), str(uuid.uuid4()), payload, header, body))
            self.counters.inc("events.published")

    def publish_header_only(self, change_type: str, record_ids: list[str], user_id: str | None = None,
                            origin: str = "") -> None:
        """Knob: emit a GAP_* / GAP_OVERFLOW event (header only, docs/reference/salesforce.md §4.3)."""
        with self.lock:
            self.commit_number += 7
            header = {"entityName": "Contact", "recordIds": record_ids, "changeType": change_type,
                      "changeOrigin": origin, "transactionKey": str(uuid.uuid4()), "sequenceNumber": 1,
                      "commitTimestamp": int(self.now().timestamp() * 1000), "commitNumber": self.commit_number,
                      "commitUser": user_id or self.integration_user_id, "nulledFields": [], "diffFields": [],
                      "changedFields": []}
            self._append_event(header, self.codec.empty_body())
            self.changed.notify_all()

    def purge_expired_events(self) -> None:
        """72-hour retention (docs/reference/salesforce.md §4.5)."""
        with self.lock:
            cutoff = self.now() - RETENTION
            if not self.events or self.events[0].created > cutoff:
                return
            keep = [e for e in self.events if e.created > cutoff]
            if len(keep) != len(self.events):
                self.purged_upto = max(self.purged_upto, self.events[len(self.events) - len(keep) - 1].replay)
                self.events = keep

    def events_after(self, replay: int, limit: int) -> list[StoredEvent]:
        self.release_held_event(older_than=self.faults.reorder_hold_s)
        # events are sorted by replay; find first with replay > given
        lo, hi = 0, len(self.events)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.events[mid].replay <= replay:
                lo = mid + 1
            else:
                hi = mid
        return self.events[lo: lo + limit]

    def advance_time(self, seconds: float) -> None:
        with self.lock:
            self.time_offset += timedelta(seconds=seconds)
            self.changed.notify_all()

    def touch(self, sobject: str, record_ids: list[str]) -> None:
        """Only ``SystemModstamp`` moves (roll-ups, sharing recalculation, bounce processing): no field, no
        ``LastModified*`` change, and no change event (nothing a subscriber could sync changed)."""
        with self.lock:
            now = self.now()
            for record_id in record_ids:
                self._live(sobject, record_id)["SystemModstamp"] = now
            self.changed.notify_all()

    def run_as(self, user_id: str | None, origin: str = UI_ORIGIN) -> WriteContext:
        return WriteContext(user_id=user_id or self.integration_user_id, origin=origin, validate_duplicates=False)


def _wire(value: Any) -> Any:
    return fmt_datetime(value) if isinstance(value, datetime) else value


def _is_email(value: str) -> bool:
    local, at, domain = value.rpartition("@")
    return bool(at and local and "." in domain and " " not in value)


def _compute_name(sobject: str, rec: dict[str, Any]) -> None:
    if sobject in ("Contact", "User"):
        rec["Name"] = " ".join(x for x in (rec.get("FirstName"), rec.get("LastName")) if x)


__all__ = ["Org", "SfError", "SoqlError", "WriteContext", "Faults", "Counters", "StoredEvent", "Token",
           "replay_bytes", "UI_ORIGIN"]
