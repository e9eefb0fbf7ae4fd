"""``eventbus.v1.PubSub`` servicer: GetTopic, GetSchema, Subscribe over the org's ContactChangeEvent log.

Behaviour follows docs/reference/salesforce.md §5.1 and §7.2 and Appendix A:
- auth from metadata ``accesstoken`` / ``instanceurl`` / ``tenantid``; failure -> ``UNAUTHENTICATED``;
- errors carry an ``error-code`` trailer (``sfdc.platform.eventbus.grpc...``) and ``rpc-id``;
- Subscribe is pull-based: outstanding = sum(num_requested) - delivered, capped at 100; replay preset and id are read
  from the first FetchRequest only; a later ``topic_name`` must match (``INVALID_ARGUMENT``);
- CUSTOM resumes strictly after the replay id; ids older than the 72 h retention or unknown -> ``INVALID_ARGUMENT``
  + ``...replayid.validation.failed``; malformed -> ``...replayid.corrupted`` (§4.5);
- when events are requested but none are available, an empty keepalive FetchResponse carries ``latest_replay_id``
  (every ``keepalive_seconds``, default 270); with nothing requested for ``idle_timeout_seconds`` (60) the stream ends.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NoReturn

import grpc

from emulators.salesforce.store import Org, Token, replay_bytes
from sync.adapters.salesforce.pubsub_api import pubsub_api_pb2 as pb2
from sync.adapters.salesforce.pubsub_api import pubsub_api_pb2_grpc as pb2_grpc

if TYPE_CHECKING:
    from emulators.salesforce.server import SalesforceEmulator

logger = logging.getLogger(__name__)

# per-entity and standard channel, docs/reference/salesforce.md §4.1
TOPICS = ("/data/ContactChangeEvent", "/data/ChangeEvents")
MAX_REQUESTED = 100  # docs/reference/salesforce.md §5.1
ERR = "sfdc.platform.eventbus.grpc."


class PubSubServicer(pb2_grpc.PubSubServicer):
    def __init__(self, emu: SalesforceEmulator) -> None:
        self.emu = emu

    @property
    def org(self) -> Org:
        return self.emu.org

    def _abort(self, context: grpc.ServicerContext, code: grpc.StatusCode, error_code: str, message: str,
               rpc_id: str) -> NoReturn:
        context.set_trailing_metadata((("error-code", error_code), ("rpc-id", rpc_id)))
        context.abort(code, message)
        raise AssertionError("unreachable")  # context.abort raises

    def _auth(self, context: grpc.ServicerContext, method: str, rpc_id: str) -> Token:
        self.org.counters.inc(f"grpc.{method}")
        with self.org.lock:
            fault = self.org.faults.take_grpc_failure(method)
        if fault is not None:
            self.org.counters.inc(f"grpc.fault.{fault['code']}")
            self._abort(context, getattr(grpc.StatusCode, fault["code"]), fault["error_code"], fault["message"],
                        rpc_id)
        md = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        tok = self.org.authenticate(md.get("accesstoken"))
        if tok is None or md.get("tenantid") != self.org.org_id or not md.get("instanceurl"):
            self.org.counters.inc("grpc.unauthenticated")
            self._abort(context, grpc.StatusCode.UNAUTHENTICATED, ERR + "service.auth.error",
                        "The session is invalid or has expired", rpc_id)
        return tok

    def GetTopic(self, request: pb2.TopicRequest, context: grpc.ServicerContext) -> pb2.TopicInfo:  # noqa: N802
        rpc_id = str(uuid.uuid4())
        self._auth(context, "GetTopic", rpc_id)
        if request.topic_name not in TOPICS:
            self._abort(context, grpc.StatusCode.NOT_FOUND, ERR + "topic.not.found",
                        f"Topic not found: {request.topic_name}", rpc_id)
        return pb2.TopicInfo(topic_name=request.topic_name, tenant_guid=self.org.org_id, can_publish=False,
                             can_subscribe=True, schema_id=self.org.codec.schema_id, rpc_id=rpc_id)

    def GetSchema(self, request: pb2.SchemaRequest, context: grpc.ServicerContext) -> pb2.SchemaInfo:  # noqa: N802
        rpc_id = str(uuid.uuid4())
        self._auth(context, "GetSchema", rpc_id)
        if request.schema_id != self.org.codec.schema_id:
            self._abort(context, grpc.StatusCode.NOT_FOUND, ERR + "schema.not.found",
                        f"Schema not found: {request.schema_id}", rpc_id)
        return pb2.SchemaInfo(schema_json=self.org.codec.schema_json, schema_id=self.org.codec.schema_id,
                              rpc_id=rpc_id)

    def Subscribe(self, request_iterator: Iterator[pb2.FetchRequest],  # noqa: N802
                  context: grpc.ServicerContext) -> Iterator[pb2.FetchResponse]:
        rpc_id = str(uuid.uuid4())
        self._auth(context, "Subscribe", rpc_id)
        org = self.org
        try:
            first = next(request_iterator)
        except StopIteration:
            return
        org.counters.inc("grpc.FetchRequest")
        topic = first.topic_name
        if topic not in TOPICS:
            self._abort(context, grpc.StatusCode.NOT_FOUND, ERR + "topic.not.found", f"Topic not found: {topic}",
                        rpc_id)
        org.purge_expired_events()
        with org.lock:
            if first.replay_preset == pb2.ReplayPreset.CUSTOM:
                if len(first.replay_id) != 8:
                    self._abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                                ERR + "subscription.fetch.replayid.corrupted", "The Replay ID is corrupted", rpc_id)
                cursor = int.from_bytes(first.replay_id, "big")
                if cursor < org.purged_upto or cursor > org.last_replay:
                    self._abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                                ERR + "subscription.fetch.replayid.validation.failed",
                                "The Replay ID validation failed", rpc_id)
            elif first.replay_preset == pb2.ReplayPreset.EARLIEST:
                cursor = org.purged_upto
            else:  # LATEST, also when unset
                cursor = org.last_replay
        state: dict[str, Any] = {"pending": min(MAX_REQUESTED, max(0, first.num_requested)), "error": None,
                                 "closed": False, "cancelled": False, "last_request": time.monotonic()}
        cond = org.changed

        def reader() -> None:
            try:
                for req in request_iterator:
                    org.counters.inc("grpc.FetchRequest")
                    with cond:
                        if req.topic_name and req.topic_name != topic:
                            state["error"] = "topic"
                        else:
                            state["pending"] = min(MAX_REQUESTED, state["pending"] + max(0, req.num_requested))
                            state["last_request"] = time.monotonic()
                        cond.notify_all()
            except Exception:  # noqa: BLE001 - the stream was cancelled
                pass
            with cond:
                state["closed"] = True
                cond.notify_all()

        def on_done() -> None:
            with cond:
                state["cancelled"] = True
                cond.notify_all()

        context.add_callback(on_done)
        threading.Thread(target=reader, name="pubsub-fetch-reader", daemon=True).start()
        last_sent = time.monotonic()
        while True:
            response: pb2.FetchResponse | None = None
            with cond:
                while response is None:
                    if state["cancelled"] or not context.is_active():
                        return
                    if state["error"]:
                        break
                    org.purge_expired_events()
                    batch = org.events_after(cursor, state["pending"]) if state["pending"] > 0 else []
                    if batch:
                        if org.delivered + len(batch) > org.delivery_max:
                            state["error"] = "limit"
                            break
                        org.delivered += len(batch)
                        state["pending"] -= len(batch)
                        cursor = batch[-1].replay
                        org.counters.inc("grpc.events_delivered", len(batch))
                        response = pb2.FetchResponse(
                            events=[pb2.ConsumerEvent(event=pb2.ProducerEvent(
                                id=e.event_uuid, schema_id=org.codec.schema_id, payload=e.payload),
                                replay_id=e.replay_id) for e in batch],
                            latest_replay_id=replay_bytes(cursor), rpc_id=rpc_id,
                            pending_num_requested=state["pending"])
                        break
                    now = time.monotonic()
                    if state["pending"] == 0 and (state["closed"] or
                                                  now - state["last_request"] >= self.emu.idle_timeout_seconds):
                        org.counters.inc("grpc.stream_closed_idle")
                        return
                    if state["pending"] > 0 and now - last_sent >= self.emu.keepalive_seconds:
                        org.counters.inc("grpc.keepalive")
                        response = pb2.FetchResponse(latest_replay_id=replay_bytes(max(cursor, org.last_replay)),
                                                     rpc_id=rpc_id, pending_num_requested=state["pending"])
                        break
                    cond.wait(timeout=0.1)
            if state["error"] == "topic":
                self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, ERR + "subscription.topic.mismatch",
                            "The topic name in a FetchRequest must match the first request", rpc_id)
            if state["error"] == "limit":
                self._abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, ERR + "subscription.limit.exceeded",
                            "Event delivery allocation exceeded", rpc_id)
            last_sent = time.monotonic()
            yield response
