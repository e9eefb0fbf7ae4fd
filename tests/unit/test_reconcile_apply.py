"""Reconcile applies its plans a chunk at a time and keeps no plan for pairs that did not change."""

from __future__ import annotations

import pytest

from sync import reconcile
from sync.model import Contact
from sync.reconcile import reconcile_mailbox
from tests.world import ANN, memory_world


def test_plans_go_out_in_chunks_and_unchanged_pairs_are_only_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    w = memory_world(mailboxes=[ANN])
    m365, sf, engine = w.m365, w.sf, w.engine
    for n in range(7):
        sf.user_create(ANN, Contact(first_name=f"P{n}", last_name="X", emails=[f"p{n}@example.com"]))
    chunks: list[int] = []
    real = engine.execute_many

    def counting(mailbox: str, items):  # type: ignore[no-untyped-def]
        chunks.append(len(items))
        return real(mailbox, items)

    monkeypatch.setattr(engine, "execute_many", counting)
    monkeypatch.setattr(reconcile, "APPLY_CHUNK", 3)
    first = reconcile_mailbox(engine, ANN)
    assert chunks == [3, 3, 1] and first.applied["create:m365"] == 7 and not first.errors
    assert len(m365.snapshot()) == 7
    chunks.clear()
    second = reconcile_mailbox(engine, ANN)
    assert chunks == []  # nothing to execute: seven unchanged pairs
    assert second.visited == 7 and second.planned["nothing"] == 7 and second.applied["nothing"] == 7
