"""Bad model versions on purpose, for rollouts that must stop at their canary.

Each defect is a real, signed bundle that a careless pipeline could ship: it loads and runs,
and only the device's checks (smoke test, shadow gates, signature) tell it from a good one.

- ``nan_outputs``: every output is NaN (a broken export).
- ``slow_10x``: right answers, a hundred times the work (a model far too big for the device).
- ``disagrees``: confident answers, shifted by one class (labels mixed up in training).
- ``tampered_signature``: a good bundle whose manifest was edited after signing.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from torch import nn

from fleet_protocol import MANIFEST_FILE, Runtime
from fleet_protocol.reference import DRIFT_REFERENCE_FILE
from model_compiler.bundle import write_bundle
from model_compiler.reference import drift_reference, write_reference
from simulators.model_factory import FEATURE_NAMES, N_FEATURES, TrainedModel, export_onnx, manifest_fields

DEFECTS = ("nan_outputs", "slow_10x", "disagrees", "tampered_signature")


class _NaN(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * float("nan")


class _Slow(nn.Module):
    """The same logits plus zero times a wide stack computed from the input (not foldable)."""

    def __init__(self, inner: nn.Module, width: int = 2048, depth: int = 6) -> None:
        super().__init__()
        self.inner = inner
        self.wide = nn.ModuleList(
            [nn.Linear(N_FEATURES, width)] + [nn.Linear(width, width) for _ in range(depth)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for layer in self.wide:
            h = torch.relu(layer(h))
        return self.inner(x) + 0.0 * h.sum(dim=1, keepdim=True)


class _Shifted(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.roll(self.inner(x), shifts=1, dims=1)


def build_defective_bundle(
    trained: TrainedModel,
    defect: str,
    out: Path,
    key: Ed25519PrivateKey,
    *,
    model_id: str = "sensor-mlp",
    version: str,
) -> Path:
    """A signed ONNX fp32 bundle of ``trained`` with ``defect`` built in; returns its folder."""
    if defect not in DEFECTS:
        raise ValueError(f"unknown defect {defect!r} (known: {', '.join(DEFECTS)})")
    wrapped = {
        "nan_outputs": _NaN,
        "slow_10x": _Slow,
        "disagrees": _Shifted,
        "tampered_signature": lambda m: m,
    }[defect](trained.module)
    wrapped.eval()
    faulty = TrainedModel(
        wrapped,  # type: ignore[arg-type]
        trained.mean,
        trained.scale,
        trained.accuracy,
        trained.x_eval,
        trained.y_eval,
        trained.x_train,
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        onnx = export_onnx(faulty, work / "model.onnx")
        reference = write_reference(
            drift_reference(trained.x_train, FEATURE_NAMES), work / DRIFT_REFERENCE_FILE
        )
        fields = manifest_fields(
            trained, model_id=model_id, version=version, runtime=Runtime.ONNXRUNTIME, entrypoint="model.onnx"
        )
        write_bundle(out, {"model.onnx": onnx, DRIFT_REFERENCE_FILE: reference}, key, **fields)
    if defect == "tampered_signature":
        tamper_manifest(out)
    return out


def tamper_manifest(bundle: Path) -> None:
    """Edit a signed manifest (a better accuracy than measured): its signature no longer verifies."""
    path = bundle / MANIFEST_FILE
    manifest = json.loads(path.read_bytes())
    manifest.setdefault("metrics", {})["accuracy"] = 0.999
    path.write_bytes(json.dumps(manifest).encode())
