"""deployments/serving/: the Kubernetes templates of the server, checked structurally (no cluster here): the kinds,
selectors that match the pods' labels, probes on the server's own health route and port, settings the server knows,
the gpu pool's image, and no secret written inline."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SERVING = ROOT / "deployments" / "serving"


def docs(name: str) -> dict[str, dict]:
    return {d["kind"]: d for d in yaml.safe_load_all((SERVING / name).read_text()) if d}


@pytest.fixture(scope="module")
def server():
    """hubflow/serving/server.py as a module (it imports only the standard library at the top)."""
    spec = importlib.util.spec_from_file_location("serving_server", ROOT / "hubflow" / "serving" / "server.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def manifest() -> dict[str, dict]:
    return docs("server.yaml")


def container(manifest: dict) -> dict:
    (only,) = manifest["Deployment"]["spec"]["template"]["spec"]["containers"]
    return only


def test_a_deployment_a_service_and_an_autoscaler(manifest):
    assert set(manifest) == {"Deployment", "Service", "HorizontalPodAutoscaler"}
    assert manifest["Deployment"]["apiVersion"] == "apps/v1"
    assert manifest["HorizontalPodAutoscaler"]["apiVersion"] == "autoscaling/v2"
    assert manifest["Deployment"]["spec"]["replicas"] >= 2


def test_selectors_match_the_pods_labels(manifest):
    deployment = manifest["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert manifest["Service"]["spec"]["selector"].items() <= pod_labels.items()
    for hpa in (manifest["HorizontalPodAutoscaler"], docs("hpa-queue-depth.yaml")["HorizontalPodAutoscaler"]):
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_probes_ask_the_servers_health_route_on_its_port(manifest, server):
    c = container(manifest)
    env = {e["name"]: e.get("value") for e in c["env"]}
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["http"] == int(env["SERVE_PORT"]) and env["SERVE_HOST"] == "0.0.0.0"  # reachable from the Service
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] == "/health" and get["path"] in server.OPEN_ROUTES, probe  # no token needed
        assert get["port"] in (ports["http"], "http"), probe
    assert manifest["Service"]["spec"]["ports"][0]["targetPort"] in ("http", ports["http"])
    annotations = manifest["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == "/metrics" and int(annotations["prometheus.io/port"]) == ports["http"]
    grace = manifest["Deployment"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > float(env["SERVE_DRAIN_SECONDS"]) + 5  # SIGTERM drains in-flight requests before the kill


def test_every_setting_is_one_the_server_reads(manifest, server):
    options = {"SERVE_" + name.replace("-", "_").upper() for name, *_ in server.OPTIONS} | {"SERVE_TOKEN"}
    named = {e["name"] for e in container(manifest)["env"] if e["name"].startswith("SERVE_")}
    assert named <= options, named - options
    assert {"SERVE_MODEL", "SERVE_REVISION", "SERVE_TOKEN"} <= named
    command = container(manifest)["command"]
    assert command[:2] == ["hubflow", "serve"] and command[2] == "$(SERVE_MODEL)@$(SERVE_REVISION)"


def test_tokens_come_from_secrets_never_inline(manifest):
    for name in ("server.yaml", "hpa-queue-depth.yaml"):
        assert "Secret" not in docs(name)
    secret_env = [e for e in container(manifest)["env"] if e["name"].endswith("_TOKEN")]
    assert {e["name"] for e in secret_env} == {"SERVE_TOKEN", "HF_TOKEN"}
    for e in secret_env:
        assert "value" not in e and "secretKeyRef" in e["valueFrom"], e
    text = (SERVING / "server.yaml").read_text()
    assert "hf_" not in text and "Bearer" not in text


def test_the_image_is_the_gpu_pools(manifest):
    pool = json.loads((ROOT / "deployments" / "pools" / "kubernetes-gpu.json").read_text())
    assert container(manifest)["image"] == pool["variables"]["properties"]["image"]["default"]
    assert container(manifest)["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_the_queue_depth_autoscaler_reads_the_servers_gauge(server):
    hpa = docs("hpa-queue-depth.yaml")["HorizontalPodAutoscaler"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == "queue_depth"
    assert server.make_metrics().queue_depth._name == "queue_depth"  # the gauge the Batcher sets
