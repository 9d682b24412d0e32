"""`make run` as a new user meets it: under a pseudo-terminal, from services
it starts itself, to a live summary with rollups, and Ctrl-C stops it all."""

from __future__ import annotations

import contextlib
import os
import pty
import select
import shutil
import socket
import tempfile
import time
from pathlib import Path

import pytest

from tests.integration.support import ROOT

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_make_run_shows_rollups_and_stops_cleanly_on_ctrl_c() -> None:
    state = Path(tempfile.mkdtemp(prefix="tally-r-", dir="/tmp"))
    state.chmod(0o755)
    kafka_port, pg_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TALLY_")}
    env.update(
        {
            "TALLY_LOCAL_DIR": str(state),
            "TALLY_KAFKA_PORT": str(kafka_port),
            "TALLY_KAFKA_CONTROLLER_PORT": str(free_port()),
            "TALLY_PG_PORT": str(pg_port),
            "TALLY_TELEMETRY_PORT": "0",
            "TERM": "xterm",
        }
    )
    if (ROOT / ".local" / "kafka" / "libs").is_dir():  # saves re-resolving the jars
        env["TALLY_KAFKA_LIBS_DIR"] = str(ROOT / ".local" / "kafka" / "libs")
    pid, fd = pty.fork()
    if pid == 0:  # the child: a terminal session running make run
        os.chdir(ROOT)
        os.execvpe("make", ["make", "run", f"RUN_ARGS=--worker-log={state}/worker.log"], env)
    output = b""
    started = time.monotonic()
    interrupted_at = None
    status = None
    try:
        while time.monotonic() - started < 240:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                with contextlib.suppress(OSError):  # the terminal closed: everything exited
                    output += os.read(fd, 65536)
            screen = (
                output.rsplit(b"latest rollups:", 1)[-1] if b"latest rollups:" in output else b""
            )
            if interrupted_at is None and b"api_calls_by_endpoint" in screen:
                shown_after = time.monotonic() - started
                os.write(fd, b"\x03")  # Ctrl-C, through the terminal, to the foreground group
                interrupted_at = time.monotonic()
            done, raw = os.waitpid(pid, os.WNOHANG)
            if done:
                status = raw
                break
    finally:
        if status is None:
            os.killpg(pid, 9)
            os.waitpid(pid, 0)
        os.close(fd)
    text = output.decode(errors="replace")
    try:
        assert interrupted_at is not None, f"no rollups on screen:\n{text[-3000:]}"
        assert status is not None, f"make run did not stop after Ctrl-C:\n{text[-3000:]}"
        assert shown_after < 120, shown_after
        assert time.monotonic() - interrupted_at < 60
        assert "metrics at http://127.0.0.1:" in text
        assert "/metrics" in text
        assert "stopped:" in text
        assert "worker exited with status 0" in text
        assert "stopping the local kafka this run started" in text
        assert "stopping the local postgres this run started" in text
        assert not listening(kafka_port), "the Kafka that make run started is still up"
        assert not listening(pg_port), "the PostgreSQL that make run started is still up"
    finally:
        shutil.rmtree(state, ignore_errors=True)
