"""`tally api serve` as a process: it migrates, announces its port, answers,
stops on SIGTERM, and refuses bad configuration with a sentence."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.integration.test_api_support import READ, ROOT, TOKENS, ApiProcess

pytestmark = pytest.mark.asyncio(loop_scope="function")


def serve(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tally", "api", "serve"],
        env={**os.environ, "TALLY_API_HOST": "127.0.0.1", **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )


async def test_serve_migrates_answers_and_stops_on_sigterm(
    fresh_database: str, tmp_path: Path
) -> None:
    env = {"TALLY_DATABASE_URL": fresh_database, "TALLY_API_TOKENS": TOKENS}
    with ApiProcess(["api", "serve"], env, tmp_path / "api.log") as server:
        async with httpx.AsyncClient(base_url=await server.base_url(), timeout=10) as client:
            assert (await client.get("/readyz")).json() == {"status": "ok"}
            listed = await client.get("/usage-metrics", headers=READ)
            assert listed.json() == {"items": [], "pagination": {"after": None}}
            assert (await client.get("/metric-values")).status_code == 401
        assert server.stop() == 0
    assert "api stopped" in server.log()


async def test_without_tokens_it_serves_closed_and_says_so(
    fresh_database: str, tmp_path: Path
) -> None:
    env = {"TALLY_DATABASE_URL": fresh_database, "TALLY_API_TOKENS": ""}
    with ApiProcess(["api", "serve"], env, tmp_path / "api.log") as server:
        async with httpx.AsyncClient(base_url=await server.base_url(), timeout=10) as client:
            assert (await client.get("/usage-metrics")).status_code == 401
            assert (await client.get("/healthz")).status_code == 200
        assert server.stop() == 0
    assert "no API tokens configured" in server.log()


async def test_bad_token_entries_stop_it_at_start(fresh_database: str) -> None:
    done = serve({"TALLY_DATABASE_URL": fresh_database, "TALLY_API_TOKENS": "ops:admin:tly_x"})
    assert done.returncode == 2
    assert "TALLY_API_TOKENS" in done.stderr
    assert "never the token" in done.stderr


async def test_a_taken_port_stops_it_with_a_sentence(fresh_database: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = serve(
            {
                "TALLY_DATABASE_URL": fresh_database,
                "TALLY_API_TOKENS": TOKENS,
                "TALLY_API_PORT": str(port),
            }
        )
    assert done.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
