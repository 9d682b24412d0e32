"""The API's backfill launcher (tally.backfill.launcher): what a child gets,
and how it is supervised. The children here are small shell scripts standing
in for `python -m tally backfill ...` (the real one: test_api_backfill.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from tally.backfill.launcher import Exit, LaunchRefused, ProcessLauncher, child_env, command
from tally.config import Settings, load_settings

ASYNC = pytest.mark.asyncio(loop_scope="function")


def test_a_child_gets_the_servers_settings_and_the_backfill_database() -> None:
    settings = Settings(
        database_url="postgresql://api@db/tally",
        backfill_database_url="postgresql://worker@db/tally",
        topic=("a", "b"),
        dedup_window=3600.0,
        flush_interval=0.05,
        backfill_flush_records=100,
        api_tokens="ops:admin:" + "0" * 64,
        telemetry_port=9464,
        max_lateness=3 * 86400.0,
        member_retention=200 * 86400.0,  # not the default: the child must be told
    )
    assert settings.member_retention != Settings().member_retention
    env = child_env(settings, {"TALLY_API_TOKENS": "secret", "PATH": "/bin", "TALLY_GROUP": "g"})
    assert "TALLY_API_TOKENS" not in env
    assert env["PATH"] == "/bin"
    assert env["TALLY_DATABASE_URL"] == "postgresql://worker@db/tally"
    assert env["TALLY_TELEMETRY_PORT"] == "0"  # the server may hold telemetry_port itself
    child = load_settings({}, env)
    for name in ("topic", "dedup_window", "flush_interval", "backfill_flush_records"):
        assert getattr(child, name) == getattr(settings, name), name
    assert env["TALLY_MEMBER_RETENTION"] == "17280000.000000"
    assert child.member_retention == 200 * 86400.0
    assert child.max_lateness == 3 * 86400.0
    without = child_env(Settings(database_url="postgresql://api@db/tally"), {})
    assert without["TALLY_DATABASE_URL"] == "postgresql://api@db/tally"


def test_the_command_names_the_metric_after_run() -> None:
    # A metric may be called "status" or "cancel".
    assert command("status", "earliest", "py") == [
        "py",
        "-m",
        "tally",
        "backfill",
        "--from-offsets",
        "earliest",
        "run",
        "status",
    ]
    assert command("m", "2026-12-01T00:00:00Z", "py")[4:] == [
        "--from",
        "2026-12-01T00:00:00Z",
        "run",
        "m",
    ]


def fake_python(tmp_path: Path, body: str) -> str:
    script = tmp_path / "python"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return str(script)


async def wait_exit(launcher: ProcessLauncher, uid: str, timeout: float = 30) -> Exit:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = launcher.last_exit(uid)
        if found is not None:
            return found
        await asyncio.sleep(0.02)
    raise AssertionError(f"the child of {uid} did not exit within {timeout}s")


@ASYNC
async def test_a_refusal_is_kept_with_every_line_and_counted(tmp_path: Path) -> None:
    python = fake_python(
        tmp_path,
        "echo 'backfill m: telemetry listening url=http://127.0.0.1:1/metrics' >&2\n"
        "echo 'tally: backfill refused: the retained log no longer reaches --from X:' >&2\n"
        "echo '  events[0]: retention deleted its records before offset 50' >&2\n"
        "exit 2\n",
    )
    registry = CollectorRegistry()
    launcher = ProcessLauncher(Settings(), registry, python=python)
    launch = await launcher.launch("m", "earliest")
    assert launch.pid is not None
    ended = await wait_exit(launcher, "m")
    assert (ended.code, ended.outcome, ended.from_spec) == (2, "refused", "earliest")
    assert ended.reason == (
        "backfill refused: the retained log no longer reaches --from X:\n"
        "  events[0]: retention deleted its records before offset 50"
    )
    assert launcher.current("m") is None
    assert registry.get_sample_value("tally_api_backfill_exits_total", {"outcome": "refused"}) == 1
    await launcher.close()


@ASYNC
async def test_close_sends_sigterm_and_waits_for_every_child(tmp_path: Path) -> None:
    python = fake_python(
        tmp_path,
        'trap \'echo "backfill m: stopped at 1 / 2 records; run the same command to resume"'
        " >&2; exit 0' TERM\n"
        f"touch {tmp_path / 'trapped'}\n"
        "while true; do sleep 0.05; done\n",
    )
    launcher = ProcessLauncher(Settings(), python=python)
    await launcher.launch("m", "earliest")
    with pytest.raises(LaunchRefused):
        await launcher.launch("m", "earliest")  # one per metric
    assert launcher.current("m") is not None
    assert list(launcher.launches()) == ["m"]
    deadline = time.monotonic() + 30
    while not (tmp_path / "trapped").exists():  # the shell has installed its trap
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    await launcher.close()
    ended = launcher.last_exit("m")
    assert ended is not None
    assert (ended.code, ended.outcome) == (0, "stopped")
    assert launcher.current("m") is None
    with pytest.raises(LaunchRefused):
        await launcher.launch("n", "earliest")  # shutting down


@ASYNC
async def test_an_endless_line_does_not_stall_the_child(tmp_path: Path) -> None:
    """Output is drained whatever the child writes (a full pipe would block
    it): a 1 MiB line is cut, the lines after it are still read."""
    python = fake_python(
        tmp_path,
        "head -c 1048576 /dev/zero | tr '\\0' x >&2\n"
        "echo >&2\n"
        "echo 'tally: backfill refused: no metric' >&2\n"
        "exit 2\n",
    )
    launcher = ProcessLauncher(Settings(), python=python)
    await launcher.launch("m", "earliest")
    ended = await wait_exit(launcher, "m")
    assert (ended.outcome, ended.reason) == ("refused", "backfill refused: no metric")
    await launcher.close()


@ASYNC
async def test_close_while_a_child_starts_stops_that_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review finding 6: close() during create_subprocess_exec did not see the
    child being started; the launch, once the child exists, stops it (SIGTERM,
    waited for) and is refused, leaving no child behind."""
    python = fake_python(tmp_path, "while true; do sleep 0.05; done\n")
    real = asyncio.create_subprocess_exec
    created: list[asyncio.subprocess.Process] = []
    started, release = asyncio.Event(), asyncio.Event()

    async def slow(*args: Any, **kwargs: Any) -> asyncio.subprocess.Process:
        process = await real(*args, **kwargs)
        created.append(process)
        started.set()
        await release.wait()
        return process

    monkeypatch.setattr(asyncio, "create_subprocess_exec", slow)
    launcher = ProcessLauncher(Settings(), python=python)
    launching = asyncio.create_task(launcher.launch("m", "earliest"))
    await started.wait()
    await launcher.close()
    release.set()
    with pytest.raises(LaunchRefused, match="shutting down"):
        await launching
    assert created[0].returncode is not None  # stopped and waited for
    assert launcher.current("m") is None
    assert launcher.launches() == {}


