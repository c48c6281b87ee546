"""Deduplication on ``(device_id, seq)``: a bounded window per device, persisted with the rest.

Per device, the highest ``seq`` seen and a bitmap of the ``size`` seqs below it (512 bytes for
the default 4096): a thousand devices cost half a megabyte, not a set of ints each. Devices
send in ``seq`` order and resend only what is unacknowledged, so a duplicate is always close
below the highest seq. A seq older than the window is let through and counted as stale: the
controller stores each ``(device_id, seq)`` once anyway, so letting through never duplicates,
while dropping could lose a record.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class _Seen:
    hwm: int = 0
    bits: int = 0  # bit i set: seq (hwm - i) was seen


class DedupWindow:
    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._mask = (1 << size) - 1
        self._devices: dict[str, _Seen] = {}
        self.dirty: set[str] = set()
        self.stale = 0

    def check(self, device_id: str, seq: int) -> bool:
        """True if ``seq`` is new for this device (and remember it); False for a duplicate."""
        seen = self._devices.get(device_id)
        if seen is None:
            seen = self._devices[device_id] = _Seen()
        if seq > seen.hwm:
            shift = seq - seen.hwm
            seen.bits = ((seen.bits << shift) | 1) & self._mask if shift < self.size else 1
            seen.hwm = seq
            self.dirty.add(device_id)
            return True
        offset = seen.hwm - seq
        if offset >= self.size:
            self.stale += 1
            return True
        bit = 1 << offset
        if seen.bits & bit:
            return False
        seen.bits |= bit
        self.dirty.add(device_id)
        return True

    def check_many(self, device_id: str, seqs: list[int]) -> list[bool]:
        """`check` for each seq in turn, with one step for the usual case: a run above the highest."""
        seen = self._devices.get(device_id)
        first, last = seqs[0], seqs[-1]
        if (
            seen is not None
            and first > seen.hwm
            and last - first == len(seqs) - 1
            and seqs == list(range(first, last + 1))
        ):
            # What `check` does seq by seq: shift by each step, set the new low bit, mask.
            shift = last - seen.hwm
            run = (1 << len(seqs)) - 1
            seen.bits = ((seen.bits << shift) | run) & self._mask if shift < self.size else run & self._mask
            seen.hwm = last
            self.dirty.add(device_id)
            return [True] * len(seqs)
        check = self.check
        return [check(device_id, seq) for seq in seqs]

    def export(self, device_id: str) -> tuple[int, bytes]:
        seen = self._devices[device_id]
        return seen.hwm, seen.bits.to_bytes(self.size // 8 + 1, "little")

    def load(self, device_id: str, hwm: int, bits: bytes) -> None:
        self._devices[device_id] = _Seen(hwm, int.from_bytes(bits, "little") & self._mask)

    def take_dirty(self) -> dict[str, tuple[int, bytes]]:
        """The devices changed since the last call, as ``(hwm, bitmap)`` to persist."""
        out = {device: self.export(device) for device in self.dirty}
        self.dirty.clear()
        return out

    def highest(self, device_id: str) -> int:
        seen = self._devices.get(device_id)
        return seen.hwm if seen else 0
