"""HTTPS handler: OAuth token endpoint, REST ``/services/data/vXX.X/...``, and the ``/_admin`` API.

Follows docs/reference/salesforce.md §7.1 (emulator checklist) and the sections cited per route. Paths with and without
a trailing slash are the same route (§3.4 "Emulator rule"). Errors are JSON arrays (§2.1); the token endpoint answers
``{"error", "error_description"}`` (§3.1, §7.1).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import logging
import re
import socket
import struct
import time
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

import jwt

from emulators.salesforce.ids import fmt_datetime, parse_datetime
from emulators.salesforce.soql import SoqlError
from emulators.salesforce.store import Org, SfError, Token, WriteContext

if TYPE_CHECKING:
    from emulators.salesforce.server import SalesforceEmulator

logger = logging.getLogger(__name__)

VERSIONS = [("Winter '26", "65.0"), ("Spring '26", "66.0"), ("Summer '26", "67.0")]  # docs/reference/salesforce.md §0
_DATA = re.compile(r"^/services/data/v(\d+\.\d+)(/.*)?$")
MAX_COLLECTION = 200  # sObject Collections, docs/reference/salesforce.md §2.5


class OAuthError(Exception):
    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error, self.description, self.status = error, description, status


class _Rollback(Exception):
    """allOrNone=true with a failing record: undo the transaction (docs/reference/salesforce.md §2.5)."""


class _ConnectionDropped(Exception):
    """Close the connection without an answer (a TCP reset): ``faults.reset_rate``."""


def make_handler(emu: SalesforceEmulator) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        emulator = emu

    return Handler


class _Handler(BaseHTTPRequestHandler):
    emulator: SalesforceEmulator
    protocol_version = "HTTP/1.1"
    server_version = "SalesforceEmulator/1.0"
    # Headers and body go out in two writes; with Nagle's algorithm the second waits for the client's delayed ACK
    # (10-40 ms a call on loopback). Real services answer without that stall, so the emulator must too.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - no request logs (personal data)
        return

    # -- plumbing --------------------------------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_PATCH(self) -> None:  # noqa: N802
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    @property
    def org(self) -> Org:
        return self.emulator.org

    def _reset_connection(self) -> None:
        """Abort the connection: SO_LINGER 0 makes close() send a TCP RST instead of a TLS close_notify and FIN."""
        self._body_bytes()
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()

    def _send(self, status: int, body: Any = None, headers: dict[str, str] | None = None,
              content_type: str = "application/json;charset=UTF-8") -> None:
        raw = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        self._body_bytes()  # drain an unread request body, else it poisons the next request on this connection
        self.send_response(status)
        if raw or status not in (204, 304):
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(raw)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if raw:
            self.wfile.write(raw)

    def _body_bytes(self) -> bytes:
        # Read once per request (the handler object lives for the whole keep-alive connection).
        if getattr(self, "_request_body", None) is None:
            n = int(self.headers.get("Content-Length") or 0)
            self._request_body = self.rfile.read(n) if n else b""
        return self._request_body

    def _json_body(self) -> Any:
        raw = self._body_bytes()
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError as e:
            raise SfError(400, "JSON_PARSER_ERROR", f"Unexpected character: {e}") from e

    def _dispatch(self, method: str) -> None:
        with self.emulator.service.timing():
            self._answer(method)

    def _answer(self, method: str) -> None:
        self._request_body: bytes | None = None
        parts = urlsplit(self.path)
        raw_path = parts.path.rstrip("/") or "/"
        path = unquote(raw_path)
        params = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        try:
            if path == "/services/oauth2/token":
                self._token(method)
            elif path in ("/services/oauth2/userinfo",) or path.startswith("/id/"):
                self._identity(path)
            elif path == "/services/data":
                # Versions resource: no auth, no Sforce-Limit-Info (docs/reference/salesforce.md §2.8, §7.1)
                self._send(200, [{"label": label, "url": f"/services/data/v{v}", "version": v}
                                 for label, v in VERSIONS])
            elif path.startswith("/_admin"):
                self._admin(method, path, params)
            elif m := _DATA.match(raw_path):  # segments are decoded one by one: an id value may hold "%2F"
                self._data(method, m.group(1), (m.group(2) or "").strip("/"), params)
            else:
                self._send(404, [{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}])
        except _ConnectionDropped:
            self._reset_connection()
        except Exception:  # pragma: no cover - emulator bug guard
            logger.exception("emulator error on %s %s", method, parts.path)
            self._send(500, [{"errorCode": "UNKNOWN_EXCEPTION", "message": "An unexpected error occurred."}])

    # -- OAuth -----------------------------------------------------------------------------------------------------
    def _token(self, method: str) -> None:
        self.org.counters.inc("oauth.token")
        try:
            if method != "POST":
                raise OAuthError("invalid_request", "must use HTTP POST", 400)
            form = {k: v[-1] for k, v in parse_qs(self._body_bytes().decode()).items()}
            grant = form.get("grant_type", "")
            if grant == "urn:ietf:params:oauth:grant-type:jwt-bearer":
                tok = self._jwt_grant(form.get("assertion", ""))
            elif grant == "client_credentials":
                tok = self._client_credentials(form)
            else:
                raise OAuthError("unsupported_grant_type", "grant type not supported")
        except OAuthError as e:
            self.org.counters.inc("oauth.error")
            self._send(e.status, {"error": e.error, "error_description": e.description})
            return
        self._send(200, self.emulator.token_response(tok))

    def _jwt_grant(self, assertion: str) -> Token:
        # JWT bearer flow, docs/reference/salesforce.md §3.1: RS256, iss = consumer key, sub = username, aud =
        # the login or test URL (whichever host the request is posted to; My Domain is refused), exp ahead.
        # Error texts: see docs/emulator-fidelity-salesforce.md.
        try:
            header = jwt.get_unverified_header(assertion)
            claims = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError as e:
            raise OAuthError("invalid_grant", "invalid assertion") from e
        client = self.org.jwt_clients.get(str(claims.get("iss", "")))
        if client is None:
            raise OAuthError("invalid_client_id", "client identifier invalid")
        if header.get("alg") != "RS256":
            raise OAuthError("invalid_grant", "invalid assertion")
        try:
            jwt.decode(assertion, client["public_key"], algorithms=["RS256"],
                       options={"verify_exp": False, "verify_aud": False, "verify_iat": False,
                                "verify_nbf": False})
        except jwt.PyJWTError as e:
            raise OAuthError("invalid_grant", "invalid assertion") from e
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        if not any(a in client["audiences"] for a in auds):
            raise OAuthError("invalid_grant", "audience is invalid")
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or exp <= time.time() + self.org.time_offset.total_seconds():
            raise OAuthError("invalid_grant", "expired authorization code")
        user = self.org.user_by_username(str(claims.get("sub", "")))
        if user is None or not user["IsActive"] or (client["users"] and user["Id"] not in client["users"]):
            raise OAuthError("invalid_grant", "user hasn't approved this consumer")
        return self.org.issue_token(user["Id"], client["client_id"])

    def _client_credentials(self, form: dict[str, str]) -> Token:
        # Client credentials flow, docs/reference/salesforce.md §3.2: Basic auth or form fields; tokens run as the app's
        # user. Only on the My Domain host: login/test answer "request not supported on this domain".
        if not self.emulator.is_my_domain(self.headers.get("Host", "")):
            raise OAuthError("invalid_grant", "request not supported on this domain")
        cid, secret = form.get("client_id", ""), form.get("client_secret", "")
        auth = self.headers.get("Authorization", "")
        if auth.lower().startswith("basic "):
            try:
                cid, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
            except ValueError as e:
                raise OAuthError("invalid_client", "invalid client credentials") from e
        client = self.org.cc_clients.get(cid)
        if client is None or not hmac.compare_digest(client["secret"], secret):
            raise OAuthError("invalid_client", "invalid client credentials")
        if not client["run_as"]:
            raise OAuthError("invalid_grant", "no client credentials user enabled")
        return self.org.issue_token(client["run_as"], cid)

    def _identity(self, path: str) -> None:
        tok = self.org.authenticate(_bearer(self.headers.get("Authorization")))
        if tok is None:
            self._send(403 if path.startswith("/id/") else 401, b"Bad_OAuth_Token", content_type="text/plain")
            return
        user = self.org.records["User"][tok.user_id]
        self._send(200, {"sub": f"{self.emulator.instance_url}/id/{self.org.org_id}/{tok.user_id}",
                         "user_id": tok.user_id, "organization_id": self.org.org_id,
                         "preferred_username": user["Username"], "email": user["Email"], "active": True,
                         "user_type": "STANDARD"})

    # -- REST ------------------------------------------------------------------------------------------------------
    def _limit_header(self) -> dict[str, str]:
        # docs/reference/salesforce.md §2.8
        return {"Sforce-Limit-Info": f"api-usage={self.org.api_used}/{self.org.api_max}"}

    def _data(self, method: str, version: str, rest: str, params: dict[str, str]) -> None:
        org = self.org
        org.counters.inc("rest.requests")
        tok = org.authenticate(_bearer(self.headers.get("Authorization")))
        with org.lock:
            org.apply_settings()
            forced_401 = org.faults.invalid_session_next > 0 and tok is not None
            if forced_401:
                org.faults.invalid_session_next -= 1
        if tok is None or forced_401:
            # docs/reference/salesforce.md §2.1 / §3.6: the 401 body must be the array form.
            org.counters.inc("rest.401")
            self._send(401, [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}])
            return
        with org.lock:
            if org.api_used >= org.api_max:
                org.counters.inc("rest.403_limit")
                self._send(403, [{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}],
                           self._limit_header())
                return
            org.api_used += 1
            failure = org.faults.take_rest_failure(f"{method} /{rest}")
            latency = org.faults.latency_seconds
            reset, rolled = org.faults.roll_rest()  # random faults (soak tests): see store.Faults
            failure = failure or rolled
        if latency:
            time.sleep(latency)
        if reset == "before":
            org.counters.inc("rest.reset.before")
            raise _ConnectionDropped
        if failure is not None:
            org.counters.inc(f"rest.fault.{failure['status']}")
            self._send(failure["status"], [{"message": failure["message"], "errorCode": failure["errorCode"]}],
                       self._limit_header())
            return
        try:
            seg = [unquote(x) for x in rest.split("/")] if rest else []
            status, body, extra = self._route(method, version, seg, params, tok)
        except SoqlError as e:
            status, body, extra = 400, [{"message": e.message, "errorCode": e.code}], {}
        except SfError as e:
            status, body, extra = e.status, e.as_rest(), {}
        if reset == "after":
            org.counters.inc("rest.reset.after")
            raise _ConnectionDropped  # the request ran; the client never hears it
        self._send(status, body, {**self._limit_header(), **extra})

    def _ctx(self, version: str, tok: Token) -> WriteContext:
        # changeOrigin "com/salesforce/api/rest/<ver>;client=<id>" from Sforce-Call-Options
        # (docs/reference/salesforce.md §2.9, §4.2)
        origin = f"com/salesforce/api/rest/{version}"
        m = re.search(r"client=([^,;\s]+)", self.headers.get("Sforce-Call-Options", ""))
        if m:
            origin += f";client={m.group(1)}"
        dup = self.headers.get("Sforce-Duplicate-Rule-Header", "").replace(" ", "").lower()
        return WriteContext(user_id=tok.user_id, origin=origin, allow_save="allowsave=true" in dup,
                            include_record_details="includerecorddetails=true" in dup)

    def _unmodified_since(self) -> datetime | None:
        """``If-Unmodified-Since`` (an HTTP-date, whole seconds) on a single-record PATCH: compared with the record's
        LastModifiedDate; a value that is not an HTTP-date -> 400 (docs/reference/salesforce.md §2.7)."""
        raw = self.headers.get("If-Unmodified-Since")
        if raw is None:
            return None
        try:
            since = parsedate_to_datetime(raw)
        except (TypeError, ValueError) as e:
            raise SfError(400, "INVALID_HEADER_VALUE", "If-Unmodified-Since is not a valid HTTP-date") from e
        if since.tzinfo is None:
            raise SfError(400, "INVALID_HEADER_VALUE", "If-Unmodified-Since is not a valid HTTP-date")
        return since

    def _batch_size(self) -> int:
        # Sforce-Query-Options: batchSize=N, 200..2000, default 2000 (docs/reference/salesforce.md §2.2)
        m = re.search(r"batchSize=(\d+)", self.headers.get("Sforce-Query-Options", ""), re.I)
        return min(2000, max(200, int(m.group(1)))) if m else 2000

    def _route(self, method: str, v: str, seg: list[str], params: dict[str, str],
               tok: Token) -> tuple[int, Any, dict[str, str]]:
        org = self.org
        head = seg[0] if seg else ""
        if not seg and method == "GET":
            return 200, {k: f"/services/data/v{v}/{k}" for k in ("sobjects", "query", "queryAll", "limits",
                                                                   "composite")}, {}
        if head in ("query", "queryAll") and method == "GET":
            org.counters.inc(f"rest.{head}")
            if len(seg) == 2:  # nextRecordsUrl (docs/reference/salesforce.md §2.2; queryAll pages still say /query/)
                org.counters.inc("rest.query_more")
                return 200, org.query_more(seg[1], v, self._batch_size()), {}
            if "q" not in params:
                raise SfError(400, "MALFORMED_QUERY", "A query string has to be specified")
            return 200, org.query(params["q"], head == "queryAll", v, self._batch_size()), {}
        if head == "limits" and method == "GET":
            org.counters.inc("rest.limits")
            return 200, {"DailyApiRequests": {"Max": org.api_max, "Remaining": max(0, org.api_max - org.api_used)},
                         "DailyDeliveredPlatformEvents": {"Max": org.delivery_max,
                                                          "Remaining": max(0, org.delivery_max - org.delivered)},
                         "ConcurrentPerOrgLongTxn": {"Max": 5, "Remaining": 5}}, {}
        if head == "sobjects":
            return self._sobjects(method, v, seg[1:], params, tok)
        if seg[:2] == ["composite", "sobjects"]:
            return self._collections(method, v, seg[2:], params, tok)
        raise SfError(404, "NOT_FOUND", "The requested resource does not exist")

    def _type(self, name: str) -> str:
        t = next((n for n in self.org.types if n.lower() == name.lower()), None)
        if t is None:
            raise SfError(404, "NOT_FOUND", "The requested resource does not exist")
        return t

    def _sobjects(self, method: str, v: str, seg: list[str], params: dict[str, str],
                  tok: Token) -> tuple[int, Any, dict[str, str]]:
        org = self.org
        if not seg:
            return 200, {"encoding": "UTF-8", "maxBatchSize": 200, "sobjects": [
                {"name": n, "keyPrefix": t.describe(v)["keyPrefix"], "queryable": True} for n, t in
                org.types.items()]}, {}
        sobject = self._type(seg[0])
        if len(seg) == 1:
            if method == "POST":
                org.counters.inc("rest.create")
                body = self._json_body() or {}
                with org.transaction(self._ctx(v, tok)) as txn:
                    rid = org.create(txn, sobject, body)
                return 201, {"id": rid, "success": True, "errors": []}, {}  # docs/reference/salesforce.md §2.4
            return 200, {"objectDescribe": {"name": sobject}, "recentItems": []}, {}
        if len(seg) == 2 and seg[1] == "describe":
            org.counters.inc("rest.describe")
            return 200, org.types[sobject].describe(v), {}
        if len(seg) == 2 and seg[1] in ("updated", "deleted") and method == "GET":
            return 200, self._replication(sobject, seg[1], params), {}
        if len(seg) == 2:
            rid = seg[1]
            if method == "GET":
                org.counters.inc("rest.get")
                with org.lock:
                    rec = org._live(sobject, rid)
                    fields = [f.strip() for f in params["fields"].split(",")] if params.get("fields") else None
                    if fields:
                        fields = [org.evaluator.canonical(org.types[sobject], f) for f in fields]
                    return 200, org.serialize(sobject, rec, fields, v), {}
            if method == "PATCH":
                org.counters.inc("rest.update")
                body = self._json_body() or {}
                since = self._unmodified_since()
                with org.transaction(self._ctx(v, tok)) as txn:
                    modified = org._live(sobject, rid)["LastModifiedDate"].replace(microsecond=0)  # HTTP-date: s
                    if since is not None and modified > since:
                        org.counters.inc("rest.412")
                        raise SfError(412, "PRECONDITION_FAILED", "The requested resource has been modified since "
                                      "the If-Unmodified-Since date")
                    org.update(txn, sobject, rid, body)
                return 204, None, {}
            if method == "DELETE":
                org.counters.inc("rest.delete")
                with org.transaction(self._ctx(v, tok)) as txn:
                    org.delete(txn, sobject, rid)
                return 204, None, {}
        if len(seg) == 3:
            return self._by_external_id(method, v, sobject, seg[1], seg[2], params, tok)
        raise SfError(405 if len(seg) == 2 else 404, "METHOD_NOT_ALLOWED" if len(seg) == 2 else "NOT_FOUND",
                      f"HTTP Method '{method}' not allowed. Allowed are GET,PATCH,DELETE" if len(seg) == 2
                      else "The requested resource does not exist")

    def _by_external_id(self, method: str, v: str, sobject: str, field_name: str, value: str,
                        params: dict[str, str], tok: Token) -> tuple[int, Any, dict[str, str]]:
        # docs/reference/salesforce.md §2.4: GET/PATCH /sobjects/Contact/{ExtIdField}/{value}; 201 created / 200 updated
        # / 300.
        org = self.org
        f = org.types[sobject].field(field_name)
        if f is None or not (f.external_id or f.name == "Id"):
            raise SfError(404, "NOT_FOUND", f"Provided external ID field does not exist or is not accessible: "
                          f"{field_name}")
        with org.lock:
            matches = [r for r in org.records[sobject].values() if not r["IsDeleted"] and r.get(f.name) == value]
            if len(matches) > 1:
                return 300, [f"/services/data/v{v}/sobjects/{sobject}/{r['Id']}" for r in matches], {}
            if method == "GET":
                if not matches:
                    raise SfError(404, "NOT_FOUND", "The requested resource does not exist")
                return 200, org.serialize(sobject, matches[0], None, v), {}
            if method != "PATCH":
                raise SfError(405, "METHOD_NOT_ALLOWED", f"HTTP Method '{method}' not allowed.")
            org.counters.inc("rest.upsert")
            body = {k: val for k, val in (self._json_body() or {}).items() if k.lower() != f.name.lower()}
            with org.transaction(self._ctx(v, tok)) as txn:
                if matches:
                    rid = org.update(txn, sobject, matches[0]["Id"], body)
                    return 200, {"id": rid, "success": True, "errors": [], "created": False}, {}
                if params.get("updateOnly") == "true":
                    raise SfError(404, "NOT_FOUND", "The requested resource does not exist")
                rid = org.create(txn, sobject, {**body, f.name: value})
                return 201, {"id": rid, "success": True, "errors": [], "created": True}, {}

    def _replication(self, sobject: str, kind: str, params: dict[str, str]) -> dict[str, Any]:
        # getUpdated (30 days) / getDeleted (15 days), minute granularity (docs/reference/salesforce.md §2.3)
        org = self.org
        try:
            start = parse_datetime(params["start"]).replace(second=0, microsecond=0)
            end = parse_datetime(params["end"]).replace(second=0, microsecond=0)
        except (KeyError, ValueError) as e:
            raise SfError(400, "MALFORMED_QUERY", "start and end are required ISO-8601 datetimes") from e
        now = org.now()
        window = timedelta(days=30 if kind == "updated" else 15)
        if start < now - window or end - start < timedelta(minutes=1):
            raise SfError(400, "INVALID_REPLICATION_DATE", "startDate must chronologically precede endDate by more "
                          "than one minute and be within the replication window")
        with org.lock:
            recs = list(org.records[sobject].values())
        if kind == "updated":
            ids = [r["Id"] for r in recs if not r["IsDeleted"] and start <= r["SystemModstamp"] < end]
            return {"ids": ids, "latestDateCovered": fmt_datetime(min(end, now))}
        return {"deletedRecords": [{"id": r["Id"], "deletedDate": fmt_datetime(r["SystemModstamp"])}
                                   for r in recs if r["IsDeleted"] and start <= r["SystemModstamp"] < end],
                "earliestDateAvailable": fmt_datetime(now - window), "latestDateCovered": fmt_datetime(min(end, now))}

    # -- sObject Collections (docs/reference/salesforce.md §2.5) -------------------------------------------------------
    def _collections(self, method: str, v: str, seg: list[str], params: dict[str, str],
                     tok: Token) -> tuple[int, Any, dict[str, str]]:
        org = self.org
        org.counters.inc("rest.composite_sobjects")
        if len(seg) == 2 and method == "PATCH":
            return self._collection_upsert(v, self._type(seg[0]), seg[1], tok)
        if seg:  # retrieve: GET ?ids=&fields= or POST {"ids","fields"}
            sobject = self._type(seg[0])
            if method == "GET":
                ids = [i for i in params.get("ids", "").split(",") if i]
                fields = [f for f in params.get("fields", "").split(",") if f]
            elif method == "POST":
                body = self._json_body() or {}
                ids, fields = body.get("ids") or [], body.get("fields") or []
            else:
                raise SfError(405, "METHOD_NOT_ALLOWED", f"HTTP Method '{method}' not allowed.")
            if not fields:
                raise SfError(400, "MALFORMED_QUERY", "fields is required")
            if len(ids) > (800 if method == "GET" else 2000):
                raise SfError(400, "EXCEEDED_ID_LIMIT", "record limit reached. cannot submit more than 2000 records "
                              "into this call")
            with org.lock:
                canon = [org.evaluator.canonical(org.types[sobject], f) for f in fields]
                out = []
                for rid in ids:
                    found = org.find(rid)
                    ok = found is not None and found[0] == sobject and not found[1]["IsDeleted"]
                    out.append(org.serialize(sobject, found[1], canon, v) if ok and found else None)
            return 200, out, {}
        if method == "DELETE":
            ids = [i for i in params.get("ids", "").split(",") if i]
            all_or_none = params.get("allOrNone", "false").lower() == "true"
            items: list[tuple[str, Any]] = [("delete", i) for i in ids]
        elif method in ("POST", "PATCH"):
            body = self._json_body() or {}
            all_or_none = bool(body.get("allOrNone", False))
            items = [("create" if method == "POST" else "update", r) for r in body.get("records") or []]
        else:
            raise SfError(405, "METHOD_NOT_ALLOWED", f"HTTP Method '{method}' not allowed.")
        if len(items) > MAX_COLLECTION:
            raise SfError(400, "EXCEEDED_ID_LIMIT", "record limit reached. cannot submit more than 200 records into "
                          "this call")
        results: list[dict[str, Any]] = []
        ctx = self._ctx(v, tok)
        try:
            with org.transaction(ctx, all_or_none=all_or_none) as txn:
                for op, item in items:
                    results.append(self._collection_item(txn, op, item))
                if all_or_none and any(not r["success"] for r in results):
                    raise _Rollback
        except _Rollback:
            msg = ("Record rolled back because not all records were valid and the request was using AllOrNone "
                   "header")
            results = [r if not r["success"] else
                       {"id": r.get("id"), "success": False, "errors": [
                           {"statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK", "message": msg, "fields": []}]}
                       for r in results]
        return 200, results, {}

    def _collection_upsert(self, v: str, sobject: str, field_name: str, tok: Token) -> tuple[int, Any, dict[str, str]]:
        """PATCH /composite/sobjects/{type}/{ExternalIdField}: upsert each record on that field, allOrNone as in the
        body; results carry ``created`` (docs/reference/salesforce.md §2.5)."""
        org = self.org
        f = org.types[sobject].field(field_name)
        if f is None or not f.external_id:
            raise SfError(400, "INVALID_FIELD", f"Field {field_name} is not an External ID or does not exist")
        body = self._json_body() or {}
        records = body.get("records") or []
        if len(records) > MAX_COLLECTION:
            raise SfError(400, "EXCEEDED_ID_LIMIT", "record limit reached. cannot submit more than 200 records into "
                          "this call")
        results: list[dict[str, Any]] = []
        with org.transaction(self._ctx(v, tok), all_or_none=bool(body.get("allOrNone", False))) as txn:
            for item in records:
                values = {k: val for k, val in item.items() if k != "attributes"}
                key = values.get(f.name)
                try:
                    if not key:
                        raise SfError(400, "MISSING_ARGUMENT", f"{f.name} not specified", [f.name])
                    matches = [r for r in org.records[sobject].values() if not r["IsDeleted"] and r.get(f.name) == key]
                    if len(matches) > 1:
                        raise SfError(300, "DUPLICATE_EXTERNAL_ID", f"{f.name}: more than one record found for "
                                      "external id field", [f.name])
                    if matches:
                        rid = org.update(txn, sobject, matches[0]["Id"], {k: x for k, x in values.items()
                                                                          if k != f.name})
                        results.append({"id": rid, "success": True, "errors": [], "created": False})
                    else:
                        results.append({"id": org.create(txn, sobject, values), "success": True, "errors": [],
                                        "created": True})
                except SfError as e:
                    results.append({"success": False, "errors": e.as_collection_errors()})
        return 200, results, {}

    def _collection_item(self, txn: Any, op: str, item: Any) -> dict[str, Any]:
        org = self.org
        try:
            if op == "delete":
                rid = org.find(item)
                return {"id": org.delete(txn, rid[0] if rid else "Contact", item), "success": True, "errors": []}
            if not isinstance(item, dict) or not isinstance(item.get("attributes"), dict) or \
                    not item["attributes"].get("type"):
                raise SfError(400, "INVALID_FIELD", "No SObject Type defined in the record", [])
            sobject = self._type(item["attributes"]["type"])
            values = {k: val for k, val in item.items() if k != "attributes"}
            if op == "create":
                return {"id": org.create(txn, sobject, values), "success": True, "errors": []}
            rid = next((val for k, val in values.items() if k.lower() == "id"), None)
            if not rid:
                raise SfError(400, "MISSING_ARGUMENT", "Id not specified in an update call", [])
            values = {k: val for k, val in values.items() if k.lower() != "id"}
            return {"id": org.update(txn, sobject, rid, values), "success": True, "errors": []}
        except SfError as e:
            out: dict[str, Any] = {"success": False, "errors": e.as_collection_errors()}
            if op != "create":
                out["id"] = item if op == "delete" else item.get("Id")
            return out

    # -- admin API -------------------------------------------------------------------------------------------------
    def _admin(self, method: str, path: str, params: dict[str, str]) -> None:
        try:
            status, body = self.emulator.admin_http(method, path, self._json_body() or {}, params)
        except SfError as e:
            status, body = e.status, e.as_rest()
        except (KeyError, TypeError, ValueError) as e:
            status, body = 400, [{"errorCode": "BAD_ADMIN_REQUEST", "message": str(e)}]
        self._send(status, body)


def _bearer(auth: str | None) -> str | None:
    if auth and auth.lower().startswith(("bearer ", "oauth ")):
        return auth.split(" ", 1)[1].strip()
    return None


def sign(secret: bytes, *parts: str) -> str:
    return base64.b64encode(hmac.new(secret, "".join(parts).encode(), hashlib.sha256).digest()).decode()
