"""The deployment files: the Dockerfile (hadolint), docker-compose.yml (the compose
specification's schema, and what the gateway needs of it), and every overlay of k8s/, rendered
with `kubectl kustomize` and validated strictly against the Kubernetes schemas
(kubernetes-validate), then held to the rules of docs/deployment.md: probes, resources and a
restricted security context for every service, a grace period that covers the graceful
shutdown, default-deny network policies with exactly the flows each service needs, disruption
budgets, and autoscaling on the right queues."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from moat.settings import Settings
from moat.topology import DELIVER, SCAN
from services.__main__ import STOP_MARGIN

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
K8S = ROOT / "k8s"
OVERLAYS = ["dev", "prod", "prod-hpa"]
SERVICES = ["ingress", "scanner", "delivery", "api"]
# The small HTTP port of each service (/healthz, /readyz, /metrics); the API's is its HTTPS port.
HEALTH_PORTS = {"scanner": 9101, "delivery": 9102, "ingress": 9103, "api": 8443}
# Custom resources (KEDA, the RabbitMQ Cluster Operator, the Prometheus Operator): no schema in
# kubernetes-validate, so they are held to their rules by the tests below instead.
CUSTOM_KINDS = {
    "ScaledObject", "TriggerAuthentication", "RabbitmqCluster",
    "PodMonitor", "ServiceMonitor", "PrometheusRule",
}  # fmt: skip
ALERTS = ROOT / "deploy" / "prometheus" / "moat-alerts.yaml"

# Every port each service may connect to (DNS aside), and nothing more: the table of
# docs/deployment.md. The object store is 443 (base, prod) or SeaweedFS's 8333 (dev).
EGRESS = {
    "ingress": {5672, 5432, 6379},
    "scanner": {5672, 5432, 3310},
    "delivery": {5672, 5432, 25, 465, 587},
    "api": {5672, 5432, 443},
    "migrate": {5432},
}
INGRESS = {"ingress": {2525, 9103}, "scanner": {9101}, "delivery": {9102}, "api": {8443}}

# The objects of each overlay, by kind: the table "Objects per overlay" of docs/deployment.md.
_BASE = {
    "Namespace": 1, "ConfigMap": 1, "Secret": 1, "Job": 1,
    "Deployment": 6,  # the four services, ClamAV, Redis
    "Service": 4,  # moat-ingress, moat-api, clamav, redis
    "PodDisruptionBudget": 5,  # the four services, ClamAV
    "NetworkPolicy": 9,  # default-deny, the 6 moat-*, clamav, redis
}  # fmt: skip
_PROD = {
    "RabbitmqCluster": 1, "PodMonitor": 1, "ServiceMonitor": 1, "PrometheusRule": 1,
    "NetworkPolicy": 10,
}  # fmt: skip
OBJECTS = {
    "dev": {**_BASE, "Deployment": 9, "Service": 7, "NetworkPolicy": 12},
    "prod": {**_BASE, **_PROD, "ScaledObject": 3, "TriggerAuthentication": 1},
    "prod-hpa": {**_BASE, **_PROD, "HorizontalPodAutoscaler": 3},
}


# --- Dockerfile ---------------------------------------------------------------------------------


def test_dockerfile_lints_clean() -> None:
    result = subprocess.run(
        [str(BIN / "hadolint"), "--no-color", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get install unar\n")
    result = subprocess.run(
        [str(BIN / "hadolint"), "--no-color", str(bad)], capture_output=True, text=True
    )
    assert result.returncode != 0 and "DL3006" in result.stdout


def test_dockerfile_shape() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)(?: AS (\S+))?", text, re.MULTILINE)
    assert len(stages) == 2 and stages[0][1] == "build" and not stages[1][1]
    assert "PYTHON_IMAGE=python:3.11-slim" in text
    final = text.split("\nFROM ${PYTHON_IMAGE}\n", 1)[1]
    # Nothing is built in the final stage: no pip, no compiler; only the virtualenv copied in.
    assert "pip install" not in final and "gcc" not in final and "build-essential" not in text
    assert "COPY --from=build /opt/moat /opt/moat" in final
    assert re.search(r"^USER 10001:10001$", final, re.MULTILINE)
    assert "HEALTHCHECK" in final and "services.healthcheck" in final


# --- docker-compose.yml ---------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def _check_compose(path: Path) -> subprocess.CompletedProcess[str]:
    # The schema is the one check-jsonschema ships (vendored from the compose-spec repository,
    # https://github.com/compose-spec/compose-spec/blob/main/schema/compose-spec.json): no
    # download at test time.
    return subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_compose_file_meets_the_compose_specification(tmp_path: Path) -> None:
    result = _check_compose(ROOT / "docker-compose.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    # The check can fail: a condition compose does not know is refused.
    broken = (
        (ROOT / "docker-compose.yml")
        .read_text()
        .replace("condition: service_healthy", "condition: service_happy", 1)
    )
    (tmp_path / "docker-compose.yml").write_text(broken)
    assert _check_compose(tmp_path / "docker-compose.yml").returncode != 0


def test_compose_services() -> None:
    services = _compose()["services"]
    assert set(services) == {
        "rabbitmq", "postgres", "clamav", "seaweedfs", "redis", "migrate", *SERVICES
    }  # fmt: skip
    assert services["clamav"]["image"].startswith("clamav/clamav:")
    # Every long-running dependency says when it is ready, and the services wait for that.
    for name in ("rabbitmq", "postgres", "clamav", "seaweedfs", "redis"):
        assert services[name]["healthcheck"]["test"], name
    for name in SERVICES:
        service = services[name]
        waits = service["depends_on"]
        for dependency in ("postgres", "rabbitmq", "seaweedfs"):
            assert waits[dependency]["condition"] == "service_healthy", (name, dependency)
        assert waits["migrate"]["condition"] == "service_completed_successfully", name
        assert service["healthcheck"]["test"] == ["CMD", "python", "-m", "services.healthcheck"]
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
        environment = service["environment"]
        assert environment["MOAT_STORE__BACKEND"] == "s3"
        # Secrets only from .env, never written here.
        for key, value in environment.items():
            if re.search("TOKEN|KEY|PASSWORD|SECRET|_URL", key) and "ENDPOINT" not in key:
                assert "${" in str(value) or key.endswith("ACCESS_KEY_ID"), key
        grace = float(service["stop_grace_period"].removesuffix("s"))
        assert grace >= Settings().shutdown_timeout + STOP_MARGIN, name
    assert services["scanner"]["depends_on"]["clamav"]["condition"] == "service_healthy"
    assert services["migrate"]["command"] == ["moat.migrate"]


def test_compose_redis_for_the_ingress_limits() -> None:
    compose = _compose()
    services = compose["services"]
    redis = services["redis"]
    # The official image, pinned to a major version.
    assert re.fullmatch(r"redis:\d+", redis["image"]), redis["image"]
    assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])
    # Counters only: no volume, /data on a tmpfs (else the image's VOLUME makes one), and the
    # configuration turns both kinds of persistence off.
    assert "volumes" not in redis and redis["tmpfs"] == ["/data"]
    assert "redis" not in compose["volumes"]
    (config,) = redis["configs"]
    assert redis["entrypoint"] == ["redis-server", config["target"]]
    lines = compose["configs"][config["source"]]["content"].splitlines()
    assert 'save ""' in lines and "appendonly no" in lines
    assert "requirepass ${REDIS_PASSWORD:?set REDIS_PASSWORD}" in lines
    assert redis["read_only"] is True and redis["cap_drop"] == ["ALL"]
    assert redis["user"] != "root" and "ports" not in redis
    # Ingress, and only ingress, counts in it, once it answers.
    ingress = services["ingress"]
    assert ingress["depends_on"]["redis"]["condition"] == "service_healthy"
    url = ingress["environment"]["MOAT_LIMITS__REDIS_URL"]
    assert re.fullmatch(r"redis://:\$\{REDIS_PASSWORD:\?[^}]*\}@redis:6379/\d+", url), url
    for name in ("scanner", "delivery", "api", "migrate"):
        assert "MOAT_LIMITS__REDIS_URL" not in services[name]["environment"], name
        assert "redis" not in services[name].get("depends_on", {}), name


# --- Kubernetes ---------------------------------------------------------------------------------


@cache
def render(overlay: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed (scripts/ensure-kubectl.sh)"
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, (
        f"kubectl kustomize {overlay} failed (the overlays need the kustomize of kubectl "
        f"1.21 or newer): {result.stderr}"
    )
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def of_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def moat_settings(docs: list[dict[str, Any]]) -> Settings:
    """The settings the pods get: the ConfigMap's file (with the Secret's token)."""
    config = yaml.safe_load(of_kind(docs, "ConfigMap")["moat-config"]["data"]["moat.yaml"])
    return Settings(**config, admin_token="x" * 32)


def workloads(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Every object that makes pods, with its pod template."""
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
            yield doc, doc["spec"]["template"]


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        value, operator = labels.get(expression["key"]), expression["operator"]
        if operator == "In" and value not in expression["values"]:
            return False
        if operator == "NotIn" and value in expression["values"]:
            return False
        if operator == "Exists" and value is None:
            return False
    return True


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_is_valid_kubernetes(overlay: str) -> None:
    docs = render(overlay)
    version = kubernetes_validate.latest_version()
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            assert doc["kind"] in CUSTOM_KINDS, doc["kind"]
        # Every namespaced object in moat, the components' and the overlay's own too: one left
        # without would land in kubectl's current namespace, away from what it refers to.
        expected = None if doc["kind"] == "Namespace" else "moat"
        assert doc["metadata"].get("namespace") == expected, (doc["kind"], doc["metadata"])
    assert {d["kind"] for d in docs} >= {
        "Namespace", "ConfigMap", "Secret", "Deployment", "Service", "Job",
        "PodDisruptionBudget", "NetworkPolicy",
    }  # fmt: skip


