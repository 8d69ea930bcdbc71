"""The deployment files: the Dockerfile (hadolint), docker-compose.yml (the compose
specification's schema, and what the gateway needs of it), and every overlay of k8s/, rendered
with `kubectl kustomize` and validated strictly against the Kubernetes schemas
(kubernetes-validate), then held to the rules of docs/deployment.md: probes, resources and a
restricted security context for every service, a grace period that covers the graceful
shutdown, default-deny network policies with exactly the flows each service needs, disruption
budgets, and autoscaling on the right queues."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
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
CUSTOM_KINDS = {"ScaledObject", "TriggerAuthentication", "RabbitmqCluster", "PodMonitor"}

# Every port each service may connect to (DNS aside), and nothing more: the table of
# docs/deployment.md. The object store is 443 (base, prod) or SeaweedFS's 8333 (dev).
EGRESS = {
    "ingress": {5672, 5432},
    "scanner": {5672, 5432, 3310},
    "delivery": {5672, 5432, 25, 465, 587},
    "api": {5672, 5432, 443},
    "migrate": {5432},
}
INGRESS = {"ingress": {2525, 9103}, "scanner": {9101}, "delivery": {9102}, "api": {8443}}


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
        "rabbitmq", "postgres", "clamav", "seaweedfs", "migrate", *SERVICES
    }  # fmt: skip
    assert services["clamav"]["image"].startswith("clamav/clamav:")
    # Every long-running dependency says when it is ready, and the services wait for that.
    for name in ("rabbitmq", "postgres", "clamav", "seaweedfs"):
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
        assert doc["metadata"].get("namespace") in (None, "moat"), doc["metadata"]
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
    assert "HorizontalPodAutoscaler" not in {d["kind"] for d in docs}  # KEDA makes its own
    (cluster,) = of_kind(docs, "RabbitmqCluster").values()
    assert cluster["spec"]["replicas"] == 3
    assert "default_queue_type = quorum" in cluster["spec"]["rabbitmq"]["additionalConfig"]


def test_prod_hpa_scales_on_cpu() -> None:
    docs = render("prod-hpa")
    assert "ScaledObject" not in {d["kind"] for d in docs}
    autoscalers = of_kind(docs, "HorizontalPodAutoscaler")
    for service in ("scanner", "delivery"):
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


@pytest.mark.parametrize("overlay", ["prod", "prod-hpa"])
def test_prometheus_finds_every_service(overlay: str) -> None:
    docs = render(overlay)
    (monitor,) = of_kind(docs, "PodMonitor").values()
    ports = {endpoint["port"] for endpoint in monitor["spec"]["podMetricsEndpoints"]}
    for service in SERVICES:
        template = of_kind(docs, "Deployment")[f"moat-{service}"]["spec"]["template"]
        assert selects(monitor["spec"]["selector"], template["metadata"]["labels"]), service
        (container,) = template["spec"]["containers"]
        named = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert any(named.get(port) == HEALTH_PORTS[service] for port in ports), service
