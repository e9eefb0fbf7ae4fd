"""``python -m bench.sf_emulator_query [--owners 2000 --per-owner 25]``: the Salesforce emulator's own query cost.

Not a product number: the harness's. ``bench.mailboxes`` runs the emulators in its own process, so a slow emulator
query inflates every pass it measures. This seeds ``owners`` x ``per_owner`` contacts (as ``bench.mailboxes`` does)
and times, in the emulator alone (no HTTP), the three queries the delta passes send per mailbox: the watermark query
of a no-change pass (``sync.adapters.salesforce.changes``: what moved since the watermark, org-wide), the head query
before a full listing, and an owner's full listing. Prints milliseconds per query (mean of ``--repeat``).
"""

from __future__ import annotations

import argparse
import time
from datetime import timedelta
from typing import Any

from bench.scale import COMPANIES, contact_row


def measure(owners: int, per_owner: int, repeat: int) -> dict[str, Any]:
    from emulators.salesforce import SalesforceEmulator

    out: dict[str, Any] = {"owners": owners, "per_owner": per_owner}
    with SalesforceEmulator() as sf:
        users = [sf.add_user(f"rep{i}@bench.sf", f"rep{i}@bench.example", last_name=f"Rep{i}") for i in range(owners)]
        accounts = {name: sf.add_account(name) for name in COMPANIES}
        rows: list[dict[str, Any]] = []
        for r, user in enumerate(users):
            rows += [contact_row(r * per_owner + i, accounts, user) for i in range(per_owner)]
            if len(rows) >= 5000:
                sf.bulk_create_contacts(rows)
                rows = []
        if rows:
            sf.bulk_create_contacts(rows)
        org = sf.org
        stamp = (org.now() + timedelta(seconds=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
        fields = "Id, OwnerId, SystemModstamp, IsDeleted, FirstName, LastName, Email"
        queries = {
            "watermark (no-change pass)": (f"SELECT {fields} FROM Contact WHERE (SystemModstamp > {stamp} OR "
                                           f"(SystemModstamp = {stamp} AND Id > '003000000000001AAA')) "
                                           "ORDER BY SystemModstamp, Id", True),
            "head (before a full listing)": ("SELECT Id, SystemModstamp FROM Contact ORDER BY SystemModstamp DESC, "
                                             "Id DESC LIMIT 201", True),
            "owner listing (full pass)": (f"SELECT {fields} FROM Contact WHERE OwnerId = '{users[len(users) // 2]}' "
                                          "ORDER BY Id", False),
        }
        for label, (soql, include_deleted) in queries.items():
            t = time.perf_counter()
            for _ in range(repeat):
                org.query(soql, include_deleted, "67.0", 2000)
            out[label] = round((time.perf_counter() - t) / repeat * 1000, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.sf_emulator_query", description=__doc__.split("\n\n")[0])
    ap.add_argument("--owners", type=int, default=2000)
    ap.add_argument("--per-owner", type=int, default=25)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    result = measure(args.owners, args.per_owner, args.repeat)
    print(f"{result['owners']} owners x {result['per_owner']} contacts")
    for key, value in result.items():
        if key not in ("owners", "per_owner"):
            print(f"  {key}: {value} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
