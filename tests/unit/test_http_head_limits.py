"""A request head (request line and headers) past the limit is refused before
any route or token check, and its connection is closed and let go, on both
servers: `tally api serve` (h11) and `tally ingest serve` (httptools, bounded
by tally.ingest.http). No services: a real uvicorn on a real socket, serving
a one-route app, so only the HTTP layer can refuse."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from tally.api.server import _listen, _Server, uvicorn_config
from tally.config import Settings
from tally.ingest.http import MAX_HEAD_BYTES
from tally.ingest.server import ingest_config

pytestmark = [pytest.mark.asyncio(loop_scope="function"), pytest.mark.timeout(60)]


async def ok(request: Request) -> PlainTextResponse:
    await request.body()
    return PlainTextResponse("ok")


APP = Starlette(routes=[Route("/", ok, methods=["GET", "POST"])])
Configure = Callable[[Starlette, Settings], uvicorn.Config]
SERVERS = [pytest.param(uvicorn_config, id="api"), pytest.param(ingest_config, id="ingest")]


@contextlib.asynccontextmanager
async def serving(configure: Configure) -> AsyncIterator[tuple[_Server, int]]:
    sock = _listen("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = _Server(configure(APP, Settings()))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield server, port  # the socket listens already: connections wait for the server
    finally:
        server.should_exit = True
        await task


async def send_head(port: int, header_bytes: int, *, finish: bool = True) -> bytes:
    """GET / with an X-Pad header of `header_bytes`, sent in 4 KiB pieces, and
    everything the server answers until it closes. Unfinished (`finish`
    False), the head never ends, as an attacker's does: only a server that
    bounds it answers, and one that does not is given up on after 10 s (the
    answer is then empty)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Pad: ")
        sent = 0
        with contextlib.suppress(ConnectionError):
            while sent < header_bytes:
                writer.write(b"a" * 4096)
                await writer.drain()
                sent += 4096
            if finish:
                writer.write(b"\r\n\r\n")
                await writer.drain()
        try:
            return await asyncio.wait_for(reader.read(), 10 if not finish else None)
        except (TimeoutError, ConnectionError):
            return b""
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def no_connections(server: _Server) -> None:
    """The server has let every connection go (it may take a few loop turns)."""
    for _ in range(1000):
        if not server.server_state.connections:
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"{len(server.server_state.connections)} connections still held")


@pytest.mark.parametrize("configure", SERVERS)
async def test_a_100_kib_header_is_refused_and_its_connection_let_go(
    configure: Configure,
) -> None:
    async with serving(configure) as (server, port):
        answer = await send_head(port, 100 * 1024, finish=False)
        status = answer.split(b"\r\n", 1)[0]
        assert status.startswith(b"HTTP/1.1 4"), answer[:200]
        assert b"ok" not in answer.split(b"\r\n\r\n", 1)[-1]
        await no_connections(server)
        # The server still serves others.
        assert (await send_head(port, 10)).startswith(b"HTTP/1.1 200")


async def test_the_ingest_server_says_431_past_its_limit_and_not_below_it() -> None:
    async with serving(ingest_config) as (server, port):
        answer = await send_head(port, MAX_HEAD_BYTES + 8192, finish=False)
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
        assert b'"header_too_large"' in answer
        await no_connections(server)
        # A large head under the limit, in pieces, is served.
        assert (await send_head(port, MAX_HEAD_BYTES - 8192)).startswith(b"HTTP/1.1 200")


async def test_a_body_in_the_same_read_as_the_head_does_not_count_as_head() -> None:
    body = b"x" * (4 * MAX_HEAD_BYTES)
    async with serving(ingest_config) as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        answer = await reader.read()
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
