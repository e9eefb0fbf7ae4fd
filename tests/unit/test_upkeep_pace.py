"""Subscription upkeep stays under the subscription API's write limit (docs/reference/graph.md §4.7)."""

from __future__ import annotations

import threading

from sync.subscriptions import WritePace


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_the_pace_lets_limit_writes_through_a_window_then_waits_for_the_oldest_to_leave_it() -> None:
    t = FakeTime()
    pace = WritePace(3, 20.0, clock=t.clock, sleep=t.sleep)
    for _ in range(3):
        pace.wait()
        t.now += 1.0
    assert t.slept == []  # three writes at 0, 1, 2 s
    pace.wait()  # the fourth waits until the first is 20 s old
    assert t.now == 20.0 and t.slept == [17.0]
    pace.wait()  # the fifth until the second is
    assert t.now == 21.0


def test_the_pace_holds_across_threads() -> None:
    pace = WritePace(5, 0.3)
    stamps: list[float] = []
    lock = threading.Lock()

    def write() -> None:
        import time

        pace.wait()
        with lock:
            stamps.append(time.monotonic())

    threads = [threading.Thread(target=write) for _ in range(12)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    stamps.sort()
    assert all(stamps[i + 5] - stamps[i] >= 0.29 for i in range(len(stamps) - 5))  # never 6 in one window

