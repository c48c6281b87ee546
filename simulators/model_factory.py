"""Makes a first real model for a simulated fleet: a small MLP trained on the synthetic sensor.

Until the fleet's models come from ``model_compiler``'s full pipeline, this trains,
exports to ONNX (fp32 and int8), converts to OpenVINO IR, and signs a bundle for each.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from torch import nn

from edge_agent.sources.synthetic import ANOMALY_CLASS, CLASSES, FEATURE_NAMES, N_FEATURES, make_dataset
from fleet_protocol import Postprocessing, Preprocessing, Runtime, TensorSpec
from fleet_protocol.reference import DRIFT_REFERENCE_FILE
from model_compiler.bundle import write_bundle
from model_compiler.reference import drift_reference, write_reference


class MLP(nn.Module):
    """16 -> 64 -> 4. Its own Module (not a bare Sequential) so NNCF can wrap it."""

    def __init__(self, n_in: int = N_FEATURES, hidden: int = 64, n_out: int = len(CLASSES)) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc2 = nn.Linear(hidden, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


@dataclass
class TrainedModel:
    module: MLP
    mean: np.ndarray
    scale: np.ndarray
    accuracy: float
    x_eval: np.ndarray
    y_eval: np.ndarray
    x_train: np.ndarray

    def logits(self, raw: np.ndarray) -> np.ndarray:
        """Torch reference outputs on raw (unscaled) features."""
        with torch.no_grad():
            return self.module(torch.from_numpy((raw - self.mean) / self.scale)).numpy()


def train_mlp(seed: int = 0, n: int = 6000, epochs: int = 30) -> TrainedModel:
    """Train on generated data for a second or two on a CPU."""
    torch.manual_seed(seed)
    x, y = make_dataset(n, seed=seed)
    x_eval, y_eval = make_dataset(1000, seed=seed + 1000)
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    xs = torch.from_numpy((x - mean) / scale)
    ys = torch.from_numpy(y)
    model = MLP()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(epochs):
        for i in range(0, n, 256):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(xs[i : i + 256]), ys[i : i + 256])
            loss.backward()
            optimizer.step()
    model.eval()
    trained = TrainedModel(
        model, mean.astype(np.float32), scale.astype(np.float32), 0.0, x_eval, y_eval, x_train=x
    )
    trained.accuracy = float((trained.logits(x_eval).argmax(axis=1) == y_eval).mean())
    return trained


def export_onnx(trained: TrainedModel, path: Path, *, dynamic_batch: bool = True) -> Path:
    """torch -> ONNX, weights inside the file, batch axis dynamic."""
    example = torch.zeros(1, N_FEATURES)
    torch.onnx.export(
        trained.module,
        (example,),
        str(path),
        input_names=["features"],
        output_names=["logits"],
        dynamic_axes={"features": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None,
        opset_version=17,
        external_data=False,
        dynamo=False,
    )
    return path


def quantize_onnx_int8(src: Path, dst: Path) -> Path:
    """Dynamic int8 quantization with onnxruntime (no calibration data needed)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    return dst


def convert_openvino(src: Path, out_dir: Path) -> Path:
    """ONNX -> OpenVINO IR (``model.xml`` + ``model.bin``)."""
    import openvino as ov

    xml = out_dir / "model.xml"
    ov.save_model(ov.convert_model(str(src)), str(xml), compress_to_fp16=False)
    return xml


def manifest_fields(
    trained: TrainedModel,
    *,
    model_id: str,
    version: str,
    runtime: Runtime,
    entrypoint: str,
    batch: int | None = None,
) -> dict[str, object]:
    return {
        "model_id": model_id,
        "version": version,
        "runtime": runtime,
        "entrypoint": entrypoint,
        "inputs": [TensorSpec(name="features", shape=[batch, N_FEATURES])],
        "outputs": [TensorSpec(name="logits", shape=[batch, len(CLASSES)])],
        "preprocessing": Preprocessing(
            feature_names=FEATURE_NAMES, mean=trained.mean.tolist(), scale=trained.scale.tolist()
        ),
        "postprocessing": Postprocessing(
            labels=CLASSES, anomaly_classes=[ANOMALY_CLASS], low_confidence_below=0.5
        ),
        "metrics": {"accuracy": trained.accuracy},
    }


def build_bundles(
    trained: TrainedModel,
    out_dir: Path,
    key: Ed25519PrivateKey,
    *,
    model_id: str = "sensor-mlp",
    version: str = "1.0.0",
) -> dict[str, Path]:
    """Signed bundles ``onnx-fp32``, ``onnx-int8`` and ``openvino-fp32`` under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    bundles = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fp32 = export_onnx(trained, work / "model.onnx")
        int8 = quantize_onnx_int8(fp32, work / "model.int8.onnx")
        xml = convert_openvino(fp32, work)
        targets = {
            "onnx-fp32": (Runtime.ONNXRUNTIME, {"model.onnx": fp32}, "model.onnx"),
            "onnx-int8": (Runtime.ONNXRUNTIME, {"model.onnx": int8}, "model.onnx"),
            "openvino-fp32": (
                Runtime.OPENVINO,
                {"model.xml": xml, "model.bin": xml.with_suffix(".bin")},
                "model.xml",
            ),
        }
        reference = write_reference(
            drift_reference(trained.x_train, FEATURE_NAMES), work / DRIFT_REFERENCE_FILE
        )
        for name, (runtime, files, entry) in targets.items():
            fields = manifest_fields(
                trained, model_id=model_id, version=version, runtime=runtime, entrypoint=entry
            )
            write_bundle(out_dir / name, {**files, DRIFT_REFERENCE_FILE: reference}, key, **fields)
            bundles[name] = out_dir / name
    return bundles


@dataclass
class CompiledModel:
    bundles: dict[str, Path]  # target -> bundle directory (a .tar beside each)
    accuracy: float
    table: list[dict[str, object]]
    seconds: float


def compile_first_model(
    out_dir: Path,
    key: Ed25519PrivateKey,
    targets: list[str],
    *,
    model_id: str = "sensor-mlp",
    version: str = "1.0.0",
    seed: int = 0,
) -> CompiledModel:
    """Train the MLP on generated data, then build, measure and sign it with `model_compiler`."""
    from model_compiler.build import BuildRequest, build

    out_dir.mkdir(parents=True, exist_ok=True)
    trained = train_mlp(seed=seed)
    weights = out_dir / "mlp.pt"
    torch.save(trained.module.state_dict(), weights)
    meta = {"feature_names": np.array(FEATURE_NAMES), "mean": trained.mean, "scale": trained.scale}
    calibration, evaluation = out_dir / "calibration.npz", out_dir / "eval.npz"
    scaled_train = ((trained.x_train - trained.mean) / trained.scale).astype(np.float32)
    np.savez(calibration, x=scaled_train[:1000], **meta)
    scaled_eval = ((trained.x_eval - trained.mean) / trained.scale).astype(np.float32)
    np.savez(evaluation, x=scaled_eval, y=trained.y_eval, **meta)
    report = build(
        BuildRequest(
            model=f"{Path(__file__).resolve()}:MLP",
            weights=weights,
            calibration=calibration,
            eval_data=evaluation,
            out=out_dir / "bundles",
            key=key,
            targets=targets,
            model_id=model_id,
            version=version,
            labels=CLASSES,
            anomaly_classes=[ANOMALY_CLASS],
        )
    )
    return CompiledModel(
        report.bundles, trained.accuracy, [row.as_dict() for row in report.rows], report.seconds
    )
