"""HTTP front of the Graph emulator: routing, Graph v1.0 handlers, ``$batch``, subscriptions, the ``/_admin`` API.

Section numbers (§) refer to docs/reference/graph.md; behaviours not in it are listed in
docs/emulator-fidelity-graph.md.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import re
import socket
import struct
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from emulators.clock import ServiceClock

from . import directory as dirs
from .faults import Counters, FaultRule, Faults, MailboxGate
from .grants import ADMIN_GUIDE_GRANTS, DIRECTORY_DENIED, MAILBOX_DENIED, Grants
from .odata import ODataSyntaxError, compile_filter, parse_expand, parse_select
from .store import ChangeEvent, Contact, Folder, GraphError, Mailbox, Store
from .webhooks import Notifier, validate_endpoint

logger = logging.getLogger(__name__)

JSON_CT = "application/json; odata.metadata=minimal; odata.streaming=true; IEEE754Compatible=false; charset=utf-8"
DEFAULT_PAGE_SIZE = 10  # §5 "default page size is 10" (messages list; contacts undocumented → guess)
MAX_PAGE_SIZE = 1000  # §5 "$top … within the range of 1 and 1000" (messages)
DELTA_NAMES = {"delta", "delta()", "microsoft.graph.delta", "microsoft.graph.delta()"}  # §3.1, §8.1
MAX_SUB_MINUTES = 10_080  # §4.2 Outlook contact max lifetime
MIN_SUB_MINUTES = 45  # §4.2 "Any value under 45 minutes … is automatically set to 45 minutes"
MAX_SUBS_PER_MAILBOX = 1000  # §4.1 quota
LIFECYCLE_EVENTS = ("missed", "subscriptionRemoved", "reauthorizationRequired")  # §4.6
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
# §5 JSON batching: Graph sends the Outlook service up to four unordered items of one batch at a time.
BATCH_PARALLELISM = 4


_ADDRESS_FILTER = re.compile(r"\s*emailAddresses/any\(\s*(\w+)\s*:\s*\1/address\s+eq\s+'((?:[^']|'')*)'\s*\)\s*",
                             re.IGNORECASE)


def _by_address(contacts: list[Contact], flt: str) -> list[Contact]:
    """The contacts a ``$filter`` that is exactly one ``emailAddresses/any(a:a/address eq '…')`` can match: those
    holding that address (compared as the filter compares strings, casefolded), as Exchange looks an address up
    instead of reading the whole folder. The filter itself is still evaluated on each of them; any other filter gets
    every contact."""
    m = _ADDRESS_FILTER.fullmatch(flt)
    if m is None:
        return contacts
    wanted = m.group(2).replace("''", "'").casefold()
    return [c for c in contacts
            if any(isinstance(e, dict) and isinstance(e.get("address"), str) and e["address"].casefold() == wanted
                   for e in c.props.get("emailAddresses") or ())]


class ConnectionDropped(Exception):
    """Close the client's connection without an answer (a TCP reset): ``faults.reset_rate``."""


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]  # keys lower-cased with the leading "$" removed
    raw_query: list[tuple[str, str]]
    headers: dict[str, str]  # lower-cased keys
    body: bytes = b""

    def json(self) -> Any:
        if not self.body:
            raise GraphError(400, "RequestBodyRead", "A request body is required.")
        try:
            return json.loads(self.body)
        except ValueError as e:
            raise GraphError(400, "RequestBodyRead", "The request body is not valid JSON.") from e

    def prefer(self) -> dict[str, str]:
        # §7.2: several Prefer values arrive joined into one header, comma-separated, any order.
        out: dict[str, str] = {}
        for part in self.headers.get("prefer", "").split(","):
            if "=" in part:
                k, v = part.split("=", 1)
                out[k.strip().lower()] = v.strip().strip('"')
        return out


@dataclass
class Response:
    status: int
    body: Any = None  # dict/list → JSON, bytes → raw, None → empty
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = JSON_CT

    def encoded(self) -> bytes:
        if self.body is None:
            return b""
        if isinstance(self.body, bytes):
            return self.body
        return json.dumps(self.body).encode()


def parse_query(qs: str) -> tuple[dict[str, str], list[tuple[str, str]]]:
    pairs: list[tuple[str, str]] = []
    for part in qs.split("&"):
        if not part:
            continue
        k, _, v = part.partition("=")
        pairs.append((unquote(k), unquote(v)))
    return {k.lower().lstrip("$"): v for k, v in pairs}, pairs


def split_path(path: str) -> list[str]:
    # §8.1: collapse "//", URL-decode segments, accept the key form name('id').
    segs: list[str] = []
    for raw in path.split("/"):
        if not raw:
            continue
        seg = unquote(raw)
        m = re.fullmatch(r"(\w+)\('(.*)'\)", seg)
        segs += [m.group(1), m.group(2)] if m else [seg]
    return segs


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_dt(value: Any) -> datetime:
    if not isinstance(value, str):
        raise GraphError(400, "InvalidRequest", "expirationDateTime is required.")
    text = value.strip().replace("Z", "+00:00")
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    try:
        dt = datetime.fromisoformat(text)
    except ValueError as e:
        raise GraphError(400, "InvalidRequest", "expirationDateTime is not a valid date.") from e
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def error_body(code: str, message: str, request_id: str, client_request_id: str | None) -> dict[str, Any]:
    # §7.3 / §8.3 Graph error envelope.
    inner = {"date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"), "request-id": request_id}
    inner["client-request-id"] = client_request_id or request_id
    return {"error": {"code": code, "message": message, "innerError": inner}}


@dataclass
class Subscription:
    id: str
    resource: str
    change_types: tuple[str, ...]
    notification_url: str
    lifecycle_url: str | None
    client_state: str | None
    expiration: datetime
    mailbox_id: str
    folder_id: str | None  # None: every folder of the mailbox (/users/{id}/contacts)
    needs_reauth: bool = False

    def render(self, base_url: str) -> dict[str, Any]:
        return {
            "@odata.context": f"{base_url}/$metadata#subscriptions/$entity",
            "id": self.id,
            "resource": self.resource,
            "applicationId": "00000000-0000-0000-0000-0000000e3a11",
            "changeType": ",".join(self.change_types),
            "clientState": self.client_state,
            "notificationUrl": self.notification_url,
            "notificationQueryOptions": None,
            "lifecycleNotificationUrl": self.lifecycle_url,
            "expirationDateTime": _iso(self.expiration),
            "creatorId": "00000000-0000-0000-0000-0000000e3a12",
            "includeResourceData": None,
            "latestSupportedTlsVersion": "v1_2",
            "encryptionCertificate": None,
            "encryptionCertificateId": None,
            "notificationUrlAppId": None,
        }


