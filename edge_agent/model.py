"""The active model: a verified bundle, its runtime, and what its outputs mean."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_agent.config import TrustedKeyConfig
from edge_agent.exceptions import ModelLoadError
from edge_agent.preprocess import Preprocessor
from edge_agent.runtimes import Runtime, open_runtime
from fleet_protocol import MANIFEST_FILE, BundleError, BundleManifest
from fleet_protocol.signing import TrustedKey, check_bundle, load_public_key

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Predictions:
    """Outputs of one batch, with the flags the outbox and gateway act on."""

    outputs: np.ndarray
    predicted: np.ndarray | None
    confidence: np.ndarray | None
    anomaly: np.ndarray
    low_confidence: np.ndarray


class LoadedModel:
    """A bundle that verified and loaded; ``predict`` runs scaled batches."""

    def __init__(
        self,
        bundle_dir: Path,
        manifest: BundleManifest,
        runtime: Runtime,
        manifest_sha256: str = "",
        signer: TrustedKey | None = None,
    ) -> None:
        self.bundle_dir = bundle_dir
        self.manifest = manifest
        #: The trusted key whose signature verified (its retirement, if any, with it).
        self.signer = signer
        #: What a desired state names this bundle by: the sha256 of its manifest's bytes.
        self.manifest_sha256 = manifest_sha256
        self.runtime = runtime
        self.preprocessor = Preprocessor(manifest.preprocessing)
        post = manifest.postprocessing
        self._classify = post.task == "classification"
        self._softmax = post.outputs_are_logits
        self._anomaly_classes = np.asarray(post.anomaly_classes, dtype=np.int64)
        self._low_conf = post.low_confidence_below

    def predict(self, scaled: np.ndarray) -> Predictions:
        outputs = self.runtime.infer(scaled)
        n = len(outputs)
        if not self._classify:
            false = np.zeros(n, dtype=bool)
            return Predictions(outputs, None, None, false, false)
        probs = _softmax(outputs) if self._softmax else outputs
        predicted = probs.argmax(axis=1)
        confidence = np.clip(probs.max(axis=1), 0.0, 1.0)
        anomaly = np.isin(predicted, self._anomaly_classes)
        low = confidence < self._low_conf if self._low_conf is not None else np.zeros(n, dtype=bool)
        return Predictions(outputs, predicted, confidence, anomaly, low)

    def close(self) -> None:
        self.runtime.close()


def output_problem(model: LoadedModel, outputs: np.ndarray, rows: int) -> str | None:
    """What is wrong with a batch's outputs (the wrong shape, non-finite values), or None."""
    width = model.manifest.outputs[0].shape[-1]
    if outputs.shape[0] != rows or (width is not None and outputs.shape[-1] != width):
        declared = model.manifest.outputs[0].shape
        return f"gave outputs of shape {list(outputs.shape)}, the manifest declares {declared}"
    if not np.isfinite(outputs).all():
        return f"gave {int((~np.isfinite(outputs)).sum())} non-finite outputs on {rows} inputs"
    return None


def load_trusted_keys(entries: list[TrustedKeyConfig]) -> list[TrustedKey]:
    """The configured keys with their retirements.

    Raises
    ------
    ModelLoadError
        A key file unreadable or not an ed25519 PEM, or one key listed twice (which retirement
        would hold is then anyone's guess).
    """
    keys: dict[str, TrustedKey] = {}
    for entry in entries:
        try:
            key = TrustedKey(load_public_key(entry.path), entry.retired_at)
        except OSError as exc:
            raise ModelLoadError(f"cannot read trusted key {exc.filename}: {exc.strerror}") from None
        except BundleError as exc:
            raise ModelLoadError(str(exc)) from None
        if key.key_id in keys:
            raise ModelLoadError(f"trusted_keys lists key {key.key_id} twice ({entry.path}): list it once")
        keys[key.key_id] = key
    return list(keys.values())


def load_model(
    bundle_dir: Path,
    trusted_keys: Sequence[Ed25519PublicKey | TrustedKey],
    *,
    threads: int = 1,
    allow_retired: bool = False,
) -> LoadedModel:
    """Verify a bundle's signature and digests, then load it in its runtime.

    ``allow_retired`` accepts a bundle signed by a key retired since: only for a bundle this device
    installed already (its active, previous or provisioned one), never for a new one.

    Raises
    ------
    ModelLoadError
        Saying why the bundle cannot run; nothing unverified is ever loaded.
    """
    if not bundle_dir.is_dir():
        raise ModelLoadError(f"model bundle {bundle_dir} does not exist")
    try:
        verified = check_bundle(bundle_dir, trusted_keys, allow_retired=allow_retired)
    except BundleError as exc:
        raise ModelLoadError(f"refusing model bundle {bundle_dir}: {exc}") from None
    manifest = verified.manifest
    runtime = open_runtime(bundle_dir, manifest, threads=threads)
    log.info("loaded %s with %s from %s", manifest.ref, manifest.runtime.value, bundle_dir)
    sha = hashlib.sha256((bundle_dir / MANIFEST_FILE).read_bytes()).hexdigest()
    return LoadedModel(bundle_dir, manifest, runtime, sha, verified.signer)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)
