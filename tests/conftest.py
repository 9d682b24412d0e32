"""Shared fixtures: the Kafka broker and PostgreSQL server the tests run against.

Each service is found in this order:

1. ``TALLY_KAFKA_BOOTSTRAP`` / ``TALLY_DATABASE_URL`` (``make test`` sets them,
   starting ``deploy/local/*.sh`` when needed);
2. testcontainers, when a Docker engine answers;
3. otherwise the tests that need the service fail when ``CI`` is set, and are
   skipped (pointing at ``make services``) on a developer machine.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import os
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import NoReturn, Protocol
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import pytest_asyncio
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

TESTS_DIR = Path(__file__).resolve().parent
_MARKER_BY_FOLDER = {"unit": "unit", "integration": "integration", "benchmarks": "benchmark"}
_TOPIC_READY_TIMEOUT_S = 15.0
_KAFKA_UNKNOWN_TOPIC = 3


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark tests by folder: tests/unit -> unit, integration -> integration, ..."""
    for item in items:
        try:
            folder = item.path.resolve().relative_to(TESTS_DIR).parts[0]
        except (ValueError, IndexError):
            continue
        marker = _MARKER_BY_FOLDER.get(folder)
        if marker is not None:
            item.add_marker(getattr(pytest.mark, marker))


# --- service discovery ------------------------------------------------------------------


def _ping_docker() -> bool:
    import docker  # type: ignore[import-untyped, unused-ignore]  # lazy: only with Docker

    try:
        client = docker.from_env(timeout=5)
    except Exception:
        return False
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


@functools.cache
def _docker_engine_answers() -> bool:
    try:
        import docker  # noqa: F401 - is the client library installed at all?
    except ImportError:
        return False
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if host.startswith("unix://") and not Path(host.removeprefix("unix://")).exists():
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        answers = _ping_docker()
        # A failed attempt leaves unclosed sockets behind: collect them while their
        # ResourceWarnings are ignored (filterwarnings=error would turn them into errors).
        gc.collect()
    return answers


def _unavailable(service: str, env_var: str) -> NoReturn:
    message = (
        f"{service} is not available: set {env_var}, or start the local services with "
        f"`make services` and export what it prints (or run `make test`), or make a Docker "
        f"engine available for testcontainers."
    )
    if os.environ.get("CI"):
        pytest.fail(f"CI is set and {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """``host:port`` of a Kafka broker."""
    if bootstrap := os.environ.get("TALLY_KAFKA_BOOTSTRAP"):
        yield bootstrap
        return
    if not _docker_engine_answers():
        _unavailable("Kafka", "TALLY_KAFKA_BOOTSTRAP")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            from testcontainers.community.kafka import KafkaContainer
        except ImportError:  # testcontainers < 4.14
            from testcontainers.kafka import KafkaContainer
    container = (
        KafkaContainer()
        .with_kraft()
        .with_env("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false")
        .with_env("KAFKA_NUM_PARTITIONS", "4")
        .with_env("KAFKA_GROUP_MIN_SESSION_TIMEOUT_MS", "1000")
    )
    with container:
        yield container.get_bootstrap_server()


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """DSN (``postgresql://...``) of a PostgreSQL database the tests may use."""
    if url := os.environ.get("TALLY_DATABASE_URL"):
        yield url
        return
    if not _docker_engine_answers():
        _unavailable("PostgreSQL", "TALLY_DATABASE_URL")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            from testcontainers.community.postgres import PostgresContainer
        except ImportError:  # testcontainers < 4.14
            from testcontainers.postgres import PostgresContainer
    container = PostgresContainer(
        "postgres:15", username="tally", password="tally", dbname="tally", driver=None
    )
    with container:
        yield container.get_connection_url(driver=None)


# --- per-test resources -----------------------------------------------------------------


def _dsn_with_database(dsn: str, database: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{database}"))


@pytest_asyncio.fixture
async def fresh_database(database_url: str) -> AsyncIterator[str]:
    """DSN of a brand-new, empty database; dropped (WITH (FORCE)) afterwards."""
    name = f"tally_t_{uuid.uuid4().hex[:16]}"
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield _dsn_with_database(database_url, name)
    finally:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


class MakeTopic(Protocol):
    """``await make_topic(partitions=4)`` -> the name of a new, empty topic."""

    async def __call__(
        self, partitions: int = 4, *, configs: Mapping[str, str] | None = None
    ) -> str: ...


async def _wait_until_topic_ready(admin: AIOKafkaAdminClient, name: str, partitions: int) -> None:
    """Wait until the broker's metadata shows every partition with a leader."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _TOPIC_READY_TIMEOUT_S
    while True:
        described = await admin.describe_topics([name])
        parts = described[0]["partitions"] if described else []
        if (
            described
            and described[0]["error_code"] == 0
            and len(parts) == partitions
            and all(p["error_code"] == 0 and p["leader"] >= 0 for p in parts)
        ):
            return
        if loop.time() > deadline:
            raise TimeoutError(f"topic {name} not ready after {_TOPIC_READY_TIMEOUT_S}s")
        await asyncio.sleep(0.05)


@pytest_asyncio.fixture
async def make_topic(kafka_bootstrap: str) -> AsyncIterator[MakeTopic]:
    """Factory of uniquely named topics (``tally-t-<hex>``), deleted at teardown."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    created: list[str] = []

    async def make(partitions: int = 4, *, configs: Mapping[str, str] | None = None) -> str:
        name = f"tally-t-{uuid.uuid4().hex[:16]}"
        response = await admin.create_topics(
            [NewTopic(name, partitions, 1, topic_configs=dict(configs or {}))]
        )
        for result in response.to_object()["topic_errors"]:
            if result["error_code"] != 0:
                raise RuntimeError(
                    f"creating topic {name}: error {result['error_code']} {result['error_message']}"
                )
        created.append(name)
        await _wait_until_topic_ready(admin, name, partitions)
        return name

    try:
        yield make
    finally:
        try:
            if created:
                response = await admin.delete_topics(created)
                failed = [
                    r
                    for r in response.to_object()["topic_error_codes"]
                    if r["error_code"] not in (0, _KAFKA_UNKNOWN_TOPIC)
                ]
                if failed:
                    raise RuntimeError(f"deleting topics failed: {failed}")
        finally:
            await admin.close()
