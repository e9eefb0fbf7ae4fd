"""Fault injection knobs and request counters of the Graph emulator.

Throttling shapes follow docs/reference/graph.md §5 (429 body, integer Retry-After, 4 concurrent requests and
10,000 requests per 10 minutes per app + mailbox) and §7.4 (the SDK retries 429/503/504, POST included).

Besides counted rules (``throttle``, ``fail``) there are random rates for soak tests: ``throttle_rate`` (429 with
``Retry-After``), ``unavailable_rate`` (503) and ``reset_rate`` (the connection is closed without an answer, before or
after the request ran). Every injected fault is counted in ``Faults.injected`` by kind.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

ANY = None  # mailbox/endpoint wildcard


@dataclass
class FaultRule:
    """Answer the next ``remaining`` matching requests with ``status`` (before or after executing them)."""

    status: int
    remaining: int
    mailbox: str | None = ANY
    endpoint: str | None = ANY
    retry_after: int | None = None
    code: str = "TooManyRequests"
    message: str = "Please retry again later."
    after_execute: bool = False  # True: the request IS executed, then the error is returned (ambiguous write)

    def matches(self, mailbox: str | None, endpoint: str, after: bool) -> bool:
        return (
            self.remaining > 0
            and self.after_execute == after
            and (self.mailbox is ANY or self.mailbox == mailbox)
            and (self.endpoint is ANY or self.endpoint == endpoint)
        )


@dataclass
class Faults:
    """Mutable knobs; every attribute may be changed while the emulator runs (``reset()`` restores defaults)."""

    # §5: "4 concurrent requests" per app + mailbox → 429 ApplicationThrottled "MailboxConcurrency". 0 disables.
    mailbox_concurrency: int = 4
    concurrency_retry_after: int = 1
    # §5: "10,000 API requests in a 10-minute period" per app + mailbox. 0 disables.
    mailbox_rate_limit: int = 10_000
    mailbox_rate_window_s: float = 600.0
    # Slow responses: seconds added before handling; per mailbox overrides the global value.
    delay_s: float = 0.0
    mailbox_delay_s: dict[str, float] = field(default_factory=dict)
    # Delta: number of extra empty pages (with a nextLink) to serve before real items (§3.2 "even if … empty").
    delta_empty_pages: int = 0
    # Webhooks: probabilities in [0, 1] per notification POST, and a hold-back reorder window.
    notification_drop_rate: float = 0.0
    notification_duplicate_rate: float = 0.0
    notification_reorder: bool = False  # deliver queued batches newest first
    notification_delay_s: float = 0.0
    # POST /subscriptions: seconds added before the validation handshake (a slow create; issue 15 point 3).
    subscription_create_delay_s: float = 0.0
    # $batch: answer items in reverse order (§5 "Responses may come out of order").
    batch_reverse_responses: bool = True
    # Random faults per request, probabilities in [0, 1]. Each request (and each $batch item, §5 "evaluated
    # individually against throttling") may get 429 TooManyRequests with Retry-After: ``throttle_retry_after`` (§5),
    # or 503 ServiceNotAvailable (§7.4: transient, retried by clients).
    throttle_rate: float = 0.0
    throttle_retry_after: int = 1
    unavailable_rate: float = 0.0
    # Connection reset: the server closes the socket (TCP RST) without answering. A share ``reset_after_share`` of them
    # happen after the request ran: an ambiguous write (§7.4 "a 503 or 504 on a create may already have been
    # executed" - a lost connection is the same for the client).
    reset_rate: float = 0.0
    reset_after_share: float = 0.5
    # Delta resets (§3.3): the probability that a request with a skip or delta token finds every token of the mailbox
    # gone, answered with the next of 410 SyncStateNotFound, 400 SyncStateInvalid, 410 resyncRequired in turn.
    delta_reset_rate: float = 0.0
    # If-Match on contacts is undocumented (§1.5): True ignores it on PATCH and DELETE (last write wins), as Exchange
    # may; the client must guard its writes another way.
    ignore_if_match: bool = False
    # What a delta link of a contact folder the user deleted answers is undocumented (§2.3): by default the folder's
    # tokens are dropped (410) and its contacts show as removed; True keeps them answering with nothing new (the
    # contacts moved with the folder), so only a look at the folder tells it was deleted.
    folder_delete_keeps_delta: bool = False
    rules: list[FaultRule] = field(default_factory=list)
    # Faults injected so far by kind: "429", "503", "reset.before", "reset.after", "notification.dropped",
    # "notification.duplicated", "notification.reordered" (counted rules are in ``Counters.statuses``).
    injected: Counter[str] = field(default_factory=Counter)
    seed: int = 0
    rng: random.Random = field(default_factory=random.Random, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.rng.seed(self.seed)

    def reset(self) -> None:
        fresh = Faults()
        with self._lock:
            for name in fresh.__dataclass_fields__:
                if name not in ("_lock", "rng"):
                    setattr(self, name, getattr(fresh, name))
            self.rng.seed(self.seed)

    def throttle(
        self, count: int = 1, retry_after: int | None = 1, mailbox: str | None = ANY, endpoint: str | None = ANY
    ) -> FaultRule:
        """Next ``count`` matching requests get 429 TooManyRequests with an integer Retry-After (§5)."""
        return self.add(FaultRule(429, count, mailbox, endpoint, retry_after))

    def fail(
        self,
        status: int = 503,
        count: int = 1,
        mailbox: str | None = ANY,
        endpoint: str | None = ANY,
        retry_after: int | None = None,
        after_execute: bool = False,
    ) -> FaultRule:
        """Next ``count`` matching requests get ``status`` (503/504 by default: transient, retried by the SDK)."""
        code = {503: "ServiceNotAvailable", 504: "GatewayTimeout"}.get(status, "InternalServerError")
        msg = "The service is temporarily unavailable." if status >= 500 else "Injected fault."
        return self.add(FaultRule(status, count, mailbox, endpoint, retry_after, code, msg, after_execute))

    def add(self, rule: FaultRule) -> FaultRule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def take_rule(self, mailbox: str | None, endpoint: str, after: bool) -> FaultRule | None:
        with self._lock:
            for rule in self.rules:
                if rule.matches(mailbox, endpoint, after):
                    rule.remaining -= 1
                    return rule
        return None

    def take_empty_page(self) -> bool:
        with self._lock:
            if self.delta_empty_pages > 0:
                self.delta_empty_pages -= 1
                return True
        return False

    def roll_delta_reset(self) -> str | None:
        """The delta reset code to answer now (``delta_reset_rate``), counted as ``delta.<code>``; None mostly."""
        if not self.chance(self.delta_reset_rate):
            return None
        codes = ("SyncStateNotFound", "SyncStateInvalid", "resyncRequired")
        with self._lock:
            code = codes[sum(self.injected[f"delta.{c}"] for c in codes) % len(codes)]
        self.count(f"delta.{code}")
        return code

    def chance(self, p: float) -> bool:
        with self._lock:
            return p > 0 and self.rng.random() < p

    def count(self, kind: str, n: int = 1) -> None:
        with self._lock:
            self.injected[kind] += n

    def roll_status(self) -> FaultRule | None:
        """A random 429 (``throttle_rate``) or 503 (``unavailable_rate``) for one request, counted; or None."""
        if self.chance(self.throttle_rate):
            self.count("429")
            return FaultRule(429, 0, retry_after=self.throttle_retry_after)
        if self.chance(self.unavailable_rate):
            self.count("503")
            return FaultRule(503, 0, code="ServiceNotAvailable", message="The service is temporarily unavailable.")
        return None

    def roll_reset(self) -> str | None:
        """``"before"`` / ``"after"``: drop this request's connection before or after running it (``reset_rate``)."""
        if not self.chance(self.reset_rate):
            return None
        when = "after" if self.chance(self.reset_after_share) else "before"
        self.count(f"reset.{when}")
        return when

    def delay_for(self, mailbox: str | None) -> float:
        return self.mailbox_delay_s.get(mailbox, self.delay_s) if mailbox else self.delay_s

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            injected = dict(self.injected)
        skip = ("_lock", "rng", "rules", "injected")
        return {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in skip} | {
            "rules": [r.__dict__ for r in self.rules if r.remaining > 0],
            "injected": injected,
        }


