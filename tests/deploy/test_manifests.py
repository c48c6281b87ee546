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
#: The image each workload names (kustomization.yaml maps it to a registry) and the file that builds it.
DOCKERFILES = {"edgefleet-cloud": "Dockerfile.cloud", "edgefleet-edge": "Dockerfile.edge"}


def _manifests() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def _documents() -> list[dict[str, Any]]:
    return [doc for path in _manifests() for doc in yaml.safe_load_all(path.read_text()) if doc]


def _by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in _documents() if doc["kind"] == kind}


def _pod_specs() -> dict[str, dict[str, Any]]:
    workloads = {**_by_kind("Deployment"), **_by_kind("DaemonSet"), **_by_kind("Job")}
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
    used = {c["image"] for spec in _pod_specs().values() for c in spec["containers"]}
    assert used == {image["name"] for image in kustomization["images"]} == DOCKERFILES.keys()


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
    for name, spec in _pod_specs().items():
        for volume in spec.get("volumes", []):
            if "secret" in volume:  # never world-readable (group: the pod's fsGroup, the image's GID)
                assert volume["secret"]["defaultMode"] & 0o007 == 0, f"{name}: {volume['name']}"


def test_pods_run_as_the_images_uid_with_a_read_only_root_and_bounded_resources() -> None:
    assert {"edgefleet-superlink", "edgefleet-gateway"} <= _pod_specs().keys()
    for name, spec in _pod_specs().items():
        pod = spec["securityContext"]
        (image,) = {c["image"] for c in spec["containers"]}
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] == _image_uid(DOCKERFILES[image]), name
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


# --- the Flower SuperLink ------------------------------------------------------------------------


def _container(workload: str) -> dict[str, Any]:
    (container,) = _pod_specs()[workload]["containers"]
    return container


def _flags(container: dict[str, Any]) -> dict[str, str | bool]:
    """``--name=value`` and ``--flag`` arguments (the form the manifests use) as a mapping."""
    flags: dict[str, str | bool] = {}
    for arg in container["args"]:
        assert arg.startswith("--"), arg
        name, sep, value = arg[2:].partition("=")
        flags[name] = value if sep else True
    return flags


def _mount_of(spec: dict[str, Any], container: dict[str, Any], path: str) -> tuple[dict, dict]:
    """The volume mount holding ``path`` (the deepest) and its volume."""
    mounts = [m for m in container["volumeMounts"] if f"{path}/".startswith(f"{m['mountPath'].rstrip('/')}/")]
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    return mount, volume


def test_superlink_serves_tls_from_a_secret_with_node_auth() -> None:
    spec = _pod_specs()["edgefleet-superlink"]
    container = _container("edgefleet-superlink")
    assert container["command"] == ["flower-superlink"]
    flags = _flags(container)
    assert "insecure" not in flags and flags["enable-supernode-auth"] is True
    for flag in ("ssl-ca-certfile", "ssl-certfile", "ssl-keyfile"):
        _, volume = _mount_of(spec, container, str(flags[flag]))
        assert volume["secret"]["secretName"] == "edgefleet-superlink-tls", flag
    # Nothing installed at run time, listening beyond the pod's loopback (Flower's default host).
    assert flags["disable-runtime-dependency-installation"] is True and flags["host"] == "0.0.0.0"
    # The state on a volume of its own, in one pod: two SuperLinks would not share it.
    _, state = _mount_of(spec, container, str(flags["database"]))
    assert state["persistentVolumeClaim"]["claimName"] == "edgefleet-superlink-state"
    deployment = _by_kind("Deployment")["edgefleet-superlink"]
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    assert _by_kind("PersistentVolumeClaim")["edgefleet-superlink-state"]["spec"]["accessModes"] == [
        "ReadWriteOnce"
    ]


def test_superlink_flags_are_flowers() -> None:
    pytest.importorskip("flwr")
    from flwr.superlink.cli.flower_superlink import _parse_args_run_superlink

    args = _parse_args_run_superlink().parse_args(_container("edgefleet-superlink")["args"])
    assert args.enable_supernode_auth and not args.insecure and args.runtime_dependency_install is False
    assert args.port == int(_flags(_container("edgefleet-superlink"))["port"])


def test_superlink_sees_the_workers_job_directory_at_the_same_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from cloud_controller.settings import load_settings

    config = tmp_path / "controller.yaml"
    config.write_text(_by_kind("ConfigMap")["edgefleet-controller"]["data"]["controller.yaml"])
    for name, value in _image_env("Dockerfile.cloud").items():
        monkeypatch.setenv(name, value)
    job_dir = str(load_settings(config).job_dir)
    claims = {}
    for name in ("edgefleet-worker", "edgefleet-superlink"):
        mount, volume = _mount_of(_pod_specs()[name], _container(name), job_dir)
        assert not mount.get("readOnly"), name  # the ServerApp writes rounds.jsonl and the result
        claims[name] = (mount["mountPath"], volume["persistentVolumeClaim"]["claimName"])
    assert claims["edgefleet-worker"] == claims["edgefleet-superlink"]
    claim = _by_kind("PersistentVolumeClaim")[claims["edgefleet-worker"][1]]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


