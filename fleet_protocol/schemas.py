"""Writes the JSON Schema of every payload to ``docs/protocol/``.

Run ``python -m fleet_protocol.schemas [DIR]``; a test fails when the files are stale.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from fleet_protocol.bundle import BundleManifest
from fleet_protocol.ingest import IngestBatch
from fleet_protocol.labels import LabelBatch, LabelUpload
from fleet_protocol.messages import (
    DesiredState,
    DeviceEvent,
    ProtocolModel,
    ReportedState,
    TelemetryBatch,
)
from fleet_protocol.reference import DriftReference

#: File name -> model. The topic each travels on is in the schema's description.
PAYLOADS: dict[str, type[ProtocolModel]] = {
    "telemetry-batch": TelemetryBatch,
    "reported-state": ReportedState,
    "desired-state": DesiredState,
    "device-event": DeviceEvent,
    "bundle-manifest": BundleManifest,
    "ingest-batch": IngestBatch,
    "label-batch": LabelBatch,
    "label-upload": LabelUpload,
    "drift-reference": DriftReference,
}


def render_schemas() -> dict[str, str]:
    """File name -> JSON Schema text, for every payload."""
    out = {}
    for name, model in PAYLOADS.items():
        schema = model.model_json_schema()
        schema["$id"] = f"https://edgefleet.dev/protocol/{name}.v{model.CURRENT_VERSION}.json"
        out[f"{name}.schema.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def write_schemas(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for file_name, text in render_schemas().items():
        path = directory / file_name
        path.write_text(text)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in {"-h", "--help"}:
        print(__doc__)
        return 0
    target = Path(args[0]) if args else Path("docs/protocol")
    for path in write_schemas(target):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