def test_strict_validation_can_fail() -> None:
    deployment = dict(of_kind(render("dev"), "Deployment")["moat-scanner"])
    deployment["spec"] = {**deployment["spec"], "replica": 2}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, kubernetes_validate.latest_version(), True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_service_has_probes_resources_and_a_restricted_context(overlay: str) -> None:
    docs = render(overlay)
    settings = moat_settings(docs)
    deployments = of_kind(docs, "Deployment")
    images = set()
    for service in SERVICES:
        pod = deployments[f"moat-{service}"]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        images.add(container["image"])
        assert container["args"] == [f"services.{service}"]
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        for kind, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            probe = container[kind]["httpGet"]
            assert probe["path"] == path, (service, kind)
            assert ports[probe["port"]] == HEALTH_PORTS[service], (service, kind)
            assert probe["scheme"] == ("HTTPS" if service == "api" else "HTTP")
        for bound in ("requests", "limits"):
            assert set(container["resources"][bound]) == {"cpu", "memory"}, (service, bound)
        # The grace period covers the graceful shutdown: the service's own bound, then the
        # margin to hand back the rest and close.
        assert pod["terminationGracePeriodSeconds"] == settings.shutdown_timeout + STOP_MARGIN
        assert pod["automountServiceAccountToken"] is False
        assert_restricted(pod, service)
        annotations = deployments[f"moat-{service}"]["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(HEALTH_PORTS[service])
    (job,) = of_kind(docs, "Job").values()
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["moat.migrate"]
    assert_restricted(job["spec"]["template"]["spec"], "migrate")
    assert len(images) == 1  # one image for all four services


def assert_restricted(pod: dict[str, Any], name: str) -> None:
    context = pod["securityContext"]
    assert context["runAsNonRoot"] is True and context["runAsUser"] != 0, name
    assert context["seccompProfile"]["type"] == "RuntimeDefault", name
    for container in pod["containers"]:
        own = container["securityContext"]
        assert own["allowPrivilegeEscalation"] is False, name
        assert own["readOnlyRootFilesystem"] is True, name
        assert own["capabilities"]["drop"] == ["ALL"] and "add" not in own["capabilities"]
        assert own.get("privileged", False) is False, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_settings_of_the_overlay_are_valid(overlay: str) -> None:
    docs = render(overlay)
    settings = moat_settings(docs)
    assert settings.store.backend == "s3"  # pods share no disk
    assert settings.scanner.clamav.enabled and settings.scanner.clamav.tcp
    # The clamd the scanners are told about is a Service of the overlay, on clamd's port.
    host, port = settings.scanner.clamav.tcp.rsplit(":", 1)
    service = of_kind(docs, "Service")[host]["spec"]
    assert [p["port"] for p in service["ports"]] == [int(port)]
    assert of_kind(docs, "Deployment")[host]["spec"]["template"]["metadata"]["labels"] == {
        **service["selector"],
        "app.kubernetes.io/part-of": "moat",
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_are_placeholders(overlay: str) -> None:
    (secret,) = of_kind(render(overlay), "Secret").values()
    values = secret.get("stringData") or secret.get("data")
    assert values
    for key, value in (secret.get("stringData") or {}).items():
        assert re.search("change-me|not-a-secret|-dev|^moat$", value, re.IGNORECASE), key
    if overlay != "dev":
        assert secret["stringData"]["MOAT_ADMIN_TOKEN"] == "change-me"
        with pytest.raises(ValueError, match="placeholder"):  # refused at start-up
            Settings(env="prod", admin_token=secret["stringData"]["MOAT_ADMIN_TOKEN"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_and_disruption_budgets(overlay: str) -> None:
    docs = render(overlay)
    smtp = of_kind(docs, "Service")["moat-ingress"]["spec"]
    assert smtp["type"] == "LoadBalancer" and smtp["externalTrafficPolicy"] == "Local"
    assert [(p["port"], p["targetPort"]) for p in smtp["ports"]] == [(25, "smtp")]
    budgets = of_kind(docs, "PodDisruptionBudget").values()
    for service in SERVICES:
        labels = of_kind(docs, "Deployment")[f"moat-{service}"]["spec"]["template"]["metadata"]
        matching = [b for b in budgets if selects(b["spec"]["selector"], labels["labels"])]
        assert len(matching) == 1, service
        assert matching[0]["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies(overlay: str) -> None:
    docs = render(overlay)
    policies = list(of_kind(docs, "NetworkPolicy").values())
    deny = of_kind(docs, "NetworkPolicy")["default-deny"]["spec"]
    assert deny == {
        "podSelector": {},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [],
        "egress": [],
    }
    store_port = 8333 if overlay == "dev" else 443
    for workload, template in workloads(docs):
        labels = template["metadata"]["labels"]
        mine = [p for p in policies if p is not deny and selects(p["spec"]["podSelector"], labels)]
        mine = [p for p in mine if p["spec"]["podSelector"]]
        assert mine, f"{workload['kind']} {workload['metadata']['name']}: no policy of its own"
        if labels.get("app.kubernetes.io/name") != "moat":
            continue
        component = labels["app.kubernetes.io/component"]
        egress = {
            port["port"]
            for policy in mine
            for rule in policy["spec"].get("egress", [])
            for port in rule.get("ports", [])
        } - {53}
        expected = EGRESS[component] | ({store_port} if component in SERVICES else set())
        assert egress == expected, component
        ingress = {
            port["port"]
            for policy in mine
            for rule in policy["spec"].get("ingress", [])
            for port in rule.get("ports", [])
        }
        assert ingress == INGRESS.get(component, set()), component
        # Every rule names its ports: nothing is open on every port.
        for policy in mine:
            for rule in policy["spec"].get("ingress", []) + policy["spec"].get("egress", []):
                assert rule.get("ports"), policy["metadata"]["name"]


def test_prod_scales_on_the_queues() -> None:
    docs = render("prod")
    scaled = of_kind(docs, "ScaledObject")
    deployments = of_kind(docs, "Deployment")
    secret = of_kind(docs, "Secret")["moat-secrets"]["stringData"]
    authentication = of_kind(docs, "TriggerAuthentication")["moat-rabbitmq"]["spec"]
    (reference,) = authentication["secretTargetRef"]
    assert reference["name"] == "moat-secrets" and reference["key"] in secret
    assert reference["parameter"] == "host"
    for service, queue in (("scanner", SCAN), ("delivery", DELIVER)):
        spec = scaled[f"moat-{service}"]["spec"]
        assert spec["scaleTargetRef"]["name"] in deployments
        assert spec["scaleTargetRef"]["name"] == f"moat-{service}"
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "rabbitmq"
        assert trigger["metadata"]["queueName"] == queue
        assert trigger["metadata"]["mode"] == "QueueLength"
        assert trigger["authenticationRef"]["name"] == "moat-rabbitmq"
        assert 1 <= spec["minReplicaCount"] < spec["maxReplicaCount"]
    # Ingress on CPU, never below the replicas the overlay runs (senders wait on it).
    ingress = scaled["moat-ingress"]["spec"]
    assert ingress["scaleTargetRef"]["name"] == "moat-ingress"
    (trigger,) = ingress["triggers"]
    assert (trigger["type"], trigger["metricType"]) == ("cpu", "Utilization")
    replicas = of_kind(docs, "Deployment")["moat-ingress"]["spec"]["replicas"]
    assert ingress["minReplicaCount"] == replicas < ingress["maxReplicaCount"]
    assert "HorizontalPodAutoscaler" not in {d["kind"] for d in docs}  # KEDA makes its own
    (cluster,) = of_kind(docs, "RabbitmqCluster").values()
    assert cluster["spec"]["replicas"] == 3
    assert "default_queue_type = quorum" in cluster["spec"]["rabbitmq"]["additionalConfig"]


def test_prod_hpa_scales_on_cpu() -> None:
    docs = render("prod-hpa")
    assert "ScaledObject" not in {d["kind"] for d in docs}
    autoscalers = of_kind(docs, "HorizontalPodAutoscaler")
    for service in ("scanner", "delivery", "ingress"):
        spec = autoscalers[f"moat-{service}"]["spec"]
        assert spec["scaleTargetRef"] == {
            "apiVersion": "apps/v1", "kind": "Deployment", "name": f"moat-{service}"
        }  # fmt: skip
        (metric,) = spec["metrics"]
        assert metric["resource"]["name"] == "cpu"


def test_dev_has_its_dependencies_and_one_replica() -> None:
    docs = render("dev")
    deployments = of_kind(docs, "Deployment")
    assert {"rabbitmq", "postgres", "seaweedfs", "clamav"} <= set(deployments)
    for service in SERVICES:
        assert deployments[f"moat-{service}"]["spec"]["replicas"] == 1
    assert moat_settings(docs).store.s3.endpoint_url == "http://seaweedfs:8333"


def _scraped_ports(docs: list[dict[str, Any]], service: str) -> list[tuple[str, int, str]]:
    """Every (monitor, container port, scheme) the Prometheus Operator's objects scrape on the
    pods of ``service``: PodMonitors directly, ServiceMonitors through the Services they select
    and those Services' pods."""
    template = of_kind(docs, "Deployment")[f"moat-{service}"]["spec"]["template"]
    labels = template["metadata"]["labels"]
    (container,) = template["spec"]["containers"]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    scraped = []
    for name, monitor in of_kind(docs, "PodMonitor").items():
        if selects(monitor["spec"]["selector"], labels):
            for endpoint in monitor["spec"]["podMetricsEndpoints"]:
                if endpoint["port"] in named:
                    scheme = endpoint.get("scheme", "http")
                    scraped.append((f"PodMonitor/{name}", named[endpoint["port"]], scheme))
    for name, monitor in of_kind(docs, "ServiceMonitor").items():
        for svc in of_kind(docs, "Service").values():
            if not selects(monitor["spec"]["selector"], svc["metadata"]["labels"]):
                continue
            if not selects({"matchLabels": svc["spec"]["selector"]}, labels):
                continue
            by_name = {port["name"]: port for port in svc["spec"]["ports"]}
            for endpoint in monitor["spec"]["endpoints"]:
                port = by_name.get(endpoint["port"])
                target = port and named.get(port["targetPort"], port["targetPort"])
                if target:
                    scheme = endpoint.get("scheme", "http")
                    scraped.append((f"ServiceMonitor/{name}", target, scheme))
    return scraped


@pytest.mark.parametrize("overlay", ["prod", "prod-hpa"])
def test_prometheus_scrapes_every_service_once(overlay: str) -> None:
    """The API through its Service (a ServiceMonitor), the others, whose metrics port is on no
    Service, through a PodMonitor; each on its health port, once (twice would double every sum
    over the gateway)."""
    docs = render(overlay)
    for service in SERVICES:
        scheme = "https" if service == "api" else "http"
        kind = "ServiceMonitor" if service == "api" else "PodMonitor"
        ((monitor, port, used),) = _scraped_ports(docs, service)
        assert (monitor.split("/")[0], port, used) == (kind, HEALTH_PORTS[service], scheme)
    (monitor,) = of_kind(docs, "ServiceMonitor").values()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics" and endpoint["tlsConfig"]["insecureSkipVerify"]


def test_the_scrape_check_sees_a_missing_or_doubled_target() -> None:
    docs = [dict(doc) for doc in render("prod")]
    (monitor,) = of_kind(docs, "PodMonitor").values()
    assert len(_scraped_ports(docs, "scanner")) == 1
    # The PodMonitor as it was before the ServiceMonitor (the API too): the API twice.
    doubled = {
        **monitor,
        "metadata": {"name": "moat-old"},
        "spec": {**monitor["spec"], "selector": {"matchLabels": {}}},
    }
    doubled["spec"]["podMetricsEndpoints"] = [
        *monitor["spec"]["podMetricsEndpoints"],
        {"port": "https", "path": "/metrics", "scheme": "https"},
    ]
    assert len(_scraped_ports([*docs, doubled], "api")) == 2
    without = [doc for doc in docs if doc["kind"] != "ServiceMonitor"]
    assert _scraped_ports(without, "api") == []


@pytest.mark.parametrize("overlay", ["prod", "prod-hpa"])
def test_the_prometheus_rule_is_the_alert_rule_file(overlay: str) -> None:
    """One source of truth: the PrometheusRule carries exactly deploy/prometheus/moat-alerts.yaml
    (scripts/make-prometheusrule.py writes it; run it after editing the rule file)."""
    (rule,) = of_kind(render(overlay), "PrometheusRule").values()
    source = yaml.safe_load(ALERTS.read_text())
    assert rule["spec"] == {"groups": source["groups"]}, "run scripts/make-prometheusrule.py"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make-prometheusrule.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_objects_per_overlay(overlay: str) -> None:
    docs = render(overlay)
    assert Counter(doc["kind"] for doc in docs) == OBJECTS[overlay]
    # docs/deployment.md lists the same: its table's totals are these.
    text = (ROOT / "docs" / "deployment.md").read_text()
    header = re.search(r"^\| kind \| (.+) \|$", text, re.MULTILINE)
    totals = re.search(r"^\| total \| (.+) \|$", text, re.MULTILINE)
    assert header and totals
    documented = dict(zip(header[1].split(" | "), totals[1].split(" | "), strict=True))
    assert int(documented[overlay]) == len(docs), documented


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_redis_for_the_ingress_limits(overlay: str) -> None:
    docs = render(overlay)
    deployment = of_kind(docs, "Deployment")["redis"]
    # One pod: two would each hold part of the counts, even for a moment during a rollout.
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    template = deployment["spec"]["template"]
    pod = template["spec"]
    (container,) = pod["containers"]
    assert re.fullmatch(r"redis:\d+", container["image"]), container["image"]
    assert pod["automountServiceAccountToken"] is False
    assert_restricted(pod, "redis")
    for bound in ("requests", "limits"):
        assert set(container["resources"][bound]) == {"cpu", "memory"}, bound
    # Counters only: nothing on disk, no volume at all, a bound on memory.
    args = container["args"]
    assert args[args.index("--save") + 1] == "" and args[args.index("--appendonly") + 1] == "no"
    assert "--maxmemory" in args and "volumes" not in pod and "volumeMounts" not in container
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert "redis-cli ping | grep -q PONG" in container[kind]["exec"]["command"], kind
    # The password the server requires is the one in ingress's URL, both from the Secret.
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    assert env["REDIS_PASSWORD"] == env["REDISCLI_AUTH"]
    assert env["REDIS_PASSWORD"]["name"] == "moat-secrets"
    secret = of_kind(docs, "Secret")["moat-secrets"]
    values = secret.get("stringData") or {}
    if not values:  # the dev overlay's generator writes data, base64
        values = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    password = values[env["REDIS_PASSWORD"]["key"]]
    ingress = of_kind(docs, "Deployment")["moat-ingress"]["spec"]["template"]["spec"]
    (ingress_container,) = ingress["containers"]
    ingress_env = {e["name"]: e for e in ingress_container["env"]}
    reference = ingress_env["MOAT_LIMITS__REDIS_URL"]["valueFrom"]["secretKeyRef"]
    assert reference["name"] == "moat-secrets"
    url = values[reference["key"]]
    # The URL names the Service, on the port it publishes, with that password.
    service = of_kind(docs, "Service")["redis"]["spec"]
    assert selects({"matchLabels": service["selector"]}, template["metadata"]["labels"])
    (port,) = service["ports"]
    assert port["targetPort"] == "redis"
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"redis": 6379}
    assert url == f"redis://:{password}@redis:{port['port']}/0"
    settings = Settings(limits={"redis_url": url})
    assert settings.limits.redis_url == url
    # Only ingress is told about it.
    for name in ("moat-scanner", "moat-delivery", "moat-api"):
        spec = of_kind(docs, "Deployment")[name]["spec"]["template"]["spec"]
        assert "MOAT_LIMITS__REDIS_URL" not in {e["name"] for e in spec["containers"][0]["env"]}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_redis_takes_connections_from_ingress_only(overlay: str) -> None:
    docs = render(overlay)
    labels = of_kind(docs, "Deployment")["redis"]["spec"]["template"]["metadata"]["labels"]
    policies = [
        p
        for p in of_kind(docs, "NetworkPolicy").values()
        if p["spec"]["podSelector"] and selects(p["spec"]["podSelector"], labels)
    ]
    (policy,) = policies
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"] and spec["egress"] == []
    (rule,) = spec["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 6379}]
    # Of every pod the overlay makes, the sources select the ingress pods and nothing else.
    admitted = set()
    for workload, template in workloads(docs):
        pod_labels = template["metadata"]["labels"]
        for source in rule["from"]:
            assert set(source) == {"podSelector"}, source  # no namespace, no address range
            if selects(source["podSelector"], pod_labels):
                admitted.add(workload["metadata"]["name"])
    assert admitted == {"moat-ingress"}


def test_submission_is_opt_in() -> None:
    for overlay in OVERLAYS:
        docs = render(overlay)
        ports = [p["port"] for p in of_kind(docs, "Service")["moat-ingress"]["spec"]["ports"]]
        assert ports == [25], overlay
        assert moat_settings(docs).submission.listen is None, overlay


def test_the_submission_component_opens_587(tmp_path: Path) -> None:
    # An overlay of the base with the component, as the component's comment tells one to write.
    base = os.path.relpath(K8S / "base", tmp_path)
    component = os.path.relpath(K8S / "components" / "submission", tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources: [{base}]\ncomponents: [{component}]\n"
    )
    kubectl = shutil.which("kubectl")
    assert kubectl
    result = subprocess.run(
        [kubectl, "kustomize", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    version = kubernetes_validate.latest_version()
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)
    pod = of_kind(docs, "Deployment")["moat-ingress"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    service = of_kind(docs, "Service")["moat-ingress"]["spec"]
    published = {p["port"]: named[p["targetPort"]] for p in service["ports"]}
    assert published == {25: 2525, 587: 5587}
    # The settings the pod gets: the ConfigMap's file, then the environment over it.
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    settings = moat_settings(docs)
    listen = env["MOAT_SUBMISSION__LISTEN"]
    assert Settings(submission={"listen": listen}).submission.listen == listen
    assert listen.rsplit(":", 1)[1] == "5587" and settings.smtp.listen.endswith(":2525")
    # The certificate clients verify: the Secret's files, where the settings look.
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["smtp-tls"]["secret"]["secretName"] == "moat-smtp-tls"
    for key, file in (("MOAT_SMTP__TLS_CERT", "tls.crt"), ("MOAT_SMTP__TLS_KEY", "tls.key")):
        assert env[key] == f"{mounts['smtp-tls']}/{file}"
    assert_restricted(pod, "ingress")
    # The policy lets clients in on 5587 too, and nothing else changes.
    policy = of_kind(docs, "NetworkPolicy")["moat-ingress"]["spec"]
    ports = {port["port"] for rule in policy["ingress"] for port in rule["ports"]}
    assert ports == INGRESS["ingress"] | {5587}
