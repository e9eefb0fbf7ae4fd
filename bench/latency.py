"""``python -m bench.latency``: one edit -> the other side written, and how much of it is our own time.

Azurite, the Graph and Salesforce emulators and the real function app's functions, called in the order the platform
would call them: an Outlook edit goes through ``graph_notifications`` and ``contact_worker`` to Salesforce; a
Salesforce edit's change event is pushed, signed, to ``salesforce_events`` and ``contact_worker`` writes Outlook.

"Own time" is the webhook function plus the worker function; the queue's delivery delay is the platform's and is
reported apart. "Service" is the part the emulators spent answering our calls (their ``ServiceClock``), which a real
tenant and org spend instead; "ours" is own time minus service time: our code, the SDKs and Azurite. Every edit is
checked on the other side. Prints p50/p99 per direction and writes ``bench/results.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any


def _quantiles(samples: list[float]) -> dict[str, float]:
    q = statistics.quantiles(samples, n=100)
    return {"p50_ms": round(q[49] * 1000, 1), "p99_ms": round(q[98] * 1000, 1),
            "max_ms": round(max(samples) * 1000, 1), "n": len(samples)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.latency")
    parser.add_argument("-n", type=int, default=100, help="edits per direction (default 100)")
    parser.add_argument("--out", default="bench/results.json", help="results file (default bench/results.json)")
    args = parser.parse_args(argv)

    from azure.functions.queue import QueueMessage
    from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy

    from bench.scale import stack
    from sync import bootstrap
    from sync.adapters.graph import client_state_digest
    from sync.adapters.salesforce.pubsub import sign_events
    from sync.ports import StoredSubscription
    from sync.reconcile import reconcile_mailbox
    from sync.triggers import graph, salesforce, worker

    logging.basicConfig(level=logging.WARNING)
    for name in ("sync", "emulators", "azure", "urllib3", "httpx"):
        logging.getLogger(name).setLevel(logging.ERROR)
    mb, state, secret = "ann@contoso.com", "bench-client-state", uuid.uuid4().hex
    webhook = graph.graph_notifications.build().get_user_function()
    push = salesforce.salesforce_events.build().get_user_function()
    work = worker.contact_worker.build().get_user_function()
    out: dict[str, Any] = {"cores": os.cpu_count()}
    with stack([mb]) as s:
        s.sf.bulk_create_contacts([{"FirstName": f"F{i}", "LastName": f"L{i}", "Email": f"l{i}@bench.example",
                                    "OwnerId": s.users[mb]} for i in range(20)], as_user=s.users[mb])
        root = bootstrap.install(bootstrap.Root({**s.settings(), "EVENTS_HMAC_SECRET": secret}))
        try:
            reconcile_mailbox(root.engine, mb)  # the initial sync links the 20 people
            links = [lk for lk in root.links.list(mb) if lk.m365_id and lk.sf_id]
            root.subscriptions.put(StoredSubscription(
                id="bench-sub", mailbox=mb, resource=f"users/{s.graph.user_id(mb)}/contacts",
                expires_at=datetime.now(UTC) + timedelta(days=2), client_state_digest=client_state_digest(state)))
            q = QueueClient.from_connection_string(s.conn, "contact-changes", api_version="2025-11-05",
                                                   message_encode_policy=TextBase64EncodePolicy(),
                                                   message_decode_policy=TextBase64DecodePolicy())

            from bench.scale import calls

            per_edit: dict[str, list[Any]] = {"outlook_to_sf": [], "sf_to_outlook": []}

            def deliver() -> tuple[float, float]:
                """Receive the hint as the host would and run the worker: (queue delay, worker time)."""
                t = time.perf_counter()
                while True:
                    got = list(q.receive_messages(max_messages=1, visibility_timeout=30))
                    if got:
                        break
                    time.sleep(0.005)
                waited = time.perf_counter() - t
                m = got[0]
                t = time.perf_counter()
                work(QueueMessage(id=m.id, body=m.content.encode(), dequeue_count=m.dequeue_count,
                                  pop_receipt=m.pop_receipt))
                spent = time.perf_counter() - t
                q.delete_message(m)
                return waited, spent

            import azure.functions as func

            results: dict[str, dict[str, list[float]]] = {
                d: {"own": [], "ours": [], "service": [], "queue": [], "webhook": [], "worker": []}
                for d in ("outlook_to_sf", "sf_to_outlook")}

            def service() -> float:
                s.graph.service.settle()
                s.sf.service.settle()
                return s.graph.service.seconds + s.sf.service.seconds

            for i in range(args.n + 5):  # 5 warm-up rounds
                link = links[i % len(links)]
                # Outlook -> Salesforce
                title = f"Buyer {i}"
                before = calls(s)
                s.graph.update_contact(mb, link.m365_id or "", {"jobTitle": title})
                body = json.dumps({"value": [{
                    "subscriptionId": "bench-sub", "clientState": state, "changeType": "updated",
                    "resource": f"Users/{s.graph.user_id(mb)}/Contacts/{link.m365_id}",
                    "resourceData": {"@odata.type": "#Microsoft.Graph.Contact", "id": link.m365_id}}]}).encode()
                served = service()
                t = time.perf_counter()
                resp = webhook(func.HttpRequest("POST", "http://127.0.0.1/api/graph/notifications", body=body,
                                                headers={"Content-Type": "application/json"}))
                ack = time.perf_counter() - t
                assert resp.status_code == 202, resp.status_code
                waited, spent = deliver()
                served = service() - served
                written = s.sf.get_record(link.sf_id or "") or {}
                assert written.get("Title") == title, "Outlook edit did not reach Salesforce"
                per_edit["outlook_to_sf"].append(calls(s).minus(before))
                if i >= 5:
                    r = results["outlook_to_sf"]
                    r["own"].append(ack + spent)
                    r["service"].append(served)
                    r["ours"].append(ack + spent - served)
                    r["queue"].append(waited)
                    r["webhook"].append(ack)
                    r["worker"].append(spent)
                # Salesforce -> Outlook
                dept = f"Dept {i}"
                before = calls(s)
                s.sf.update_contact(link.sf_id or "", {"Department": dept}, as_user=s.users[mb])
                event = s.sf.events()[-1]
                payload = json.dumps({"events": [{"ChangeEventHeader": event["header"], **event["body"]}]},
                                     default=str).encode()
                headers = {"Content-Type": "application/json", **sign_events(payload, secret, int(time.time()))}
                served = service()
                t = time.perf_counter()
                resp = push(func.HttpRequest("POST", "http://127.0.0.1/api/salesforce/events", body=payload,
                                             headers=headers))
                ack = time.perf_counter() - t
                assert resp.status_code == 202, (resp.status_code, resp.get_body()[:200])
                waited, spent = deliver()
                served = service() - served
                contact = s.graph.get_contact(mb, link.m365_id or "") or {}
                assert contact.get("department") == dept, "Salesforce edit did not reach Outlook"
                per_edit["sf_to_outlook"].append(calls(s).minus(before))
                if i >= 5:
                    r = results["sf_to_outlook"]
                    r["own"].append(ack + spent)
                    r["service"].append(served)
                    r["ours"].append(ack + spent - served)
                    r["queue"].append(waited)
                    r["webhook"].append(ack)
                    r["worker"].append(spent)
        finally:
            bootstrap.reset()
    for direction, r in results.items():
        out[direction] = {k: _quantiles(v) for k, v in r.items()}
        used = per_edit[direction][-1]
        out[direction]["calls_per_edit"] = {"graph": used.graph, "salesforce": used.sf, "tables": used.tables}
    print(f"single edit -> other side written, {args.n} edits per direction, cores: {os.cpu_count()}")
    for direction, label in (("outlook_to_sf", "Outlook -> Salesforce"), ("sf_to_outlook", "Salesforce -> Outlook")):
        r = out[direction]
        print(f"  {label:22} ours p50 {r['ours']['p50_ms']} ms  p99 {r['ours']['p99_ms']} ms   "
              f"target p50 < 100, p99 < 500")
        print(f"  {'':22} = webhook + worker p50 {r['own']['p50_ms']} ms, p99 {r['own']['p99_ms']} ms "
              f"(webhook p50 {r['webhook']['p50_ms']} ms, worker p50 {r['worker']['p50_ms']} ms), minus the "
              f"emulated services' time p50 {r['service']['p50_ms']} ms; queue delivery p50 {r['queue']['p50_ms']} ms, "
              f"the platform's")
        print(f"  {'':22} calls per edit: {r['calls_per_edit']}")
    from bench.results import record

    record("latency", out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
