"""The composition root: every client and store the functions use, built from app settings on first use.

``current()`` returns the process-wide ``Root``. Each of its parts (``links``, ``graph``, ``salesforce``, ``engine``,
the queues, ...) is built the first time a function asks for it, under one lock, and kept for the life of the worker
process (docs/reference/azure.md §2, client reuse). Nothing is built at import and no Azure, Graph or Salesforce SDK is
loaded, to keep cold starts short; the Graph webhook only ever builds the subscriptions table and a queue. Tests use
``install(root)`` and ``reset()``.

Storage is ``AzureWebJobsStorage`` (a connection string; locally Azurite's) or the identity-based
``AzureWebJobsStorage__tableServiceUri`` / ``__queueServiceUri``, with ``__clientId`` for a user-assigned identity.
Queue clients pin ``api_version`` 2025-11-05, which both Azure and Azurite accept (docs/reference/azure.md §5).

``quiet_third_party_loggers()`` (called by ``function_app`` at import, before any function runs) is the one place
that sets the levels of the SDKs' loggers: Azure runs at Information (host.json), where httpx logs whole Graph URLs
(mailbox UPNs, ``$filter`` on email addresses) and azure-core logs every storage request (UPNs in row keys). Our own
log lines name a mailbox by ``sync.model.mailbox_ref`` only (docs/operations.md "What the logs contain").

Dev-only switches, refused unless the endpoint is on this machine (127.0.0.1, ::1, localhost):
``GRAPH_CREDENTIAL=static`` (a fixed bearer token for the Graph emulator) and ``SF_PUBSUB_INSECURE=true``
(plaintext gRPC for the Salesforce emulator). ``SF_CA_BUNDLE`` names an extra CA trusted for Salesforce TLS.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from sync.config import (
    ConfigError,
    GraphCredential,
    SalesforceAuth,
    is_loopback,
    load_policy,
    mailboxes_in_scope,
    salesforce_oauth,
    setting,
    setting_flag,
    webhook_base_url,
)
from sync.policy import Policy
from sync.ports import ContactChange, LifecycleNotice, WorkItem, WorkQueue
from sync.scope import MailboxList, ScopeChange, group_id_setting, refresh_group

if TYPE_CHECKING:  # only for the type checker: no SDK import at run time
    from sync.adapters.graph import GraphContactSide, GraphSubscriptions, SharedPermits
    from sync.adapters.salesforce import SalesforceContactSide, TokenProvider
    from sync.adapters.salesforce.pubsub import CdcSubscriber
    from sync.adapters.storage import (
        StorageQueue,
        TableAudit,
        TableCheckpoints,
        TableJobs,
        TableLinkStore,
        TableReviews,
        TableStorage,
        TableSubscriptions,
    )
    from sync.engine import Engine

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

CONTACT_QUEUE = "contact-changes"
RECONCILE_QUEUE = "reconcile"
LIFECYCLE_QUEUE = "graph-lifecycle"
NOTIFICATIONS_ROUTE = "/api/graph/notifications"
LIFECYCLE_ROUTE = "/api/graph/lifecycle"


# Loggers of the libraries under the app. They log request URLs (and with them mailbox UPNs, email addresses in
# queries and storage keys) at Information or Debug; only their warnings and errors reach the host's log.
THIRD_PARTY_LOGGERS = ("azure", "httpx", "httpcore", "urllib3", "requests", "grpc", "msal", "msgraph", "msgraph_core",
                       "kiota_abstractions", "kiota_http", "kiota_authentication_azure", "simple_salesforce", "hpack",
                       "h2", "hishel")


def quiet_third_party_loggers(level: int = logging.WARNING) -> None:
    """Set every logger of ``THIRD_PARTY_LOGGERS`` to ``level`` (imports nothing: a logger exists by name)."""
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(level)


class StaticTokenCredential:
    """Dev only: hands out one fixed bearer token (the local Graph emulator accepts any token)."""

    def __init__(self, token: str = "static-dev-token") -> None:
        self._token = token

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        return AccessToken(self._token, int(time.time()) + 3600)


class RoutingQueue:
    """The engine's and the CDC subscriber's ``WorkQueue``: contact hints to ``contact-changes``, mailbox
    reconciles to ``reconcile``, Graph lifecycle events to ``graph-lifecycle``."""

    def __init__(self, contacts: WorkQueue, reconciles: WorkQueue, lifecycle: WorkQueue | None = None) -> None:
        self._contacts, self._reconciles, self._lifecycle = contacts, reconciles, lifecycle

    def send(self, item: WorkItem, *, delay: float = 0.0) -> None:
        if isinstance(item, LifecycleNotice):
            if self._lifecycle is None:
                raise ValueError("no lifecycle queue")
            self._lifecycle.send(item, delay=delay)
            return
        target = self._contacts if isinstance(item, ContactChange) else self._reconciles
        target.send(item, delay=delay)


class Root:
    """Every part the functions use, each built on first use from ``env`` (default: the process environment)."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.env: Mapping[str, str] = dict(os.environ if env is None else env)
        self._lock = threading.RLock()
        self._parts: dict[str, Any] = {}

    # --- plumbing -------------------------------------------------------------------------------------------
    def _once(self, name: str, build: Callable[[], _T]) -> _T:
        with self._lock:
            if name not in self._parts:
                self._parts[name] = build()
            value: _T = self._parts[name]
            return value

    def override(self, **parts: Any) -> Root:
        """Use these parts instead of building them (tests: e.g. ``engine=`` an engine over in-memory sides)."""
        with self._lock:
            self._parts.update(parts)
        return self

    def get(self, name: str) -> str | None:
        return setting(name, self.env)

    def _require(self, name: str, why: str) -> str:
        value = self.get(name)
        if not value:
            raise ConfigError(f"invalid app settings:\n  - {name} is required {why}")
        return value

    def close(self) -> None:
        with self._lock:
            graph = self._parts.pop("graph", None)
            permits = self._parts.pop("graph_permits", None)
            self._parts.clear()
        if graph is not None:
            graph.close()
        if permits is not None:
            permits.close()

    # --- settings-derived values -----------------------------------------------------------------------------
    @property
    def policy(self) -> Policy:
        return self._once("policy", lambda: load_policy(self.env))

    @property
    def mailbox_list(self) -> MailboxList:
        """The mailboxes in scope, live: SYNC_MAILBOXES plus the stored members of SYNC_MAILBOX_GROUP_ID
        (``sync.scope``); ConfigError when the group id is not a GUID."""

        def build() -> MailboxList:
            try:
                group = group_id_setting(self.get("SYNC_MAILBOX_GROUP_ID"))
            except ValueError as exc:
                raise ConfigError(f"invalid app settings:\n  - {exc}") from None
            explicit = mailboxes_in_scope(self.env)
            return MailboxList(explicit, self._once("scope_store", lambda: self.storage.scope()) if group else None,
                               group)

        return self._once("mailbox_list", build)

    @property
    def mailboxes(self) -> tuple[str, ...]:
        """The mailboxes in scope now (with a group: the stored list, re-read at most once a minute)."""
        return self.mailbox_list.current

    def refresh_scope(self) -> ScopeChange | None:
        """With SYNC_MAILBOX_GROUP_ID: read the group now and store it (the subscriptions run calls this)."""
        scope = self.mailbox_list
        if scope.group_id is None:
            return None
        from sync.adapters.graph.directory import GraphGroupReader

        try:
            reader = GraphGroupReader(self.graph)
            change = refresh_group(reader, self._once("scope_store", lambda: self.storage.scope()), scope.group_id,
                                   scope.explicit)
        finally:
            scope.invalidate()
        return change

    @property
    def events_secret(self) -> str | None:
        return self.get("EVENTS_HMAC_SECRET")

    # --- storage ----------------------------------------------------------------------------------------------
    def _storage_credential(self) -> Any:
        def build() -> Any:
            client_id = self.get("AzureWebJobsStorage__clientId")
            if client_id:
                from azure.identity import ManagedIdentityCredential

                return ManagedIdentityCredential(client_id=client_id)
            from azure.identity import DefaultAzureCredential

            return DefaultAzureCredential()

        return self._once("storage_credential", build)

    @property
    def storage(self) -> TableStorage:
        def build() -> TableStorage:
            from sync.adapters.storage import TableStorage

            prefix = self.get("SYNC_TABLE_PREFIX") or "sync"
            conn = self.get("AzureWebJobsStorage")
            if conn:
                return TableStorage.from_connection_string(conn, prefix)
            uri = self._require("AzureWebJobsStorage__tableServiceUri", "(or AzureWebJobsStorage)")
            return TableStorage.from_endpoint(uri, self._storage_credential(), prefix)

        return self._once("storage", build)

    @property
    def links(self) -> TableLinkStore:
        return self._once("links", lambda: self.storage.links())

    @property
    def audit(self) -> TableAudit:
        return self._once("audit", lambda: self.storage.audit())

    @property
    def checkpoints(self) -> TableCheckpoints:
        return self._once("checkpoints", lambda: self.storage.checkpoints())

    @property
    def jobs(self) -> TableJobs:
        return self._once("jobs", lambda: self.storage.jobs())

    @property
    def reviews(self) -> TableReviews:
        return self._once("reviews", lambda: self.storage.reviews())

    @property
    def subscriptions(self) -> TableSubscriptions:
        return self._once("subscriptions", lambda: self.storage.subscriptions())

    def _queue(self, name: str) -> StorageQueue:
        def build() -> StorageQueue:
            from sync.adapters.storage import StorageQueue

            conn = self.get("AzureWebJobsStorage")
            if conn:
                return StorageQueue.from_connection_string(conn, name)
            uri = self._require("AzureWebJobsStorage__queueServiceUri", "(or AzureWebJobsStorage)")
            return StorageQueue.from_endpoint(uri, self._storage_credential(), name)

        return self._once(f"queue:{name}", build)

    @property
    def contact_queue(self) -> StorageQueue:
        return self._queue(CONTACT_QUEUE)

    @property
    def reconcile_queue(self) -> StorageQueue:
        return self._queue(RECONCILE_QUEUE)

    @property
    def lifecycle_queue(self) -> StorageQueue:
        return self._queue(LIFECYCLE_QUEUE)

    def poison_queue(self, name: str) -> StorageQueue:
        """``<name>-poison``: where the functions put a message they gave up on, with the reason."""
        return self._queue(f"{name}-poison")

    @property
    def work_queue(self) -> RoutingQueue:
        return self._once("work_queue", lambda: RoutingQueue(self.contact_queue, self.reconcile_queue,
                                                             self.lifecycle_queue))

    # --- Microsoft Graph ---------------------------------------------------------------------------------------
    def _graph_credential(self) -> Any:
        base_url = self.get("GRAPH_BASE_URL") or ""
        raw = self.get("GRAPH_CREDENTIAL") or ""
        try:
            kind = GraphCredential(raw)
        except ValueError:
            allowed = ", ".join(k.value for k in GraphCredential)
            raise ConfigError(
                f"invalid app settings:\n  - GRAPH_CREDENTIAL={raw!r}: expected one of {allowed}"
            ) from None
        if kind is GraphCredential.STATIC:
            if not is_loopback(base_url):
                raise ConfigError(
                    "invalid app settings:\n  - GRAPH_CREDENTIAL='static' is for the local Graph emulator only: "
                    "GRAPH_BASE_URL must point at 127.0.0.1 or localhost"
                )
            return StaticTokenCredential()
        from sync.adapters.graph import credential_from_settings

        try:
            return credential_from_settings(
                kind.value,
                self._require("GRAPH_TENANT_ID", "for Microsoft Graph"),
                self._require("GRAPH_CLIENT_ID", "for Microsoft Graph"),
                secret=self.get("GRAPH_CLIENT_SECRET"),
                certificate=self.get("GRAPH_CERTIFICATE"),
                managed_identity_client_id=self.get("GRAPH_MANAGED_IDENTITY_CLIENT_ID"),
            )
        except ValueError as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"invalid app settings:\n  - GRAPH_CREDENTIAL: {exc}") from None

    @property
    def graph(self) -> GraphContactSide:
        def build() -> GraphContactSide:
            from sync.adapters.graph import DEFAULT_BASE_URL, DEFAULT_FOLDER_NAME, GraphContactSide

            return GraphContactSide(
                self._graph_credential(),
                base_url=self.get("GRAPH_BASE_URL") or DEFAULT_BASE_URL,
                folder_name=self.get("SYNC_FOLDER_NAME") or DEFAULT_FOLDER_NAME,
                mailboxes=self.mailbox_list,
                field_map=self.policy.field_map,
                permits=self.graph_permits,
            )

        return self._once("graph", build)

    @property
    def graph_permits(self) -> SharedPermits | None:
        """Graph's per-mailbox slots shared by every instance (GRAPH_MAILBOX_PERMITS=shared, the default), or None
        (``process``: the limit holds in this process only)."""
        def build() -> SharedPermits | None:
            mode = (self.get("GRAPH_MAILBOX_PERMITS") or "shared").casefold()
            if mode == "process":
                return None
            if mode != "shared":
                raise ConfigError(
                    f"invalid app settings:\n  - GRAPH_MAILBOX_PERMITS={mode!r}: expected shared or process")
            from sync.adapters.graph import SharedPermits

            return SharedPermits(self.storage.graph_permits())

        return self._once("graph_permits", build)

    @property
    def graph_subscriptions(self) -> GraphSubscriptions:
        def build() -> GraphSubscriptions:
            from sync.adapters.graph import GraphSubscriptions

            base = webhook_base_url(self.env)
            if base is None:
                raise ConfigError(
                    "invalid app settings:\n  - WEBHOOK_BASE_URL is required to create Graph subscriptions")
            return GraphSubscriptions(
                self.graph, notification_url=base + NOTIFICATIONS_ROUTE, lifecycle_url=base + LIFECYCLE_ROUTE
            )

        return self._once("graph_subscriptions", build)

    # --- Salesforce ----------------------------------------------------------------------------------------------
    def _sf_verify(self) -> bool | str:
        return self.get("SF_CA_BUNDLE") or True

    @property
    def tokens(self) -> TokenProvider:
        def build() -> TokenProvider:
            from sync.adapters.salesforce import TokenProvider

            client_id = self._require("SF_CLIENT_ID", "for Salesforce")
            raw = self.get("SF_AUTH_FLOW") or ""
            try:
                flow = SalesforceAuth(raw)
            except ValueError:
                allowed = ", ".join(k.value for k in SalesforceAuth)
                raise ConfigError(
                    f"invalid app settings:\n  - SF_AUTH_FLOW={raw!r}: expected one of {allowed}"
                ) from None
            token_url, audience = salesforce_oauth(self.env, flow)
            common: dict[str, Any] = {"audience": audience, "verify": self._sf_verify()}
            if flow is SalesforceAuth.JWT_BEARER:
                return TokenProvider(
                    token_url, client_id,
                    username=self._require("SF_USERNAME", "with SF_AUTH_FLOW=jwt_bearer"),
                    private_key=self._require("SF_PRIVATE_KEY", "with SF_AUTH_FLOW=jwt_bearer"), **common,
                )
            return TokenProvider(
                token_url, client_id,
                client_secret=self._require("SF_CLIENT_SECRET", "with SF_AUTH_FLOW=client_credentials"), **common,
            )

        return self._once("tokens", build)

    @property
    def salesforce(self) -> SalesforceContactSide:
        def build() -> SalesforceContactSide:
            from sync.adapters.salesforce import SalesforceContactSide

            return SalesforceContactSide(
                self.tokens,
                mailboxes=lambda: self.mailboxes,
                verify=self._sf_verify(),
                client_name=self.get("SF_CLIENT_NAME") or "m365-contact-sync",
                api_version=self.get("SF_API_VERSION") or "67.0",
                field_map=self.policy.field_map,
                marker_field=self.get("SF_OUTLOOK_ID_FIELD") or None,
                soql_filter=self.get("SF_SOQL_FILTER") or None,
            )

        return self._once("salesforce", build)

    def _cdc_reconcile(self, reason: str, mode: str) -> None:
        """A CDC gap or a rejected replay id: a reconcile job over every mailbox in scope."""
        from sync.jobs import start_job

        logger.info("cdc asks for a %s reconcile: %s", mode, reason)
        start_job(self.jobs, self.work_queue, list(self.mailboxes), "full" if mode == "full" else "delta", origin="cdc")

    @property
    def cdc_hold_seconds(self) -> float:
        """CDC_PULL_HOLD_SECONDS: how long one pull holds the Pub/Sub subscription (1 to 570 s)."""
        raw = self.get("CDC_PULL_HOLD_SECONDS") or ""
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if not 1 <= value <= 570:
            raise ConfigError(f"invalid app settings:\n  - CDC_PULL_HOLD_SECONDS={raw!r}: expected seconds from 1 "
                              "to 570, a little under the CDC_PULL_SCHEDULE period")
        return value

    @property
    def cdc(self) -> CdcSubscriber:
        def build() -> CdcSubscriber:
            from sync.adapters.salesforce.pubsub import CdcSubscriber

            target = self._require("SF_PUBSUB_ENDPOINT", "for the CDC pull")
            insecure = setting_flag("SF_PUBSUB_INSECURE", self.env)
            if insecure and not is_loopback(target):
                raise ConfigError(
                    "invalid app settings:\n  - SF_PUBSUB_INSECURE=true is for the local Salesforce emulator only: "
                    "SF_PUBSUB_ENDPOINT must be 127.0.0.1:<port> or localhost:<port>"
                )
            ca = self.get("SF_CA_BUNDLE")
            roots = None
            if ca:
                with open(ca, "rb") as fh:
                    roots = fh.read()
            return CdcSubscriber(
                self.tokens, target=target, queue=self.work_queue, checkpoints=self.checkpoints,
                mailboxes=lambda: self.mailboxes, secure=not insecure, root_certificates=roots,
                client_name=self.get("SF_CLIENT_NAME") or "m365-contact-sync", on_reconcile=self._cdc_reconcile,
            )

        return self._once("cdc", build)

    # --- the engine -----------------------------------------------------------------------------------------
    @property
    def engine(self) -> Engine:
        def build() -> Engine:
            from sync.engine import Engine

            return Engine(self.graph, self.salesforce, self.links, self.audit, self.work_queue, self.policy,
                          self.mailbox_list, reviews=self.reviews)

        return self._once("engine", build)


_current: Root | None = None
_current_lock = threading.Lock()


def current() -> Root:
    """The process-wide root, built on first use."""
    global _current
    with _current_lock:
        if _current is None:
            _current = Root()
        return _current


def install(root: Root) -> Root:
    """Use ``root`` from now on (tests); the previous one is closed."""
    global _current
    with _current_lock:
        previous, _current = _current, root
    if previous is not None and previous is not root:
        previous.close()
    return root


def reset() -> None:
    """Forget the current root (closing its clients); the next ``current()`` builds a new one from the environment."""
    global _current
    with _current_lock:
        previous, _current = _current, None
    if previous is not None:
        previous.close()


__all__ = [
    "CONTACT_QUEUE",
    "LIFECYCLE_QUEUE",
    "RECONCILE_QUEUE",
    "THIRD_PARTY_LOGGERS",
    "Root",
    "RoutingQueue",
    "StaticTokenCredential",
    "current",
    "install",
    "is_loopback",
    "quiet_third_party_loggers",
    "reset",
]
