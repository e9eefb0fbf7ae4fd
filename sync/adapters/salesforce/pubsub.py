"""Salesforce Change Data Capture in: a Pub/Sub API (gRPC) subscriber and the parser of HMAC-signed pushed events.

``CdcSubscriber.pull`` is one bounded burst (docs/reference/salesforce.md §5.1, §5.5): it subscribes from the stored
replay id (else the configured LATEST/EARLIEST), keeps at most 100 events outstanding, and ends after ``max_events``,
``max_seconds`` or ``idle_seconds`` without events. The timer holds it open for nearly its whole period, so an edit is
read as it commits; one subscriber never runs two pulls at once (a second caller returns at once, ``busy``). A pull
that ended without any replay id, with none stored, leaves ``EARLIEST`` as the checkpoint: the next pull then starts
at the oldest retained event instead of LATEST, so nothing committed between the two pulls is skipped.
Payloads are Avro, decoded with the schema fetched by its id;
changed-field bitmaps are decoded with that schema (docs/reference/salesforce.md §4.4), never by fixed position.

Events become hints, never content: one ``ContactChange`` per record id through the ``WorkQueue`` (the worker always
re-reads), a batch's up to ``SEND_CONCURRENCY`` at a time; a gap overflow or a wildcard id becomes a
``ReconcileMailbox`` for every mailbox. The replay id (also a keep-alive's) is checkpointed only after the batch's
hints were enqueued: at-least-once, duplicates are harmless.
Events of our own writes are enqueued too: the worker's fingerprint drops echoes (skipping by ``changeOrigin`` would
also skip flows that ran inside our transaction, §4.6). gRPC errors go through ``errors.map_error``; a rejected
replay id means a FULL reconcile of every mailbox and a resubscribe from ``on_replay_rejected``; any other failure
is raised after what was already processed has been checkpointed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import logging
import queue as queue_mod
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sync.adapters.salesforce.auth import AccessToken, TokenProvider
from sync.adapters.salesforce.errors import ReplayRejected, SessionExpired, map_error
from sync.errors import AuthFailed, BadData, SyncError
from sync.model import Side
from sync.ports import CheckpointStore, ContactChange, ReconcileMailbox, WorkQueue

logger = logging.getLogger(__name__)

TOPIC = "/data/ContactChangeEvent"
MAX_OUTSTANDING = 100  # num_requested cap (docs/reference/salesforce.md §5.1)
SEND_CONCURRENCY = 16  # hints of one FetchResponse enqueued at a time (``CdcSubscriber._send_all``)
SIGNATURE_HEADER = "X-Sync-Signature"
TIMESTAMP_HEADER = "X-Sync-Timestamp"
_PRESET_PREFIX = "preset:"


class ReplayStart(StrEnum):
    """Where a subscription starts when there is no stored replay id."""

    LATEST = "LATEST"
    EARLIEST = "EARLIEST"


class BadSignature(AuthFailed):
    """A pushed batch failed HMAC verification or is outside the replay window: answer 401."""


# ---------------------------------------------------------------------------------------------- decoding


def decode_bitmap_fields(schema: Mapping[str, Any], bitmaps: Sequence[str]) -> list[str]:
    """Field names of a Pub/Sub ``changedFields``/``nulledFields``/``diffFields`` bitmap list
    (docs/reference/salesforce.md §4.4).

    ``"0x…"``: bit i (LSB first) = ``schema.fields[i]``; ``"{pos}-0x…"``: bits of the nested record of top-level
    field ``pos`` -> ``Parent.Child``. Anything else (plain names, as CometD sends) is passed through.
    """
    fields = list(schema.get("fields") or [])
    out: list[str] = []
    for bm in bitmaps:
        if bm.startswith("0x"):
            v = int(bm, 16)
            out += [str(f["name"]) for i, f in enumerate(fields) if v >> i & 1]
        elif "-0x" in bm and bm.split("-", 1)[0].isdigit():
            pos, hx = bm.split("-", 1)
            parent = fields[int(pos)]
            types = parent["type"] if isinstance(parent["type"], list) else [parent["type"]]
            nested = next((t for t in types if isinstance(t, dict) and t.get("type") == "record"), None)
            if nested is None:
                continue
            v = int(hx, 16)
            out += [f'{parent["name"]}.{f["name"]}' for i, f in enumerate(nested["fields"]) if v >> i & 1]
        else:
            out.append(bm)
    return out


@dataclass(frozen=True)
class CdcEvent:
    """What one event said (ids and field names only)."""

    change_type: str
    record_ids: tuple[str, ...]
    changed_fields: tuple[str, ...]
    nulled_fields: tuple[str, ...]
    change_origin: str
    commit_user: str
    replay_id: bytes


@dataclass
class PullResult:
    events: list[CdcEvent] = field(default_factory=list)
    hints: int = 0
    gaps: int = 0
    overflow: int = 0
    keepalives: int = 0
    own_origin: int = 0
    reconciles: int = 0
    replay_rejected: bool = False
    busy: bool = False  # another pull of this subscriber was running: this one did nothing
    replay_id: bytes | None = None  # the checkpoint after the run


@dataclass
class _Stream:
    stop: threading.Event = field(default_factory=threading.Event)
    by_us: bool = False
    last_activity: float = field(default_factory=time.monotonic)


class CdcSubscriber:
    """Bounded pulls from ``/data/ContactChangeEvent`` into the work queue (see the module docstring)."""

    def __init__(
        self,
        tokens: TokenProvider,
        *,
        target: str,
        queue: WorkQueue,
        checkpoints: CheckpointStore,
        mailboxes: Sequence[str] | Callable[[], Sequence[str]],
        topic: str = TOPIC,
        secure: bool = True,
        root_certificates: bytes | None = None,
        start: ReplayStart = ReplayStart.LATEST,
        on_replay_rejected: ReplayStart = ReplayStart.EARLIEST,
        on_reconcile: Callable[[str, str], None] | None = None,
        client_name: str = "m365-sync",
        batch_size: int = MAX_OUTSTANDING,
        checkpoint_scope: str = "salesforce",
        checkpoint_name: str = "cdc-replay",
    ) -> None:
        self._tokens, self._target, self._queue, self._checkpoints = tokens, target, queue, checkpoints
        self._mailboxes, self._topic, self._secure, self._roots = mailboxes, topic, secure, root_certificates
        self._start, self._on_rejected, self._on_reconcile = start, on_replay_rejected, on_reconcile
        self._origin_marker = f"client={client_name}"
        self._batch = max(1, min(MAX_OUTSTANDING, batch_size))
        self._scope, self._name = checkpoint_scope, f"{checkpoint_name}:{topic}"
        self._schemas: dict[str, tuple[dict[str, Any], Any]] = {}  # schema id -> (schema JSON, parsed)
        self._pulling = threading.Lock()

    # --- checkpoint -------------------------------------------------------------------------------------------
    def _load(self) -> tuple[bytes | None, ReplayStart | None]:
        value = self._checkpoints.get(self._scope, self._name)
        if not value:
            return None, None
        if value.startswith(_PRESET_PREFIX):
            return None, ReplayStart(value[len(_PRESET_PREFIX):])
        return base64.b64decode(value), None

    def _save(self, replay_id: bytes, result: PullResult, *, events: bool = False) -> None:
        """The replay id, then when it was saved (``<name>:saved``) and, after events, when they came
        (``<name>:event``): the status page's stream state."""
        self._checkpoints.put(self._scope, self._name, base64.b64encode(replay_id).decode())
        result.replay_id = replay_id
        now = datetime.now(UTC).isoformat()
        self._checkpoints.put(self._scope, f"{self._name}:saved", now)
        if events:
            self._checkpoints.put(self._scope, f"{self._name}:event", now)

    # --- reconcile --------------------------------------------------------------------------------------------
    def _reconcile_all(self, reason: str, mode: str, result: PullResult) -> None:
        result.reconciles += 1
        if self._on_reconcile is not None:
            self._on_reconcile(reason, mode)
            return
        boxes = self._mailboxes() if callable(self._mailboxes) else self._mailboxes
        for mailbox in boxes:
            self._queue.send(ReconcileMailbox(mailbox=mailbox, mode="full" if mode == "full" else "delta"))

    # --- gRPC -------------------------------------------------------------------------------------------------
    @staticmethod
    def _error(exc: Any) -> SyncError:
        """Status + ``error-code`` trailer of a grpc.RpcError, through the one mapping table."""
        trailers = {k: v for k, v in (exc.trailing_metadata() or ()) if isinstance(v, str)}
        code = exc.code()
        return map_error(grpc_status=getattr(code, "name", str(code)), code=trailers.get("error-code"),
                         message=str(exc.details() or ""))

    def _metadata(self, tok: AccessToken) -> tuple[tuple[str, str], ...]:
        return (("accesstoken", tok.access_token), ("instanceurl", tok.instance_url), ("tenantid", tok.org_id))

    def _schema(self, stub: Any, md: Any, schema_id: str) -> tuple[dict[str, Any], Any]:
        import fastavro
        import grpc

        from sync.adapters.salesforce.pubsub_api import pubsub_api_pb2 as pb2

        if schema_id not in self._schemas:
            try:
                info = stub.GetSchema(pb2.SchemaRequest(schema_id=schema_id), metadata=md, timeout=30)
            except grpc.RpcError as exc:
                raise self._error(exc) from exc
            raw = json.loads(info.schema_json)
            self._schemas[schema_id] = (raw, fastavro.parse_schema(json.loads(info.schema_json)))
        return self._schemas[schema_id]

    def _decode(self, stub: Any, md: Any, consumer_event: Any) -> tuple[dict[str, Any], CdcEvent]:
        import fastavro

        raw, parsed = self._schema(stub, md, consumer_event.event.schema_id)
        rec: Any = fastavro.schemaless_reader(io.BytesIO(consumer_event.event.payload), parsed)
        header = rec.get("ChangeEventHeader") or {}
        event = CdcEvent(
            change_type=str(header.get("changeType") or ""),
            record_ids=tuple(str(i) for i in header.get("recordIds") or ()),
            changed_fields=tuple(decode_bitmap_fields(raw, header.get("changedFields") or [])),
            nulled_fields=tuple(decode_bitmap_fields(raw, header.get("nulledFields") or [])),
            change_origin=str(header.get("changeOrigin") or ""),
            commit_user=str(header.get("commitUser") or ""),
            replay_id=bytes(consumer_event.replay_id),
        )
        return header, event

    def _send_all(self, hints: Sequence[ContactChange]) -> None:
        """Enqueue a batch's hints, up to ``SEND_CONCURRENCY`` at a time: a storage queue takes one message per
        request, and one at a time a bulk change of thousands of records reached the workers no faster than one
        round trip per record (docs/performance.md, "A bulk reassignment into one mailbox"). Returns once all are
        sent; the first failure is raised then, before the batch's checkpoint is saved (at-least-once; the order of
        hints never mattered: the worker re-reads)."""
        if len(hints) <= 1:
            for hint in hints:
                self._queue.send(hint)
            return
        with ThreadPoolExecutor(max_workers=min(SEND_CONCURRENCY, len(hints)), thread_name_prefix="cdc-send") as pool:
            sent = [pool.submit(self._queue.send, hint) for hint in hints]
        for done in sent:
            done.result()

    def _handle(self, stub: Any, md: Any, response: Any, result: PullResult) -> None:
        """Hints for one FetchResponse, then the checkpoint (never before the hints are enqueued)."""
        if not response.events:
            result.keepalives += 1
            if response.latest_replay_id:
                self._save(bytes(response.latest_replay_id), result)
            return
        ids: dict[str, None] = {}
        overflow = False
        for ce in response.events:
            header, event = self._decode(stub, md, ce)
            result.events.append(event)
            if header.get("entityName", "Contact") != "Contact":
                continue
            if self._origin_marker in event.change_origin:
                result.own_origin += 1
            if event.change_type.startswith("GAP_"):
                result.gaps += 1
            if event.change_type == "GAP_OVERFLOW" or any(i.endswith("*") for i in event.record_ids):
                result.overflow += 1
                overflow = True
                continue
            for rid in event.record_ids:
                ids[rid] = None
            logger.debug("cdc %s %s changed %s", event.change_type, ",".join(event.record_ids),
                         ",".join(event.changed_fields))
        self._send_all([ContactChange(source=Side.SALESFORCE, item_id=rid) for rid in ids])
        result.hints += len(ids)
        if overflow:
            logger.warning("cdc GAP_OVERFLOW: enqueuing a reconcile of every mailbox")
            self._reconcile_all("GAP_OVERFLOW", "delta", result)
        self._save(bytes(response.events[-1].replay_id), result, events=True)

    def _subscribe(self, stub: Any, md: Any, preset: ReplayStart | None, replay: bytes | None, result: PullResult,
                   deadline: float, max_events: int, idle_seconds: float) -> None:
        import grpc

        from sync.adapters.salesforce.pubsub_api import pubsub_api_pb2 as pb2

        def want() -> int:
            return max(0, min(self._batch, max_events - len(result.events)))

        if replay is not None:
            first = pb2.FetchRequest(topic_name=self._topic, replay_preset=pb2.ReplayPreset.CUSTOM, replay_id=replay,
                                     num_requested=want())
        else:
            p = pb2.ReplayPreset.EARLIEST if preset is ReplayStart.EARLIEST else pb2.ReplayPreset.LATEST
            first = pb2.FetchRequest(topic_name=self._topic, replay_preset=p, num_requested=want())
        requests: queue_mod.Queue[Any] = queue_mod.Queue()

        def fetches() -> Iterator[Any]:
            yield first
            while True:
                item = requests.get()
                if item is None:
                    return
                yield item

        call = stub.Subscribe(fetches(), metadata=md)
        stream = _Stream()

        def watchdog() -> None:
            while not stream.stop.wait(0.05):
                now = time.monotonic()
                if now >= deadline or now - stream.last_activity >= idle_seconds:
                    stream.by_us = True
                    call.cancel()
                    return

        guard = threading.Thread(target=watchdog, name="cdc-watchdog", daemon=True)
        guard.start()
        try:
            for response in call:
                if response.events:  # keep-alives do not count: idle means "no events"
                    stream.last_activity = time.monotonic()
                self._handle(stub, md, response, result)
                if len(result.events) >= max_events:
                    stream.by_us = True
                    return
                if response.pending_num_requested == 0 and want() > 0:
                    requests.put(pb2.FetchRequest(num_requested=want()))
        except grpc.RpcError as exc:
            if stream.by_us and exc.code() == grpc.StatusCode.CANCELLED:
                return
            raise self._error(exc) from exc
        finally:
            stream.stop.set()
            requests.put(None)
            call.cancel()
            guard.join(1)

    def pull(self, *, max_events: int = 1000, max_seconds: float = 30.0, idle_seconds: float = 5.0) -> PullResult:
        """One bounded burst: subscribe from the checkpoint, enqueue hints, checkpoint after each batch."""
        if not self._pulling.acquire(blocking=False):
            logger.info("cdc pull skipped: the previous pull is still running")
            return PullResult(busy=True)
        try:
            result = self._pull(max_events, max_seconds, idle_seconds)
        finally:
            self._pulling.release()
        return result

    def _pull(self, max_events: int, max_seconds: float, idle_seconds: float) -> PullResult:
        import grpc

        from sync.adapters.salesforce.pubsub_api import pubsub_api_pb2_grpc as pb2_grpc

        result = PullResult()
        deadline = time.monotonic() + max_seconds
        if self._secure:
            channel = grpc.secure_channel(self._target, grpc.ssl_channel_credentials(self._roots))
        else:
            channel = grpc.insecure_channel(self._target)
        renewed = False
        override: ReplayStart | None = None
        try:
            stub = pb2_grpc.PubSubStub(channel)
            while True:
                tok = self._tokens.token()
                md = self._metadata(tok)
                replay, stored_preset = self._load()
                if override is not None:
                    replay, stored_preset = None, override
                try:
                    self._subscribe(stub, md, stored_preset or (None if replay else self._start), replay, result,
                                    deadline, max_events, idle_seconds)
                    if result.replay_id is None and replay is None and stored_preset is not ReplayStart.EARLIEST:
                        # no position known yet (a quiet channel, keep-alives come only every 270 s): never LATEST
                        # again, or whatever commits before the next pull subscribes would be skipped
                        self._checkpoints.put(self._scope, self._name, _PRESET_PREFIX + ReplayStart.EARLIEST.value)
                    return result
                except SessionExpired:
                    if renewed:
                        raise
                    renewed = True
                    self._tokens.invalidate(tok)
                    logger.info("pub/sub session refused: minting a new token")
                except ReplayRejected:
                    if override is not None:
                        raise
                    logger.error("cdc replay id rejected (older than retention or corrupted): events may be lost; "
                                 "enqueuing a FULL reconcile of every mailbox and resubscribing from %s",
                                 self._on_rejected.value)
                    result.replay_rejected = True
                    self._reconcile_all("replay id rejected", "full", result)
                    override = self._on_rejected
                    # Until a real replay id arrives, the next run starts from the same preset.
                    self._checkpoints.put(self._scope, self._name, _PRESET_PREFIX + self._on_rejected.value)
        finally:
            channel.close()


