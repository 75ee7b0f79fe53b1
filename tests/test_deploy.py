"""Deployment files: the kustomize overlays render and validate, compose and the
manifests agree with the services' real ports, variables and commands, and the image's
entry point commands work."""

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from modalmesh.cli import SERVICES
from modalmesh.common.config import DEFAULT_PORTS, METRICS_PORT_OFFSET, ServiceConfig
from modalmesh.up import free_port

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
CONFIG_VARIABLES = {f"MODALMESH_{f.name.upper()}" for f in dataclasses.fields(ServiceConfig)}


def render(overlay: str) -> list[dict]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl (which renders kustomize offline) is not installed on this machine")
    output = subprocess.run(["kubectl", "kustomize", str(DEPLOY / "k8s" / "overlays" / overlay)], capture_output=True, text=True, check=True)
    return [doc for doc in yaml.safe_load_all(output.stdout) if doc]


@pytest.fixture(scope="module", params=["dev", "prod"])
def manifests(request):
    return request.param, render(request.param)


def test_every_manifest_validates_strictly(manifests):
    import kubernetes_validate

    _, documents = manifests
    kinds = sorted(doc["kind"] for doc in documents)
    assert kinds.count("Deployment") == 4 and kinds.count("HorizontalPodAutoscaler") == 3
    assert kinds.count("PodDisruptionBudget") == 4 and "NetworkPolicy" in kinds and "ConfigMap" in kinds
    for doc in documents:
        kubernetes_validate.validate(doc, "1.32.0", strict=True)  # raises with the field on failure


def test_yaml_lints_clean(tmp_path):
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text("\n---\n".join(yaml.safe_dump(d) for d in render("prod")))
    files = [str(p) for p in DEPLOY.rglob("*.yaml")] + [str(p) for p in DEPLOY.rglob("*.yml")] + [str(rendered)]
    config = "{extends: relaxed, rules: {line-length: {max: 160}}}"
    result = subprocess.run([sys.executable, "-m", "yamllint", "-d", config, *files], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_manifests_agree_with_the_services(manifests):
    overlay, documents = manifests
    config_map = next(d for d in documents if d["kind"] == "ConfigMap")
    assert set(config_map["data"]) <= CONFIG_VARIABLES, set(config_map["data"]) - CONFIG_VARIABLES
    services = {d["metadata"]["name"]: d for d in documents if d["kind"] == "Service"}
    for deployment in (d for d in documents if d["kind"] == "Deployment"):
        spec = deployment["spec"]["template"]["spec"]
        container = spec["containers"][0]
        name = container["args"][0]
        assert name in SERVICES
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert set(env) <= CONFIG_VARIABLES
        assert env["MODALMESH_SERVICE"] == name and int(env["MODALMESH_PORT"]) == DEFAULT_PORTS[name]
        assert int(env["MODALMESH_METRICS_PORT"]) == DEFAULT_PORTS[name] - METRICS_PORT_OFFSET
        probe_port = int(env.get("MODALMESH_HEALTH_PORT") or DEFAULT_PORTS[name])
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == probe_port
        assert spec["securityContext"]["runAsNonRoot"] and container["securityContext"]["readOnlyRootFilesystem"]
        service = services[deployment["metadata"]["name"]]
        assert service["spec"]["ports"][0]["port"] == DEFAULT_PORTS[name]
        assert (service["spec"].get("clusterIP") == "None") == (name != "router")  # encoders headless
    for variable, service in (("MODALMESH_TEXT_TARGET", "text"), ("MODALMESH_VISION_TARGET", "vision"), ("MODALMESH_AUDIO_TARGET", "audio")):
        assert config_map["data"][variable] == f"dns:///modalmesh-{service}:{DEFAULT_PORTS[service]}"
    policy = next(d for d in documents if d["kind"] == "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"] == {"modalmesh/role": "encoder"}
    assert policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"] == {"modalmesh/role": "router"}
    if overlay == "prod":
        assert config_map["data"]["MODALMESH_TLS_CLIENT_CA"]  # mTLS in production


def test_compose_agrees_with_the_services():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    for name in ("text", "vision", "audio", "router"):
        service = compose["services"][name]
        env = service["environment"]
        assert set(env) <= CONFIG_VARIABLES, set(env) - CONFIG_VARIABLES
        assert service["command"] == [name] and env["MODALMESH_SERVICE"] == name
        assert int(env["MODALMESH_PORT"]) == DEFAULT_PORTS[name]
        assert int(env["MODALMESH_METRICS_PORT"]) == DEFAULT_PORTS[name] - METRICS_PORT_OFFSET
        assert service["healthcheck"]["test"] == ["CMD", "modalmesh", "health"]
    router = compose["services"]["router"]
    assert router["environment"]["MODALMESH_VISION_TARGET"] == f"vision:{DEFAULT_PORTS['vision']}"
    assert all(router["depends_on"][n]["condition"] == "service_healthy" for n in ("text", "vision", "audio"))
    targets = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())["scrape_configs"][0]["static_configs"][0]["targets"]
    assert sorted(targets) == sorted(f"{n}:{DEFAULT_PORTS[n] - METRICS_PORT_OFFSET}" for n in ("router", "text", "vision", "audio"))


