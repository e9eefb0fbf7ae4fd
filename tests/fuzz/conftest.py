"""Fixtures of the fuzz suite: the function fixtures of tests/functions (Azurite queues, a root per test), an engine
over in-memory sides, the Graph and Salesforce emulators with the real adapters, and the per-endpoint example counts
printed at the end of the session."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from devhost.stack import emulator_settings
from sync import bootstrap
from tests.fakes import MemorySide
from tests.functions.conftest import ANN, BOB, queues, root, settings  # noqa: F401 - fixtures used by this suite
from tests.fuzz.support import COUNTS, ENDPOINTS
from tests.world import memory_engine_in

EMULATOR_CLIENT_ID = "fuzz-test-client"


@pytest.fixture
def memory_root(root: bootstrap.Root) -> tuple[bootstrap.Root, MemorySide, MemorySide]:  # noqa: F811
    """The functions' root (Azurite links, audit, queues) with an engine over in-memory Outlook and Salesforce."""
    return (root, *memory_engine_in(root))


@pytest.fixture(scope="module")
def services() -> Iterator[tuple[Any, Any, dict[str, str]]]:
    """The Graph emulator and the Salesforce emulator (REST, OAuth JWT), with a Salesforce user per mailbox."""
    from emulators.graph import GraphEmulator
    from emulators.salesforce import SalesforceEmulator
    from tests.contract.salesforce_harness import rsa_keys

    with GraphEmulator(users=[ANN, BOB]) as g, SalesforceEmulator(keepalive_seconds=0.3, idle_timeout_seconds=5) as sf:
        _, public = rsa_keys()
        sf.register_jwt_client(EMULATOR_CLIENT_ID, public)
        users = {mb: sf.add_user(f"{mb}.sf", mb, last_name=mb.split("@")[0]) for mb in (ANN, BOB)}
        yield g, sf, users


@pytest.fixture
def live(services: tuple[Any, Any, dict[str, str]], settings: dict[str, str],  # noqa: F811
         queues: Any) -> Iterator[tuple[bootstrap.Root, Any, Any, dict[str, str]]]:  # noqa: F811
    """A root wired only through app settings to Azurite and both emulators: real msgraph-sdk and
    simple-salesforce adapters, the real engine."""
    from tests.contract.salesforce_harness import rsa_keys

    g, sf, users = services
    private, _ = rsa_keys()
    env = {**settings, **emulator_settings(g, sf, jwt_client=EMULATOR_CLIENT_ID, private_key=private, pubsub=False)}
    r = bootstrap.install(bootstrap.Root(env))
    yield r, g, sf, users
    r.close()
    bootstrap.reset()


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    if not COUNTS:
        return
    endpoints = ", ".join(f"{name} {COUNTS[name]} (+{COUNTS[name + ' (explicit)']} explicit)" for name in ENDPOINTS)
    terminalreporter.write_line(f"fuzz examples per endpoint: {endpoints}")
    known = set(ENDPOINTS) | {f"{name} (explicit)" for name in ENDPOINTS}
    others = sorted((k, v) for k, v in COUNTS.items() if k not in known)
    if others:
        terminalreporter.write_line("fuzz examples per scenario: " + ", ".join(f"{k} {v}" for k, v in others))
