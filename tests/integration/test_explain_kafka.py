"""`tally explain --topic T --partition P --offset O`: the record is fetched
from the real broker and explained as a file of it would be."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from tests.conftest import MakeTopic
from tests.integration.support import apply_metrics, produce
from tests.integration.test_explain_cli import METRICS, tally
from tests.integration.test_explain_dedup import event

pytestmark = pytest.mark.asyncio(loop_scope="function")


async def test_a_record_is_fetched_by_topic_partition_and_offset(
    kafka_bootstrap: str, fresh_database: str, make_topic: MakeTopic, tmp_path: Path
) -> None:
    assert (await asyncio.to_thread(tally, fresh_database, "migrate")).returncode == 0
    await apply_metrics(fresh_database, METRICS[:1], tmp_path)
    topic = await make_topic(1)
    sent = [(b"acme", orjson.dumps(event("from-kafka"))), (b"acme", b"not json")]
    await produce(kafka_bootstrap, topic, sent)

    async def at(offset: int, *more: str) -> tuple[int, bytes, bytes]:
        args = ["explain", "--topic", topic, "--partition", "0", "--offset", str(offset), *more]
        done = await asyncio.to_thread(tally, fresh_database, *args)
        return done.returncode, done.stdout, done.stderr

    code, out, err = await at(0, "--format", "json")
    assert code == 0, err.decode()
    answer = orjson.loads(out)
    assert (answer["id"], answer["metrics"][0]["outcome"]) == ("from-kafka", "applied")
    assert answer["dedup"] == {"checked": True, "topic": topic, "partition": 0, "duplicate": False}
    code, out, err = await at(1)
    assert code == 0, err.decode()
    assert out.startswith(b"refused: "), out
    code, out, err = await at(7)
    assert code == 2
    assert b"no record at" in err
    no_partition = await asyncio.to_thread(
        tally, fresh_database, "explain", "--topic", topic, "--offset", "0"
    )
    assert no_partition.returncode == 2
    assert b"--offset needs --partition" in no_partition.stderr
