"""The model bundle manifest: what a device needs to know to run a model safely."""

from __future__ import annotations

import re
import time
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fleet_protocol.messages import ProtocolModel

MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"

_SEMVER = r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$"
_FILE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
#: A semantic version (``1.2.0``, ``2.0.0-rc.1``), as the manifest's ``version`` takes it.
SEMVER_PATTERN = _SEMVER


class Runtime(StrEnum):
    """Inference engines a device can run a bundle with."""

    ONNXRUNTIME = "onnxruntime"
    OPENVINO = "openvino"
    LITERT = "litert"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class TensorSpec(_Strict):
    """Name, shape and dtype of a model input or output. ``None`` marks a dynamic axis."""

    name: str
    shape: list[int | None]
    dtype: Literal["float32", "float16", "int8", "uint8", "int32", "int64"] = "float32"


class FileEntry(_Strict):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class Preprocessing(_Strict):
    """How raw sensor readings become the model input: order, then ``(x - mean) / scale``."""

    feature_names: list[str] = Field(min_length=1)
    mean: list[float] | None = None
    scale: list[float] | None = None

    @model_validator(mode="after")
    def _lengths_match(self) -> Preprocessing:
        n = len(self.feature_names)
        for name in ("mean", "scale"):
            values = getattr(self, name)
            if values is not None and len(values) != n:
                raise ValueError(f"{name} has {len(values)} values for {n} features")
        if self.scale is not None and any(s == 0 for s in self.scale):
            raise ValueError("scale must not contain zeros")
        if len(set(self.feature_names)) != n:
            raise ValueError("feature_names must be unique")
        return self


class Postprocessing(_Strict):
    """How outputs become a prediction, and which predictions are flagged."""

    task: Literal["classification", "regression"] = "classification"
    outputs_are_logits: bool = True
    labels: list[str] | None = None
    #: Predicted classes that mean "anomaly": such records always go up whole.
    anomaly_classes: list[int] = Field(default_factory=list)
    #: A prediction whose confidence is below this is flagged low-confidence.
    low_confidence_below: float | None = Field(default=None, ge=0.0, le=1.0)


class Lineage(_Strict):
    parent: str | None = Field(default=None, description="model_id@version this one derives from")
    training_data_sha256: str | None = None
    compiler_version: str | None = None


class BundleManifest(ProtocolModel):
    """``manifest.json`` of a bundle; ``manifest.sig`` signs its exact bytes."""

    model_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
    version: str = Field(pattern=_SEMVER, description="Semantic version")
    runtime: Runtime
    entrypoint: str = Field(description="The model file the runtime loads")
    files: dict[str, FileEntry] = Field(min_length=1)
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    preprocessing: Preprocessing
    postprocessing: Postprocessing = Field(default_factory=Postprocessing)
    opset: int | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    lineage: Lineage = Field(default_factory=Lineage)
    created_at: float = Field(default_factory=time.time)
    withdrawn_versions: list[Annotated[str, Field(pattern=_SEMVER)]] = Field(
        default_factory=list,
        max_length=1024,
        description="Versions of this model_id its publisher withdrew: a device that installed this"
        " bundle refuses to install any of them from then on. Signed with the rest of the manifest;"
        " left out of manifest.json when empty (older manifests have no such field)",
    )

    @model_validator(mode="after")
    def _withdraws_others(self) -> BundleManifest:
        if self.version in self.withdrawn_versions:
            raise ValueError(f"withdrawn_versions names {self.version}, the version of this very manifest")
        return self

    @model_validator(mode="after")
    def _files_are_safe(self) -> BundleManifest:
        for name in self.files:
            # A name with a path separator could make a verifier read outside the bundle.
            if not re.match(_FILE_NAME, name) or ".." in name:
                raise ValueError(f"file name {name!r} is not a plain file name")
        if self.entrypoint not in self.files:
            raise ValueError(f"entrypoint {self.entrypoint!r} is not listed in files")
        return self

    @property
    def ref(self) -> str:
        return f"{self.model_id}@{self.version}"
