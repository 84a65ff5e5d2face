"""The worker's HTTP port: /metrics, /healthz (liveness), /readyz (readiness)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["HealthServer"]


class HealthServer:
    """Serves metrics and probes from a daemon thread.

    ``live()`` and ``ready()`` return ``(ok, reason)``: 200 or 503 with the reason as the
    body. ``metrics(accept)`` returns the exposition and its content type for the scrape's
    ``Accept`` header (OpenMetrics when it asks for it).
    """

    def __init__(
        self,
        host: str,
        port: int,
        metrics: Callable[[str], tuple[bytes, str]],
        live: Callable[[], tuple[bool, str]],
        ready: Callable[[], tuple[bool, str]],
    ) -> None:
        routes: dict[str, Callable[[str], tuple[int, bytes, str]]] = {
            "/metrics": lambda accept: (200, *metrics(accept)),
            "/healthz": lambda _: self._probe(live),
            "/readyz": lambda _: self._probe(ready),
        }

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                route = routes.get(self.path.split("?", 1)[0])
                accept = self.headers.get("Accept", "")
                code, body, ctype = route(accept) if route else (404, b"not found\n", "text/plain")
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # scrapes are noise
                return

        server = _V6Server if ":" in host else ThreadingHTTPServer  # "::": every v6 (and v4)
        self._server = server((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)

    @staticmethod
    def _probe(check: Callable[[], tuple[bool, str]]) -> tuple[int, bytes, str]:
        ok, reason = check()
        return (200 if ok else 503), (reason + "\n").encode(), "text/plain; charset=utf-8"

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _V6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6
