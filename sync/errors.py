"""Typed errors: one root, payload as named attributes.

I/O preconditions (raised by adapters, each adapter maps its protocol's failures to these in exactly one function):
    NotFound, AlreadyExists, PreconditionFailed, Throttled(retry_after), Transient, BadData, AuthFailed
Sync semantics (raised by the core):
    CircuitBreakerTripped, Busy (a PreconditionFailed: another worker holds the person's link claim)

``retryable`` tells the edge (queue trigger, reconcile job) what to do: retry later, or give up with the reason.
Messages carry ids and field names, never names, emails or phone numbers.
"""

from __future__ import annotations


class SyncError(Exception):
    """Root of every error this product raises on purpose."""

    retryable: bool = False

    def __init__(self, message: str, *, side: str | None = None, item_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.side = side
        self.item_id = item_id

    def __str__(self) -> str:
        where = ", ".join(x for x in (self.side, self.item_id) if x)
        return f"{self.message} ({where})" if where else self.message


class NotFound(SyncError):
    """The item does not exist (or no longer exists) on that side."""


class AlreadyExists(SyncError):
    """A create collided with an existing item (for links: someone linked that id first)."""

    retryable = True


class PreconditionFailed(SyncError):
    """An If-Match / ETag / version guard failed: someone wrote in between. Re-read and decide again."""

    retryable = True


class Busy(PreconditionFailed):
    """Another worker has claimed the person's link and is writing it (docs/sync-rules.md, "Link claims"): come back
    after ``retry_after`` seconds (at most the rest of its lease). A queue worker defers the hint instead of using up
    one of its attempts."""

    def __init__(
        self, message: str, *, retry_after: float, side: str | None = None, item_id: str | None = None
    ) -> None:
        super().__init__(message, side=side, item_id=item_id)
        self.retry_after = retry_after


class Throttled(SyncError):
    """The service asked us to slow down (429, REQUEST_LIMIT_EXCEEDED, 503 Server Busy)."""

    retryable = True

    def __init__(
        self, message: str, *, retry_after: float | None = None, side: str | None = None, item_id: str | None = None
    ) -> None:
        super().__init__(message, side=side, item_id=item_id)
        self.retry_after = retry_after


class Transient(SyncError):
    """A failure that may pass by itself (5xx, connection reset, timeout)."""

    retryable = True


class BadData(SyncError):
    """The service refused the content (validation, field too long, required field missing). Retrying won't help."""

    def __init__(
        self,
        message: str,
        *,
        fields: tuple[str, ...] = (),
        code: str | None = None,
        side: str | None = None,
        item_id: str | None = None,
    ) -> None:
        super().__init__(message, side=side, item_id=item_id)
        self.fields = fields
        self.code = code


class AuthFailed(SyncError):
    """Credentials were refused or lack a permission. Needs an admin; retrying won't help."""


class CircuitBreakerTripped(SyncError):
    """A mailbox plan would delete or overwrite more than the configured share; refused unless forced."""

    def __init__(self, mailbox: str, *, destructive: int, total: int, report: tuple[str, ...] = ()) -> None:
        share = destructive / total if total else 1.0
        super().__init__(
            f"refused: the plan for this mailbox would delete or overwrite {destructive} of {total} linked contacts "
            f"({share:.0%}); re-run with force=true if this is intended",
            item_id=mailbox,
        )
        self.mailbox = mailbox
        self.destructive = destructive
        self.total = total
        self.report = report