class GraphEmulator:
    """A local Microsoft Graph v1.0 for Outlook contacts. Use ``start()``/``stop()`` or ``with GraphEmulator() as g``.

    ``base_url`` is what the SDK needs (``request_adapter.base_url = g.base_url``). See docs/emulator-fidelity-graph.md
    and the module docstrings for the knobs (``faults``), ``counters`` and the ``/_admin`` HTTP API.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        tenant_id: str | None = None,
        users: tuple[str, ...] | list[str] = (),
        require_auth: bool = True,
        validation_timeout_s: float = 10.0,
        notification_first_timeout_s: float = 3.0,
        notification_retry_timeout_s: float = 10.0,
        notification_retry_base_delay_s: float = 0.5,
        notification_max_attempts: int = 4,
        seed: int = 0,
        grants: Grants = ADMIN_GUIDE_GRANTS,
    ) -> None:
        self.host = host
        self.grants = grants  # what the app may do (grants.py); tokens from the token endpoint carry its app roles
        self._port = port
        self.tenant_id = tenant_id or str(uuid.uuid4())
        self.require_auth = require_auth
        self.validation_timeout_s = validation_timeout_s
        self.store = Store(self.tenant_id)
        self.faults = Faults(seed=seed)
        self.counters = Counters()
        self.service = ServiceClock()  # time spent answering HTTP requests (benchmarks: ours vs the service's)
        self.gate = MailboxGate()
        self.notifier = Notifier(
            self.faults,
            notification_first_timeout_s,
            notification_retry_timeout_s,
            notification_retry_base_delay_s,
            notification_max_attempts,
        )
        self.subscriptions: dict[str, Subscription] = {}
        self.directory = dirs.Directory()  # Entra groups (directory.py), kept by reset() like the users
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        for upn in users:
            self.add_user(upn)

    # ---- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> GraphEmulator:
        handler = type("Handler", (_Handler,), {"emulator": self})
        self._server = _Server((self.host, self._port), handler)
        self._server.daemon_threads = True
        self._port = self._server.server_address[1]
        self.notifier.start()
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="graph-emulator", daemon=True
        )
        self._thread.start()
        logger.info("graph emulator listening on %s", self.root_url)
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread:
            self._thread.join(timeout=5)
            self._thread = None
        self.notifier.stop()

    def __enter__(self) -> GraphEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self._port}"

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1.0"

    def reset(self) -> None:
        """Forget all state except users, knobs back to defaults, counters and delivery log cleared."""
        with self.store.lock:
            for mb in self.store.mailboxes.values():
                root = mb.folders[mb.root_folder_id]
                mb.folders = {root.id: root}
                mb.contacts.clear()
                mb.tombstones.clear()
            self.store.tokens.clear()
            self.subscriptions.clear()
        self.faults.reset()
        self.counters.reset()
        self.gate.reset()
        self.notifier.clear()

    # ---- Python admin API ("as the user in Outlook") -------------------------------------------------------
    def add_user(self, upn: str, user_id: str | None = None, display_name: str | None = None) -> str:
        with self.store.lock:
            return self.store.add_user(upn, user_id, display_name).id

    def add_group(self, display_name: str, members: Sequence[str] = (), group_id: str | None = None) -> str:
        """An Entra group; ``members`` are UPNs or object ids of users, or ids of groups / other objects."""
        with self.store.lock:
            return self.directory.add_group(display_name, [self._object_id(m) for m in members], group_id).id

    def add_group_member(self, group_id: str, member: str) -> None:
        with self.store.lock:
            group, oid = self.directory.group(group_id), self._object_id(member)
            if oid not in group.members:
                group.members.append(oid)

    def remove_group_member(self, group_id: str, member: str) -> None:
        with self.store.lock:
            group, oid = self.directory.group(group_id), self._object_id(member)
            group.members = [m for m in group.members if m != oid]

    def add_directory_object(self, odata_type: str = "#microsoft.graph.device", object_id: str | None = None) -> str:
        """A directory object that is neither a user nor a group (a device by default), to put in a group."""
        with self.store.lock:
            oid = object_id or str(uuid.uuid4())
            self.directory.others[oid] = odata_type
            return oid

    def _object_id(self, ref: str) -> str:
        mb = self.store.find_user(ref)
        return mb.id if mb is not None else ref

    def user_id(self, mailbox: str) -> str:
        with self.store.lock:
            return self.store.user(mailbox).id

    def default_folder_id(self, mailbox: str) -> str:
        with self.store.lock:
            return self.store.user(mailbox).root_folder_id

    def create_folder(self, mailbox: str, display_name: str, parent_id: str | None = None) -> str:
        with self.store.lock:
            mb = self.store.user(mailbox)
            return self.store.create_folder(mb, parent_id or mb.root_folder_id, display_name).id

    def delete_folder(self, mailbox: str, folder_id: str, *, permanent: bool = False) -> None:
        """Delete a contact folder as the user would in Outlook: to Deleted Items (§2.3), or for good."""
        with self.store.lock:
            events = self.store.delete_folder(self.store.user(mailbox), folder_id, permanent=permanent,
                                              keep_delta=self.faults.folder_delete_keeps_delta)
        self._notify(events)

    def rename_folder(self, mailbox: str, folder_id: str, display_name: str) -> None:
        with self.store.lock:
            self.store.folder(self.store.user(mailbox), folder_id).display_name = display_name

    def folder_info(self, mailbox: str, folder_id: str) -> dict[str, Any] | None:
        """The folder as Graph renders it (``parentFolderId`` tells Deleted Items), None when gone for good."""
        with self.store.lock:
            f = self.store.user(mailbox).folders.get(folder_id)
            return Store.render_folder(f, expand=True) if f else None

    def deleted_items_id(self, mailbox: str) -> str:
        with self.store.lock:
            return self.store.user(mailbox).deleted_items_id

    def find_folder(self, mailbox: str, display_name: str, parent_id: str | None = None) -> str | None:
        with self.store.lock:
            mb = self.store.user(mailbox)
            for f in self.store.child_folders(mb, parent_id or mb.root_folder_id):
                if f.display_name.lower() == display_name.lower():
                    return f.id
        return None

    def create_contact(self, mailbox: str, data: dict[str, Any], folder_id: str | None = None) -> dict[str, Any]:
        with self.store.lock:
            mb = self.store.user(mailbox)
            c, events = self.store.create_contact(mb, folder_id or mb.root_folder_id, data)
            out = self.store.render_contact(c, expand=True)
        self._notify(events)
        return out

    def update_contact(self, mailbox: str, contact_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        with self.store.lock:
            c, events = self.store.update_contact(self.store.user(mailbox), contact_id, changes)
            out = self.store.render_contact(c, expand=True)
        self._notify(events)
        return out

    def move_contact(self, mailbox: str, contact_id: str, folder_id: str | None = None) -> dict[str, Any]:
        """Move into another folder (None = the default Contacts folder), as a user would in Outlook."""
        with self.store.lock:
            mb = self.store.user(mailbox)
            c, events = self.store.move_contact(mb, contact_id, folder_id or mb.root_folder_id)
            out = self.store.render_contact(c, expand=True)
        self._notify(events)
        return out

    def delete_contact(self, mailbox: str, contact_id: str) -> None:
        with self.store.lock:
            events = self.store.delete_contact(self.store.user(mailbox), contact_id)
        self._notify(events)

    def get_contact(self, mailbox: str, contact_id: str) -> dict[str, Any] | None:
        with self.store.lock:
            c = self.store.user(mailbox).contacts.get(contact_id)
            return self.store.render_contact(c, expand=True) if c else None

    def list_contacts(self, mailbox: str, folder_id: str | None = None) -> list[dict[str, Any]]:
        with self.store.lock:
            mb = self.store.user(mailbox)
            return [
                self.store.render_contact(c, expand=True)
                for c in self.store.contacts_in(mb, folder_id or mb.root_folder_id)
            ]

    def count_contacts(self, mailbox: str, folder_id: str | None = None) -> int:
        """How many contacts a folder holds (None = the default Contacts folder), without rendering them: a bench
        polling a folder of thousands every second would otherwise hold the store lock against the app's requests."""
        with self.store.lock:
            mb = self.store.user(mailbox)
            return len(self.store.contacts_in(mb, folder_id or mb.root_folder_id))

    def expire_delta_tokens(self, mailbox: str | None = None, code: str = "SyncStateNotFound") -> int:
        """§3.3 test hook: every delta/skip token (of one mailbox or all) now answers the delta reset ``code``:
        410 ``SyncStateNotFound`` (default), 400 ``SyncStateInvalid`` or 410 ``resyncRequired``."""
        with self.store.lock:
            return self.store.expire_tokens(self.store.user(mailbox).id if mailbox else None, code)

    def list_subscriptions(self) -> list[dict[str, Any]]:
        with self.store.lock:
            self._purge_expired()
            return [s.render(self.base_url) for s in self.subscriptions.values()]

    def expire_subscription(self, subscription_id: str) -> None:
        with self.store.lock:
            self.subscriptions.pop(subscription_id, None)

    def send_lifecycle(self, subscription_id: str, event: str) -> None:
        """§4.6: POST a lifecycle notification (missed | subscriptionRemoved | reauthorizationRequired)."""
        if event not in LIFECYCLE_EVENTS:
            raise ValueError(f"unknown lifecycle event {event!r}")
        with self.store.lock:
            sub = self.subscriptions.get(subscription_id)
            if sub is None:
                raise KeyError(subscription_id)
            if not sub.lifecycle_url:
                raise ValueError("subscription has no lifecycleNotificationUrl")
            note = {
                "subscriptionId": sub.id,
                "subscriptionExpirationDateTime": _iso(sub.expiration),
                "tenantId": self.tenant_id,
                "clientState": sub.client_state,
                "lifecycleEvent": event,
            }
            if event == "subscriptionRemoved":
                del self.subscriptions[sub.id]
            elif event == "reauthorizationRequired":
                sub.needs_reauth = True
            url = sub.lifecycle_url
        self.notifier.submit(url, [note])

    def deliveries(self) -> list[Any]:
        """Every notification POST attempted so far (``webhooks.Delivery``)."""
        return self.notifier.deliveries()

    def wait_notifications(self, timeout: float = 5.0) -> bool:
        return self.notifier.wait_idle(timeout)

    # ---- notifications -------------------------------------------------------------------------------------
    def _purge_expired(self) -> None:
        # Graph deletes expired subscriptions; they stop delivering.
        now = datetime.now(UTC)
        for sid in [s.id for s in self.subscriptions.values() if s.expiration <= now]:
            del self.subscriptions[sid]

    def _notify(self, events: list[ChangeEvent]) -> None:
        """§4.4: one changeNotification per (event, matching subscription), batched per notificationUrl."""
        if not events:
            return
        by_url: dict[str, list[dict[str, Any]]] = {}
        with self.store.lock:
            self._purge_expired()
            for ev in events:
                for sub in self.subscriptions.values():
                    change_type = ev.change_type
                    if sub.folder_id is None and self._is_move(events, ev):
                        # mailbox-wide subscription: a move is one update (the deleted half is skipped; guess)
                        if change_type == "deleted":
                            continue
                        change_type = "updated"
                    if sub.mailbox_id != ev.mailbox_id or change_type not in sub.change_types:
                        continue
                    if sub.folder_id is not None and sub.folder_id != ev.folder_id:
                        continue
                    res = f"Users/{ev.mailbox_id}/Contacts/{ev.contact_id}"
                    data: dict[str, Any] = {"@odata.type": "#Microsoft.Graph.Contact", "@odata.id": res}
                    if ev.etag:
                        data["@odata.etag"] = ev.etag
                    data["id"] = ev.contact_id
                    by_url.setdefault(sub.notification_url, []).append(
                        {
                            "id": uuid.uuid4().hex,
                            "subscriptionId": sub.id,
                            "subscriptionExpirationDateTime": _iso(sub.expiration),
                            "clientState": sub.client_state,
                            "changeType": change_type,
                            "resource": res,
                            "tenantId": self.tenant_id,
                            "resourceData": data,
                        }
                    )
        for url, notes in by_url.items():
            self.notifier.submit(url, notes)

    @staticmethod
    def _is_move(events: list[ChangeEvent], ev: ChangeEvent) -> bool:
        return sum(1 for e in events if e.contact_id == ev.contact_id) > 1

    # ---- request entry points ------------------------------------------------------------------------------
    def handle(self, req: Request) -> Response:
        segs = split_path(req.path)
        if segs[:1] == ["_admin"]:
            try:
                return self._admin(req, segs[1:])
            except GraphError as e:
                return self._error(e, req)
            except (KeyError, ValueError) as e:
                return self._error(GraphError(400, "BadRequest", str(e)), req)
        if len(segs) == 4 and segs[1:] == ["oauth2", "v2.0", "token"] and req.method == "POST":
            return self._token(self.grants)
        if len(segs) == 4 and segs[1:] == ["v2.0", ".well-known", "openid-configuration"]:
            return self._openid(segs[0])
        if segs[:1] != ["v1.0"]:
            return self._error(GraphError(404, "NotFound", "Only /v1.0 is emulated."), req)
        if self.require_auth and not req.headers.get("authorization", "").strip():
            # [OBSERVED-IN-WILD] Graph's answer to a missing token.
            return self._error(GraphError(401, "InvalidAuthenticationToken", "Access token is empty."), req)
        # A random connection reset (faults.reset_rate): no answer at all, before or after the request ran.
        drop = self.faults.roll_reset()
        if drop == "before":
            raise ConnectionDropped
        resp = self._v1(req, segs)
        if drop == "after":
            raise ConnectionDropped
        return resp

    def _v1(self, req: Request, segs: list[str]) -> Response:
        if segs[1:] == ["$batch"]:
            self.counters.record("-", "$batch")
            self.counters.record_http("-")
            resp = self._guarded(req, "-", "$batch", lambda: self._batch(req), gate=False)
            self.counters.record_status("-", "$batch", resp.status)
            return resp
        return self._api(req, segs[1:])

    def _api(self, req: Request, segs: list[str], *, in_batch: bool = False) -> Response:
        try:
            endpoint, params = route(req.method, segs)
            mailbox = self._mailbox_key(params)
        except GraphError as e:
            self.counters.record("-", "unknown")
            return self._error(e, req)
        self.counters.record(mailbox, endpoint)
        if not in_batch:
            self.counters.record_http(mailbox)
        resp = self._guarded(req, mailbox, endpoint, lambda: self._execute(endpoint, params, req), gate=True)
        self.counters.record_status(mailbox, endpoint, resp.status)
        return resp

    def _guarded(self, req: Request, mailbox: str, endpoint: str, run: Callable[[], Response], gate: bool) -> Response:
        entered = False
        try:
            if gate and mailbox != "-":
                if not self.gate.enter(mailbox, self.faults.mailbox_concurrency):
                    # §5: more than 4 concurrent requests per app + mailbox [OBSERVED-IN-WILD body].
                    raise GraphError(
                        429,
                        "ApplicationThrottled",
                        "Application is over its MailboxConcurrency limit.",
                        {"Retry-After": str(self.faults.concurrency_retry_after)},
                    )
                entered = True
                if self.gate.over_rate(mailbox, self.faults.mailbox_rate_limit, self.faults.mailbox_rate_window_s):
                    # §5: 10,000 requests per 10 minutes per app + mailbox (message text is a guess).
                    raise GraphError(
                        429,
                        "ApplicationThrottled",
                        "Application is over its MailboxRequestRate limit.",
                        {"Retry-After": str(max(1, int(self.faults.mailbox_rate_window_s / 60)))},
                    )
            rule = self.faults.take_rule(mailbox if mailbox != "-" else None, endpoint, after=False)
            if rule:
                raise self._rule_error(rule)
            rule = self.faults.roll_status()  # random 429 with Retry-After / 503 (faults.throttle_rate ...), counted
            if rule:
                raise self._rule_error(rule)
            delay = self.faults.delay_for(mailbox)
            if delay:
                time.sleep(delay)
            resp = run()
            rule = self.faults.take_rule(mailbox if mailbox != "-" else None, endpoint, after=True)
            if rule:
                raise self._rule_error(rule)
            return resp
        except GraphError as e:
            return self._error(e, req)
        except ODataSyntaxError as e:
            return self._error(GraphError(400, "ErrorInvalidUrlQueryFilter", str(e)), req)
        finally:
            if entered:
                self.gate.leave(mailbox)

    @staticmethod
    def _rule_error(rule: FaultRule) -> GraphError:
        headers = {"Retry-After": str(int(rule.retry_after))} if rule.retry_after is not None else {}
        return GraphError(rule.status, rule.code, rule.message, headers)

    def _error(self, e: GraphError, req: Request) -> Response:
        rid = str(uuid.uuid4())
        body = error_body(e.code, e.message, rid, req.headers.get("client-request-id"))
        headers = {"request-id": rid, "client-request-id": req.headers.get("client-request-id", rid), **e.headers}
        return Response(e.status, body, headers, "application/json")

    def _mailbox_key(self, params: dict[str, Any]) -> str:
        ref = params.get("user")
        if ref is None:
            return "-"
        with self.store.lock:
            mb = self.store.find_user(ref)
        return mb.id if mb else ref

    # ---- Graph handlers ------------------------------------------------------------------------------------
    def _execute(self, endpoint: str, p: dict[str, Any], req: Request) -> Response:
        self._authorize(endpoint, p, req)
        if endpoint.startswith("group."):
            return self._group_members(endpoint, p, req)
        if endpoint.startswith("subscription"):
            return self._subscriptions(endpoint, p, req)
        if endpoint == "contacts.delta":
            return self._delta(p, req)
        events: list[ChangeEvent] = []
        with self.store.lock:
            if endpoint == "users.list":
                return Response(200, {"value": [Store.render_user(m) for m in self.store.mailboxes.values()]})
            mb = self.store.user(p["user"])
            ctx = f"{self.base_url}/$metadata#users('{mb.id}')"
            if endpoint == "user.get":
                return Response(
                    200, {"@odata.context": f"{self.base_url}/$metadata#users/$entity", **Store.render_user(mb)}
                )
            if endpoint in ("contactFolders.list", "childFolders.list"):
                parent = self.store.folder(mb, p.get("folder")).id
                rows = [self._folder_json(req, f) for f in self.store.child_folders(mb, parent)]
                return self._page(req, rows, f"{ctx}/contactFolders", select_ok=True)
            if endpoint in ("contactFolders.create", "childFolders.create"):
                parent = self.store.folder(mb, p.get("folder")).id
                body = req.json()
                f = self.store.create_folder(mb, parent, body.get("displayName") if isinstance(body, dict) else None)
                self.store.set_folder_props(f, body)
                return Response(201, {"@odata.context": f"{ctx}/contactFolders/$entity", **Store.render_folder(f)})
            if endpoint == "contactFolder.get":
                f = self.store.folder(mb, p["folder"])
                return Response(200, {"@odata.context": f"{ctx}/contactFolders/$entity", **self._folder_json(req, f)})
            if endpoint == "contactFolder.update":
                f = self.store.folder(mb, p["folder"])
                body = req.json()
                self.store.set_folder_props(f, body)
                if body.get("displayName"):
                    f.display_name = body["displayName"]
                return Response(200, {"@odata.context": f"{ctx}/contactFolders/$entity", **Store.render_folder(f)})
            if endpoint in ("contactFolder.delete", "contactFolder.permanentDelete"):
                permanent = endpoint == "contactFolder.permanentDelete"
                events = self.store.delete_folder(mb, p["folder"], permanent=permanent,
                                                  keep_delta=self.faults.folder_delete_keeps_delta)
                resp = Response(204)
            elif endpoint == "contacts.list":
                resp = self._list_contacts(mb, p.get("folder"), req, ctx)
            elif endpoint == "contacts.create":
                c, events = self.store.create_contact(mb, self.store.folder(mb, p.get("folder")).id, req.json())
                resp = Response(201, {"@odata.context": f"{ctx}/contacts/$entity", **self._render(c, req)})
            elif endpoint == "contact.get":
                c = self.store.contact(mb, p["contact"], p.get("folder"))
                resp = Response(200, {"@odata.context": f"{ctx}/contacts/$entity", **self._render(c, req)})
            elif endpoint == "contact.update":
                c, events = self.store.update_contact(
                    mb, p["contact"], req.json(), p.get("folder"), self._if_match(req)
                )
                resp = Response(200, {"@odata.context": f"{ctx}/contacts/$entity", **self._render(c, req)})
            elif endpoint in ("contact.delete", "contact.permanentDelete"):
                events = self.store.delete_contact(mb, p["contact"], p.get("folder"), self._if_match(req))
                resp = Response(204)
            else:  # pragma: no cover - route() only yields known endpoints
                raise GraphError(400, "BadRequest", "Unsupported endpoint.")
        self._notify(events)
        return resp

    def _group_members(self, endpoint: str, p: dict[str, Any], req: Request) -> Response:
        """§6.5: a group's members or transitive members (directory.py has the rules)."""
        dirs.refuse_skip(req.query)
        kind = dirs.check_cast(p.get("cast"), req.headers, req.query)
        select = parse_select(req.query.get("select"))
        reads_users = bool(self._roles(req) & dirs.USER_READ_ROLES)
        with self.store.lock:
            group = self.directory.group(p["group"])
            ids = self.directory.transitive(group) if endpoint == "group.transitiveMembers" else list(group.members)
            rows = [r for r in (dirs.render(self.directory, self.store.mailboxes, oid, select, reads_users)
                                for oid in ids) if r is not None]
        if kind is not None:
            rows = [r for r in rows if r["@odata.type"] == kind]
        pairs = [(k, v) for k, v in req.raw_query if k.lower().lstrip("$") != "skiptoken"]
        qs = "&".join(f"{quote(k, safe='$')}={quote(v, safe='')}" for k, v in pairs)
        path = "/".join(quote(seg, safe="$()'=.") for seg in split_path(req.path)[1:])
        body = dirs.page(rows, req.query, f"{self.base_url}/{path}" + (f"?{qs}" if qs else ""))
        what = "users" if kind == "#microsoft.graph.user" else "directoryObjects"
        return Response(200, {"@odata.context": f"{self.base_url}/$metadata#{what}", **body})

    def _if_match(self, req: Request) -> str | None:
        """§1.5: If-Match on contacts is undocumented; ``faults.ignore_if_match`` ignores it, as Exchange may."""
        return None if self.faults.ignore_if_match else req.headers.get("if-match")

    @staticmethod
    def _render(c: Contact, req: Request) -> dict[str, Any]:
        select = parse_select(req.query.get("select"))
        expand = req.query.get("expand")
        exp_filter = parse_expand(expand) if expand else None
        return Store.render_contact(c, select, exp_filter, expand=bool(expand))

    @staticmethod
    def _folder_json(req: Request, f: Folder) -> dict[str, Any]:
        expand = req.query.get("expand")
        return Store.render_folder(f, parse_expand(expand) if expand else None, expand=bool(expand))

    def _page_size(self, req: Request) -> int:
        size = req.query.get("top") or req.prefer().get("odata.maxpagesize")
        try:
            n = int(size) if size else DEFAULT_PAGE_SIZE
        except ValueError as e:
            raise GraphError(400, "BadRequest", "Invalid page size.") from e
        if n < 1:
            raise GraphError(400, "BadRequest", "Invalid page size.")
        return min(n, MAX_PAGE_SIZE)

    def _page(self, req: Request, rows: list[dict[str, Any]], context: str, select_ok: bool = False) -> Response:
        """Filter/select/page a list of JSON rows; nextLink carries $skip (paging doc §5, Outlook style)."""
        flt = req.query.get("filter")
        if flt:
            pred = compile_filter(flt)
            rows = [r for r in rows if pred(r)]
        select = parse_select(req.query.get("select"))
        if select_ok and select:
            wanted = {s.lower() for s in select} | {"id"}
            if req.query.get("expand"):  # an expanded navigation property is returned beside the $select
                wanted.add("singlevalueextendedproperties")
            rows = [{k: v for k, v in r.items() if k.lower() in wanted or k.startswith("@")} for r in rows]
        return self._slice(req, rows, context)

    def _slice(self, req: Request, rows: Sequence[Any], context: str,
               render: Callable[[Any], dict[str, Any]] | None = None) -> Response:
        """One page of ``rows`` ($skip/$top paging); ``render`` turns the page's rows into JSON (only that page's:
        rendering a whole 100,000-contact folder for each page made listing it quadratic)."""
        size = self._page_size(req)
        try:
            skip = int(req.query.get("skip") or 0)
        except ValueError as e:
            raise GraphError(400, "BadRequest", "Invalid $skip.") from e
        page = rows[skip : skip + size]
        body: dict[str, Any] = {"@odata.context": context,
                                "value": [render(r) for r in page] if render is not None else list(page)}
        if skip + size < len(rows):
            pairs = [(k, v) for k, v in req.raw_query if k.lower().lstrip("$") != "skip"]
            pairs.append(("$skip", str(skip + size)))
            qs = "&".join(f"{quote(k, safe='$')}={quote(v, safe='')}" for k, v in pairs)
            path = "/".join(quote(s, safe="$()'=") for s in split_path(req.path)[1:])
            body["@odata.nextLink"] = f"{self.base_url}/{path}?{qs}"
        headers = {}
        if "odata.maxpagesize" in req.prefer():
            headers["Preference-Applied"] = f"odata.maxpagesize={size}"
        return Response(200, body, headers)

    def _list_contacts(self, mb: Mailbox, folder_id: str | None, req: Request, ctx: str) -> Response:
        folder = self.store.folder(mb, folder_id)
        contacts = self.store.contacts_in(mb, folder.id)
        flt = req.query.get("filter")
        if flt:
            # §2/§8: $filter on properties; extended-property and emailAddresses lambdas per the docs cited in odata.py.
            pred = compile_filter(flt)
            contacts = [c for c in _by_address(contacts, flt) if pred(Store.filter_view(c))]
        orderby = req.query.get("orderby")
        if orderby:
            key, _, direction = orderby.strip().partition(" ")
            contacts.sort(
                key=lambda c: str(Store.render_contact(c).get(key) or "").casefold(),
                reverse=direction.strip().lower() == "desc",
            )
        return self._slice(req, contacts, f"{ctx}/contactFolders('{folder.id}')/contacts",
                           lambda c: self._render(c, req))

    def _delta(self, p: dict[str, Any], req: Request) -> Response:
        try:
            return self._delta_page(p, req)
        except GraphError as e:
            if e.status == 410:
                # §3.3 "Synchronization reset": 410 with a Location header, the request URL with an empty $deltaToken
                path = "/".join(quote(s, safe="$()'=") for s in split_path(req.path)[1:])
                e.headers = {**e.headers, "Location": f"{self.base_url}/{path}?$deltatoken="}
            raise

    def _delta_page(self, p: dict[str, Any], req: Request) -> Response:
        """§3: per-folder delta with opaque skip/delta tokens, @removed, empty pages, 410 for expired tokens."""
        with self.store.lock:
            mb = self.store.user(p["user"])
            folder = self.store.folder(mb, p.get("folder"))
            size = self._page_size(req)
            skip, dtok = req.query.get("skiptoken"), req.query.get("deltatoken")
            reset = self.faults.roll_delta_reset() if skip or dtok else None
            if reset:
                self.store.expire_tokens(mb.id, reset)  # a random reset (soak): this mailbox's tokens all go
            if skip:
                tok = self.store.token(skip)
                if tok.round is None or tok.folder_id != folder.id:
                    raise self.store_token_error()
                rnd, offset = tok.round, tok.offset
            elif dtok:
                tok = self.store.token(dtok)
                if tok.round is not None or tok.folder_id != folder.id:
                    raise self.store_token_error()
                rnd = self.store.start_round(mb, folder.id, tok.since, tok.select).round
                offset = 0
            else:  # initial round; an empty $deltatoken (410 Location form, §3.3) also lands here
                select = parse_select(req.query.get("select"))
                if select:
                    Store.render_contact(Contact("x", "x", {}, "x", "", "", 0), select)  # validates names
                rnd = self.store.start_round(mb, folder.id, None, select).round
                offset = 0
            if rnd is None:  # a delta token never reaches here without a round
                raise self.store_token_error()
            link_base = f"{self.base_url}/users/{mb.id}/contactFolders/{folder.id}/contacts/delta()"
            body: dict[str, Any] = {"@odata.context": f"{self.base_url}/$metadata#Collection(contact)"}
            if self.faults.take_empty_page():
                body["@odata.nextLink"] = f"{link_base}?$skiptoken={self.store.skip_token(rnd, offset)}"
                body["value"] = []
            else:
                values = []
                for cid, removed in rnd.items[offset : offset + size]:
                    c = mb.contacts.get(cid)
                    if removed or c is None or c.folder_id != folder.id:
                        values.append(
                            {"@odata.type": "#microsoft.graph.contact", "id": cid, "@removed": {"reason": "deleted"}}
                        )
                    else:
                        values.append(
                            {"@odata.type": "#microsoft.graph.contact", **Store.render_contact(c, rnd.select)}
                        )
                body["value"] = values
                if offset + size < len(rnd.items):
                    body["@odata.nextLink"] = f"{link_base}?$skiptoken={self.store.skip_token(rnd, offset + size)}"
                else:
                    body["@odata.deltaLink"] = f"{link_base}?$deltatoken={self.store.delta_token(rnd)}"
        headers = {"Preference-Applied": f"odata.maxpagesize={size}"} if "odata.maxpagesize" in req.prefer() else {}
        return Response(200, body, headers)

    @staticmethod
    def store_token_error() -> GraphError:
        return GraphError(410, "SyncStateNotFound", "The sync state generation is not found.")

    # ---- subscriptions (§4) --------------------------------------------------------------------------------
    def _parse_resource(self, resource: Any) -> tuple[str, str | None]:
        if not isinstance(resource, str) or not resource:
            raise GraphError(400, "InvalidRequest", "resource is required.")
        segs = split_path(urlsplit(resource).path)
        low = [s.lower() for s in segs]
        with self.store.lock:
            if len(segs) == 5 and low[0] == "users" and low[2] == "contactfolders" and low[4] == "contacts":
                mb = self.store.user(segs[1])
                return mb.id, self.store.folder(mb, segs[3]).id
            if len(segs) == 3 and low[0] == "users" and low[2] == "contacts":
                return self.store.user(segs[1]).id, None
        raise GraphError(400, "InvalidRequest", "The emulator only supports contact resources.")

    def _check_expiration(self, value: Any) -> datetime:
        now = datetime.now(UTC)
        exp = _parse_dt(value)
        if exp > now + timedelta(minutes=MAX_SUB_MINUTES):
            raise GraphError(
                400, "InvalidRequest", f"Subscription expiration can only be {MAX_SUB_MINUTES} minutes in the future."
            )
        return max(exp, now + timedelta(minutes=MIN_SUB_MINUTES))

    @staticmethod
    def _check_url(url: Any, name: str) -> str:
        if not isinstance(url, str) or not url:
            raise GraphError(400, "InvalidRequest", f"{name} is required.")
        parts = urlsplit(url)
        # §4.2: must be https; the emulator also allows http on loopback (fidelity doc).
        if parts.scheme != "https" and not (parts.scheme == "http" and parts.hostname in LOOPBACK):
            raise GraphError(400, "InvalidRequest", f"{name} must use the https protocol.")
        return url

    def _subscriptions(self, endpoint: str, p: dict[str, Any], req: Request) -> Response:
        with self.store.lock:
            self._purge_expired()
            sub = self.subscriptions.get(p.get("subscription", ""))
            if endpoint == "subscriptions.list":
                return Response(200, {"value": [s.render(self.base_url) for s in self.subscriptions.values()]})
            if endpoint != "subscriptions.create" and sub is None:
                raise GraphError(404, "ResourceNotFound", "The object was not found.")
            if endpoint == "subscription.get":
                assert sub is not None
                return Response(200, sub.render(self.base_url))
            if endpoint == "subscription.delete":
                assert sub is not None
                del self.subscriptions[sub.id]
                return Response(204)
            if endpoint == "subscription.reauthorize":
                assert sub is not None
                sub.needs_reauth = False
                return Response(204)
            if endpoint == "subscription.update":
                assert sub is not None
                body = req.json()
                if "lifecycleNotificationUrl" in body:
                    # §4.2: lifecycleNotificationUrl can't be added later with PATCH.
                    raise GraphError(400, "InvalidRequest", "lifecycleNotificationUrl cannot be updated.")
                if "expirationDateTime" in body:
                    sub.expiration = self._check_expiration(body["expirationDateTime"])
                sub.needs_reauth = False  # §4.6: a PATCH of expirationDateTime also reauthorizes
                return Response(200, sub.render(self.base_url))
        return self._create_subscription(req)

    def _create_subscription(self, req: Request) -> Response:
        body = req.json()
        if not isinstance(body, dict):
            raise GraphError(400, "InvalidRequest", "Body must be a subscription.")
        if body.get("includeResourceData"):
            raise GraphError(400, "InvalidRequest", "Rich notifications (includeResourceData) are not emulated.")
        types = tuple(t.strip() for t in str(body.get("changeType") or "").split(",") if t.strip())
        if not types or any(t not in ("created", "updated", "deleted") for t in types):
            raise GraphError(400, "InvalidRequest", "changeType must be created, updated and/or deleted.")
        url = self._check_url(body.get("notificationUrl"), "notificationUrl")
        lifecycle = body.get("lifecycleNotificationUrl")
        if lifecycle is not None:
            self._check_url(lifecycle, "lifecycleNotificationUrl")
        client_state = body.get("clientState")
        if client_state is not None and (not isinstance(client_state, str) or len(client_state) > 128):
            raise GraphError(400, "InvalidRequest", "clientState must be at most 128 characters.")  # §4.2
        expiration = self._check_expiration(body.get("expirationDateTime"))
        mailbox_id, folder_id = self._parse_resource(body.get("resource"))
        with self.store.lock:
            owner = self.store.user(mailbox_id)
        self._check_mailbox(self._roles(req), owner, write=False)  # Contacts.Read on that mailbox (§4.1)
        resource = str(body["resource"]).lstrip("/")
        if self.faults.subscription_create_delay_s:  # a slow Graph: the lifecycle webhook must not wait for it
            time.sleep(self.faults.subscription_create_delay_s)
        self._check_duplicate(types, resource, mailbox_id)
        # §4.3: validation handshake to each URL (twice if both are the same), synchronously, before creating.
        token = f"Validation: Testing client application reachability for subscription Request-Id: {uuid.uuid4()}"
        for target in [url] + ([lifecycle] if lifecycle else []):
            reason = validate_endpoint(target, token, self.validation_timeout_s)
            if reason:
                logger.info("subscription validation failed: %s", reason)
                raise GraphError(
                    400,
                    "InvalidRequest",
                    f"Subscription validation request failed. Notification endpoint must respond with 200 OK to "
                    f"validation request. ({reason})",
                )
        with self.store.lock:
            self._check_duplicate(types, resource, mailbox_id)
            sub = Subscription(
                str(uuid.uuid4()), resource, types, url, lifecycle, client_state, expiration, mailbox_id, folder_id
            )
            self.subscriptions[sub.id] = sub
            return Response(201, sub.render(self.base_url))

    def _check_duplicate(self, types: tuple[str, ...], resource: str, mailbox_id: str) -> None:
        with self.store.lock:
            mine = [s for s in self.subscriptions.values() if s.mailbox_id == mailbox_id]
            if len(mine) >= MAX_SUBS_PER_MAILBOX:
                raise GraphError(403, "ExtensionError", "Subscription quota exceeded for this mailbox.")  # §4.1
            for s in mine:
                if set(s.change_types) == set(types) and s.resource.lower() == resource.lower():
                    # §4.2: duplicate changeType + resource → 409.
                    raise GraphError(
                        409, "Conflict", f"Subscription Id {s.id} already exists for the requested combination"
                    )

    # ---- $batch (§5 JSON batching) -------------------------------------------------------------------------
    def _batch(self, req: Request) -> Response:
        """Items run up to ``BATCH_PARALLELISM`` at a time, each counted at the mailbox gate on its own (§5: Graph
        sends Outlook up to four unordered items of a batch at once; ``dependsOn`` makes an item wait for its
        dependencies). So a batch of 20 for one mailbox occupies 4 of its concurrency slots while it runs."""
        body = req.json()
        items = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(items, list) or not items:
            raise GraphError(400, "BadRequest", "Invalid batch payload format.")
        if len(items) > 20:
            raise GraphError(400, "BadRequest", "Number of requests exceeds limit of 20.")
        ids = [str(i.get("id")) for i in items if isinstance(i, dict)]
        if len(ids) != len(items) or len(set(ids)) != len(ids):
            raise GraphError(400, "BadRequest", "Batch request ids must be present and unique.")
        deps: dict[str, list[str]] = {}
        for pos, item in enumerate(items):
            wanted = [str(d) for d in item.get("dependsOn") or []]  # `depends_on` (SDK bug §7.6) is ignored, as Graph
            if any(d not in ids[:pos] for d in wanted):
                raise GraphError(400, "BadRequest", "dependsOn must refer to an earlier request id.")
            deps[ids[pos]] = wanted
        results: dict[str, dict[str, Any]] = {}
        pending = list(zip(ids, items, strict=True))
        running: dict[Future[dict[str, Any]], str] = {}
        with ThreadPoolExecutor(BATCH_PARALLELISM, thread_name_prefix="graph-batch") as pool:
            while pending or running:
                for rid, item in list(pending):
                    if len(running) >= BATCH_PARALLELISM:
                        break
                    if not all(d in results for d in deps[rid]):
                        continue
                    pending.remove((rid, item))
                    if any(results[d]["status"] >= 400 for d in deps[rid]):
                        fail = error_body("FailedDependency", "Dependent request failed.", str(uuid.uuid4()), None)
                        results[rid] = {"id": rid, "status": 424, "headers": {"Content-Type": "application/json"},
                                        "body": fail}
                        continue
                    running[pool.submit(self._batch_item, req, item)] = rid
                if running:
                    done, _ = wait_futures(running, return_when=FIRST_COMPLETED)
                    for future in done:
                        results[running.pop(future)] = future.result()
        responses = [results[rid] for rid in ids]
        if self.faults.batch_reverse_responses:
            responses.reverse()
        return Response(200, {"responses": responses})

    def _batch_item(self, outer: Request, item: dict[str, Any]) -> dict[str, Any]:
        rid = str(item["id"])
        parts = urlsplit(str(item.get("url") or ""))
        path = parts.path if parts.path.startswith("/v1.0") else "/v1.0/" + parts.path.lstrip("/")
        query, raw = parse_query(parts.query)
        headers = {str(k).lower(): str(v) for k, v in (item.get("headers") or {}).items()}
        headers.setdefault("authorization", outer.headers.get("authorization", ""))
        payload = item.get("body")
        if isinstance(payload, str):
            try:
                data = base64.b64decode(payload)
            except ValueError:
                data = payload.encode()
        else:
            data = json.dumps(payload).encode() if payload is not None else b""
        sub = Request(str(item.get("method") or "GET").upper(), path, query, raw, headers, data)
        resp = self._api(sub, split_path(path)[1:], in_batch=True)
        out_headers = dict(resp.headers)
        if resp.body is not None:
            out_headers["Content-Type"] = "application/json"
        # §5: a throttled item carries its own Retry-After in the item's headers.
        return {
            "id": rid,
            "status": resp.status,
            "headers": out_headers,
            **({"body": resp.body} if resp.body is not None else {}),
        }

    # ---- fake identity endpoints -----------------------------------------------------------------------------
    @staticmethod
    def _token(grants: Grants) -> Response:
        # An app-only token names its application permissions in the ``roles`` claim (§6.4). Unsigned: only this
        # emulator reads it.
        claims = {"roles": sorted(grants.app_roles), "idtyp": "app", "jti": uuid.uuid4().hex}
        parts = [{"alg": "none", "typ": "JWT"}, claims]
        token = ".".join(base64.urlsafe_b64encode(json.dumps(p).encode()).decode().rstrip("=") for p in parts) + "."
        return Response(
            200,
            {"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": token},
            content_type="application/json",
        )

    def _roles(self, req: Request) -> frozenset[str]:
        """The app roles of the request's token; a token not issued here (a fixed dev token) has the emulator's."""
        token = req.headers.get("authorization", "").removeprefix("Bearer ").strip()
        parts = token.split(".")
        if len(parts) == 3:
            try:
                claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
                return frozenset(str(r) for r in claims.get("roles") or [])
            except (ValueError, AttributeError):
                pass
        return self.grants.app_roles

    def _authorize(self, endpoint: str, p: dict[str, Any], req: Request) -> None:
        """§6.4: Entra decides directory reads, Exchange (or a tenant-wide Entra role) decides mailbox data."""
        roles = self._roles(req)
        if endpoint.startswith("group."):  # §6.5: GroupMember.Read.All (or a wider group/directory role)
            if not roles & dirs.GROUP_MEMBER_ROLES:
                raise GraphError(403, *dirs.DENIED)
            return
        if endpoint in ("users.list", "user.get"):
            if not self.grants.reads_directory(roles):
                raise GraphError(403, *DIRECTORY_DENIED)
            return
        if endpoint.startswith("subscription") or p.get("user") is None:
            return
        with self.store.lock:
            mb = self.store.find_user(p["user"])
        if mb is not None:
            self._check_mailbox(roles, mb, write=req.method != "GET")

    def _check_mailbox(self, roles: frozenset[str], mb: Mailbox, *, write: bool) -> None:
        if not self.grants.reaches_mailbox(roles, (mb.upn, mb.id), write):
            raise GraphError(403, *MAILBOX_DENIED)

    def _openid(self, tenant: str) -> Response:
        root = f"{self.root_url}/{tenant}"
        return Response(
            200,
            {
                "token_endpoint": f"{root}/oauth2/v2.0/token",
                "authorization_endpoint": f"{root}/oauth2/v2.0/authorize",
                "issuer": f"{root}/v2.0",
                "tenant_region_scope": "WW",
            },
            content_type="application/json",
        )

    # ---- /_admin HTTP API ----------------------------------------------------------------------------------
    def _admin(self, req: Request, segs: list[str]) -> Response:  # noqa: C901 - a flat dispatch table
        m = req.method
        body = json.loads(req.body) if req.body else {}
        ok = Response(200, {"ok": True}, content_type="application/json")
        if segs == ["health"]:
            return ok
        if segs == ["reset"] and m == "POST":
            self.reset()
            return ok
        if segs == ["users"] and m == "POST":
            uid = self.add_user(body["userPrincipalName"], body.get("id"), body.get("displayName"))
            with self.store.lock:
                return Response(201, Store.render_user(self.store.user(uid)))
        if segs == ["users"] and m == "GET":
            with self.store.lock:
                return Response(200, {"value": [Store.render_user(mb) for mb in self.store.mailboxes.values()]})
        if len(segs) >= 3 and segs[0] == "users":
            user, rest = segs[1], segs[2:]
            if rest == ["folders"] and m == "GET":
                with self.store.lock:
                    mb = self.store.user(user)
                    return Response(
                        200,
                        {
                            "defaultFolderId": mb.root_folder_id,
                            "value": [Store.render_folder(f) for f in mb.folders.values()],
                        },
                    )
            if rest == ["folders"] and m == "POST":
                fid = self.create_folder(user, body["displayName"], body.get("parentFolderId"))
                return Response(201, {"id": fid})
            if rest == ["contacts"] and m == "GET":
                return Response(200, {"value": self.list_contacts(user, req.query.get("folderid"))})
            if rest == ["contacts"] and m == "POST":
                folder = body.pop("folderId", None)
                return Response(201, self.create_contact(user, body, folder))
            if len(rest) == 2 and rest[0] == "contacts":
                if m == "GET":
                    c = self.get_contact(user, rest[1])
                    if c is None:
                        raise GraphError(404, "ErrorItemNotFound", "not found")
                    return Response(200, c)
                if m == "PATCH":
                    return Response(200, self.update_contact(user, rest[1], body))
                if m == "DELETE":
                    self.delete_contact(user, rest[1])
                    return Response(204)
            if len(rest) == 3 and rest[0] == "contacts" and rest[2] == "move" and m == "POST":
                return Response(200, self.move_contact(user, rest[1], body.get("folderId")))
        if segs == ["groups"] and m == "POST":
            gid = self.add_group(body.get("displayName") or "group", body.get("members") or [], body.get("id"))
            return Response(201, {"id": gid})
        if len(segs) >= 3 and segs[0] == "groups" and segs[2] == "members":
            if len(segs) == 3 and m == "POST":
                self.add_group_member(segs[1], body["id"])
                return Response(204)
            if len(segs) == 4 and m == "DELETE":
                self.remove_group_member(segs[1], segs[3])
                return Response(204)
        if segs == ["delta", "expire"] and m == "POST":
            code = body.get("code") or "SyncStateNotFound"
            return Response(200, {"expired": self.expire_delta_tokens(body.get("mailbox"), code)})
        if segs == ["subscriptions"] and m == "GET":
            return Response(200, {"value": self.list_subscriptions()})
        if len(segs) == 3 and segs[0] == "subscriptions" and m == "POST":
            if segs[2] == "lifecycle":
                self.send_lifecycle(segs[1], body["lifecycleEvent"])
                return Response(202)
            if segs[2] == "expire":
                self.expire_subscription(segs[1])
                return ok
        if segs == ["faults"] and m == "GET":
            return Response(200, self.faults.snapshot())
        if segs == ["faults"] and m == "PATCH":
            for k, v in body.items():
                if k.startswith("_") or k in ("rules", "rng") or not hasattr(self.faults, k):
                    raise GraphError(400, "BadRequest", f"unknown knob {k}")
                setattr(self.faults, k, v)
            return Response(200, self.faults.snapshot())
        if segs == ["faults", "rules"] and m == "POST":
            rule = FaultRule(
                int(body.get("status", 429)),
                int(body.get("count", 1)),
                body.get("mailbox"),
                body.get("endpoint"),
                body.get("retryAfter"),
                after_execute=bool(body.get("afterExecute")),
            )
            if rule.status != 429:
                rule.code = {503: "ServiceNotAvailable", 504: "GatewayTimeout"}.get(rule.status, "InternalServerError")
                rule.message = "Injected fault."
            self.faults.add(rule)
            return Response(201, rule.__dict__)
        if segs == ["faults", "reset"] and m == "POST":
            self.faults.reset()
            return ok
        if segs == ["gate"] and m == "GET":
            return Response(200, self.gate.snapshot())
        if segs == ["gate", "reset"] and m == "POST":
            self.gate.reset()
            return ok
        if segs == ["counters"] and m == "GET":
            return Response(200, self.counters.snapshot())
        if segs == ["counters", "reset"] and m == "POST":
            self.counters.reset()
            return ok
        if segs == ["notifications"] and m == "GET":
            return Response(200, {"value": [d.__dict__ for d in self.deliveries()]})
        if segs == ["notifications", "wait"] and m == "POST":
            return Response(200, {"idle": self.wait_notifications(float(body.get("timeout", 5)))})
        raise GraphError(404, "NotFound", "Unknown admin endpoint.")


