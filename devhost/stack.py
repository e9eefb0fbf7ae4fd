"""The local stack in one place: the app settings that point ``function_app`` at Azurite and the Graph and Salesforce
emulators, and the HTTP call an operator's script would send to the host.

``app_settings`` is what ``local.settings.json`` would hold for the running pieces (docs/configuration.md);
``emulator_settings`` is its Graph and Salesforce part alone, for callers that already hold the storage settings.
Each caller (the demo, the soak, bench, the tests over emulators) passes only what differs: a setting is left out
unless asked for, so a caller gets exactly the settings it names.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from emulators.graph import GraphEmulator
    from emulators.salesforce import SalesforceEmulator

__all__ = ["EVERY_SECOND", "NEVER", "SF_USERNAME", "app_settings", "call", "emulator_settings", "jwt_keys",
           "webhook_bridge"]

NEVER = "0 0 0 1 1 *"  # once a year: the caller fires the timer itself
EVERY_SECOND = "* * * * * *"
SF_USERNAME = "integration@example.com"


def jwt_keys() -> tuple[bytes, str]:
    """A fresh RSA key: (private PEM for ``SF_PRIVATE_KEY``, public PEM for ``register_jwt_client``)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


def emulator_settings(graph: GraphEmulator, salesforce: SalesforceEmulator, *, jwt_client: str, private_key: bytes,
                      pubsub: bool = True) -> dict[str, str]:
    """Graph (static token, emulator URL) and Salesforce (JWT bearer login, the emulator's test CA); with ``pubsub``
    also the emulator's plaintext gRPC endpoint for CDC."""
    settings = {
        "GRAPH_CREDENTIAL": "static",
        "GRAPH_BASE_URL": graph.base_url,
        "SF_LOGIN_URL": salesforce.instance_url,
        "SF_CLIENT_ID": jwt_client,
        "SF_USERNAME": SF_USERNAME,
        "SF_PRIVATE_KEY": private_key.decode(),
        "SF_CA_BUNDLE": str(salesforce.ca_path),
    }
    if pubsub:
        settings |= {"SF_PUBSUB_ENDPOINT": salesforce.grpc_target, "SF_PUBSUB_INSECURE": "true"}
    return settings


def app_settings(
    storage: str,
    mailboxes: Iterable[str],
    *,
    table_prefix: str,
    graph: GraphEmulator | None = None,
    salesforce: SalesforceEmulator | None = None,
    jwt_client: str = "",
    private_key: bytes = b"",
    pubsub: bool = True,
    host_port: int | None = None,
    events_secret: str | None = None,
    cdc_schedule: str = NEVER,
    subscriptions_on_start: bool = False,
    cdc_hold_seconds: float = 3.0,
    overrides: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Settings for the app on the local host. ``host_port`` sets ``WEBHOOK_BASE_URL`` (Graph calls the host back
    there); the reconcile and subscription timers never fire by themselves, and the start-up upkeep creates
    subscriptions only with ``subscriptions_on_start``; a CDC pull holds its subscription ``cdc_hold_seconds`` (short,
    so a test that fires the timer gets on; the deployed default is 57); ``overrides`` win."""
    settings = {
        "AzureWebJobsStorage": storage,
        "SYNC_TABLE_PREFIX": table_prefix,
        "SYNC_MAILBOXES": ",".join(mailboxes),
    }
    if host_port is not None:
        settings["WEBHOOK_BASE_URL"] = f"http://127.0.0.1:{host_port}"
    if graph is not None and salesforce is not None:
        settings |= emulator_settings(graph, salesforce, jwt_client=jwt_client, private_key=private_key,
                                      pubsub=pubsub)
    if events_secret is not None:
        settings["EVENTS_HMAC_SECRET"] = events_secret
    settings |= {"CDC_PULL_SCHEDULE": cdc_schedule, "CDC_PULL_HOLD_SECONDS": str(cdc_hold_seconds),
                 "RECONCILE_SCHEDULE": NEVER, "SUBSCRIPTION_SCHEDULE": NEVER,
                 "SUBSCRIPTIONS_ON_START": "true" if subscriptions_on_start else "false"}
    return settings | dict(overrides or {})


def call(method: str, url: str, body: Any = None, *, key: str | None = None,
         timeout: float = 30.0) -> tuple[int, Any, dict[str, str]]:
    """One JSON request to the host: (status, the JSON answer or its text or None, headers). An HTTP error status is
    an answer, not an exception; ``key`` goes in ``x-functions-key``."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", "Accept": "application/json",
                                          **({"x-functions-key": key} if key else {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - 127.0.0.1 only
            raw, status, headers = resp.read(), resp.status, dict(resp.headers.items())
    except urllib.error.HTTPError as err:
        raw, status, headers = err.read(), err.code, dict(err.headers.items())
    text = raw.decode("utf-8", "replace")
    try:
        return status, json.loads(text) if text else None, headers
    except ValueError:
        return status, text, headers


@contextmanager
def webhook_bridge() -> Iterator[str]:
    """Graph's POSTs to the app's two webhooks (``/api/graph/notifications``, ``/api/graph/lifecycle``) answered by
    the real functions in this process, without a host (the official unit-test pattern, docs/reference/azure.md
    §1.5); yields the base URL for ``WEBHOOK_BASE_URL``. For tests and benches that drive the engine directly."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import parse_qs, urlsplit

    import azure.functions as func

    from sync.triggers import graph

    routes = {"/api/graph/notifications": graph.graph_notifications, "/api/graph/lifecycle": graph.graph_lifecycle}

    class Bridge(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - stdlib name
            parts = urlsplit(self.path)
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            req = func.HttpRequest("POST", f"http://127.0.0.1{self.path}", headers=dict(self.headers.items()),
                                   params={k: v[0] for k, v in parse_qs(parts.query).items()}, body=body)
            resp = routes[parts.path].build().get_user_function()(req)
            payload = resp.get_body() or b""
            self.send_response(resp.status_code)
            self.send_header("Content-Type", f"{resp.mimetype}; charset=utf-8")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Bridge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
