"""Model versions made during a run, for the timeline's rollouts: trained, built, signed and uploaded.

A good release is the first model's recipe again with another seed (`compile_first_model`): a
real retrained model, built, measured and signed by `model_compiler`. A bad one carries a
defect (`simulators.defects`): it is signed and uploads like any other, and only the devices'
checks stop it. ``tampered_signature`` is the exception the controller does not let through
(it verifies signatures at upload): the release uploaded is good, and what is tampered with is
the copy an attacker plants in a site gateway's bundle cache, under the good bundle's address.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from model_compiler.archive import pack
from simulators.controller import ControllerProcess
from simulators.scenario import SimError

MODEL_ID = "sensor-mlp"


@dataclass
class Release:
    version: str
    defect: str | None
    bundles: dict[str, Path]  # target -> signed bundle folder
    accuracy: float
    seconds: float
    #: target -> sha256 of the bundle's .tar, its address at the controller (set by `upload`).
    uploaded: dict[str, str] = field(default_factory=dict)
    #: target -> a .tar of that bundle with its manifest edited after signing (``tampered_signature``).
    tampered: dict[str, Path] = field(default_factory=dict)


def build_release(
    out_dir: Path, key: Ed25519PrivateKey, targets: list[str], *, version: str, seed: int, defect: str | None
) -> Release:
    """Train and build ``version`` (with ``defect`` built in, if any); blocking, a few seconds."""
    from simulators.defects import build_defective_bundle, tamper_manifest
    from simulators.model_factory import compile_first_model, train_mlp

    started = time.monotonic()
    out_dir.mkdir(parents=True, exist_ok=True)
    if defect is None or defect == "tampered_signature":
        compiled = compile_first_model(out_dir, key, targets, model_id=MODEL_ID, version=version, seed=seed)
        release = Release(version, defect, compiled.bundles, compiled.accuracy, 0.0)
        if defect == "tampered_signature":
            for target, bundle in compiled.bundles.items():
                with tempfile.TemporaryDirectory() as tmp:
                    copy = Path(tmp) / target
                    shutil.copytree(bundle, copy)
                    tamper_manifest(copy)
                    release.tampered[target] = Path(
                        shutil.move(pack(copy), out_dir / f"{target}.tampered.tar")
                    )
    else:
        trained = train_mlp(seed=seed)
        bundle = build_defective_bundle(
            trained, defect, out_dir / "onnx-fp32", key, model_id=MODEL_ID, version=version
        )
        release = Release(version, defect, {"onnx-fp32": bundle}, trained.accuracy, 0.0)
    release.seconds = time.monotonic() - started
    return release


def upload(controller: ControllerProcess, release: Release) -> None:
    """Upload every bundle of the release to the controller's registry (blocking)."""
    with controller.client("operator") as client:
        for target, bundle in release.bundles.items():
            response = client.post("/api/v1/bundles", content=pack(bundle).read_bytes())
            if response.status_code != 201:
                raise SimError(f"the controller refused {release.version} ({target}): {response.text}")
            release.uploaded[target] = response.json()["sha256"]
