"""`tally bench ingest`'s server subprocess is stopped when its start fails
(no services: its "broker" is a socket that takes connections and never answers)."""

from __future__ import annotations

import signal
import socket

import pytest

from tally.bench.ingest import IngestServer

pytestmark = [pytest.mark.asyncio(loop_scope="function"), pytest.mark.timeout(120)]


@pytest.mark.parametrize(
    ("stop_seconds", "killed"),
    [(60.0, False), (0.2, True)],  # exits on SIGTERM; too slow to, so killed
)
async def test_a_server_not_ready_in_time_is_stopped_not_left_running(
    stop_seconds: float, killed: bool
) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # connections complete in the kernel; nothing ever replies
        port = silent.getsockname()[1]
        # The server still waits on its broker when the start deadline passes.
        server = IngestServer(
            f"127.0.0.1:{port}", "t", start_seconds=1.0, stop_seconds=stop_seconds
        )
        with pytest.raises(RuntimeError, match="not ready after 1 s"):
            async with server:
                pytest.fail("the server cannot be ready")
        process = server._process
        assert process is not None
        # Stopped and reaped while its broker still hangs, not left running.
        assert process.poll() is not None
        if killed:
            # SIGKILL after stop_seconds, unless SIGTERM was quicker still: it
            # ends a server still importing at once (-SIGTERM), and one in its
            # start-up checks cleanly (0, the checks race the stop).
            assert process.returncode in (0, -signal.SIGTERM, -signal.SIGKILL)
        else:
            assert process.returncode != -signal.SIGKILL
