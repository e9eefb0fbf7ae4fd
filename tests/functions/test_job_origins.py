"""Every reconcile is a job: the CDC stream's (a gap overflow, a rejected replay id) as well as the API's."""

from __future__ import annotations

import json

from sync.triggers import reconcile
from tests.functions.conftest import ANN, BOB, user_function
from tests.world import memory_engine_in


def test_a_cdc_reconcile_is_a_job_over_every_mailbox(root, queues) -> None:
    memory_engine_in(root)
    root._cdc_reconcile("GAP_OVERFLOW", "delta")
    taken = queues.take("reconcile")
    msgs = [json.loads(m.get_body()) for m in taken]
    assert {m["mailbox"] for m in msgs} == {ANN, BOB} and len({m["job_id"] for m in msgs}) == 1
    job = root.jobs.get(msgs[0]["job_id"])
    assert job is not None and job.origin == "cdc" and job.mode == "delta"
    for m in taken:
        user_function(reconcile.mailbox_reconciler)(m)
    done = root.jobs.get(job.id)
    assert done is not None and done.mailboxes and {s.state for s in done.mailboxes.values()} == {"done"}


def test_a_rejected_replay_id_asks_for_a_full_job(root, queues) -> None:
    root._cdc_reconcile("replay id rejected", "full")
    (job_id,) = {m["job_id"] for m in queues.bodies("reconcile")}
    job = root.jobs.get(job_id)
    assert job is not None and job.origin == "cdc" and job.mode == "full"
