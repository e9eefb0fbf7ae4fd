"""The emulators' ServiceClock: a request is in the totals only once its answer is written; settle() waits for that."""

from __future__ import annotations

import threading

from emulators.clock import ServiceClock


def test_settle_waits_for_a_request_still_being_answered() -> None:
    clock = ServiceClock()
    inside, release = threading.Event(), threading.Event()

    def answer() -> None:
        with clock.timing():
            inside.set()
            release.wait(5)

    t = threading.Thread(target=answer)
    t.start()
    assert inside.wait(5)
    assert clock.settle(timeout=0.05) is False  # still answering: not yet counted
    assert clock.requests == 0
    release.set()
    assert clock.settle(timeout=5) is True
    assert clock.requests == 1 and clock.seconds > 0
    t.join(5)


def test_settle_returns_at_once_when_nothing_is_being_answered() -> None:
    assert ServiceClock().settle(timeout=0) is True
