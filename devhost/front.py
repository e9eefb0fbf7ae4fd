"""The front end of several local instances: one port on 127.0.0.1 that spreads HTTP requests over the instances.

Azure sends each request of a scaled-out app to one of its instances; ``FrontDoor`` does the same, round robin over
the instance ports it is given. An instance that refuses the connection (stopped, or killed) is skipped and the next
one is tried, as the platform stops routing to a dead instance; a request whose instance dies after it was sent gets
502. Nothing is logged about a request but its method (paths and bodies may carry personal data).

``FrontDoor(port=0, backends=[7072, 7073])`` is a context manager; ``set_backends(ports)`` changes the instances
(an instance replaced after a crash), ``port`` / ``base_url`` say where it listens.
"""

from __future__ import annotations

import http.client
import itertools
import logging
import threading
from collections.abc import Iterable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from devhost.host import read_body

__all__ = ["FrontDoor"]

logger = logging.getLogger(__name__)

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection",
               "content-length"}


class FrontDoor:
    def __init__(self, port: int = 0, backends: Iterable[int] = (), *, timeout: float = 240.0) -> None:
        self._requested_port = port
        self._backends: list[int] = list(backends)
        self._turn = itertools.count()
        self._lock = threading.Lock()
        self._timeout = timeout  # Azure's front end gives up on a request after 230 s (docs/reference/azure.md §3.5)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.served: dict[int, int] = {}  # requests sent to each instance port

    def set_backends(self, ports: Iterable[int]) -> None:
        with self._lock:
            self._backends = list(ports)

    @property
    def backends(self) -> list[int]:
        with self._lock:
            return list(self._backends)

    def _order(self) -> list[int]:
        with self._lock:
            ports = list(self._backends)
        if not ports:
            return []
        start = next(self._turn) % len(ports)
        return ports[start:] + ports[:start]

    def start(self) -> FrontDoor:
        door = self

        class Handler(_ProxyHandler):
            front = door

        self._server = ThreadingHTTPServer(("127.0.0.1", self._requested_port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="front-door", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FrontDoor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FrontDoor is not started")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def forward(self, method: str, target: str, headers: list[tuple[str, str]],
                body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        """Send the request to the next live instance; (status, headers, body) of its answer."""
        for port in self._order():
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=self._timeout)
            try:
                try:
                    connection.connect()
                except OSError:
                    continue  # not listening (stopped or dead): the next instance takes it
                try:
                    connection.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
                    for name, value in headers:
                        if name.lower() not in _HOP_BY_HOP:
                            connection.putheader(name, value)
                    connection.putheader("Content-Length", str(len(body)))
                    connection.endheaders(body)
                    response = connection.getresponse()
                    payload = response.read()
                except (OSError, http.client.HTTPException) as exc:
                    logger.warning("Instance on port %d failed a %s request: %s", port, method, type(exc).__name__)
                    return int(HTTPStatus.BAD_GATEWAY), [("Content-Type", "text/plain")], b"Bad Gateway"
                with self._lock:
                    self.served[port] = self.served.get(port, 0) + 1
                return response.status, [(k, v) for k, v in response.getheaders()
                                          if k.lower() not in _HOP_BY_HOP], payload
            finally:
                connection.close()
        return int(HTTPStatus.SERVICE_UNAVAILABLE), [("Content-Type", "text/plain")], b"Service Unavailable"


class _ProxyHandler(BaseHTTPRequestHandler):
    front: FrontDoor
    server_version = "LocalFrontDoor/1.0"
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def _handle(self) -> None:
        try:
            body = read_body(self)
        except ValueError:
            self._send(int(HTTPStatus.REQUEST_ENTITY_TOO_LARGE), [], b"Request Entity Too Large")
            return
        status, headers, payload = self.front.forward(self.command, self.path, list(self.headers.items()), body)
        self._send(status, headers, payload)

    def _send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        logger.debug("front door %s", self.command)
