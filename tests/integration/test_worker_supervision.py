"""What the worker does when something it hosts dies: the HTTP API of
`tally run --with-api` that cannot serve stops the worker, visibly (one log
line naming it, exit status 2), instead of a worker running on without the
API it was asked for. (The definitions watcher and retention tasks:
tests/unit/test_worker_faults.py.)"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.conftest import MakeTopic
from tests.integration.support import WorkerProcess, worker_env

pytestmark = pytest.mark.asyncio(loop_scope="function")


async def test_an_api_that_cannot_serve_stops_the_worker_and_says_so(
    kafka_bootstrap: str, fresh_database: str, make_topic: MakeTopic, tmp_path: Path
) -> None:
    topic = await make_topic(1)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        env = worker_env(
            kafka_bootstrap,
            fresh_database,
            topic,
            f"g-api-dies-{uuid.uuid4().hex[:8]}",
            api_host="127.0.0.1",
            api_port=str(taken.getsockname()[1]),
        )
        worker = WorkerProcess("api-dies", env, tmp_path, args=["--with-api"]).start()
        assert worker.process is not None
        try:
            status = await asyncio.to_thread(worker.process.wait, 120)
        except subprocess.TimeoutExpired:
            worker.kill()  # never leave a worker behind for the next test
            raise
    finally:
        taken.close()
    log = worker.current_log()
    assert status == 2, log[-3000:]
    assert "the HTTP API stopped; stopping the worker" in log
    assert "tally: the HTTP API stopped:" in log
