"""Graph change-notification subscriptions on each mailbox's sync folder (docs/reference/graph.md §4).

``GraphSubscriptions`` creates, renews, reauthorizes and deletes them, and ``on_lifecycle`` says what a lifecycle
event calls for. It keeps no state: the caller stores the ``SubscriptionRecord``s. What a reader must know:
* The clientState is a fresh random secret per subscription (43 characters, within the 128 of §4.2). Only its sha256
  digest is stored; the webhook compares the digest of what arrives in constant time (``client_state_matches``).
* A create is not blindly retried (a 503 may have created it): after a 409 or an ambiguous failure the subscriptions
  on the same resource are deleted and the create is sent once more. ``reauthorizationRequired`` is answered with a
  PATCH of the expiry, which reauthorizes and extends at once, never with both a PATCH and a reauthorize (§4.6);
  ``subscriptionRemoved`` re-creates and asks for a delta resync, ``missed`` only asks for the resync.
The resource names the mailbox as ``users/AAD-UPN:<upn>/...`` (§4.1): Exchange resolves the UPN itself, so the app
needs no Entra directory permission (looking up the object id with ``GET /users/{upn}`` would need User.Read.All,
§6.4). ``lifecycleNotificationUrl`` is set at creation because a PATCH cannot add it (§4.2).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any
from urllib.parse import quote

from sync.adapters.graph.contacts import GraphContactSide
from sync.adapters.graph.transport import _Failure
from sync.errors import BadData, NotFound

logger = logging.getLogger(__name__)

MAX_LIFETIME = timedelta(minutes=10_080)  # §4.2 Outlook contacts
DEFAULT_LIFETIME = MAX_LIFETIME - timedelta(hours=1)
CHANGE_TYPES = "created,updated,deleted"


class LifecycleEvent(StrEnum):
    MISSED = "missed"
    SUBSCRIPTION_REMOVED = "subscriptionRemoved"
    REAUTHORIZATION_REQUIRED = "reauthorizationRequired"


@dataclass(frozen=True)
class SubscriptionRecord:
    id: str
    mailbox: str
    resource: str
    expires_at: datetime
    client_state_digest: str


@dataclass(frozen=True)
class NewSubscription:
    record: SubscriptionRecord
    client_state: str  # the secret itself: do not store it, store ``record.client_state_digest``


@dataclass(frozen=True)
class LifecycleOutcome:
    """What a lifecycle notification led to: a replaced/renewed subscription to store, and whether to resync."""

    event: LifecycleEvent
    record: SubscriptionRecord | None = None
    created: NewSubscription | None = None
    resync: bool = False


def client_state_digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def client_state_matches(received: str | None, digest: str) -> bool:
    """Constant-time check of a notification's clientState against the stored digest."""
    if not received:
        return False
    return hmac.compare_digest(client_state_digest(received), digest)


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.0000000Z")


def _parse(value: Any) -> datetime:
    text = str(value).replace("Z", "+00:00")
    head, dot, rest = text.partition(".")
    if dot:  # Graph sends 7 fractional digits; fromisoformat wants at most 6
        digits = "".join(ch for ch in rest if ch.isdigit())
        text = f"{head}.{digits[:6]}{rest[len(digits):]}"
    dt = datetime.fromisoformat(text)
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


