"""The soak with faults, short profile (tests/soak/soak.py has the story and the checks; ``python -m tests.soak.run
--minutes 5`` is the long one): about 40 s of people editing both sides of 3 mailboxes and 60 Salesforce contacts
while the emulators throttle, fail, reset connections and lose, duplicate and reorder notifications and CDC events,
with a Graph ``missed``, a CDC ``GAP_OVERFLOW``, one of two host instances killed mid-batch (SIGKILL; its timer locks
move to the other) and the links table lost on the way.
After a final reconcile both sides must agree, with no duplicate, no lost edit, no resurrection and no request over
Graph's limits. The counts are printed (``pytest -s``) and shown with any mismatch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from tests.soak.soak import Profile, run_profile

pytestmark = [pytest.mark.soak, pytest.mark.slow, pytest.mark.timeout(400)]

NOISY = ("emulators", "sync", "urllib3", "azure", "httpx", "grpc")


@pytest.fixture
def quiet() -> Iterator[None]:
    """Faults make the host and the adapters log every retry; the report says it in numbers."""
    levels = {name: logging.getLogger(name).level for name in NOISY}
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def test_soak_short_profile(azurite_connection_string: str, quiet: None) -> None:
    # two instances (processes): on CI's two cores, three made the run slower without finding more (docs/local-host.md)
    report = run_profile(azurite_connection_string, Profile(seconds=40, per_rep=20, seed=1, instances=2))
    print(report.render())
    assert not report.violations, report.render()
    assert sum(report.actions.values()) > 100 and sum(report.faults.values()) > 100
    assert len(report.events) == 4  # missed, links table lost, worker killed, GAP_OVERFLOW
