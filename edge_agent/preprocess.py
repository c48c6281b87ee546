"""Sensor readings -> model input, as the bundle's manifest declares: order, then scale."""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edge_agent.exceptions import InvalidReading
from fleet_protocol import Preprocessing

_NUMBER_TYPES = frozenset({float, int})  # exact types: bool is an int subclass, and no number
_SEQUENCES = frozenset({list, tuple})


class Preprocessor:
    def __init__(self, spec: Preprocessing) -> None:
        self.feature_names = spec.feature_names
        n = len(spec.feature_names)
        self._n = n
        self._getter = operator.itemgetter(*spec.feature_names)
        self._mean = np.asarray(spec.mean if spec.mean is not None else [0.0] * n, dtype=np.float32)
        self._scale = np.asarray(spec.scale if spec.scale is not None else [1.0] * n, dtype=np.float32)

    def batch(
        self, readings: Sequence[Mapping[str, Any] | Sequence[Any]]
    ) -> tuple[np.ndarray, list[int], list[InvalidReading]]:
        """Raw float32 rows for the readings that are valid, their indices, and the rejections.

        Most readings are clean lists or mappings of floats: those take a fast path, and
        finiteness is checked for the whole batch at once.
        """
        names = self.feature_names
        n = len(names)
        fast = self._all_numbers(readings)
        if fast is not None:
            return self._finite(fast, list(range(len(readings))), [])
        rows: list[Sequence[Any]] = []
        kept: list[int] = []
        rejected: list[InvalidReading] = []
        for index, values in enumerate(readings):
            raw: Sequence[Any] | None = None
            if isinstance(values, list | tuple) and len(values) == n:
                raw = values
            elif isinstance(values, Mapping):
                try:
                    raw = [values[name] for name in names]
                except KeyError:
                    raw = None
            if raw is not None and _NUMBER_TYPES.issuperset(map(type, raw)):
                rows.append(raw)
                kept.append(index)
                continue
            try:
                rows.append(self.vector(values))
                kept.append(index)
            except InvalidReading as exc:
                rejected.append(exc)
        if not rows:
            return np.empty((0, n), dtype=np.float32), [], rejected
        return self._finite(rows, kept, rejected)

    def _all_numbers(self, readings: Sequence[Mapping[str, Any] | Sequence[Any]]) -> list[Any] | None:
        """The rows, when every reading is a list of ``n`` numbers or a mapping with every feature.

        A handful of C-level passes over the whole batch instead of a Python loop per reading;
        None sends the batch down the careful path, which says what is wrong with each reading.
        """
        kinds = set(map(type, readings))
        if kinds <= _SEQUENCES:
            rows: list[Any] = readings  # type: ignore[assignment]
            if set(map(len, rows)) != {self._n}:
                return None
        elif kinds == {dict}:
            try:
                rows = list(map(self._getter, readings))
            except (KeyError, TypeError):
                return None
            if self._n == 1:
                rows = [[value] for value in rows]
        else:
            return None
        if not _NUMBER_TYPES.issuperset(map(type, itertools.chain.from_iterable(rows))):
            return None
        return rows

    def _finite(
        self, rows: Sequence[Sequence[Any]], kept: list[int], rejected: list[InvalidReading]
    ) -> tuple[np.ndarray, list[int], list[InvalidReading]]:
        names = self.feature_names
        array = np.asarray(rows, dtype=np.float64)
        finite = np.isfinite(array).all(axis=1)
        if not finite.all():
            for row in np.flatnonzero(~finite):
                bad = names[int(np.flatnonzero(~np.isfinite(array[row]))[0])]
                rejected.append(
                    InvalidReading("not_finite", f"feature {bad!r} is {array[row][names.index(bad)]}")
                )
            kept = [k for k, ok in zip(kept, finite, strict=True) if ok]
            array = array[finite]
        return array.astype(np.float32), kept, rejected

    def vector(self, values: Mapping[str, Any] | Sequence[Any]) -> list[float]:
        """One reading as raw floats in feature order.

        Raises
        ------
        InvalidReading
            For a missing feature, a value that is not a number, or NaN/inf.
        """
        names = self.feature_names
        if isinstance(values, Mapping):
            try:
                raw = [values[name] for name in names]
            except KeyError as exc:
                came = ", ".join(repr(k) for k in list(values)[:8]) or "none"
                more = f" and {len(values) - 8} more" if len(values) > 8 else ""
                raise InvalidReading(
                    "missing_feature", f"reading lacks feature {exc.args[0]!r} (it has {came}{more})"
                ) from None
        elif isinstance(values, Sequence) and not isinstance(values, str | bytes):
            if len(values) != len(names):
                raise InvalidReading(
                    "wrong_length", f"reading has {len(values)} values, model needs {len(names)}"
                )
            raw = list(values)
        else:
            raise InvalidReading("not_a_reading", f"reading must be a mapping or list, not {type(values)}")
        out = []
        for name, value in zip(names, raw, strict=True):
            # bool is an int subclass, but True is no sensor value.
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidReading("not_a_number", f"feature {name!r} is {value!r}, not a number")
            number = float(value)
            if not math.isfinite(number):
                raise InvalidReading("not_finite", f"feature {name!r} is {number}")
            out.append(number)
        return out

    def scale(self, rows: np.ndarray) -> np.ndarray:
        """Standardise a ``(n, features)`` float32 batch."""
        return (rows - self._mean) / self._scale