def test_dockerfile_is_multi_stage_non_root_and_runs_modalmesh_serve():
    text = (DEPLOY / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) == 2
    assert re.search(r"^USER 10001$", text, re.M)
    assert 'ENTRYPOINT ["modalmesh", "serve"]' in text and 'CMD ["modalmesh", "health"]' in text
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for path in source.split():
            assert (REPO / path).exists(), path


def test_the_installed_package_carries_the_shipped_weights(tmp_path):
    """The image installs the package, not the source tree: its wheel holds every file of
    the shipped weights and the built-in task files the router loads by default, and
    setuptools builds it without complaining that a data folder is not declared."""
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-w", str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert built.returncode == 0, built.stderr[-2000:]
    assert "explicitly added" not in built.stdout + built.stderr
    with zipfile.ZipFile(next(tmp_path.glob("modalmesh-*.whl"))) as wheel:
        packaged = set(wheel.namelist())
    weights = REPO / "services" / "router" / "weights"
    shipped = {f"modalmesh/router/weights/{p.relative_to(weights).as_posix()}" for p in weights.glob("*/*") if p.is_file()}
    assert {"modalmesh/router/weights/screenshot_triage/model.safetensors", "modalmesh/router/weights/medical_report/model.safetensors"} <= shipped
    assert shipped <= packaged, shipped - packaged
    assert {"modalmesh/router/builtin/screenshot_triage.json", "modalmesh/router/builtin/medical_report.json"} <= packaged  # the built-in tasks' files


def test_the_image_commands_serve_and_health_work_locally(tiny_bert_dir):
    """What the container runs: `modalmesh serve` with the service from MODALMESH_SERVICE,
    and `modalmesh health` as its health check."""
    port = free_port()
    env = {**os.environ, "MODALMESH_SERVICE": "text", "MODALMESH_PORT": str(port), "MODALMESH_METRICS_PORT": "0", "MODALMESH_MODEL": str(tiny_bert_dir)}
    health = [sys.executable, "-m", "modalmesh.cli", "health", "--timeout", "60"]
    process = subprocess.Popen([sys.executable, "-m", "modalmesh.cli", "serve"], env=env, stderr=subprocess.DEVNULL)
    try:
        assert subprocess.run(health, env=env, timeout=90).returncode == 0
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0
    env["MODALMESH_PORT"] = str(free_port())  # nothing listens there
    assert subprocess.run([*health[:-1], "1"], env=env, capture_output=True, timeout=30).returncode == 1


def test_alert_rules_and_dashboard_use_metrics_the_services_export():
    from modalmesh.common import telemetry

    exported = {
        m.describe()[0].name
        for m in (
            telemetry.RPC_LATENCY,
            telemetry.RPC_IN_FLIGHT,
            telemetry.RPC_ERRORS,
            telemetry.BATCH_SIZE,
            telemetry.QUEUE_DEPTH,
            telemetry.RPC_WAITING,
            telemetry.MODALITY_OUTCOMES,
            telemetry.GATE_WEIGHT,
            telemetry.OUTPUT_ENTROPY,
        )
    }
    exported |= {"process_resident_memory_bytes"}
    text = (DEPLOY / "alerts.yml").read_text() + (DEPLOY / "grafana" / "modalmesh.json").read_text()
    used = set(re.findall(r"\b(modalmesh_[a-z_]+?|process_resident_memory_bytes)(?:_bucket|_sum|_count|_total)?\b", text))
    base = {name.removesuffix("_total") for name in exported}
    for name in used:
        assert name in exported or name in base or name.removesuffix("_total") in base, name