class GraphSubscriptions:
    """Subscriptions per mailbox on ``side``'s sync folder (see the module docstring)."""

    def __init__(
        self,
        side: GraphContactSide,
        *,
        notification_url: str,
        lifecycle_url: str,
        lifetime: timedelta = DEFAULT_LIFETIME,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if lifetime > MAX_LIFETIME:
            raise ValueError(f"a contact subscription lives at most {MAX_LIFETIME}")
        self._side = side
        self._http = side._http
        self._notification_url = notification_url
        self._lifecycle_url = lifecycle_url
        self._lifetime = lifetime
        self._clock = clock or (lambda: datetime.now(UTC))

    def _record(self, mailbox: str, body: dict[str, Any], digest: str) -> SubscriptionRecord:
        return SubscriptionRecord(
            id=str(body["id"]), mailbox=mailbox, resource=str(body.get("resource") or ""),
            expires_at=_parse(body["expirationDateTime"]), client_state_digest=digest,
        )

    def resource(self, mailbox: str) -> str:
        folder = self._side.folder_id(mailbox)
        return f"users/AAD-UPN:{mailbox}/contactFolders/{folder}/contacts"

    def exists(self, subscription_id: str) -> bool:
        """Whether Graph still has the subscription (GET; 404 is False)."""
        try:
            self._side._run(self._http.call("GET", f"/subscriptions/{quote(subscription_id, safe='')}"),
                            subscription_id)
        except NotFound:
            return False
        return True

    def create(self, mailbox: str) -> NewSubscription:
        resource = self.resource(mailbox)
        state = secrets.token_urlsafe(32)
        body = {
            "changeType": CHANGE_TYPES,
            "notificationUrl": self._notification_url,
            "lifecycleNotificationUrl": self._lifecycle_url,
            "resource": resource,
            "expirationDateTime": _iso(self._clock() + self._lifetime),
            "clientState": state,
        }
        created = self._side._run(self._create(resource, body))
        record = self._record(mailbox, created, client_state_digest(state))
        logger.info("subscription %s created, expires %s", record.id, record.expires_at.isoformat())
        return NewSubscription(record, state)

    async def _create(self, resource: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            resp = await self._http.call("POST", "/subscriptions", body=body, only_throttled=True)
        except _Failure as failure:
            if not (failure.status == 409 or failure.ambiguous):
                raise
            # A duplicate (409), or our own create may have happened (5xx): we cannot know its clientState, so
            # remove whatever subscribes to this resource and create once more.
            logger.info("subscription create answered %s: replacing the existing one", failure.status)
            await self._delete_for(resource)
            resp = await self._http.call("POST", "/subscriptions", body=body, only_throttled=True)
        created: dict[str, Any] = resp.body
        return created

    async def _delete_for(self, resource: str) -> None:
        resp = await self._http.call("GET", "/subscriptions")
        for sub in (resp.body or {}).get("value") or []:
            if str(sub.get("resource", "")).strip("/").casefold() == resource.strip("/").casefold():
                await self._delete(str(sub["id"]))

    async def _delete(self, subscription_id: str) -> None:
        try:
            await self._http.call("DELETE", f"/subscriptions/{quote(subscription_id, safe='')}")
        except _Failure as failure:
            if failure.status != 404:
                raise

    def delete(self, subscription_id: str) -> None:
        self._side._run(self._delete(subscription_id), subscription_id)

    def renew(self, record: SubscriptionRecord) -> SubscriptionRecord:
        """Extend by ``lifetime`` from now. NotFound when Graph no longer has it (expired or removed)."""
        body = {"expirationDateTime": _iso(self._clock() + self._lifetime)}
        resp = self._side._run(
            self._http.call("PATCH", f"/subscriptions/{quote(record.id, safe='')}", body=body), record.id
        )
        renewed = self._record(record.mailbox, resp.body, record.client_state_digest)
        logger.info("subscription %s renewed until %s", renewed.id, renewed.expires_at.isoformat())
        return renewed

    def reauthorize(self, record: SubscriptionRecord) -> None:
        self._side._run(
            self._http.call("POST", f"/subscriptions/{quote(record.id, safe='')}/reauthorize"), record.id
        )

    def renew_expiring(
        self, records: Iterable[SubscriptionRecord], within: timedelta = timedelta(days=1)
    ) -> list[SubscriptionRecord | NewSubscription]:
        """Renew those expiring within ``within``; re-create those Graph no longer has. Returns what changed."""
        horizon = self._clock() + within
        out: list[SubscriptionRecord | NewSubscription] = []
        for record in records:
            if record.expires_at > horizon:
                continue
            try:
                out.append(self.renew(record))
            except NotFound:
                logger.info("subscription %s is gone: re-creating", record.id)
                out.append(self.create(record.mailbox))
        return out

    def on_lifecycle(self, event: str, record: SubscriptionRecord) -> LifecycleOutcome:
        """Act on a lifecycle notification (§4.6) for the stored ``record``."""
        try:
            kind = LifecycleEvent(event)
        except ValueError:
            raise BadData("unknown lifecycle event", code=event[:40], side="m365", item_id=record.id) from None
        if kind is LifecycleEvent.MISSED:
            return LifecycleOutcome(kind, resync=True)
        if kind is LifecycleEvent.SUBSCRIPTION_REMOVED:
            return LifecycleOutcome(kind, created=self.create(record.mailbox), resync=True)
        try:  # reauthorizationRequired: a PATCH of the expiry reauthorizes too (never both within 10 minutes)
            return LifecycleOutcome(kind, record=self.renew(record))
        except NotFound:
            return LifecycleOutcome(kind, created=self.create(record.mailbox), resync=True)


__all__ = [
    "GraphSubscriptions",
    "LifecycleEvent",
    "LifecycleOutcome",
    "NewSubscription",
    "SubscriptionRecord",
    "client_state_digest",
    "client_state_matches",
]