# ---------------------------------------------------------------------------------------------- push


def _header(headers: Mapping[str, str], name: str) -> str | None:
    wanted = name.lower()
    return next((str(v) for k, v in headers.items() if k.lower() == wanted), None)


def sign_events(body: bytes, secret: bytes | str, timestamp: int) -> dict[str, str]:
    """The headers a relay sends: HMAC-SHA256(secret, "<timestamp>.<body>") as hex."""
    key = secret.encode() if isinstance(secret, str) else secret
    digest = hmac.new(key, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return {TIMESTAMP_HEADER: str(timestamp), SIGNATURE_HEADER: f"sha256={digest}"}


def _events_of(doc: Any) -> list[Mapping[str, Any]]:
    items = doc.get("events") if isinstance(doc, Mapping) and "events" in doc else doc
    if isinstance(items, Mapping):
        items = [items]
    if not isinstance(items, list):
        raise BadData("pushed body is not a list of change events", code="BAD_EVENTS", side="salesforce")
    out = []
    for item in items:
        if isinstance(item, Mapping) and isinstance(item.get("data"), Mapping):  # CometD envelope
            item = item["data"].get("payload", item["data"])
        if isinstance(item, Mapping) and isinstance(item.get("payload"), Mapping):
            item = item["payload"]
        if not isinstance(item, Mapping) or not isinstance(item.get("ChangeEventHeader"), Mapping):
            raise BadData("pushed event has no ChangeEventHeader", code="BAD_EVENTS", side="salesforce")
        out.append(item)
    return out


def parse_signed_events(body: bytes, headers: Mapping[str, str], secret: bytes | str, now: datetime,
                        window_s: float = 300) -> list[ContactChange]:
    """Verify and parse a pushed batch of change events (same JSON as CDC: ChangeEventHeader + fields).

    The signature is HMAC-SHA256 over ``"<timestamp>.<body>"`` (hex, optionally ``sha256=``-prefixed) in
    ``X-Sync-Signature``, the Unix timestamp in ``X-Sync-Timestamp``; compared in constant time; a timestamp more
    than ``window_s`` away from ``now`` is refused (replay window). Failures raise ``BadSignature`` (-> 401); a
    well-signed but malformed body raises ``BadData`` (-> 400). One hint per record id (deduplicated); GAP_* events
    give re-read hints; GAP_OVERFLOW and wildcard ids are logged (the scheduled reconcile repairs them, a push
    endpoint cannot enqueue mailbox reconciles through this return type).
    """
    stamp, signature = _header(headers, TIMESTAMP_HEADER), _header(headers, SIGNATURE_HEADER)
    if not stamp or not signature:
        raise BadSignature("missing signature headers", side="salesforce")
    try:
        ts = int(stamp)
    except ValueError as exc:
        raise BadSignature("bad signature timestamp", side="salesforce") from exc
    given = signature.split("=", 1)[1] if signature.startswith("sha256=") else signature
    expected = sign_events(body, secret, ts)[SIGNATURE_HEADER].split("=", 1)[1]
    if not hmac.compare_digest(given.strip().lower().encode(), expected.encode()):
        raise BadSignature("signature mismatch", side="salesforce")
    if abs(now.timestamp() - ts) > window_s:
        raise BadSignature("signature timestamp outside the replay window", side="salesforce")
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise BadData("pushed body is not JSON", code="BAD_EVENTS", side="salesforce") from exc
    ids: dict[str, None] = {}
    for event in _events_of(doc):
        header = event["ChangeEventHeader"]
        if header.get("entityName", "Contact") != "Contact":
            continue
        record_ids = [str(i) for i in header.get("recordIds") or ()]
        if header.get("changeType") == "GAP_OVERFLOW" or any(i.endswith("*") for i in record_ids):
            logger.warning("pushed %s event without usable record ids: left to the scheduled reconcile",
                           header.get("changeType"))
            continue
        for rid in record_ids:
            ids[rid] = None
    return [ContactChange(source=Side.SALESFORCE, item_id=rid) for rid in ids]


__all__ = [
    "BadSignature",
    "CdcEvent",
    "CdcSubscriber",
    "PullResult",
    "ReplayStart",
    "decode_bitmap_fields",
    "parse_signed_events",
    "sign_events",
]
