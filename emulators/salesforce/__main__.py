"""``python -m emulators.salesforce --port 8443 --grpc-port 7443``: run the emulator until Ctrl-C.

Prints the instance URL, CA path, gRPC target and a ready token (for the integration user) on start.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
from pathlib import Path

from emulators.salesforce.server import SalesforceEmulator


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m emulators.salesforce", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8443, help="HTTPS port (0 = any free port)")
    p.add_argument("--grpc-port", type=int, default=7443, help="Pub/Sub gRPC port (0 = any free port)")
    p.add_argument("--grpc-tls", action="store_true", help="serve gRPC with TLS (same CA) instead of plaintext")
    p.add_argument("--custom-field", action="append", default=None,
                   help="custom text field on Contact (repeatable; default Outlook_Id__c)")
    p.add_argument("--workdir", type=Path, default=None, help="where ca.pem is written (default: a temp dir)")
    p.add_argument("--jwt-client-id", default=None, help="register a JWT bearer client with --jwt-public-key")
    p.add_argument("--jwt-public-key", type=Path, default=None, help="PEM public key of that client")
    p.add_argument("--client-id", default=None, help="register a client-credentials client (with --client-secret)")
    p.add_argument("--client-secret", default=None)
    p.add_argument("--keepalive-seconds", type=float, default=270.0)
    args = p.parse_args(argv)
    emu = SalesforceEmulator(host=args.host, port=args.port, grpc_port=args.grpc_port, grpc_tls=args.grpc_tls,
                             custom_fields=tuple(args.custom_field or ["Outlook_Id__c"]), workdir=args.workdir,
                             keepalive_seconds=args.keepalive_seconds).start()
    if args.jwt_client_id and args.jwt_public_key:
        emu.register_jwt_client(args.jwt_client_id, args.jwt_public_key.read_text())
    if args.client_id and args.client_secret:
        emu.register_client_credentials(args.client_id, args.client_secret)
    print(json.dumps({"instance_url": emu.instance_url, "token_url": emu.token_url, "ca_path": str(emu.ca_path),
                      "grpc_target": emu.grpc_target, "org_id": emu.org_id,
                      "integration_user_id": emu.integration_user_id, "access_token": emu.issue_token()}),
          flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    emu.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
