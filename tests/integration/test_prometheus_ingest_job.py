"""deploy/prometheus/prometheus.yml's tally-ingest job against a real
`tally ingest serve`: with the ingest token it scrapes the tally_ingest_*
counters; the workers' job stays "tally" (the alert rules' up{job="tally"})."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import yaml

from tally.bench.ingest import IngestServer
from tests.conftest import MakeTopic
from tests.integration.test_prometheus import prometheus_bins, running_prometheus
from tests.unit.test_deploy_manifests import ALERTS, DEPLOY

__all__ = ["prometheus_bins"]  # the fixture, for pytest

pytestmark = [pytest.mark.asyncio(loop_scope="function"), pytest.mark.timeout(240)]

CONFIG = DEPLOY / "prometheus" / "prometheus.yml"


def shipped_config(into: Path, targets: list[str], token: str | None) -> Path:
    """The shipped configuration beside its token file and targets file, as
    mounted; only the scrape interval shortened and the rule file path absolute."""
    config = yaml.safe_load(CONFIG.read_text())
    config["global"]["scrape_interval"] = "1s"
    config["rule_files"] = [str(ALERTS)]
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "tally-ingest"]
    (into / "ingest-targets").mkdir(parents=True)
    (into / "ingest-targets" / "ingest.yml").write_text(yaml.safe_dump([{"targets": targets}]))
    if token is not None:
        token_file = into / job["authorization"]["credentials_file"]
        token_file.parent.mkdir(parents=True)
        token_file.write_text(token + "\n")
    (into / "prometheus.yml").write_text(yaml.safe_dump(config))
    return into / "prometheus.yml"


async def test_the_ingest_job_scrapes_an_ingest_server_with_its_token(
    kafka_bootstrap: str,
    make_topic: MakeTopic,
    tmp_path: Path,
    prometheus_bins: dict[str, str],
) -> None:
    topic = await make_topic(2)
    async with IngestServer(kafka_bootstrap, topic) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            refused = await client.get("/metrics")
            assert refused.status_code == 401  # the token is what the job adds
        target = server.url.removeprefix("http://")
        config = shipped_config(tmp_path / "etc", [target], server.token)
        async with running_prometheus(config, tmp_path / "state") as prometheus:
            await prometheus.wait_for('up{job="tally-ingest"}', {"": 1.0})
            await prometheus.wait_for(
                'tally_ingest_requests_total{job="tally-ingest", status="202"}', {"": 0.0}
            )
            # The workers' job is untouched: nothing of the ingest server is in it.
            assert await prometheus.query('up{job="tally", instance="' + target + '"}') == []


async def test_without_the_token_file_the_target_is_down_not_scraped(
    kafka_bootstrap: str,
    make_topic: MakeTopic,
    tmp_path: Path,
    prometheus_bins: dict[str, str],
) -> None:
    topic = await make_topic(2)
    async with IngestServer(kafka_bootstrap, topic) as server:
        config = shipped_config(tmp_path / "etc", [server.url.removeprefix("http://")], None)
        async with running_prometheus(config, tmp_path / "state") as prometheus:
            await prometheus.wait_for('up{job="tally-ingest"}', {"": 0.0})
