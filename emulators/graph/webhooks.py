"""Outgoing webhook traffic of the Graph emulator: the validation handshake and change/lifecycle notifications.

Follows docs/reference/graph.md §4.3 (handshake), §4.4 (payload), §4.5 (delivery and retries, with compressed
timings) and §4.6 (lifecycle notifications). Only loopback URLs are expected; proxies from the environment are ignored.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from .faults import Faults

logger = logging.getLogger(__name__)

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _post(url: str, body: bytes, content_type: str, timeout: float) -> tuple[int, str, bytes]:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", "") if e.headers else "", e.read() or b""


def validate_endpoint(url: str, token: str, timeout: float) -> str | None:
    """§4.3: POST ``url?validationToken=<token>`` (text/plain); the endpoint must answer 200, text/plain, the decoded
    token, within ``timeout`` seconds (10 s in Graph). Returns None on success, else a reason."""
    sep = "&" if urllib.parse.urlsplit(url).query else "?"
    target = f"{url}{sep}validationToken={urllib.parse.quote(token, safe='')}"
    try:
        status, ctype, body = _post(target, b"", "text/plain; charset=utf-8", timeout)
    except Exception as e:  # timeout, refused, reset
        return f"validation request failed: {type(e).__name__}"
    if status != 200:
        return f"validation request returned {status}"
    if not ctype.lower().startswith("text/plain"):
        return "validation response is not text/plain"
    if body.decode("utf-8", "replace") != token:
        return "validation response did not echo the decoded token"
    return None


@dataclass
class Delivery:
    """One notification POST as attempted by the emulator (for tests and the demo)."""

    url: str
    payload: dict[str, Any]
    status: int | None  # None = timeout / connection error / dropped
    attempt: int
    dropped: bool = False
    at: float = field(default_factory=time.time)


class Notifier:
    """Background thread delivering queued ``(url, [notification, …])`` items.

    Delivery rules (§4.5): a 2xx within ``first_timeout_s`` (3 s in Graph) is delivered; otherwise retried with a
    ``retry_timeout_s`` (10 s in Graph) and exponential backoff from ``retry_base_delay_s`` for at most
    ``max_attempts`` attempts (Graph: up to 4 hours; compressed here). Fault knobs: drop, duplicate, reorder, delay.
    """

    def __init__(
        self,
        faults: Faults,
        first_timeout_s: float = 3.0,
        retry_timeout_s: float = 10.0,
        retry_base_delay_s: float = 0.5,
        max_attempts: int = 4,
    ) -> None:
        self.faults = faults
        self.first_timeout_s = first_timeout_s
        self.retry_timeout_s = retry_timeout_s
        self.retry_base_delay_s = retry_base_delay_s
        self.max_attempts = max_attempts
        self.log: list[Delivery] = []
        self._log_lock = threading.Lock()
        self._queue: queue.Queue[tuple[str, list[dict[str, Any]], int] | None] = queue.Queue()
        self._pending = 0
        self._pending_cv = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="graph-emulator-notifier", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._queue.put(None)
        if self._thread:
            self._thread.join(timeout=5)
            self._thread = None

    def submit(self, url: str, notifications: list[dict[str, Any]]) -> None:
        with self._pending_cv:
            self._pending += 1
        self._queue.put((url, notifications, 1))

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Block until every submitted notification was delivered, dropped or given up."""
        deadline = time.monotonic() + timeout
        with self._pending_cv:
            while self._pending > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._pending_cv.wait(left)
        return True

    def deliveries(self) -> list[Delivery]:
        with self._log_lock:
            return list(self.log)

    def clear(self) -> None:
        with self._log_lock:
            self.log.clear()

    def _done(self) -> None:
        with self._pending_cv:
            self._pending -= 1
            self._pending_cv.notify_all()

    def _record(self, d: Delivery) -> None:
        with self._log_lock:
            self.log.append(d)

    def _drain(self, first: tuple[str, list[dict[str, Any]], int]) -> list[tuple[str, list[dict[str, Any]], int]]:
        batch = [first]
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)
                break
            batch.append(item)
        return batch

    def _run(self) -> None:
        while not self._stop.is_set():
            first = self._queue.get()
            if first is None:
                break
            if self.faults.notification_delay_s:
                time.sleep(self.faults.notification_delay_s)
            batch = self._drain(first) if self.faults.notification_reorder else [first]
            if self.faults.notification_reorder and len(batch) > 1:
                batch.reverse()
                self.faults.count("notification.reordered", len(batch) - 1)
            for url, notes, attempt in batch:
                try:
                    self._deliver(url, notes, attempt)
                except Exception:  # never let the delivery thread die
                    logger.exception("notification delivery crashed")
                    self._done()

    def _deliver(self, url: str, notes: list[dict[str, Any]], attempt: int) -> None:
        payload = {"value": notes}
        if attempt == 1 and self.faults.chance(self.faults.notification_drop_rate):
            self.faults.count("notification.dropped")
            self._record(Delivery(url, payload, None, attempt, dropped=True))
            self._done()
            return
        copies = 2 if attempt == 1 and self.faults.chance(self.faults.notification_duplicate_rate) else 1
        if copies == 2:
            self.faults.count("notification.duplicated")
        status: int | None = None
        for _ in range(copies):
            timeout = self.first_timeout_s if attempt == 1 else self.retry_timeout_s
            try:
                status, _, _ = _post(url, json.dumps(payload).encode(), "application/json; charset=utf-8", timeout)
            except Exception:
                status = None
            self._record(Delivery(url, payload, status, attempt))
        if status is not None and 200 <= status < 300:
            self._done()
            return
        if attempt >= self.max_attempts or self._stop.is_set():
            logger.warning("giving up notification delivery after %s attempts", attempt)
            self._done()
            return
        delay = self.retry_base_delay_s * (2 ** (attempt - 1))
        timer = threading.Timer(delay, self._queue.put, args=((url, notes, attempt + 1),))
        timer.daemon = True
        timer.start()
