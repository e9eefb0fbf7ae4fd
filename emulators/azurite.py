"""Start and stop Azurite (tables, queues and blobs) on free loopback ports, in memory.

Used by the test session (tests/conftest.py), the local functions host and ``make demo``. Azurite comes from the
project's own ``package.json`` (npm ``azurite``); flags follow docs/reference/azure.md §5:
``--inMemoryPersistence`` keeps nothing on disk; ``--skipApiVersionCheck`` because azure-storage-queue 12.18.1 sends
a newer ``x-ms-version`` than Azurite accepts (3.37.0: up to 2026-06-06); ``--disableTelemetry`` because telemetry
is on by default. Blobs are there for the local host's singleton timer locks (blob leases, docs/reference/azure.md
§1.6).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ACCOUNT = "devstoreaccount1"
# The well-known development account key (Azurite README); not a secret.
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@dataclass(frozen=True)
class Azurite:
    table_port: int
    queue_port: int
    blob_port: int

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"QueueEndpoint=http://127.0.0.1:{self.queue_port}/{ACCOUNT};"
            f"TableEndpoint=http://127.0.0.1:{self.table_port}/{ACCOUNT};"
            f"BlobEndpoint=http://127.0.0.1:{self.blob_port}/{ACCOUNT};"
        )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _binary(name: str) -> str:
    local = ROOT / "node_modules" / ".bin" / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found: run `npm ci` (make deps) to install Azurite from package.json")
    return found


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Azurite exited with code {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"Azurite did not listen on 127.0.0.1:{port} within {timeout:.0f}s")


def _start(kind: str, port: int, workdir: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            _binary(f"azurite-{kind}"),
            f"--{kind}Host", "127.0.0.1",
            f"--{kind}Port", str(port),
            "--inMemoryPersistence",
            "--loose",
            "--skipApiVersionCheck",
            "--disableTelemetry",
            "--silent",
        ],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@contextlib.contextmanager
def running_azurite(timeout: float = 30.0) -> Iterator[Azurite]:
    """Run azurite-table, azurite-queue and azurite-blob on free 127.0.0.1 ports until the block exits."""
    workdir = tempfile.mkdtemp(prefix="azurite-")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for attempt in range(3):
            table_port, queue_port, blob_port = free_port(), free_port(), free_port()
            table = _start("table", table_port, workdir)
            queue = _start("queue", queue_port, workdir)
            blob = _start("blob", blob_port, workdir)
            procs = [table, queue, blob]
            try:
                _wait_listening(table_port, table, timeout)
                _wait_listening(queue_port, queue, timeout)
                _wait_listening(blob_port, blob, timeout)
                break
            except RuntimeError:
                for p in procs:
                    _stop(p)
                procs = []
                if attempt == 2:
                    raise
        yield Azurite(table_port=table_port, queue_port=queue_port, blob_port=blob_port)
    finally:
        for p in procs:
            _stop(p)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":  # pragma: no cover - manual helper: `python -m emulators.azurite`
    with running_azurite() as az:
        print(az.connection_string, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
    os._exit(0)
