"""Several instances of one app, as the platform scales out: ``python -m devhost --instances N``.

Each instance is a child process running ``python -m devhost`` on its own port with the same settings, keys and
host id, over the same storage account: queue triggers compete for messages (a message is invisible to the others
while one instance holds it), each timer runs on the one instance holding its singleton lock
(docs/reference/azure.md §1.6), and ``FrontDoor`` (devhost/front.py) spreads HTTP requests over them.

``Instance(name, port, argv, env, log_path)``: ``start()``, ``wait_ready(master_key)``, ``status(master_key)`` (the
instance's ``/admin/host/status``), ``kill()`` (SIGKILL: nothing released, as a crashed instance), ``stop()``
(SIGTERM: leases released, running invocations finished). ``run(...)`` is the command line's multi-instance mode.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from devhost.front import FrontDoor

__all__ = ["Instance", "free_port", "run"]

logger = logging.getLogger(__name__)


class Instance:
    """One ``python -m devhost`` child process; ``argv`` are its devhost arguments without ``--port``."""

    def __init__(self, name: str, port: int, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
                 cwd: str | Path | None = None, log_path: str | Path | None = None) -> None:
        self.name = name
        self.port = port
        self._argv = [*argv, "--port", str(port), "--instance", name]
        self._env = dict(env) if env is not None else dict(os.environ)
        self._cwd = str(cwd) if cwd is not None else os.getcwd()
        self.log_path = Path(log_path) if log_path is not None else None
        self._log: IO[bytes] | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> Instance:
        out: Any = subprocess.DEVNULL
        if self.log_path is not None:
            self._log = self.log_path.open("ab")
            out = self._log
        self.process = subprocess.Popen(  # noqa: S603 - our own host module
            [sys.executable, "-m", "devhost", *self._argv], cwd=self._cwd, env=self._env, stdout=out,
            stderr=subprocess.STDOUT)
        return self

    def status(self, master_key: str, timeout: float = 5.0) -> dict[str, Any] | None:
        """The instance's ``/admin/host/status`` (None when it does not answer)."""
        request = urllib.request.Request(f"{self.base_url}/admin/host/status",
                                         headers={"x-functions-key": master_key})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - 127.0.0.1 only
                document = json.loads(response.read())
        except (OSError, ValueError, urllib.error.URLError):
            return None
        return document if isinstance(document, dict) else None

    def wait_ready(self, master_key: str, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.alive:
            if self.status(master_key, timeout=2.0) is not None:
                return True
            time.sleep(0.1)
        return False

    def kill(self) -> None:
        """SIGKILL: the instance dies mid-work; its leases and message visibility run out by themselves."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        self._close_log()

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``: a stopping instance finishes its invocations and releases."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            with contextlib.suppress(OSError):
                self._log.close()
            self._log = None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(count: int, argv: Sequence[str], *, port: int, master_key: str, host_key: str, describe: bool = True) -> int:
    """The command line with ``--instances N``: N children on free ports behind a front door on ``port``, until
    SIGINT/SIGTERM. A child that dies is reported and left out by the front door; the others keep working."""
    instances = [Instance(f"i{n + 1}", free_port(), argv) for n in range(count)]
    for instance in instances:
        instance.start()
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        ready = [instance.wait_ready(master_key) for instance in instances]
        if not all(ready):
            print(f"{ready.count(False)} instance(s) did not start; see their output above", file=sys.stderr)
            return 2
        with FrontDoor(port, [i.port for i in instances]) as front:
            if describe:
                status = instances[0].status(master_key) or {}
                print(f"\n{count} instances of host {status.get('id')} behind {front.base_url} (front door, round "
                      "robin): " + ", ".join(f"{i.name} {i.base_url}" for i in instances), flush=True)
                print(f"Host key: {host_key}\nMaster key: {master_key}\n", flush=True)
            dead: set[str] = set()
            while not stop.wait(0.5):
                for instance in instances:
                    if not instance.alive and instance.name not in dead:
                        dead.add(instance.name)
                        logger.warning("Instance %s (port %d) exited with %s", instance.name, instance.port,
                                       instance.process.returncode if instance.process else None)
    finally:
        for instance in instances:
            instance.stop()
    return 0
