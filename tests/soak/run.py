"""``python -m tests.soak.run --minutes 5 --seed 1``: the soak with faults (tests/soak/soak.py) from the command line.

Starts its own Azurite (or uses ``AZURITE_CONNECTION_STRING``), prints the counts and every mismatch, and exits 1 when
there is one. ``--skip kill,links-loss`` leaves events out (to tell which one a failure needs).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Iterator

from tests.soak.soak import EVENTS, Profile, run_profile


@contextlib.contextmanager
def _azurite() -> Iterator[str]:
    preset = os.environ.get("AZURITE_CONNECTION_STRING")
    if preset:
        yield preset
        return
    from emulators.azurite import running_azurite

    with running_azurite() as azurite:
        yield azurite.connection_string


def quiet_logs() -> None:
    """Faults make the host and the adapters log every retry and failed invocation; the report says it in numbers."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("emulators", "sync", "urllib3", "azure", "httpx", "grpc", "tests.soak"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak.run", description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="how long people edit (default 5)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--per-rep", type=int, default=40, help="Salesforce contacts per rep at the start")
    parser.add_argument("--rate", type=float, default=4.0, help="user actions per second")
    parser.add_argument("--skip", default="", help=f"comma-separated events to leave out: {', '.join(EVENTS)}")
    parser.add_argument("--evidence", type=int, default=8, help="print the timelines of the first N mismatches")
    parser.add_argument("--verbose", action="store_true", help="keep the logs of the host and the adapters")
    parser.add_argument("--strict-org", action="store_true",
                        help="the Salesforce org as shipped: whole-second stamps, the standard duplicate rule (alert)")
    parser.add_argument("--strict-graph", action="store_true",
                        help="the strict Graph switches on: If-Match ignored on contacts, random delta resets")
    parser.add_argument("--instances", type=int, default=3,
                        help="host instances (processes) as a scaled-out app: i1 in this process, the others "
                        "children behind one front door (default 3)")
    parser.add_argument("--no-automation", action="store_true",
                        help="leave out flows (Automated Process writes) and SystemModstamp bumps")
    args = parser.parse_args(argv)
    skip = frozenset(s.strip() for s in args.skip.split(",") if s.strip())
    if skip - set(EVENTS):
        parser.error(f"unknown event(s): {', '.join(sorted(skip - set(EVENTS)))}")
    if args.instances < 1:
        parser.error("--instances must be at least 1")
    if not args.verbose:
        quiet_logs()
    profile = Profile(seconds=args.minutes * 60, per_rep=args.per_rep, actions_per_second=args.rate, seed=args.seed,
                      skip=skip, evidence=args.evidence, strict_org=args.strict_org,
                      strict_graph=args.strict_graph,
                      automation=not args.no_automation, instances=args.instances)
    with _azurite() as conn:
        report = run_profile(conn, profile)
    print(report.render(), flush=True)
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
