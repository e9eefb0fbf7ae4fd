"""``SalesforceEmulator``: the REST/OAuth HTTPS server and the Pub/Sub gRPC server around one in-memory org.

Python API (tests, demo)::

    emu = SalesforceEmulator().start()            # free 127.0.0.1 ports; or port=, grpc_port=
    emu.register_jwt_client("cid", public_pem)    # JWT bearer (docs/reference/salesforce.md §3.1)
    emu.register_client_credentials("cid", "secret")  # client credentials (§3.2), runs as the integration user
    token = emu.issue_token()                     # or POST {emu.token_url}
    s = emu.requests_session()                    # verify=ca_path, trust_env=False (REQUESTS_CA_BUNDLE pitfall)
    Salesforce(instance_url=emu.instance_url, session_id=token, version="67.0", session=s)
    grpc.insecure_channel(emu.grpc_target) + emu.grpc_metadata(token)
    emu.create_contact({...}, as_user=rep_id)     # "a user in Salesforce" -> CDC event like any other write
    emu.faults.fail_next(status=503); emu.counters["rest.query"]
    emu.stop()

The same admin actions are served over HTTPS under ``/_admin/...`` (see :meth:`admin_http`).
"""

from __future__ import annotations

import logging
import secrets
import shutil
import ssl
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc

from emulators.clock import ServiceClock
from emulators.salesforce.pubsub import PubSubServicer
from emulators.salesforce.rest import make_handler, sign
from emulators.salesforce.store import UI_ORIGIN, Counters, Faults, Org, SfError, Token, WriteContext
from emulators.salesforce.tls import make_tls_files
from sync.adapters.salesforce.pubsub_api import pubsub_api_pb2_grpc as pb2_grpc

logger = logging.getLogger(__name__)

LOGIN_AUDIENCES = ("https://login.salesforce.com", "https://test.salesforce.com")  # docs/reference/salesforce.md §3.1


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):  # the client went away (killed, timed out; TLS EOF): not ours
            logger.debug("salesforce emulator: client %s went away", client_address)
            return
        super().handle_error(request, client_address)


