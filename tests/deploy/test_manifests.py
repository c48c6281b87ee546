"""deploy/k8s and deploy/compose.yaml: valid, hardened, without secrets, and consistent with the images.

The Kubernetes manifests are validated offline against the API schemas kubernetes-validate ships
(strict: an unknown field fails). compose.yaml is read as YAML and checked here; `docker compose
config` validates it too where a Compose binary exists. The configs the files mount are loaded by the
daemons' own settings code, under the environment the containers get.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.deploy.dockerfile import parse

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
COMPOSE = ROOT / "deploy" / "compose.yaml"
#: The oldest Kubernetes still in wide use, and the newest whose schemas the package ships.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
SECRET_WORDS = ("PASSWORD", "TOKEN", "DATABASE_URL", "SECRET")


def _manifests() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def _documents() -> list[dict[str, Any]]:
    return [doc for path in _manifests() for doc in yaml.safe_load_all(path.read_text()) if doc]


def _by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in _documents() if doc["kind"] == kind}


def _pod_specs() -> dict[str, dict[str, Any]]:
    workloads = {**_by_kind("Deployment"), **_by_kind("Job")}
    return {name: doc["spec"]["template"]["spec"] for name, doc in workloads.items()}


def _image_uid(dockerfile: str) -> int:
    user = parse(ROOT / dockerfile)[-1].all("USER")[-1].args
    return int(user.partition(":")[0])


def _image_env(dockerfile: str) -> dict[str, str]:
    env = parse(ROOT / dockerfile)[-1].env()
    return {k: v for k, v in env.items() if k.startswith("EDGEFLEET_")}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", _manifests(), ids=lambda p: p.name)
def test_manifest_validates_against_the_kubernetes_schema(path: Path, version: str) -> None:
    documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    assert documents
    for doc in documents:
        kubernetes_validate.validate(doc, version, strict=True)


def test_strict_validation_refuses_an_unknown_field() -> None:
    (deployment,) = [d for d in _documents() if d["metadata"]["name"] == "edgefleet-worker"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"]["readOnlyRootFilesystm"] = True
    with pytest.raises(kubernetes_validate.ValidationError, match="readOnlyRootFilesystm"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in _manifests())
    (image,) = kustomization["images"]
    used = {c["image"] for spec in _pod_specs().values() for c in spec["containers"]}
    assert used == {image["name"]}


def test_no_secret_is_committed_and_secrets_are_referenced() -> None:
    assert "Secret" not in {doc["kind"] for doc in _documents()}
    for name, spec in _pod_specs().items():
        for container in spec["containers"]:
            for variable in container.get("env", []):
                if any(word in variable["name"] for word in SECRET_WORDS):
                    assert "secretKeyRef" in variable.get("valueFrom", {}), f"{name}: {variable['name']}"
    worker = _pod_specs()["edgefleet-worker"]
    assert next(v["secret"] for v in worker["volumes"] if "secret" in v) == {
        "secretName": "edgefleet-signing-key",
        "defaultMode": 0o400,
    }


def test_pods_run_as_the_images_uid_with_a_read_only_root_and_bounded_resources() -> None:
    uid = _image_uid("Dockerfile.cloud")
    for name, spec in _pod_specs().items():
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] == uid, name
        assert pod["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec["automountServiceAccountToken"] is False
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
            resources = container["resources"]
            assert {"cpu", "memory"} <= resources["requests"].keys() and "memory" in resources["limits"]
            # A read-only root needs somewhere to write: /tmp at least.
            assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}


def test_controller_probes_the_routes_it_serves() -> None:
    routes = (ROOT / "cloud_controller" / "api" / "routes" / "health.py").read_text()
    (container,) = _pod_specs()["edgefleet-controller"]["containers"]
    for probe, path in (
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("startupProbe", "/healthz"),
    ):
        assert container[probe]["httpGet"]["path"] == path
        assert f'@router.get("{path}"' in routes
    assert "--no-migrate" in container["args"]
    assert _pod_specs()["edgefleet-migrate"]["containers"][0]["args"][0] == "migrate"


def test_services_and_budget_select_the_controller_pods() -> None:
    labels = _by_kind("Deployment")["edgefleet-controller"]["spec"]["template"]["metadata"]["labels"]
    service = _by_kind("Service")["edgefleet-controller"]
    assert service["spec"]["selector"].items() <= labels.items()
    budget = _by_kind("PodDisruptionBudget")["edgefleet-controller"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert budget["spec"]["minAvailable"] < _by_kind("Deployment")["edgefleet-controller"]["spec"]["replicas"]
    postgres = _by_kind("Service")["edgefleet-postgres"]
    assert postgres["spec"]["type"] == "ExternalName"


def test_configmap_holds_valid_controller_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from cloud_controller.settings import load_settings

    config = tmp_path / "controller.yaml"
    config.write_text(_by_kind("ConfigMap")["edgefleet-controller"]["data"]["controller.yaml"])
    for name, value in _image_env("Dockerfile.cloud").items():
        monkeypatch.setenv(name, value)
    settings = load_settings(config)
    assert settings.port == 8000 and settings.host == "0.0.0.0"
    assert str(settings.bundle_dir).startswith("/var/lib/edgefleet/")


# --- compose -------------------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _env_file(path: Path) -> dict[str, str]:
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def test_compose_runs_the_cloud_and_a_site_each_with_a_healthcheck() -> None:
    services = _compose()["services"]
    assert set(services) == {"postgres", "controller", "worker", "gateway", "agent"}
    for name, service in services.items():
        assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
    dockerfiles = {name: s.get("build", {}).get("dockerfile") for name, s in services.items()}
    assert dockerfiles == {
        "postgres": None,
        "controller": "Dockerfile.cloud",
        "worker": "Dockerfile.cloud",
        "gateway": "Dockerfile.edge",
        "agent": "Dockerfile.edge",
    }
    assert services["gateway"]["entrypoint"] == ["edge-gateway"]
    assert services["worker"]["depends_on"]["controller"]["condition"] == "service_healthy"


def test_compose_keeps_secrets_in_files_git_ignores() -> None:
    compose = _compose()
    for name, service in compose["services"].items():
        for variable, value in (service.get("environment") or {}).items():
            if any(word in variable for word in SECRET_WORDS) and not variable.endswith("_FILE"):
                pytest.fail(f"{name}: {variable} is set inline")
            assert "CHANGE-ME" not in str(value)
        for env_file in service.get("env_file", []):
            assert env_file.startswith("secrets/") and (COMPOSE.parent / f"{env_file}.example").is_file()
    for secret in compose["secrets"].values():
        assert secret["file"].startswith("secrets/")
    ignored = (COMPOSE.parent / "secrets" / ".gitignore").read_text().splitlines()
    assert "*" in ignored and "!*.example" in ignored
    tracked = subprocess.run(
        ["git", "ls-files", "deploy/secrets"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert all(path.endswith((".example", ".gitignore")) for path in tracked), tracked


def test_compose_volumes_hold_every_daemons_data() -> None:
    services = _compose()["services"]
    declared = set(_compose()["volumes"])
    for name in ("controller", "worker", "gateway", "agent"):
        (volume,) = services[name]["volumes"]
        source, _, target = volume.partition(":")
        assert source in declared and target == "/var/lib/edgefleet", name
        assert services[name]["read_only"] is True
    assert services["controller"]["volumes"] == services["worker"]["volumes"]  # bundles and jobs shared


def _mounted(service: dict[str, Any], target: str) -> Path:
    configs = _compose()["configs"]
    (source,) = [c["source"] for c in service["configs"] if c["target"] == target]
    return COMPOSE.parent / configs[source]["file"]


def test_compose_configs_load_with_the_daemons_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from cloud_controller.settings import load_settings as controller_settings
    from edge_agent.config import load_settings as agent_settings
    from edge_gateway.config import load_settings as gateway_settings

    services = _compose()["services"]
    secrets = COMPOSE.parent / "secrets"
    # Each under the environment its container gets: the image's, the env file's, the service's.
    cases = [
        ("controller", "Dockerfile.cloud", controller_settings, secrets / "controller.env.example"),
        ("worker", "Dockerfile.cloud", controller_settings, secrets / "controller.env.example"),
        ("gateway", "Dockerfile.edge", gateway_settings, secrets / "gateway.env.example"),
        ("agent", "Dockerfile.edge", agent_settings, None),
    ]
    loaded = {}
    for name, dockerfile, load, env_file in cases:
        with monkeypatch.context() as patch:
            environment = {**_image_env(dockerfile), **(_env_file(env_file) if env_file else {})}
            environment.update(services[name].get("environment") or {})
            for variable, value in environment.items():
                patch.setenv(variable, str(value))
            loaded[name] = load(_mounted(services[name], f"/etc/edgefleet/{_config_name(name)}.yaml"))
    assert loaded["controller"].database_url.startswith("postgresql+psycopg://edgefleet:")
    assert "@postgres:5432/" in loaded["controller"].database_url
    assert str(loaded["worker"].signing_key) == "/run/secrets/fleet-signing-key"
    gateway, agent = loaded["gateway"], loaded["agent"]
    assert gateway.upstream.url == "http://controller:8000" and gateway.upstream.token
    assert services["gateway"]["environment"]["EDGEFLEET_HEALTH_URL"].endswith(
        f":{gateway.http.port}/healthz"
    )
    assert (agent.mqtt.host, agent.mqtt.port, agent.site) == ("gateway", gateway.broker.port, gateway.site)
    assert agent.metrics.port == int(_image_env("Dockerfile.edge")["EDGEFLEET_AGENT__METRICS__PORT"])


def _config_name(service: str) -> str:
    """The config file a service reads: the worker shares the controller's."""
    return "controller" if service == "worker" else service


def test_compose_file_passes_docker_compose_config(tmp_path: Path) -> None:
    compose = shutil.which("docker-compose")
    command = [compose] if compose else None
    if command is None and shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30, check=False)
        command = ["docker", "compose"] if probe.returncode == 0 else None
    if command is None:
        pytest.skip("no Docker Compose here (neither docker-compose nor the docker compose plugin)")
    # A copy with placeholder secret files: compose refuses a secret or env file that does not exist.
    deploy = tmp_path / "deploy"
    shutil.copytree(COMPOSE.parent, deploy, ignore=shutil.ignore_patterns("k8s", "systemd"))
    for example in (deploy / "secrets").glob("*.example"):
        shutil.copy(example, example.with_suffix(""))
    for name in ("postgres_password", "fleet-signing.pem", "fleet-signing.pub"):
        (deploy / "secrets" / name).write_text("placeholder\n")
    result = subprocess.run(
        [*command, "-f", str(deploy / "compose.yaml"), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
