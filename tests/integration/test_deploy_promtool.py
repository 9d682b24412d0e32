"""promtool on deploy/prometheus and on the dashboard's queries.

`promtool check rules` and `promtool test rules` (alerts.test.yml: every alert
firing and not firing), `promtool check config` on the Prometheus configs, and
the dashboard's PromQL checked by wrapping every query into a recording rule.
promtool comes from Debian's prometheus package (see test_prometheus.py).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.integration.test_prometheus import prometheus_binaries
from tests.unit.test_deploy_manifests import (
    ALERT_TESTS,
    ALERTS,
    DEPLOY,
    ROOT,
    dashboard_queries,
)


@pytest.fixture(scope="module")
def promtool() -> str:
    return prometheus_binaries()["promtool"]


def run(promtool: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *args], capture_output=True, text=True, cwd=cwd, timeout=120, check=False
    )


def test_promtool_check_rules_accepts_the_alerts(promtool: str) -> None:
    result = run(promtool, "check", "rules", "--lint=all", "--lint-fatal", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    rules = sum(len(g["rules"]) for g in yaml.safe_load(ALERTS.read_text())["groups"])
    assert rules >= 11
    assert f"SUCCESS: {rules} rules found" in result.stdout


def test_promtool_test_rules_passes(promtool: str) -> None:
    result = run(promtool, "test", "rules", ALERT_TESTS.name, cwd=ALERT_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_test_rules_fails_when_an_alert_changes(promtool: str, tmp_path: Path) -> None:
    """The unit tests notice a changed threshold (they are not vacuous)."""
    (tmp_path / ALERT_TESTS.name).write_text(ALERT_TESTS.read_text())
    changed = ALERTS.read_text().replace("> 0.01", "> 0.001")
    assert changed != ALERTS.read_text()
    (tmp_path / ALERTS.name).write_text(changed)
    result = run(promtool, "test", "rules", ALERT_TESTS.name, cwd=tmp_path)
    assert result.returncode != 0
    assert "TallyDeadLettersHigh" in result.stdout + result.stderr


def test_promtool_check_config_accepts_the_shipped_config_from_the_repository_root(
    promtool: str,
) -> None:
    """As its header comment says: the example token file is in the repository."""
    result = run(promtool, "check", "config", "deploy/prometheus/prometheus.yml", cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def _prometheus_mounts() -> dict[str, Path]:
    """deploy/compose.yaml's bind mounts into the prometheus service: target -> source."""
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    mounts = {}
    for volume in compose["services"]["prometheus"]["volumes"]:
        source, target, *_ = volume.split(":")
        if source.startswith("."):
            mounts[target] = (DEPLOY / source).resolve()
    return mounts


def test_promtool_check_config_accepts_the_config_as_compose_mounts_it(
    promtool: str, tmp_path: Path
) -> None:
    """/etc/prometheus rebuilt from compose's mounts alone holds everything the
    config names: the rules, the ingest job's token file, its targets directory."""
    etc = tmp_path / "etc" / "prometheus"
    for target, source in _prometheus_mounts().items():
        if not target.startswith("/etc/prometheus/"):
            continue
        into = etc / target.removeprefix("/etc/prometheus/")
        into.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, into)
        else:
            shutil.copyfile(source, into)
    config = yaml.safe_load((etc / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "tally-ingest"]
    for pattern in job["file_sd_configs"][0]["files"]:
        assert (etc / pattern).parent.is_dir(), f"{pattern}: its directory is not mounted"
    assert (etc / job["authorization"]["credentials_file"]).is_file()
    result = run(promtool, "check", "config", "prometheus.yml", cwd=etc)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_config_accepts_the_kubernetes_scrape_job(
    promtool: str, tmp_path: Path
) -> None:
    """Debian builds Prometheus without Kubernetes discovery, so its promtool
    refuses `kubernetes_sd_configs`: check everything else (relabelling, rule
    files) with a static target in its place."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "kubernetes.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "tally"
    assert job["kubernetes_sd_configs"][0]["role"] == "pod"
    del job["kubernetes_sd_configs"]
    job["static_configs"] = [{"targets": ["10.0.0.1:9464"]}]
    config["rule_files"] = [str(ALERTS)]
    (tmp_path / "kubernetes.yml").write_text(yaml.safe_dump(config))
    result = run(promtool, "check", "config", "kubernetes.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 20
    rules = [
        {"record": f"dashboard:query_{i}", "expr": expr, "labels": {"where": where}}
        for i, (where, expr) in enumerate(queries)
    ]
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run(promtool, "check", "rules", "--lint=none", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_promtool_refuses_an_invalid_query(promtool: str, tmp_path: Path) -> None:
    """The check above can fail: a broken expression is refused."""
    path = tmp_path / "broken.rules.yml"
    rule = {"record": "dashboard:broken", "expr": "sum by (le (rate(tally_flushes_total[1m]))"}
    path.write_text(yaml.safe_dump({"groups": [{"name": "broken", "rules": [rule]}]}))
    result = run(promtool, "check", "rules", str(path))
    assert result.returncode != 0
    assert re.search(r"parse error|unexpected", result.stdout + result.stderr)
