"""Fixtures shared by every test package: a real broker, real models, signing keys."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from fleet_protocol.signing import generate_private_key, public_key_pem
from tests.utils import fleet_sim_capture
from tests.utils.broker import Mosquitto
from tests.utils.once_per_run import once_per_run

ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files with slow tests first, each file's tests still together and in order.

    `make test` hands whole files to its workers (``--dist loadfile``) in this order
    (``--no-loadscope-reorder``; xdist's default puts the files with the most tests first, which
    left the few long files of one or two tests running alone at the end, one worker idle). Long
    files first, and the many short ones fill in at the end.
    """
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: files stay contiguous


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A Mosquitto of this test's own, on a free port."""
    mosquitto = Mosquitto(tmp_path / "mosquitto")
    mosquitto.start()
    yield mosquitto
    mosquitto.stop()


@pytest.fixture(scope="session")
def signing_key(tmp_path_factory: pytest.TempPathFactory) -> Ed25519PrivateKey:
    """One key for the run, the same in every xdist worker (bundles built once are shared)."""
    raw = once_per_run(
        tmp_path_factory,
        "signing-key",
        lambda _: generate_private_key().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()),
    )
    return Ed25519PrivateKey.from_private_bytes(raw)


@pytest.fixture(scope="session")
def public_key_file(tmp_path_factory: pytest.TempPathFactory, signing_key: Ed25519PrivateKey) -> Path:
    path = tmp_path_factory.mktemp("keys") / "fleet.pub"
    path.write_bytes(public_key_pem(signing_key.public_key()))
    return path


@pytest.fixture(scope="session")
def trained_mlp():  # type: ignore[no-untyped-def]
    """A 16 -> 64 -> 4 MLP trained on the synthetic sensor (about two seconds)."""
    from simulators.model_factory import train_mlp

    return train_mlp(seed=0)


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory, trained_mlp, signing_key) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    """Signed bundles of that model: onnx-fp32, onnx-int8, openvino-fp32."""
    from simulators.model_factory import build_bundles

    return build_bundles(trained_mlp, tmp_path_factory.mktemp("bundles"), signing_key)


@pytest.fixture(scope="session")
def ci_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    """`fleet-sim run fleet_configs/ci.yaml` once for the session (about a minute): its result and run
    directory, for tests/simulators (invariants, report) and tests/security (its logs and secrets,
    `fleet_sim_capture.captured(out)`)."""
    out = tmp_path_factory.mktemp("ci-run") / "run"
    return fleet_sim_capture.run(ROOT / "fleet_configs" / "ci.yaml", out), out
