"""The active model: a verified bundle, its runtime, and what its outputs mean."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_agent.exceptions import ModelLoadError
from edge_agent.preprocess import Preprocessor
from edge_agent.runtimes import Runtime, open_runtime
from fleet_protocol import MANIFEST_FILE, BundleError, BundleManifest
from fleet_protocol.signing import load_public_key, verify_bundle

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
        self, bundle_dir: Path, manifest: BundleManifest, runtime: Runtime, manifest_sha256: str = ""
    ) -> None:
        self.bundle_dir = bundle_dir
        self.manifest = manifest
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


def load_trusted_keys(paths: list[Path]) -> list[Ed25519PublicKey]:
    try:
        return [load_public_key(p) for p in paths]
    except OSError as exc:
        raise ModelLoadError(f"cannot read trusted key {exc.filename}: {exc.strerror}") from None
    except BundleError as exc:
        raise ModelLoadError(str(exc)) from None


def load_model(bundle_dir: Path, trusted_keys: list[Ed25519PublicKey], *, threads: int = 1) -> LoadedModel:
    """Verify a bundle's signature and digests, then load it in its runtime.

    Raises
    ------
    ModelLoadError
        Saying why the bundle cannot run; nothing unverified is ever loaded.
    """
    if not bundle_dir.is_dir():
        raise ModelLoadError(f"model bundle {bundle_dir} does not exist")
    try:
        manifest = verify_bundle(bundle_dir, trusted_keys)
    except BundleError as exc:
        raise ModelLoadError(f"refusing model bundle {bundle_dir}: {exc}") from None
    runtime = open_runtime(bundle_dir, manifest, threads=threads)
    log.info("loaded %s with %s from %s", manifest.ref, manifest.runtime.value, bundle_dir)
    sha = hashlib.sha256((bundle_dir / MANIFEST_FILE).read_bytes()).hexdigest()
    return LoadedModel(bundle_dir, manifest, runtime, sha)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)
