"""A small HTTP server for /metrics, /healthz and /readyz on the telemetry port (`telemetry_port`).

Plain asyncio: three GET routes do not justify a web framework in the worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

ReadyCheck = Callable[[], Awaitable[tuple[bool, str]]]
LiveCheck = Callable[[], tuple[bool, str]]


def _always_live() -> tuple[bool, str]:
    return True, "ok"


class TelemetryServer:
    def __init__(
        self,
        registry: CollectorRegistry,
        ready: ReadyCheck,
        host: str,
        port: int,
        live: LiveCheck = _always_live,
    ) -> None:
        self.registry = registry
        self.ready = ready
        self.live = live
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            method, _, rest = request.partition(b" ")
            path = rest.split(b" ", 1)[0].split(b"?", 1)[0].decode("latin-1")
            if method != b"GET":
                status, body, kind = "405 Method Not Allowed", b"GET only\n", "text/plain"
            elif path == "/metrics":
                status, body, kind = "200 OK", generate_latest(self.registry), CONTENT_TYPE_LATEST
            elif path == "/healthz":
                ok, why = self.live()
                status = "200 OK" if ok else "503 Service Unavailable"
                body, kind = (why + "\n").encode(), "text/plain"
            elif path == "/readyz":
                ok, why = await self.ready()
                status = "200 OK" if ok else "503 Service Unavailable"
                body, kind = (why + "\n").encode(), "text/plain"
            else:
                status, body, kind = (
                    "404 Not Found",
                    b"try /metrics, /healthz or /readyz\n",
                    "text/plain",
                )
            head = f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            writer.write(head.encode() + body)
            await writer.drain()
        except (
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            TimeoutError,
            ConnectionError,
        ):
            pass
        finally:
            writer.close()
