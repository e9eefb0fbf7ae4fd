"""The Table Storage adapter beyond the LinkStore contract: tables deleted under a running process come back."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from azure.data.tables import TableServiceClient

from sync.adapters.storage import TableStorage
from sync.ports import AuditEntry, StoredSubscription

MAILBOX = "ann@contoso.com"


def _drop(conn: str, *names: str) -> None:
    with TableServiceClient.from_connection_string(conn) as service:
        for name in names:
            service.delete_table(name)


def test_every_table_deleted_while_the_process_runs_is_made_again(azurite_connection_string: str) -> None:
    prefix = "h" + uuid.uuid4().hex[:10]
    tables = TableStorage.from_connection_string(azurite_connection_string, prefix)
    checkpoints, audit, jobs, subs = tables.checkpoints(), tables.audit(), tables.jobs(), tables.subscriptions()
    checkpoints.put(MAILBOX, "delta", "token-1")
    _drop(azurite_connection_string, *(f"{prefix}{n}" for n in ("checkpoints", "audit", "jobs", "subscriptions")))

    assert checkpoints.get(MAILBOX, "delta") is None  # gone with its table, and no error
    checkpoints.put(MAILBOX, "delta", "token-2")
    assert checkpoints.get(MAILBOX, "delta") == "token-2"
    assert audit.recent(MAILBOX) == []
    entry = AuditEntry(at=datetime.now(UTC), mailbox=MAILBOX, m365_id="AAMk1", action="nothing", reason="test")
    audit.write([entry])
    assert audit.recent(MAILBOX) == [entry]
    assert jobs.get("no-such-job") is None
    assert subs.list_all() == []
    sub = StoredSubscription(id="sub-1", mailbox=MAILBOX, resource="users/x/contacts", expires_at=datetime.now(UTC),
                             client_state_digest="d")
    subs.put(sub)
    assert [s.id for s in subs.list_all()] == ["sub-1"]


def test_a_deleted_links_table_is_a_loss_but_a_first_one_is_not(azurite_connection_string: str) -> None:
    prefix = "h" + uuid.uuid4().hex[:10]
    first = TableStorage.from_connection_string(azurite_connection_string, prefix)
    assert not first.links().rebuilding(MAILBOX)
    _drop(azurite_connection_string, f"{prefix}links")
    # a process that starts after the loss finds no links table either: it is a loss all the same
    later = TableStorage.from_connection_string(azurite_connection_string, prefix)
    links = later.links()
    assert links.rebuilding(MAILBOX)
    links.mark_rebuilt(MAILBOX)
    assert not TableStorage.from_connection_string(azurite_connection_string, prefix).links().rebuilding(MAILBOX)


def test_a_link_save_writes_the_index_row_only_for_a_new_salesforce_id(azurite_connection_string: str) -> None:
    from sync.adapters.storage import REQUESTS
    from sync.model import Side
    from sync.ports import Link

    links = TableStorage.from_connection_string(azurite_connection_string, "h" + uuid.uuid4().hex[:10]).links()
    REQUESTS.reset()
    links.save(Link(mailbox=MAILBOX, m365_id="AAMk1", sf_id="003A", synced_at=datetime.now(UTC)), previous=None)
    assert REQUESTS.snapshot() == {"write": 1, "transaction": 1}  # the index row first, then the link's rows
    current = links.get(MAILBOX, Side.M365, "AAMk1")
    assert current is not None
    REQUESTS.reset()
    links.save(current.model_copy(update={"m365_fp": "f2"}), previous=current)
    assert REQUESTS.snapshot() == {"transaction": 1}  # same Salesforce id: the index row stands
    assert links.mailboxes_of("003A") == {MAILBOX}


def test_the_webhooks_subscription_lookup_is_cached_for_a_while_and_forgets_what_this_process_changes(
        azurite_connection_string: str) -> None:
    from sync.adapters.storage import REQUESTS, TableSubscriptions

    tables = TableStorage.from_connection_string(azurite_connection_string, "h" + uuid.uuid4().hex[:10])
    now = [1000.0]
    subs = TableSubscriptions(tables.subscriptions()._table, cache_s=60, clock=lambda: now[0])
    sub = StoredSubscription(id="sub-1", mailbox=MAILBOX, resource="users/x/contacts", expires_at=datetime.now(UTC),
                             client_state_digest="d")
    subs.put(sub)

    def reads() -> int:
        return REQUESTS.snapshot().get("read", 0)

    before = reads()
    assert subs.get("sub-1") == sub and subs.get("sub-1") == sub
    assert reads() - before == 1  # the burst's second notification needs no table read
    now[0] += 61
    assert subs.get("sub-1") == sub and reads() - before == 2  # read again once the entry is older than cache_s
    subs.delete("sub-1")
    assert subs.get("sub-1") is None  # a delete here is seen at once
    assert subs.get("sub-1") is None and reads() - before == 4  # unknown ids are not cached
    subs.put(sub.model_copy(update={"mailbox": "bob@contoso.com"}))
    got = subs.get("sub-1")
    assert got is not None and got.mailbox == "bob@contoso.com"  # a put here too


def test_a_claim_is_kept_beside_the_link_json_so_an_older_reader_still_reads_the_row(
        azurite_connection_string: str) -> None:
    from azure.data.tables import TableClient

    from sync.model import Side
    from sync.ports import Link

    prefix = "h" + uuid.uuid4().hex[:10]
    links = TableStorage.from_connection_string(azurite_connection_string, prefix).links()
    links.save(Link(mailbox=MAILBOX, m365_id="AAMk1", sf_id="003A", synced_at=datetime.now(UTC)), previous=None)
    read = links.get(MAILBOX, Side.M365, "AAMk1")
    assert read is not None and read.claim is None
    at = datetime(2026, 12, 6, 22, 0, tzinfo=UTC)
    links.save(read.model_copy(update={"claim": "tok", "claimed_at": at, "etag": None}), previous=read)

    claimed = links.get(MAILBOX, Side.SALESFORCE, "003A")
    assert claimed is not None and (claimed.claim, claimed.claimed_at) == ("tok", at)
    assert [(x.claim, x.claimed_at) for x in links.list(MAILBOX)] == [("tok", at)]
    with TableClient.from_connection_string(azurite_connection_string, f"{prefix}links") as raw:
        rows = [e for e in raw.query_entities("Primary eq true")]
    assert len(rows) == 1 and "claim" not in rows[0]["Link"]  # the JSON an older version parses strictly

    links.save(claimed.model_copy(update={"claim": None, "claimed_at": None, "m365_fp": "f2", "etag": None}),
               previous=claimed)
    released = links.get(MAILBOX, Side.M365, "AAMk1")
    assert released is not None and released.claim is None and released.m365_fp == "f2"
