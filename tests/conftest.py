"""Fixtures shared by every test package: a real broker, real models, signing keys."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleet_protocol.signing import generate_private_key, public_key_pem
from tests.utils.broker import Mosquitto


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A Mosquitto of this test's own, on a free port."""
    mosquitto = Mosquitto(tmp_path / "mosquitto")
    mosquitto.start()
    yield mosquitto
    mosquitto.stop()


@pytest.fixture(scope="session")
def signing_key() -> Ed25519PrivateKey:
    return generate_private_key()


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