class SalesforceEmulator:
    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, grpc_port: int = 0,
                 custom_fields: tuple[str, ...] = ("Outlook_Id__c",), api_max: int = 15_000,
                 delivery_max: int = 10_000, keepalive_seconds: float = 270.0, idle_timeout_seconds: float = 60.0,
                 grpc_tls: bool = False, workdir: Path | None = None) -> None:
        self.host, self._port, self._grpc_port, self.grpc_tls = host, port, grpc_port, grpc_tls
        self.org = Org(custom_fields=custom_fields, api_max=api_max, delivery_max=delivery_max)
        self.service = ServiceClock()  # time spent answering REST requests (benchmarks: ours vs the service's)
        self.keepalive_seconds = keepalive_seconds
        self.idle_timeout_seconds = idle_timeout_seconds
        self._workdir = workdir
        self._own_workdir = workdir is None
        self._signing_secret = secrets.token_bytes(32)
        self._http: _Server | None = None
        self._grpc: grpc.Server | None = None
        self._thread: threading.Thread | None = None
        self.ca_path: Path = Path()

    # -- lifecycle -------------------------------------------------------------------------------------------------
    def start(self) -> SalesforceEmulator:
        self._workdir = self._workdir or Path(tempfile.mkdtemp(prefix="sf-emulator-"))
        self.ca_path, cert, key = make_tls_files(self._workdir)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self._http = _Server((self.host, self._port), make_handler(self))
        # Handshake in the handler thread, so one slow client cannot block accept().
        self._http.socket = ctx.wrap_socket(self._http.socket, server_side=True, do_handshake_on_connect=False)
        self._port = self._http.server_address[1]
        self.org.instance_url = self.instance_url
        self._thread = threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="sf-emulator-http", daemon=True)
        self._thread.start()
        self._grpc = grpc.server(ThreadPoolExecutor(max_workers=32, thread_name_prefix="sf-emulator-grpc"))
        pb2_grpc.add_PubSubServicer_to_server(PubSubServicer(self), self._grpc)
        address = f"{self.host}:{self._grpc_port}"
        if self.grpc_tls:
            creds = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
            self._grpc_port = self._grpc.add_secure_port(address, creds)
        else:
            self._grpc_port = self._grpc.add_insecure_port(address)
        self._grpc.start()
        logger.info("salesforce emulator on %s (gRPC %s)", self.instance_url, self.grpc_target)
        return self

    def stop(self) -> None:
        if self._grpc is not None:
            self._grpc.stop(grace=0).wait(5)
            self._grpc = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._own_workdir and self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> SalesforceEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addresses -------------------------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._port

    @property
    def grpc_port(self) -> int:
        return self._grpc_port

    @property
    def instance_url(self) -> str:
        return f"https://{self.host}:{self._port}"

    @property
    def token_url(self) -> str:
        """The My Domain token endpoint (``https://127.0.0.1:<port>``): every grant works here."""
        return f"{self.instance_url}/services/oauth2/token"

    @property
    def login_url(self) -> str:
        """The stand-in for ``login.salesforce.com`` / ``test.salesforce.com``: the same server reached as
        ``localhost``. JWT bearer works there; client credentials do not (docs/reference/salesforce.md §3.2)."""
        return f"https://localhost:{self._port}"

    def is_my_domain(self, host_header: str) -> bool:
        """Whether a request's ``Host`` names the My Domain host (``127.0.0.1``), not the generic login host."""
        return host_header.rsplit(":", 1)[0].strip("[]") == self.host

    @property
    def grpc_target(self) -> str:
        return f"{self.host}:{self._grpc_port}"

    @property
    def org_id(self) -> str:
        return self.org.org_id

    @property
    def counters(self) -> Counters:
        return self.org.counters

    @property
    def faults(self) -> Faults:
        return self.org.faults

    @property
    def integration_user_id(self) -> str:
        return self.org.integration_user_id

    # -- auth ------------------------------------------------------------------------------------------------------
    def register_jwt_client(self, client_id: str, public_key_pem: str | bytes, *, users: list[str] | None = None,
                            audiences: tuple[str, ...] | None = None) -> None:
        """``users``: pre-authorized user ids (None: any active user); ``audiences`` default: the login and test URLs
        only, as Salesforce (a My Domain ``aud`` is refused, docs/reference/salesforce.md §3.1)."""
        pem = public_key_pem.decode() if isinstance(public_key_pem, bytes) else public_key_pem
        self.org.jwt_clients[client_id] = {"client_id": client_id, "public_key": pem, "users": users or [],
                                           "audiences": audiences or LOGIN_AUDIENCES}

    def register_client_credentials(self, client_id: str, client_secret: str, run_as: str | None = "") -> None:
        """``run_as``: the app's Run As user id; default the integration user; None = not configured."""
        self.org.cc_clients[client_id] = {"secret": client_secret,
                                          "run_as": self.integration_user_id if run_as == "" else run_as}

    def issue_token(self, user_id: str | None = None) -> str:
        return self.org.issue_token(user_id or self.integration_user_id).access_token

    def token_response(self, tok: Token) -> dict[str, Any]:
        # docs/reference/salesforce.md §3.1/§3.2: `id` carries orgId/userId (Pub/Sub tenantid).
        issued = str(int(tok.issued.timestamp() * 1000))
        ident = f"{self.instance_url}/id/{self.org_id}/{tok.user_id}"
        return {"access_token": tok.access_token, "signature": sign(self._signing_secret, ident, issued),
                "scope": "api", "instance_url": self.instance_url, "id": ident, "token_type": "Bearer",
                "issued_at": issued}

    def requests_session(self) -> Any:
        """A ``requests.Session`` that trusts the emulator CA. ``trust_env=False`` because ``REQUESTS_CA_BUNDLE`` /
        ``CURL_CA_BUNDLE`` in the environment silently override ``Session.verify`` (requests merges environment
        settings per request when the call passes no ``verify``)."""
        import requests

        session = requests.Session()
        session.verify = str(self.ca_path)
        session.trust_env = False
        return session

    def grpc_metadata(self, token: str) -> tuple[tuple[str, str], ...]:
        return (("accesstoken", token), ("instanceurl", self.instance_url), ("tenantid", self.org_id))

    def revoke_tokens(self) -> None:
        self.org.revoke_tokens()

    # -- admin: act as a user in Salesforce ------------------------------------------------------------------------
    def add_user(self, username: str, email: str, *, last_name: str = "User", first_name: str | None = None,
                 federation_id: str | None = None, active: bool = True) -> str:
        return self.org.add_user(username, email, last_name=last_name, first_name=first_name,
                                 federation_id=federation_id, active=active)

    def _ctx(self, as_user: str | None, origin: str) -> WriteContext:
        return self.org.run_as(as_user, origin)

    def add_account(self, name: str, *, owner_id: str | None = None, as_user: str | None = None,
                    account_type: str | None = None) -> str:
        with self.org.transaction(self._ctx(as_user, UI_ORIGIN)) as txn:
            return self.org.create(txn, "Account", {"Name": name, **({"OwnerId": owner_id} if owner_id else {}),
                                                    **({"Type": account_type} if account_type else {})})

    def update_account(self, account_id: str, fields: dict[str, Any], *, as_user: str | None = None) -> None:
        """A user's edit of an Account (its Contacts' SystemModstamp does not move, and Contact CDC says nothing)."""
        with self.org.transaction(self._ctx(as_user, UI_ORIGIN)) as txn:
            self.org.update(txn, "Account", account_id, fields)

    def create_contact(self, fields: dict[str, Any], *, as_user: str | None = None, origin: str = UI_ORIGIN) -> str:
        with self.org.transaction(self._ctx(as_user, origin)) as txn:
            return self.org.create(txn, "Contact", fields)

    def bulk_create_contacts(self, rows: list[dict[str, Any]], *, as_user: str | None = None,
                             origin: str = UI_ORIGIN) -> list[str]:
        """One transaction (like a data import): one CREATE event per record."""
        with self.org.transaction(self._ctx(as_user, origin)) as txn:
            return [self.org.create(txn, "Contact", r) for r in rows]

    def update_contact(self, contact_id: str, fields: dict[str, Any], *, as_user: str | None = None,
                       origin: str = UI_ORIGIN) -> None:
        with self.org.transaction(self._ctx(as_user, origin)) as txn:
            self.org.update(txn, "Contact", contact_id, fields)

    @property
    def automated_process_user_id(self) -> str:
        return self.org.automated_process_user_id

    def run_flow(self, contact_ids: list[str], fields: dict[str, Any]) -> None:
        """A scheduled / platform-event flow: one transaction as the Automated Process user, no Call Options
        (``changeOrigin`` empty), one UPDATE event per record with ``commitUser`` = that user."""
        with self.org.transaction(self._ctx(self.automated_process_user_id, "")) as txn:
            for contact_id in contact_ids:
                self.org.update(txn, "Contact", contact_id, fields)

    def bump_system_modstamp(self, contact_ids: list[str]) -> None:
        """Automation that changes no field (roll-up, sharing recalculation): ``SystemModstamp`` moves, nothing
        else, no change event."""
        self.org.touch("Contact", contact_ids)

    def change_owner(self, contact_id: str, owner_id: str, *, as_user: str | None = None) -> None:
        self.update_contact(contact_id, {"OwnerId": owner_id}, as_user=as_user)

    def delete_contact(self, contact_id: str, *, as_user: str | None = None) -> None:
        with self.org.transaction(self._ctx(as_user, UI_ORIGIN)) as txn:
            self.org.delete(txn, "Contact", contact_id)

    def undelete_contact(self, contact_id: str, *, as_user: str | None = None) -> None:
        with self.org.transaction(self._ctx(as_user, UI_ORIGIN)) as txn:
            self.org.undelete(txn, "Contact", contact_id)

    def merge_contacts(self, master_id: str, loser_ids: list[str], *, as_user: str | None = None) -> None:
        """Losers get MasterRecordId and are deleted; the master is updated (docs/reference/salesforce.md §1.2)."""
        with self.org.transaction(self._ctx(as_user, UI_ORIGIN)) as txn:
            self.org.update(txn, "Contact", master_id, {})
            for lid in loser_ids:
                self.org.delete(txn, "Contact", lid)
                self.org.find(lid)[1]["MasterRecordId"] = self.org.find(master_id)[1]["Id"]  # type: ignore[index]

    def purge_recycle_bin(self) -> int:
        return self.org.purge_recycle_bin()

    def get_record(self, record_id: str) -> dict[str, Any] | None:
        """A copy of the stored record (deleted ones too), values as Python objects."""
        with self.org.lock:
            found = self.org.find(record_id)
            return dict(found[1]) if found else None

    def contacts(self, *, include_deleted: bool = False) -> list[dict[str, Any]]:
        with self.org.lock:
            return [dict(r) for r in self.org.records["Contact"].values() if include_deleted or not r["IsDeleted"]]

    # -- CDC knobs ---------------------------------------------------------------------------------------------------
    def publish_gap(self, change_type: str, record_ids: list[str], *, as_user: str | None = None) -> None:
        if change_type not in ("GAP_CREATE", "GAP_UPDATE", "GAP_DELETE", "GAP_UNDELETE"):
            raise ValueError(f"not a gap change type: {change_type}")
        self.org.publish_header_only(change_type, record_ids, as_user)

    def publish_gap_overflow(self) -> None:
        self.org.publish_header_only("GAP_OVERFLOW", [])

    def events(self) -> list[dict[str, Any]]:
        """Decoded retained events (header + body + replay id int), oldest first; for tests and debugging."""
        with self.org.lock:
            return [{"replay": e.replay, "header": dict(e.header), "body": dict(e.body)} for e in self.org.events]

    def advance_time(self, seconds: float) -> None:
        """Moves the emulator clock (retention, token and cursor expiry, timestamps)."""
        self.org.advance_time(seconds)

    def set_api_usage(self, used: int | None = None, maximum: int | None = None) -> None:
        with self.org.lock:
            if used is not None:
                self.org.api_used = used
            if maximum is not None:
                self.org.api_max = maximum

    # -- admin over HTTP -------------------------------------------------------------------------------------------
    def admin_http(self, method: str, path: str, body: dict[str, Any], params: dict[str, str]) -> tuple[int, Any]:
        """``/_admin`` routes (no auth; loopback test tool). JSON in, JSON out:

        - ``GET  /_admin/state`` → counters, api usage, event count, org id, integration user id
        - ``POST /_admin/users`` ``{username, email, lastName, firstName?, federationIdentifier?}`` → ``{id}``
        - ``POST /_admin/accounts`` ``{Name, OwnerId?}`` → ``{id}``
        - ``POST /_admin/contacts`` ``{fields: {...}, asUser?}`` → ``{id}``
        - ``PATCH /_admin/contacts/{id}`` ``{fields, asUser?}``; ``POST /_admin/contacts/{id}/owner``
          ``{ownerId, asUser?}``; ``DELETE /_admin/contacts/{id}``; ``POST /_admin/contacts/{id}/undelete``;
          ``POST /_admin/contacts/merge`` ``{masterId, mergeIds}``
        - ``GET /_admin/events`` → decoded event log
        - ``POST /_admin/events/gap`` ``{changeType, recordIds}``; ``POST /_admin/events/overflow``
        - ``POST /_admin/faults`` ``{failNext: {count,status,errorCode,message,pathContains}, failGrpcNext: {...},
          invalidSessionNext, latencySeconds, dropNextEvents, duplicateNextEvents, gapNextEvents,
          overflowThreshold, duplicateRule, limitRate, unavailableRate, resetRate, resetAfterShare, eventDropRate,
          eventDuplicateRate, eventReorderRate, reorderHoldSeconds, addressPicklists}`` (rates: probabilities in
          [0, 1]; ``addressPicklists``: the org's State and Country/Territory Picklists on/off)
        - ``POST /_admin/limits`` ``{used?, max?}``; ``POST /_admin/time`` ``{advanceSeconds}``;
          ``POST /_admin/tokens`` ``{userId?}`` → a token response; ``POST /_admin/jwt-clients``
          ``{clientId, publicKeyPem, users?}``; ``POST /_admin/client-credentials`` ``{clientId, clientSecret}``
        """
        seg = path.strip("/").split("/")[1:]
        as_user = body.get("asUser") or params.get("asUser")
        if seg == ["state"] and method == "GET":
            return 200, {"orgId": self.org_id, "integrationUserId": self.integration_user_id,
                         "apiUsed": self.org.api_used, "apiMax": self.org.api_max,
                         "events": len(self.org.events), "counters": self.counters.snapshot()}
        if seg == ["users"] and method == "POST":
            return 201, {"id": self.add_user(body["username"], body["email"], last_name=body.get("lastName", "User"),
                                             first_name=body.get("firstName"),
                                             federation_id=body.get("federationIdentifier"))}
        if seg == ["accounts"] and method == "POST":
            return 201, {"id": self.add_account(body["Name"], owner_id=body.get("OwnerId"), as_user=as_user)}
        if seg == ["contacts"] and method == "POST":
            return 201, {"id": self.create_contact(body["fields"], as_user=as_user)}
        if seg == ["contacts", "merge"] and method == "POST":
            self.merge_contacts(body["masterId"], body["mergeIds"], as_user=as_user)
            return 204, None
        if len(seg) == 2 and seg[0] == "contacts":
            if method == "PATCH":
                self.update_contact(seg[1], body["fields"], as_user=as_user)
                return 204, None
            if method == "DELETE":
                self.delete_contact(seg[1], as_user=as_user)
                return 204, None
            if method == "GET":
                rec = self.get_record(seg[1])
                if rec is None:
                    raise SfError(404, "NOT_FOUND", "The requested resource does not exist")
                return 200, self.org.serialize("Contact", rec, None, "67.0")
        if len(seg) == 3 and seg[0] == "contacts" and method == "POST":
            if seg[2] == "owner":
                self.change_owner(seg[1], body["ownerId"], as_user=as_user)
                return 204, None
            if seg[2] == "undelete":
                self.undelete_contact(seg[1], as_user=as_user)
                return 204, None
        if seg == ["events"] and method == "GET":
            return 200, self.events()
        if seg == ["events", "gap"] and method == "POST":
            self.publish_gap(body["changeType"], body.get("recordIds", []), as_user=as_user)
            return 204, None
        if seg == ["events", "overflow"] and method == "POST":
            self.publish_gap_overflow()
            return 204, None
        if seg == ["faults"] and method == "POST":
            self._set_faults(body)
            return 204, None
        if seg == ["limits"] and method == "POST":
            self.set_api_usage(body.get("used"), body.get("max"))
            return 204, None
        if seg == ["time"] and method == "POST":
            self.advance_time(float(body["advanceSeconds"]))
            return 204, None
        if seg == ["tokens"] and method == "POST":
            return 200, self.token_response(self.org.issue_token(body.get("userId") or self.integration_user_id))
        if seg == ["jwt-clients"] and method == "POST":
            self.register_jwt_client(body["clientId"], body["publicKeyPem"], users=body.get("users"))
            return 204, None
        if seg == ["client-credentials"] and method == "POST":
            self.register_client_credentials(body["clientId"], body["clientSecret"])
            return 204, None
        raise SfError(404, "NOT_FOUND", "unknown admin route")

    def _set_faults(self, body: dict[str, Any]) -> None:
        f = self.faults
        with self.org.lock:
            if "failNext" in body:
                x = body["failNext"]
                f.fail_next(count=x.get("count", 1), status=x.get("status", 503),
                            error_code=x.get("errorCode", "SERVER_UNAVAILABLE"),
                            message=x.get("message", "Service temporarily unavailable"),
                            path_contains=x.get("pathContains", ""))
            if "failGrpcNext" in body:
                x = body["failGrpcNext"]
                f.fail_grpc_next(count=x.get("count", 1), code=x.get("code", "UNAVAILABLE"),
                                 error_code=x.get("errorCode", "sfdc.platform.eventbus.grpc.service.unavailable"),
                                 method=x.get("method", "Subscribe"))
            for key, attr in (("invalidSessionNext", "invalid_session_next"), ("latencySeconds", "latency_seconds"),
                              ("dropNextEvents", "drop_next_events"), ("duplicateNextEvents", "duplicate_next_events"),
                              ("gapNextEvents", "gap_next_events"), ("overflowThreshold", "overflow_threshold"),
                              ("duplicateRule", "duplicate_rule"), ("limitRate", "limit_rate"),
                              ("unavailableRate", "unavailable_rate"), ("resetRate", "reset_rate"),
                              ("resetAfterShare", "reset_after_share"), ("eventDropRate", "event_drop_rate"),
                              ("eventDuplicateRate", "event_duplicate_rate"),
                              ("eventReorderRate", "event_reorder_rate"), ("reorderHoldSeconds", "reorder_hold_s"),
                              ("addressPicklists", "")):
                if key in body:
                    if key == "addressPicklists":
                        self.org.settings.address_picklists = bool(body[key])
                        self.org.apply_settings()
                        continue
                    if key == "duplicateRule" and isinstance(body[key], str):  # "alert" / "block" / "off"
                        self.org.settings.duplicate_rule = body[key]
                        f.duplicate_rule = True
                        continue
                    setattr(f, attr, body[key])


