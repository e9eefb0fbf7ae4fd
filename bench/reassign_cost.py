"""``python -m bench.reassign_cost``: what one contact reassigned into one mailbox costs, in requests (issue 17).

In one process, against the emulators and Azurite (no host, no queue): ``--contacts`` Salesforce contacts of a
departed rep (outside the sync scope), with one account unless ``--no-company``, change owner to one synced rep; the
hint of each (``ContactChange``) runs through the worker's own function (``process_contact_message``) on
``--threads`` threads, as queue consumers would. Prints Graph requests per contact (HTTP, and per endpoint), the
Salesforce REST requests per contact and the time, and writes ``reassign_cost`` in ``bench/results.json``.

With an account, matching also looks for first + last name + company, which Graph cannot filter on (docs/reference/
graph.md §1.9): the number that tells whether a find lists the folder (O(folder) requests per contact) or not.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

TARGET = "target@contoso.com"


def run(contacts: int, company: bool, threads: int) -> dict[str, Any]:
    from bench.scale import stack
    from sync import bootstrap
    from sync.model import Side
    from sync.ports import ContactChange
    from sync.reconcile import reconcile_mailbox
    from sync.triggers.worker import process_contact_message

    with stack([TARGET]) as s:
        departed = s.sf.add_user("departed@contoso.com.sf", "departed@contoso.com", last_name="Departed")
        account = {"AccountId": s.sf.add_account("Moved Co")} if company else {}
        moved = s.sf.bulk_create_contacts([{"FirstName": "Moved", "LastName": f"M{i}", "Email": f"m{i}@bench.example",
                                            "OwnerId": departed, **account} for i in range(contacts)],
                                          as_user=departed)
        root = bootstrap.install(bootstrap.Root({**s.settings(), "GRAPH_MAILBOX_PERMITS": "shared"}))
        try:
            reconcile_mailbox(root.engine, TARGET)  # the (empty) sync folder
            for cid in moved:
                s.sf.change_owner(cid, s.users[TARGET], as_user=departed)
            s.graph.counters.reset()
            s.sf.counters.reset()
            started = time.perf_counter()
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(lambda cid: process_contact_message(
                    root, ContactChange(source=Side.SALESFORCE, item_id=cid).model_dump_json()), moved))
            took = time.perf_counter() - started
        finally:
            bootstrap.reset()
        folder = s.graph.find_folder(TARGET, "Salesforce_Sync")
        out = {
            "contacts": contacts, "company": company, "threads": threads, "seconds": round(took, 1),
            "in_folder": s.graph.count_contacts(TARGET, folder) if folder else 0,
            "graph_per_contact": round(s.graph.counters.http_requests() / contacts, 2),
            "graph_endpoints_per_contact": {e: round(n / contacts, 2)
                                            for (_, e), n in sorted(s.graph.counters.requests.items()) if n},
            "salesforce_per_contact": round(s.sf.counters["rest.requests"] / contacts, 2),
        }
    print(f"  {contacts} contacts, account: {company}, {threads} threads: {out['in_folder']} in the folder in "
          f"{out['seconds']} s; Graph requests per contact {out['graph_per_contact']} "
          f"({out['graph_endpoints_per_contact']}); Salesforce requests per contact {out['salesforce_per_contact']}",
          flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reassign_cost")
    parser.add_argument("--contacts", type=int, default=1000, help="contacts reassigned into one mailbox (1,000)")
    parser.add_argument("--no-company", action="store_true", help="contacts without an account")
    parser.add_argument("--threads", type=int, default=4, help="worker threads (default 4)")
    parser.add_argument("--out", default="bench/results.json", help="results file (default bench/results.json)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    for name in ("sync", "emulators", "azure", "urllib3", "httpx"):
        logging.getLogger(name).setLevel(logging.ERROR)
    print("What one contact reassigned into one mailbox costs:", flush=True)
    out = run(args.contacts, not args.no_company, args.threads)
    from bench.results import record

    record("reassign_cost", out, args.out)
    return 0 if out["in_folder"] == args.contacts else 1


if __name__ == "__main__":
    sys.exit(main())