class MailboxGate:
    """In-flight and sliding-window request accounting per mailbox (§5)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_flight: Counter[str] = Counter()
        self._peak: Counter[str] = Counter()
        self._refused: Counter[str] = Counter()  # "<mailbox>|concurrency" / "<mailbox>|rate": requests over a limit
        self._recent: dict[str, deque[float]] = {}

    def enter(self, mailbox: str, limit: int) -> bool:
        with self._lock:
            if limit and self._in_flight[mailbox] >= limit:
                self._refused[f"{mailbox}|concurrency"] += 1
                return False
            self._in_flight[mailbox] += 1
            self._peak[mailbox] = max(self._peak[mailbox], self._in_flight[mailbox])
            return True

    def leave(self, mailbox: str) -> None:
        with self._lock:
            self._in_flight[mailbox] -= 1

    def over_rate(self, mailbox: str, limit: int, window_s: float) -> bool:
        now = time.monotonic()
        with self._lock:
            q = self._recent.setdefault(mailbox, deque())
            while q and q[0] <= now - window_s:
                q.popleft()
            if limit and len(q) >= limit:
                self._refused[f"{mailbox}|rate"] += 1
                return True
            q.append(now)
            return False

    def in_flight(self, mailbox: str) -> int:
        with self._lock:
            return self._in_flight[mailbox]

    def peak(self, mailbox: str) -> int:
        """Highest number of requests ever admitted at once for this mailbox."""
        with self._lock:
            return self._peak[mailbox]

    def refused(self, mailbox: str | None = None, limit: str | None = None) -> int:
        """Requests refused because a client went over a §5 limit (``limit``: "concurrency" or "rate"; None = both):
        a well-behaved client keeps this at 0."""
        with self._lock:
            return sum(n for key, n in self._refused.items()
                       if (mailbox is None or key.rsplit("|", 1)[0] == mailbox)
                       and (limit is None or key.rsplit("|", 1)[1] == limit))

    def peaks(self) -> dict[str, int]:
        """The peak of every mailbox seen so far (mailbox id -> highest number admitted at once)."""
        with self._lock:
            return dict(self._peak)

    def snapshot(self) -> dict[str, Any]:
        """Per mailbox: the peak admitted at once, in flight now, refusals over the concurrency and the rate limit;
        and the totals (``GET /_admin/gate``)."""
        with self._lock:
            names = set(self._peak) | {key.rsplit("|", 1)[0] for key in self._refused}
            per = {mb: {"peak": self._peak[mb], "inFlight": self._in_flight[mb],
                        "refusedConcurrency": self._refused[f"{mb}|concurrency"],
                        "refusedRate": self._refused[f"{mb}|rate"]} for mb in sorted(names)}
        return {"mailboxes": per, "peak": max((v["peak"] for v in per.values()), default=0),
                "refusedConcurrency": sum(v["refusedConcurrency"] for v in per.values()),
                "refusedRate": sum(v["refusedRate"] for v in per.values())}

    def reset(self) -> None:
        """Forget peaks, refusals and the rate windows (requests in flight stay counted)."""
        with self._lock:
            self._peak.clear()
            self._refused.clear()
            self._recent.clear()


class Counters:
    """Requests seen, per (mailbox, endpoint) and per (mailbox, endpoint, status). Mailbox "-" = no mailbox.

    Endpoint names: users.list user.get contactFolders.list contactFolders.create contactFolder.get
    contactFolder.update contactFolder.delete contactFolder.permanentDelete childFolders.list childFolders.create
    contacts.list contacts.create contact.get contact.update contact.delete contact.permanentDelete contacts.delta
    subscriptions.list subscriptions.create subscription.get subscription.update subscription.delete
    subscription.reauthorize $batch. Items inside a $batch are counted under their own endpoint too.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, str]] = Counter()
        self.statuses: Counter[tuple[str, str, int]] = Counter()
        self.http: Counter[str] = Counter()  # HTTP requests per mailbox ("-": $batch); batch items not counted

    def record(self, mailbox: str, endpoint: str) -> None:
        with self._lock:
            self.requests[(mailbox, endpoint)] += 1

    def record_http(self, mailbox: str) -> None:
        with self._lock:
            self.http[mailbox] += 1

    def http_requests(self, mailbox: str | None = None) -> int:
        """HTTP requests the emulator answered (a ``$batch`` is one, under mailbox "-")."""
        with self._lock:
            return sum(n for m, n in self.http.items() if mailbox is None or m == mailbox)

    def record_status(self, mailbox: str, endpoint: str, status: int) -> None:
        with self._lock:
            self.statuses[(mailbox, endpoint, status)] += 1

    def count(self, mailbox: str | None = None, endpoint: str | None = None, status: int | None = None) -> int:
        """Sum of requests matching the given filters (None = any)."""
        with self._lock:
            if status is None:
                return sum(
                    n
                    for (m, e), n in self.requests.items()
                    if (mailbox is None or m == mailbox) and (endpoint is None or e == endpoint)
                )
            return sum(
                n
                for (m, e, s), n in self.statuses.items()
                if (mailbox is None or m == mailbox) and (endpoint is None or e == endpoint) and s == status
            )

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.statuses.clear()
            self.http.clear()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": [{"mailbox": m, "endpoint": e, "count": n} for (m, e), n in sorted(self.requests.items())],
                "statuses": [
                    {"mailbox": m, "endpoint": e, "status": s, "count": n}
                    for (m, e, s), n in sorted(self.statuses.items())
                ],
            }
