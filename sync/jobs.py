"""Reconcile jobs: every reconcile, whoever asks for it (API, timer, a Graph lifecycle event, the CDC stream), is a
job row with one queued message per mailbox, so the status page and the CLI can follow it.

    start_job(jobs, queue, mailboxes, mode, *, dry_run=False, force=False, origin="api") -> ReconcileJob
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Literal

from sync.ports import JobStore, MailboxJob, ReconcileJob, ReconcileMailbox, WorkQueue

logger = logging.getLogger(__name__)

Origin = Literal["api", "timer", "lifecycle", "cdc", "scope"]


def start_job(jobs: JobStore, queue: WorkQueue, mailboxes: Sequence[str], mode: Literal["delta", "full"], *,
              dry_run: bool = False, force: bool = False, origin: Origin = "api") -> ReconcileJob:
    """Write the job row, then enqueue one ``ReconcileMailbox`` per mailbox."""
    job = ReconcileJob(id=uuid.uuid4().hex, created=datetime.now(UTC), mode=mode, dry_run=dry_run, force=force,
                       origin=origin, mailboxes={m: MailboxJob(mailbox=m) for m in mailboxes})
    jobs.create(job)
    for mailbox in mailboxes:
        queue.send(ReconcileMailbox(mailbox=mailbox, job_id=job.id, mode=mode, dry_run=dry_run, force=force))
    logger.info("reconcile job %s (%s, %s): %s mailbox(es)", job.id, origin, mode, len(mailboxes))
    return job