def route(method: str, segs: list[str]) -> tuple[str, dict[str, Any]]:
    """Map (method, path segments after /v1.0) to (endpoint name, parameters). Endpoint names are in Counters."""

    def by_method(table: dict[str, str]) -> str:
        if method not in table:
            raise GraphError(405, "BadRequest", f"The {method} method is not allowed on this resource.")
        return table[method]

    if not segs:
        raise GraphError(400, "BadRequest", "Invalid request.")
    low = [s.lower() for s in segs]
    if low[0] == "me":
        # [OBSERVED-IN-WILD] app-only tokens have no signed-in user.
        raise GraphError(400, "BadRequest", "/me request is only valid with delegated authentication flow.")
    if low[0] == "subscriptions":
        if len(segs) == 1:
            return by_method({"GET": "subscriptions.list", "POST": "subscriptions.create"}), {}
        p = {"subscription": segs[1]}
        if len(segs) == 2:
            return by_method(
                {"GET": "subscription.get", "PATCH": "subscription.update", "DELETE": "subscription.delete"}
            ), p
        if len(segs) == 3 and low[2] == "reauthorize":
            return by_method({"POST": "subscription.reauthorize"}), p
    if low[0] == "groups" and len(segs) in (3, 4) and low[2] in ("members", "transitivemembers"):
        name = "group.members" if low[2] == "members" else "group.transitiveMembers"
        return by_method({"GET": name}), {"group": segs[1], "cast": segs[3] if len(segs) == 4 else None}
    if low[0] == "users":
        if len(segs) == 1:
            return by_method({"GET": "users.list"}), {}
        p: dict[str, Any] = {"user": segs[1], "folder": None}
        rest, lrest = segs[2:], low[2:]
        if not rest:
            return by_method({"GET": "user.get"}), p
        i = 0
        if lrest[0] == "contactfolders":
            if len(rest) == 1:
                return by_method({"GET": "contactFolders.list", "POST": "contactFolders.create"}), p
            p["folder"], i = rest[1], 2
            while i < len(rest) and lrest[i] == "childfolders":
                if i + 1 == len(rest):
                    return by_method({"GET": "childFolders.list", "POST": "childFolders.create"}), p
                p["folder"], i = rest[i + 1], i + 2
            if i == len(rest):
                return by_method(
                    {"GET": "contactFolder.get", "PATCH": "contactFolder.update", "DELETE": "contactFolder.delete"}
                ), p
            if lrest[i:] == ["permanentdelete"]:
                return by_method({"POST": "contactFolder.permanentDelete"}), p
        if i < len(rest) and lrest[i] == "contacts":
            tail, ltail = rest[i + 1 :], lrest[i + 1 :]
            if not tail:
                return by_method({"GET": "contacts.list", "POST": "contacts.create"}), p
            if len(tail) == 1 and ltail[0] in DELTA_NAMES:
                return by_method({"GET": "contacts.delta"}), p
            p["contact"] = tail[0]
            if len(tail) == 1:
                return by_method({"GET": "contact.get", "PATCH": "contact.update", "DELETE": "contact.delete"}), p
            if ltail[1:] == ["permanentdelete"]:
                return by_method({"POST": "contact.permanentDelete"}), p
    raise GraphError(400, "BadRequest", f"Resource not found for the segment '{segs[-1]}'.")


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):  # the client went away (killed, timed out): not our error
            logger.debug("graph emulator: client %s went away", client_address)
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    emulator: GraphEmulator
    protocol_version = "HTTP/1.1"
    timeout = 30  # idle keep-alive connections are closed after this
    # Headers and body go out in two writes; with Nagle's algorithm the second waits for the client's delayed ACK
    # (10-40 ms a call on loopback). Real services answer without that stall, so the emulator must too.
    disable_nagle_algorithm = True

    def _dispatch(self) -> None:
        with self.emulator.service.timing():
            self._answer()

    def _answer(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        query, raw = parse_query(parts.query)
        headers = {k.lower(): v for k, v in self.headers.items()}
        req = Request(self.command, parts.path, query, raw, headers, body)
        try:
            resp = self.emulator.handle(req)
        except ConnectionDropped:
            self._reset_connection()
            return
        except GraphError as e:
            resp = self.emulator._error(e, req)
        except Exception:
            logger.exception("graph emulator crashed on %s", self.command)
            resp = self.emulator._error(GraphError(500, "InternalServerError", "Emulator error."), req)
        data = resp.encoded()
        self.send_response(resp.status)
        if data:
            self.send_header("Content-Type", resp.content_type)
        self.send_header("Content-Length", str(len(data)))
        for k, v in resp.headers.items():
            self.send_header(k, v)
        self.end_headers()
        if data and self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _dispatch

    def _reset_connection(self) -> None:
        """Abort the connection: SO_LINGER 0 makes close() send a TCP RST instead of an orderly FIN."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        # Paths may contain UPNs (personal data): log only at debug level, method and status.
        logger.debug("graph emulator %s -> %s", self.command, args[1] if len(args) > 1 else "")
