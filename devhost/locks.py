"""Singleton listener locks for timers: one instance of a scaled-out app runs each timer (docs/reference/azure.md §1.6).

The Functions host wraps every timer's listener in a WebJobs singleton: a lease on the blob
``azure-webjobs-hosts/locks/<host id>/Host.Functions.<name>.Listener`` of ``AzureWebJobsStorage``. The instance that
gets the lease starts the timer and renews the lease at half its period; the others retry every
``listenerLockRecoveryPollingInterval``. An instance that stops releases the lease; one that dies renews nothing and
its lease runs out, so another instance takes the timer within a lease period plus a polling interval.

Public API:
- ``SingletonOptions.from_host_config(config)``: host.json ``singleton`` with the WebJobs defaults and limits.
- ``lock_blob_name(host_id, function_name)``: the blob a timer's listener lock leases.
- ``ListenerLock(container, blob_name, period_s)``: ``try_acquire()``, ``renew()``, ``release()``; ``held``.
- ``new_host_id()``, ``valid_host_id(text)``: host ids (instances share timers only when they share a host id).
"""

from __future__ import annotations

import contextlib
import logging
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from devhost.settings import parse_timespan

__all__ = [
    "HOSTS_CONTAINER", "ListenerLock", "LockLost", "SingletonOptions", "lock_blob_name", "new_host_id", "valid_host_id",
]

logger = logging.getLogger(__name__)

HOSTS_CONTAINER = "azure-webjobs-hosts"  # HostContainerNames.Hosts in azure-webjobs-sdk
LOCKS_DIRECTORY = "locks"  # BlobLeaseDistributedLockManager.SingletonLocks
MIN_LEASE_S, MAX_LEASE_S = 15.0, 60.0  # what Blob storage allows for a lease (SingletonOptions checks the same)


class LockLost(RuntimeError):
    """The lease is held by someone else now (or the blob is gone): stop what the lock guarded."""


@dataclass(frozen=True)
class SingletonOptions:
    """host.json ``singleton``: ``listenerLockPeriod`` (default 60 s, 15..60) and
    ``listenerLockRecoveryPollingInterval`` (default 1 minute, at least 15 s), as WebJobs' ``SingletonOptions``."""

    listener_lock_period: float = 60.0
    listener_lock_recovery_polling_interval: float = 60.0

    @classmethod
    def from_host_config(cls, config: Mapping[str, Any]) -> SingletonOptions:
        section = next((v for k, v in config.items() if k.lower() == "singleton"), {})
        if not isinstance(section, Mapping):
            section = {}

        def get(name: str, default: str) -> float:
            value = next((v for k, v in section.items() if k.lower() == name.lower()), default)
            return parse_timespan(value, f"host.json singleton.{name}")

        period = get("listenerLockPeriod", "00:01:00")
        polling = get("listenerLockRecoveryPollingInterval", "00:01:00")
        if not MIN_LEASE_S <= period <= MAX_LEASE_S:
            raise ValueError(f"host.json singleton.listenerLockPeriod must be 00:00:15..00:01:00, not {period:g} s")
        if polling < MIN_LEASE_S:
            raise ValueError(
                f"host.json singleton.listenerLockRecoveryPollingInterval must be at least 00:00:15, not {polling:g} s"
            )
        return cls(listener_lock_period=period, listener_lock_recovery_polling_interval=polling)


def lock_blob_name(host_id: str, function_name: str) -> str:
    """``locks/<host id>/Host.Functions.<name>.Listener``: the lock id is ``<host id>/<function full name>``, the
    Functions host names functions ``Host.Functions.<name>``, and a listener lock adds ``.Listener``."""
    return f"{LOCKS_DIRECTORY}/{host_id}/Host.Functions.{function_name}.Listener"


def new_host_id() -> str:
    """A host id of its own: a lone local host never waits for a lease that a crashed earlier run left behind (Core
    Tools would derive one from the machine; instances meant to share timers are given one id)."""
    return f"devhost-{uuid.uuid4().hex[:24]}"


def valid_host_id(value: str) -> str:
    host_id = value.strip().lower()
    if not re.fullmatch(r"[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?", host_id):
        raise ValueError(f"host id {value!r} must be 1-32 lowercase letters, digits or dashes (not at the ends)")
    return host_id


class ListenerLock:
    """One blob lease. ``container`` is an ``azure.storage.blob.ContainerClient`` of ``azure-webjobs-hosts``."""

    def __init__(self, container: Any, blob_name: str, period_s: float) -> None:
        self._container = container
        self._blob = container.get_blob_client(blob_name)
        self.blob_name = blob_name
        self._period = int(period_s)
        self._lease: Any = None

    @property
    def held(self) -> bool:
        return self._lease is not None

    def try_acquire(self) -> bool:
        """Take the lease if it is free (available, expired or broken); False if another instance holds it. The
        blob (and the container) are created on first use, as the WebJobs lock manager does."""
        from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
        from azure.storage.blob import BlobLeaseClient

        lease = BlobLeaseClient(self._blob, lease_id=str(uuid.uuid4()))
        try:
            lease.acquire(lease_duration=self._period)
        except ResourceNotFoundError:
            with contextlib.suppress(ResourceExistsError):
                self._container.create_container()
            try:
                self._blob.upload_blob(b"", overwrite=False)
            except (ResourceExistsError, HttpResponseError) as exc:  # made meanwhile, or leased by someone else
                if getattr(exc, "status_code", 409) not in (409, 412):
                    raise
            try:
                lease.acquire(lease_duration=self._period)
            except HttpResponseError as exc:
                if exc.status_code == 409:
                    return False
                raise
        except HttpResponseError as exc:
            if exc.status_code == 409:  # LeaseAlreadyPresent
                return False
            raise
        self._lease = lease
        return True

    def renew(self) -> None:
        """Renew the held lease; ``LockLost`` when it is not ours any more (409 or 404), other errors propagate (a
        storage hiccup: the caller retries sooner, before the lease runs out)."""
        from azure.core.exceptions import HttpResponseError

        lease = self._lease
        if lease is None:
            raise LockLost(self.blob_name)
        try:
            lease.renew()
        except HttpResponseError as exc:
            if exc.status_code in (404, 409, 412):
                self._lease = None
                raise LockLost(self.blob_name) from exc
            raise

    def release(self) -> None:
        """Give the lease back (a stopping instance); nothing to do if it was lost meanwhile."""
        from azure.core.exceptions import HttpResponseError

        lease, self._lease = self._lease, None
        if lease is None:
            return
        try:
            lease.release()
        except HttpResponseError as exc:
            if exc.status_code not in (404, 409, 412):
                logger.warning("Releasing singleton lock %s failed: %s", self.blob_name, exc.status_code)
