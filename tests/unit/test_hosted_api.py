"""The HTTP API hosted by `tally run --with-api`, supervised (cli/commands.py
HostedApi): an API that ends while the worker is not stopping is a failure
(exit status 2, an `api` error counted) and stops the worker; an API that ends
because the worker stops is not. (The real process whose API cannot bind:
tests/integration/test_worker_supervision.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from tally.cli.commands import HostedApi
from tally.config import Settings
from tally.telemetry.instruments import Telemetry

pytestmark = pytest.mark.asyncio(loop_scope="function")

Serve = Callable[..., Coroutine[Any, Any, None]]


def api_errors(registry: CollectorRegistry, kind: str) -> float | None:
    return registry.get_sample_value("tally_errors_total", {"component": "api", "kind": kind})


async def hosted(
    monkeypatch: pytest.MonkeyPatch, serve: Serve, stop: asyncio.Event
) -> tuple[HostedApi, CollectorRegistry]:
    """Start a HostedApi whose server is `serve`, and wait until it has ended."""
    monkeypatch.setattr("tally.api.server.serve", serve)
    registry = CollectorRegistry()
    api = HostedApi(Telemetry(registry), stop)
    api.start(Settings(), registry)
    await api.stopped()
    return api, registry


async def test_an_api_that_ends_on_its_own_is_a_failure_that_stops_the_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def returns_at_once(*args: Any, **kwargs: Any) -> None:
        return None

    stop = asyncio.Event()
    api, registry = await hosted(monkeypatch, returns_at_once, stop)
    assert api.failure == "it ended on its own"
    assert stop.is_set()
    assert api_errors(registry, "ended") == 1


async def test_an_api_that_raises_is_a_failure_named_by_its_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def cannot_bind(*args: Any, **kwargs: Any) -> None:
        raise OSError("address already in use")

    stop = asyncio.Event()
    api, registry = await hosted(monkeypatch, cannot_bind, stop)
    assert api.failure == "address already in use"
    assert stop.is_set()
    assert api_errors(registry, "OSError") == 1


async def test_an_api_that_ends_after_the_worker_began_stopping_is_no_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def serves_until_stop(settings: Settings, stop: asyncio.Event, **kwargs: Any) -> None:
        await stop.wait()

    stop = asyncio.Event()
    stop.set()
    api, registry = await hosted(monkeypatch, serves_until_stop, stop)
    assert api.failure is None
    assert stop.is_set()
    assert api_errors(registry, "ended") is None


async def test_a_cancelled_api_is_no_failure_and_stops_the_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started = asyncio.Event()

    async def serves_forever(*args: Any, **kwargs: Any) -> None:
        started.set()
        await asyncio.Event().wait()

    monkeypatch.setattr("tally.api.server.serve", serves_forever)
    registry = CollectorRegistry()
    stop = asyncio.Event()
    api = HostedApi(Telemetry(registry), stop)
    api.start(Settings(), registry)
    await started.wait()
    assert api.task is not None
    api.task.cancel()
    await api.stopped()
    assert api.task.cancelled()
    assert api.failure is None
    assert stop.is_set()  # the hosted API's end sets stop in every case
    assert api_errors(registry, "ended") is None
    assert api_errors(registry, "CancelledError") is None
