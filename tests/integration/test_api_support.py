"""Helpers shared by the API tests (no tests here): an app over a fresh
database with one read and one admin token, reached through httpx's ASGI
transport, or served by uvicorn on a free port."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from tally.api.app import create_app
from tally.api.auth import token_entry
from tally.config import Settings
from tally.store.migrate import migrate
from tally.store.pool import create_pool

ROOT = Path(__file__).resolve().parents[2]
READ_TOKEN = "tly_test_reader_0123456789"
ADMIN_TOKEN = "tly_test_admin_0123456789"
TOKENS = ",".join(
    [token_entry("billing-reader", "read", READ_TOKEN), token_entry("ops", "admin", ADMIN_TOKEN)]
)
READ = {"Authorization": f"Bearer {READ_TOKEN}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

CALLS: dict[str, Any] = {
    "uid": "api_calls",
    "name": "API calls",
    "eventType": "api_call",
    "aggregationType": "COUNT",
    "timeUnits": ["day", "month"],
}


@dataclass
class Api:
    client: httpx.AsyncClient
    pool: asyncpg.Pool

    async def create(self, definition: Mapping[str, Any], **headers: str) -> httpx.Response:
        return await self.client.post(
            "/usage-metrics", json=dict(definition), headers={**ADMIN, **headers}
        )

    async def sql(self, query: str, *args: Any) -> list[asyncpg.Record]:
        async with self.pool.acquire() as connection:
            return list(await connection.fetch(query, *args))


@contextlib.asynccontextmanager
async def open_api(dsn: str, tokens: str = TOKENS) -> AsyncIterator[Api]:
    """The app over `dsn` (migrated), with an httpx client on its ASGI transport."""
    pool = await create_pool(dsn, min_size=1, max_size=8)
    try:
        async with pool.acquire() as connection:
            await migrate(connection)
        app = create_app(Settings(database_url=dsn, api_tokens=tokens), pool)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://tally.test") as client:
            yield Api(client, pool)
    finally:
        await pool.close()


class ApiProcess:
    """`tally api serve` (or any tally command that serves the API) in its own
    process group, on a free port announced in its log."""

    def __init__(self, args: list[str], env: Mapping[str, str], log_path: Path) -> None:
        self.args = args
        self.env = {**os.environ, **env, "TALLY_API_HOST": "127.0.0.1", "TALLY_API_PORT": "0"}
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ApiProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tally", *self.args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=ROOT,
            )
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 30) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
                raise
        return self.process.returncode

    async def base_url(self, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.findall(r"api listening\"? url=http://[^:]+:(\d+)", self.log())
            if found:
                return f"http://127.0.0.1:{found[-1]}"
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"tally exited ({self.process.returncode}):\n{self.log()}")
            await asyncio.sleep(0.05)
        raise AssertionError(f"the API did not announce its port in {timeout}s:\n{self.log()}")


def error_locs(response: httpx.Response) -> list[list[Any]]:
    """The `loc` of each error in a refusal, checking the error shape on the way."""
    body = response.json()
    assert set(body) == {"detail"}, body
    for error in body["detail"]:
        assert set(error) == {"loc", "msg", "type"}, error
    return [error["loc"] for error in body["detail"]]