class _Boom:
    """The launcher's log, failing on one line of a child's output."""

    def debug(self, message: str, **fields: Any) -> None:
        if fields.get("line") == "boom":
            raise RuntimeError("a log handler failed")

    def info(self, message: str, **fields: Any) -> None:
        pass

    def warning(self, message: str, **fields: Any) -> None:
        pass


@ASYNC
async def test_a_failure_reading_one_line_does_not_stop_the_supervision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review finding 7: an exception while reading the output ended the
    supervising task: the exit was never recorded (and the pipe no longer
    drained). The lines after it are read and the exit is kept."""
    import tally.backfill.launcher as launcher_module

    monkeypatch.setattr(launcher_module, "log", _Boom())
    python = fake_python(
        tmp_path, "echo boom >&2\necho 'tally: backfill refused: no metric' >&2\nexit 2\n"
    )
    launcher = ProcessLauncher(Settings(), python=python)
    await launcher.launch("m", "earliest")
    ended = await wait_exit(launcher, "m", timeout=10)
    assert (ended.outcome, ended.reason) == ("refused", "backfill refused: no metric")
    await launcher.close()


@ASYNC
async def test_a_supervision_cancelled_stops_its_child(tmp_path: Path) -> None:
    """Review finding 7: the supervising task ending early (cancelled) stops
    and waits for its child instead of leaving it running, undrained."""
    python = fake_python(tmp_path, "while true; do sleep 0.05; done\n")
    launcher = ProcessLauncher(Settings(), python=python)
    await launcher.launch("m", "earliest")
    child = launcher._children["m"]
    assert child.task is not None
    assert child.process is not None
    await asyncio.sleep(0)  # not a wait: lets the task start reading
    child.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await child.task
    assert child.process.returncode is not None
    ended = launcher.last_exit("m")
    assert ended is not None
    assert ended.outcome == "killed"
    await launcher.close()
