"""Inference backends, chosen by the bundle manifest's ``runtime``.

Imports are lazy: a device that ships only onnxruntime never imports OpenVINO.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from edge_agent.exceptions import ModelLoadError
from edge_agent.runtimes.base import Runtime
from fleet_protocol import BundleManifest
from fleet_protocol import Runtime as RuntimeName

_BACKENDS: dict[RuntimeName, tuple[str, str]] = {
    RuntimeName.ONNXRUNTIME: ("edge_agent.runtimes.onnxruntime", "OnnxRuntime"),
    RuntimeName.OPENVINO: ("edge_agent.runtimes.openvino", "OpenVinoRuntime"),
    RuntimeName.LITERT: ("edge_agent.runtimes.litert", "LiteRtRuntime"),
}


def open_runtime(bundle_dir: Path, manifest: BundleManifest, *, threads: int = 1) -> Runtime:
    """Load a verified bundle's model with the engine its manifest names."""
    module_name, class_name = _BACKENDS[manifest.runtime]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelLoadError(
            f"bundle {manifest.ref} needs the {manifest.runtime.value} runtime, which is not"
            f" installed on this device ({exc.name})"
        ) from None
    runtime_cls: type[Runtime] = getattr(module, class_name)
    return runtime_cls(bundle_dir / manifest.entrypoint, manifest, threads=threads)


__all__ = ["Runtime", "open_runtime"]
