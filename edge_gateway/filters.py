"""Which records go up whole: the device classes of the gateway's config, applied per record.

Flagged records (anomaly or low confidence) always go up whole. Sampling is decided by a hash
of ``(device_id, seq)``, not a random draw, so a record seen again after a crash gets the same
answer. Deadband and class-change memory is per device and in memory only: after a restart
the first record of each device goes up, which errs on the side of sending.
"""

from __future__ import annotations

import fnmatch
import zlib

from edge_gateway.config import DeviceClass
from fleet_protocol import TelemetryRecord

_DEFAULT = DeviceClass(name="default")


class Reducer:
    def __init__(self, classes: list[DeviceClass]) -> None:
        self.classes = classes
        self._class_of: dict[tuple[str, str], DeviceClass] = {}
        self._last_features: dict[str, list[float]] = {}
        self._last_class: dict[str, int | None] = {}

    def class_for(self, device_id: str, model_id: str) -> DeviceClass:
        key = (device_id, model_id)
        found = self._class_of.get(key)
        if found is None:
            found = next(
                (
                    c
                    for c in self.classes
                    if any(fnmatch.fnmatchcase(device_id, p) for p in c.devices)
                    and any(fnmatch.fnmatchcase(model_id, p) for p in c.models)
                ),
                _DEFAULT,
            )
            self._class_of[key] = found
        return found

    def forward_many(self, cls: DeviceClass, records: list[TelemetryRecord]) -> list[bool]:
        """`forward` for each record in turn; without sampling, deadband or class changes, in one pass."""
        if cls.sample_rate > 0 or cls.on_class_change or cls.deadband is not None:
            return [self.forward(cls, record) for record in records]
        last_class = self._last_class
        for record in records:
            last_class[record.device_id] = record.predicted
        if cls.forward_all:
            return [True] * len(records)
        return [record.anomaly or record.low_confidence for record in records]

    def forward(self, cls: DeviceClass, record: TelemetryRecord) -> bool:
        """Should this record go up whole? Updates the device's deadband memory."""
        device = record.device_id
        keep = record.anomaly or record.low_confidence or cls.forward_all
        if not keep and cls.sample_rate > 0:
            keep = _share(device, record.seq) < cls.sample_rate
        if not keep and cls.on_class_change:
            keep = self._last_class.get(device, -1) != record.predicted
        self._last_class[device] = record.predicted
        if cls.deadband is not None and record.features is not None:
            last = self._last_features.get(device)
            moved = last is None or len(last) != len(record.features)
            if not moved and last is not None:
                moved = any(abs(a - b) > cls.deadband for a, b in zip(record.features, last, strict=True))
            keep = keep or moved
            if keep:
                self._last_features[device] = record.features
        return keep


def _share(device_id: str, seq: int) -> float:
    """A stable number in [0, 1) for a record."""
    return zlib.crc32(f"{device_id}:{seq}".encode()) / 2**32
