"""`tally ingest serve` stops on SIGTERM while its startup check still waits
on Kafka (no services: its "broker" is a socket that takes connections and
never answers, so the topic check would wait out its 15 s and then fail)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest

from tally.api.auth import token_entry

pytestmark = pytest.mark.timeout(120)


def test_sigterm_during_the_topic_check_stops_it_cleanly() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        silent.settimeout(60)
        port = silent.getsockname()[1]
        env = {
            **os.environ,
            "TALLY_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}",
            "TALLY_TOPIC": "events",
            "TALLY_API_TOKENS": token_entry("meter", "ingest", "tly_test_ingest_stop_0123"),
            "TALLY_API_HOST": "127.0.0.1",
            "TALLY_API_PORT": "0",
        }
        process = subprocess.Popen(
            [sys.executable, "-m", "tally", "ingest", "serve"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            # Its admin client has connected: the check is under way (signal
            # handlers are in place before it starts).
            connection, _ = silent.accept()
            with connection:  # held open, unanswered, until the process is done
                process.send_signal(signal.SIGTERM)
                _, stderr = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    # Stopped as asked, not failed once the check gave up on the broker.
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
