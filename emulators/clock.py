"""How long an emulator spent answering HTTP requests, so a benchmark can tell our time from the service's."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class ServiceClock:
    """Seconds spent from a parsed request to its answer written, summed over all requests (any thread).

    The time to read the request line and headers is not counted, so the service's share is if anything under-stated.
    A request is counted once its answer is written, which is after the client may already have read it: readers that
    need every answered request in the totals call ``settle()`` first.
    """

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._seconds = 0.0
        self._requests = 0
        self._answering = 0

    @contextmanager
    def timing(self) -> Iterator[None]:
        start = time.perf_counter()
        with self._lock:
            self._answering += 1
        try:
            yield
        finally:
            spent = time.perf_counter() - start
            with self._lock:
                self._seconds += spent
                self._requests += 1
                self._answering -= 1
                self._lock.notify_all()

    def settle(self, timeout: float = 2.0) -> bool:
        """Wait until no request is being answered (at most ``timeout`` s); True if none is."""
        with self._lock:
            return self._lock.wait_for(lambda: self._answering == 0, timeout)

    @property
    def seconds(self) -> float:
        with self._lock:
            return self._seconds

    @property
    def requests(self) -> int:
        with self._lock:
            return self._requests
