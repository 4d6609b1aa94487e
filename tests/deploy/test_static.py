"""Deployment files, checked without a Docker engine or a cluster: compose references real files,
images run as non-root with healthchecks, every Kubernetes manifest validates against the
official schemas, and Prometheus accepts the config and rules (promtool)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from unittest.mock import patch
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.33"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_references_only_files_that_exist(compose):
    for name, service in compose["services"].items():
        if build := service.get("build"):
            assert (ROOT / build["context"] / build["dockerfile"]).is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name}: {source}"


def test_compose_health_ordering_and_exposure(compose):
    services = compose["services"]
    assert set(services) == {"gateway", "torchserve", "prometheus", "grafana"}
    assert all("healthcheck" in s for n, s in services.items() if n != "grafana")
    for name, service in services.items():
        for dependency in service.get("depends_on", {}).values():
            assert dependency["condition"] == "service_healthy", name
    assert "ports" not in services["torchserve"], (
        "TorchServe (management API) must not be published"
    )
    assert compose["networks"]["backend"]["internal"] is True
    # published on this machine only unless asked; the API key passed from the user's shell
    assert services["gateway"]["ports"] == ["${GATEWAY_BIND:-127.0.0.1}:${GATEWAY_PORT:-8000}:8000"]
    assert services["gateway"]["environment"]["GATEWAY_API_KEY"] == "${GATEWAY_API_KEY:-}"
    assert (
        services["gateway"]["environment"]["GATEWAY_TORCHSERVE_INFERENCE_URL"]
        == "http://torchserve:8080"
    )


GENERATED = {"wheelhouse": "make wheelhouse"}
"""Build-context paths a Makefile target makes (not committed)."""
PYTHON_IMAGES = ("gateway.Dockerfile", "worker.Dockerfile", "loadtest.Dockerfile")
RUN_TO_COMPLETION = ("loadtest.Dockerfile",)
"""Images of jobs, not services: nothing long-running for a HEALTHCHECK to watch."""


@pytest.mark.parametrize(
    "dockerfile", sorted((DEPLOY / "docker").glob("*.Dockerfile")), ids=lambda p: p.name
)
def test_dockerfiles_are_non_root_pinned_healthchecked_and_based_on_an_argument(dockerfile):
    text = dockerfile.read_text()
    assert re.search(r"^USER (?!root)\w+", text, flags=re.M)
    assert ("HEALTHCHECK" in text) != (dockerfile.name in RUN_TO_COMPLETION)
    assert ":latest" not in text and "ARG BASE_IMAGE=python:3.11.7-slim-bookworm" in text
    assert all(line == "FROM ${BASE_IMAGE}" or line.startswith("FROM ${BASE_IMAGE} AS ")
               for line in re.findall(r"^FROM .+$", text, flags=re.M))  # fmt: skip
    for source in re.findall(r"^COPY (?!--from)(?:--\S+ )*(\S+) ", text, flags=re.M):
        assert source in GENERATED or (ROOT / source).exists(), f"{dockerfile.name}: {source}"


@pytest.mark.parametrize("name", PYTHON_IMAGES)
def test_python_images_are_multi_stage_and_install_from_the_wheelhouse_only(name):
    text = (DEPLOY / "docker" / name).read_text()
    assert len(re.findall(r"^FROM ", text, flags=re.M)) >= 2
    installs = re.findall(r"pip install[^\n]*", text.replace("\\\n", " "))
    assert installs and all("--no-index" in i and "--find-links /wheels" in i for i in installs)


def render(path: Path) -> list[dict]:
    if shutil.which("kubectl"):
        output = subprocess.run(
            ["kubectl", "kustomize", str(path)], capture_output=True, text=True, check=True
        ).stdout
        return [doc for doc in yaml.safe_load_all(output) if doc]
    pytest.skip("kubectl (with its built-in kustomize) is not installed")


@pytest.fixture(scope="module", params=["deploy/k8s", "deploy/k8s/overlays/gpu"])
def manifests(request) -> list[dict]:
    return render(ROOT / request.param)


def test_every_manifest_validates_against_kubernetes_schemas(manifests):
    for doc in manifests:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_every_raw_manifest_file_validates():
    """The files themselves too (not only the kustomize output), kustomization files aside."""
    files = [p for p in (DEPLOY / "k8s" / "base").glob("*.yaml") if p.name != "kustomization.yaml"]
    assert files
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def by_kind(manifests: list[dict], kind: str, name: str) -> dict:
    return next(d for d in manifests if d["kind"] == kind and d["metadata"]["name"] == name)


def test_the_locust_jobs_validate_and_agree_on_their_workers():
    """deploy/k8s/loadtest: Locust's distributed mode in a cluster (a master Job behind a
    Service, a Job of workers) with the load generator image."""
    docs = render(ROOT / "deploy/k8s/loadtest")
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)

    def args(name: str) -> list[str]:
        return by_kind(docs, "Job", name)["spec"]["template"]["spec"]["containers"][0]["args"]

    master, worker = args("locust-master"), args("locust-workers")
    expected = int(master[master.index("--expect-workers") + 1])
    assert by_kind(docs, "Job", "locust-workers")["spec"]["parallelism"] == expected
    assert worker[worker.index("--master-host") + 1] == "locust-master"
    assert by_kind(docs, "Service", "locust-master")["spec"]["ports"][0]["port"] == 5557
    target = urlsplit(master[master.index("--host") + 1])
    service = by_kind(render(ROOT / "deploy/k8s"), "Service", "gateway")
    assert target.hostname == "gateway"  # the gateway Service, on a port it listens on
    assert (target.port or 80) in {port["port"] for port in service["spec"]["ports"]}
    assert {d["metadata"]["namespace"] for d in docs} == {"attention-serving"}


def test_probes_hit_real_endpoints_and_resources_are_set(manifests):
    gateway = by_kind(manifests, "Deployment", "gateway")["spec"]["template"]["spec"]["containers"][
        0
    ]
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    worker = by_kind(manifests, "Deployment", "worker")["spec"]["template"]["spec"]["containers"][0]
    assert worker["readinessProbe"]["httpGet"]["path"] == "/ping"
    assert worker["livenessProbe"]["tcpSocket"]["port"] == "inference"  # /ping fails in restarts
    for container in (gateway, worker):
        assert {"requests", "limits"} <= set(container["resources"])
    # a worker's threads are its CPU limit: it is given them all (Guaranteed CPU)
    assert worker["resources"]["requests"]["cpu"] == worker["resources"]["limits"]["cpu"]
    secret_refs = [
        e["valueFrom"]["secretKeyRef"]["name"] for e in gateway["env"] if "valueFrom" in e
    ]
    assert "gateway-secrets" in secret_refs


def test_autoscaling_disruption_budgets_and_network_policy(manifests):
    assert by_kind(manifests, "HorizontalPodAutoscaler", "gateway")
    assert by_kind(manifests, "PodDisruptionBudget", "worker")
    assert by_kind(manifests, "PodDisruptionBudget", "gateway")
    policy = by_kind(manifests, "NetworkPolicy", "worker-ingress")["spec"]
    allowed = policy["ingress"][0]
    assert allowed["from"][0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "gateway"}
    egress = by_kind(manifests, "NetworkPolicy", "gateway-egress")["spec"]["egress"]
    assert egress[0]["to"][0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "worker"}
    assert {p["port"] for rule in egress for p in rule["ports"]} == {8080, 8081, 53}
    configmap = by_kind(manifests, "ConfigMap", "gateway-settings")["data"]
    assert configmap["GATEWAY_TORCHSERVE_INFERENCE_URL"] == (
        "http://worker.attention-serving.svc.cluster.local.:8080"
    )
    assert all(
        d["metadata"].get("namespace") == "attention-serving"
        for d in manifests
        if d["kind"] != "Namespace"
    )


def test_gpu_overlay_requests_gpus_and_scales_on_queue_depth():
    manifests = render(ROOT / "deploy/k8s/overlays/gpu")
    worker = by_kind(manifests, "Deployment", "worker")["spec"]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert worker["image"].endswith("-cuda")
    metrics = by_kind(manifests, "HorizontalPodAutoscaler", "worker")["spec"]["metrics"]
    assert [m["external"]["metric"]["name"] for m in metrics] == ["gateway_queue_depth"]
    # one GPU worker may be all there is: a drain must not evict it
    assert by_kind(manifests, "HorizontalPodAutoscaler", "worker")["spec"]["minReplicas"] == 1
    assert by_kind(manifests, "PodDisruptionBudget", "worker")["spec"] == {
        "minAvailable": 1,
        "selector": {"matchLabels": {"app.kubernetes.io/name": "worker"}},
    }


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool missing: `make test` installs Debian's prometheus package"
    return subprocess.run(
        [binary, *args], capture_output=True, text=True, cwd=DEPLOY / "prometheus"
    )


def test_promtool_accepts_config_and_rules():
    config = promtool("check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr
    rules = promtool(
        "check", "rules", *sorted(str(p) for p in (DEPLOY / "prometheus" / "rules").glob("*.yml"))
    )
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "SUCCESS: 8 rules found" in rules.stdout and "SUCCESS: 4 rules found" in rules.stdout


def test_dashboard_queries_use_recorded_or_exported_series():
    import json

    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "gateway.json").read_text())
    recorded = {
        r["record"]
        for g in yaml.safe_load((DEPLOY / "prometheus/rules/recording.yml").read_text())["groups"]
        for r in g["rules"]
    }
    exported = {
        "gateway_queue_depth",
        "gateway_backend_duration_seconds_bucket",
        "gateway_queue_wait_seconds_bucket",
        "gateway_requests_total",
    }
    names = {
        name
        for p in dashboard["panels"]
        for t in p["targets"]
        for name in re.findall(r"[a-z_:]+(?=[\[{ ]|$)", t["expr"])
        if "gateway" in name
    }
    assert names and names <= recorded | exported, names - recorded - exported
    titles = " ".join(p["title"] for p in dashboard["panels"])
    for word in ("Requests", "p99", "batch", "Queue", "Error"):
        assert word in titles


def effective_settings(environment: dict[str, str]):
    """The gateway's settings under a deployment's environment (which names only what differs
    from the defaults)."""
    from service.settings import GatewaySettings

    with patch.dict(os.environ, environment):
        return GatewaySettings()


@pytest.mark.parametrize("where", ["compose", "k8s"])
def test_deployments_set_only_what_differs_from_the_defaults(where, compose, manifests):
    """A default written again in a deployment file silently disagrees once the default
    changes: each setting a deployment names must differ from its default."""
    from service.settings import GatewaySettings

    if where == "compose":
        environment = compose["services"]["gateway"]["environment"]
    else:
        environment = by_kind(manifests, "ConfigMap", "gateway-settings")["data"]
    defaults = GatewaySettings().model_dump()
    assert environment
    effective = effective_settings(environment)  # settings that only hold together, together
    for name, value in environment.items():
        field = name.removeprefix("GATEWAY_").lower()
        assert field in defaults, name
        if value == f"${{{name}:-}}":  # the user's own value, passed through from the shell
            continue
        assert getattr(effective, field) != defaults[field] or (
            field == "models"  # named beside the worker's MODELS, which it must equal
        ), f"{name} repeats the default"


@pytest.mark.parametrize("where", ["compose", "k8s"])
def test_the_gateway_finds_every_worker_replica(where, compose, manifests):
    """Replicas the HPA or `--scale` adds get work: the gateway resolves the workers' DNS name
    to every replica (a headless Service in Kubernetes), and nothing a replica writes or
    listens on is shared with another."""
    if where == "compose":
        environment = compose["services"]["gateway"]["environment"]
        worker = compose["services"]["torchserve"]
        assert "ports" not in worker  # nothing one replica holds: no host port, no named volume
        assert all(":" not in volume for volume in worker.get("volumes", [])), worker["volumes"]
    else:
        environment = by_kind(manifests, "ConfigMap", "gateway-settings")["data"]
        assert by_kind(manifests, "Service", "worker")["spec"]["clusterIP"] == "None"
    settings = effective_settings(environment)
    assert settings.torchserve_discovery == "dns" and settings.torchserve_key_file is None
    assert "," not in settings.torchserve_inference_url


def test_the_autoscalers_metrics_are_ones_the_gateway_exports():
    """The prometheus-adapter rules (the gpu overlay's worker HPA scales on them) name series
    the gateway really exports."""
    from fastapi.testclient import TestClient

    from service.app import create_app

    from ..service.fakes import FakeBackend

    rules = yaml.safe_load((DEPLOY / "k8s" / "prometheus-adapter-rules.yaml").read_text())
    wanted = {
        re.match(r"[a-z_]+", r["seriesQuery"].strip("'"))[0] for r in rules["rules"]["external"]
    }
    with TestClient(create_app(effective_settings({}), FakeBackend(["eca_resnet50"]))) as client:
        exported = set(re.findall(r"^# TYPE (\S+) ", client.get("/metrics").text, flags=re.M))
    assert wanted and wanted <= exported, wanted - exported


def test_compose_keeps_monitoring_local_and_grafana_without_a_default_password(compose):
    services = compose["services"]
    assert services["prometheus"]["ports"] == ["127.0.0.1:${PROMETHEUS_PORT:-9090}:9090"]
    assert services["grafana"]["ports"] == ["127.0.0.1:3000:3000"]
    password = services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?.+\}", password)  # required, no default
    worker, gateway = services["torchserve"], services["gateway"]
    drain = int(worker["environment"]["DRAIN_SECONDS"])
    assert int(worker["stop_grace_period"].rstrip("s")) > drain
    grace = effective_settings(gateway["environment"]).shutdown_grace_s
    assert int(gateway["stop_grace_period"].rstrip("s")) > grace


def test_worker_image_stops_through_the_draining_launcher():
    text = (DEPLOY / "docker" / "worker.Dockerfile").read_text()
    assert 'ENTRYPOINT ["/usr/bin/tini", "--"]' in text and " tini " in text
    [command] = re.findall(r"^CMD (.+)$", text, flags=re.M)
    assert "python -m model_store serve" in command and "--drain-seconds" in command
    assert "--host 0.0.0.0" in command and "torchserve --start" not in command


def test_timeouts_and_grace_periods_fit_together(manifests):
    from contract.protocol import WORKER_RESPONSE_TIMEOUT_S
    from model_store.torchserve.config import CONFIG_TEMPLATE
    from model_store.worker.archive import ArchiveSpec
    from service.settings import GatewaySettings

    defaults = GatewaySettings()
    assert ArchiveSpec("eca_resnet50").model_config()["responseTimeout"] <= (
        defaults.backend_timeout_s
    )
    properties = CONFIG_TEMPLATE.read_text()
    assert f"default_response_timeout={WORKER_RESPONSE_TIMEOUT_S}\n" in properties
    configmap = by_kind(manifests, "ConfigMap", "gateway-settings")["data"]
    settings = effective_settings(configmap)
    assert settings.backend_timeout_s >= WORKER_RESPONSE_TIMEOUT_S
    pod = by_kind(manifests, "Deployment", "gateway")["spec"]["template"]["spec"]
    [gateway] = pod["containers"]
    assert gateway["readinessProbe"]["timeoutSeconds"] > settings.readiness_timeout_s
    pre_stop = gateway["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > pre_stop + settings.shutdown_grace_s
    worker_pod = by_kind(manifests, "Deployment", "worker")["spec"]["template"]["spec"]
    drain = next(e for e in worker_pod["containers"][0]["env"] if e["name"] == "DRAIN_SECONDS")
    assert worker_pod["terminationGracePeriodSeconds"] > int(drain["value"])


RESTRICTED_VOLUME_TYPES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
}  # fmt: skip
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}  # fmt: skip
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}


def pod_security_violations(pod: dict) -> list[str]:
    """What breaks the "restricted" Pod Security Standard (baseline and restricted rules, as
    kubernetes.io/docs/concepts/security/pod-security-standards lists them), plus this project's
    own rules: a read-only root filesystem and no service-account token."""
    found = []
    pod_context = pod.get("securityContext", {})
    containers = pod.get("containers", []) + pod.get("initContainers", [])
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            found.append(f"{flag} is set")
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            found.append(f"volume {volume['name']} is {kinds}")
    for sysctl in pod_context.get("sysctls", []):
        if sysctl["name"] not in SAFE_SYSCTLS:
            found.append(f"sysctl {sysctl['name']}")
    if pod.get("automountServiceAccountToken") is not False:
        found.append("the service-account token is mounted")
    for container in containers:
        name = container["name"]
        context = container.get("securityContext", {})
        merged = pod_context | context

        def check(condition: bool, what: str, name: str = name) -> None:
            if not condition:
                found.append(f"{name}: {what}")

        check(not context.get("privileged"), "privileged")
        check(
            context.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation not false"
        )
        check(merged.get("runAsNonRoot") is True, "runAsNonRoot not true")
        check(merged.get("runAsUser", 1) != 0, "runs as user 0")
        check(
            merged.get("seccompProfile", {}).get("type") in ("RuntimeDefault", "Localhost"),
            "seccompProfile not RuntimeDefault or Localhost",
        )
        capabilities = context.get("capabilities", {})
        check("ALL" in capabilities.get("drop", []), "capabilities do not drop ALL")
        check(set(capabilities.get("add", [])) <= {"NET_BIND_SERVICE"}, "capabilities added")
        check(all(not p.get("hostPort") for p in container.get("ports", [])), "a hostPort is used")
        check(context.get("procMount", "Default") == "Default", "procMount not Default")
        check(
            merged.get("appArmorProfile", {}).get("type", "RuntimeDefault") != "Unconfined",
            "AppArmor unconfined",
        )
        check(context.get("readOnlyRootFilesystem") is True, "root filesystem writable")
    return found


@pytest.mark.parametrize("where", ["deploy/k8s", "deploy/k8s/overlays/gpu", "deploy/k8s/loadtest"])
def test_every_pod_meets_the_restricted_pod_security_standard(where):
    pods = [
        (doc["metadata"]["name"], doc["spec"]["template"]["spec"])
        for doc in render(ROOT / where)
        if doc["kind"] in WORKLOADS
    ]
    assert pods
    for name, pod in pods:
        assert pod_security_violations(pod) == [], name


def test_the_standard_check_finds_what_it_must():
    """The check itself, on the pod the manifests had before: every missing rule is named."""
    before = {
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001},
        "containers": [
            {"name": "gateway", "securityContext": {"allowPrivilegeEscalation": False}},
        ],
        "volumes": [{"name": "host", "hostPath": {"path": "/"}}],
    }
    assert pod_security_violations(before) == [
        "volume host is {'hostPath'}",
        "the service-account token is mounted",
        "gateway: seccompProfile not RuntimeDefault or Localhost",
        "gateway: capabilities do not drop ALL",
        "gateway: root filesystem writable",
    ]


def test_the_namespace_enforces_the_restricted_standard(manifests):
    namespace = next(d for d in manifests if d["kind"] == "Namespace")
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
