"""``python -m emulators.graph --port 8765 --user alice@contoso.com`` runs the Graph emulator until Ctrl-C."""

from __future__ import annotations

import argparse
import logging
import signal
import threading

from .server import GraphEmulator


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Local Microsoft Graph v1.0 emulator (Outlook contacts).")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (loopback only by default)")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--tenant-id", default=None)
    parser.add_argument("--user", action="append", default=[], help="mailbox UPN to create (repeatable)")
    parser.add_argument("--no-auth", action="store_true", help="do not require an Authorization header")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    emulator = GraphEmulator(args.host, args.port, args.tenant_id, args.user, require_auth=not args.no_auth)
    emulator.start()
    print(f"graph emulator: {emulator.base_url} (admin: {emulator.root_url}/_admin/)", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    emulator.stop()


if __name__ == "__main__":
    main()