def test_superlink_service_exposes_the_port_the_worker_and_supernodes_use() -> None:
    from cloud_controller.job_models import FlowerFederation

    container = _container("edgefleet-superlink")
    labels = _by_kind("Deployment")["edgefleet-superlink"]["spec"]["template"]["metadata"]["labels"]
    service = _by_kind("Service")["edgefleet-superlink"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"  # the Control API stays in the cluster
    (port,) = service["spec"]["ports"]
    (container_port,) = container["ports"]
    assert port["targetPort"] == container_port["name"]
    assert container_port["containerPort"] == int(_flags(container)["port"])
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "flower", "scheme": "HTTPS"}
    # What a deployment job names, as the controller validates it; the CA file is mounted in the worker.
    address = f"{service['metadata']['name']}.edgefleet.svc:{port['port']}"
    ca_file = "/etc/edgefleet/fleet-ca/ca.pem"
    FlowerFederation(superlink=address, ca_file=ca_file)
    assert address in (K8S / "superlink-service.yaml").read_text()
    mount, volume = _mount_of(_pod_specs()["edgefleet-worker"], _container("edgefleet-worker"), ca_file)
    assert volume["configMap"] == {"name": "edgefleet-fleet-ca", "optional": True} and mount["readOnly"]


# --- the site gateway ----------------------------------------------------------------------------


def _gateway_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """The gateway ConfigMap's settings, under the image's and the DaemonSet's environment."""
    from edge_gateway.config import load_settings

    config = tmp_path / "gateway.yaml"
    config.write_text(_by_kind("ConfigMap")["edgefleet-gateway"]["data"]["gateway.yaml"])
    for name, value in _image_env("Dockerfile.edge").items():
        monkeypatch.setenv(name, value)
    for variable in _container("edgefleet-gateway")["env"]:
        value = variable.get("value", "from-a-secret")  # a secretKeyRef: any token will do
        monkeypatch.setenv(variable["name"], value)
    return load_settings(config)


def test_gateway_daemonset_runs_on_the_sites_edge_node() -> None:
    daemonset = _by_kind("DaemonSet")["edgefleet-gateway"]
    spec = daemonset["spec"]["template"]["spec"]
    assert spec["nodeSelector"]["node-role.kubernetes.io/edge"] == ""
    assert {"key": "node-role.kubernetes.io/edge", "operator": "Exists", "effect": "NoSchedule"} in spec[
        "tolerations"
    ]
    # Devices on the site LAN reach the node's own address.
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    # Ports and queue are the node's: the old pod goes before the new one starts.
    assert daemonset["spec"]["updateStrategy"]["rollingUpdate"]["maxSurge"] == 0
    container = _container("edgefleet-gateway")
    assert container["command"] == ["edge-gateway"] and container["args"][0] == "run"


def test_gateway_config_matches_its_daemonset(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = _gateway_settings(monkeypatch, tmp_path)
    spec = _pod_specs()["edgefleet-gateway"]
    container = _container("edgefleet-gateway")
    assert spec["nodeSelector"]["edgefleet.io/site"] == settings.site
    config = container["args"][container["args"].index("--config") + 1]
    mount, volume = _mount_of(spec, container, config)
    assert volume["configMap"]["name"] == "edgefleet-gateway" and mount["subPath"] == "gateway.yaml"
    # The token from a Secret (never in the ConfigMap), the certificates from a Secret too.
    assert "token" not in _by_kind("ConfigMap")["edgefleet-gateway"]["data"]["gateway.yaml"]
    assert settings.upstream.token == "from-a-secret"
    serve, tls = settings.broker.serve_tls, settings.broker.tls
    for path in (serve.cert_file, serve.key_file, serve.ca_file, serve.crl_file, serve.devices_file):
        _, volume = _mount_of(spec, container, str(path))
        assert volume["secret"]["secretName"] == "edgefleet-gateway-tls", path
    for path in (tls.cert_file, tls.key_file, tls.ca_file):
        _, volume = _mount_of(spec, container, str(path))
        assert volume["secret"]["secretName"] == "edgefleet-gateway-tls", path
    for key in settings.trusted_keys:
        assert _mount_of(spec, container, str(key))[1]["configMap"]["name"] == "edgefleet-trusted-keys"
    # The broker (MQTT over TLS) and the HTTP server on the ports the pod declares; probes on its routes.
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"mqtts": settings.broker.port, "http": settings.http.port} and ports["mqtts"] == 8883
    routes = (ROOT / "edge_gateway" / "site_http.py").read_text()
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        path = container[probe]["httpGet"]["path"]
        assert f'add_get("{path}"' in routes, probe
    health = {v["name"]: v.get("value") for v in container["env"]}["EDGEFLEET_HEALTH_URL"]
    assert health == f"http://127.0.0.1:{settings.http.port}/healthz"


def test_gateway_queue_survives_a_pod_restart(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = _gateway_settings(monkeypatch, tmp_path)
    spec = _pod_specs()["edgefleet-gateway"]
    mount, volume = _mount_of(spec, _container("edgefleet-gateway"), str(settings.data_dir))
    assert not mount.get("readOnly")
    # On the node (an emptyDir dies with the pod), at the systemd unit's StateDirectory, which the node
    # prepares for UID 10001 (kubelet would create a missing one as root's).
    assert volume["hostPath"] == {"path": str(settings.data_dir), "type": "Directory"}
    unit = (ROOT / "deploy" / "systemd" / "edge-gateway.service").read_text()
    assert f"StateDirectory={settings.data_dir.relative_to('/var/lib')}" in unit.splitlines()


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
