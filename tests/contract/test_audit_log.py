"""The AuditLog contract: the in-memory log and the Azure Tables one on Azurite keep the same promises."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from sync.adapters.storage import TableStorage
from sync.ports import AuditEntry, AuditLog
from tests.fakes import MemoryAudit

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["memory", "azurite"])
def audit(request: pytest.FixtureRequest) -> Iterator[AuditLog]:
    if request.param == "memory":
        yield MemoryAudit()
        return
    conn = request.getfixturevalue("azurite_connection_string")
    yield TableStorage.from_connection_string(conn, "a" + uuid.uuid4().hex[:12]).audit()


def entry(n: int, mailbox: str = "ann@contoso.com", m365_id: str | None = None) -> AuditEntry:
    return AuditEntry(at=T0 + timedelta(seconds=n), mailbox=mailbox, m365_id=m365_id, sf_id=f"003{n:015d}",
                      action="create:m365", reason=f"row {n}")


def test_recent_is_newest_first_per_mailbox(audit: AuditLog) -> None:
    audit.write([entry(1), entry(2), entry(3, mailbox="bob@contoso.com")])
    assert [e.reason for e in audit.recent("ann@contoso.com")] == ["row 2", "row 1"]
    assert [e.reason for e in audit.recent("ann@contoso.com", limit=1)] == ["row 2"]


def test_mentions_an_outlook_id_only_in_its_own_mailbox(audit: AuditLog) -> None:
    audit.write([entry(1, m365_id="AAMk/1+x="), entry(2, mailbox="bob@contoso.com", m365_id="AAMk-bob")])
    assert audit.mentions("ann@contoso.com", "AAMk/1+x=")
    assert not audit.mentions("ann@contoso.com", "AAMk-bob")
    assert not audit.mentions("bob@contoso.com", "AAMk/1+x=")
    assert not audit.mentions("carol@contoso.com", "AAMk/1+x=")
