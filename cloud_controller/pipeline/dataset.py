"""``dataset``: the labelled records of the model within the job's data window, split train / held out.

A label (table ``label``, by ``(device_id, seq)``) joined with the record stored whole (its
``features``). The window is fixed at the first run and recorded, and a row counts only if both
the record and its label had arrived by the window's end: a re-run (after a worker died) reads the
same rows. The split is a hash of ``(device_id, seq)``, the same on every run and every worker.

Three sides: ``train``; the records held out (``holdout`` of them) are halved by a second hash into
``validation`` (what a federated job picks its best round on and the build measures its bundles on)
and ``heldout``, the test part, which only ``evaluate`` reads: the candidate and production are
compared on records nothing was selected or fitted on.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import true
from sqlmodel import Session, col, select

from cloud_controller.label_models import RecordLabel
from cloud_controller.models import Telemetry
from cloud_controller.pipeline.base import StepContext, StepFailed
from cloud_controller.pipeline.recipe import load_recipe

TRAIN, VALIDATION, HELDOUT = "train.npz", "validation.npz", "heldout.npz"


def held_out(device_id: str, seq: int, share: float) -> bool:
    """The record's side of the split: a hash of its key, so it never moves between runs."""
    digest = hashlib.sha256(f"{device_id}\x00{seq}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def validation(device_id: str, seq: int) -> bool:
    """A held-out record's side: validation (True) or test (False), by a hash of its key, half and half."""
    digest = hashlib.sha256(f"validation\x00{device_id}\x00{seq}".encode()).digest()
    return digest[0] < 128


def digest(x: np.ndarray, y: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(x).tobytes() + np.ascontiguousarray(y).tobytes()).hexdigest()


def load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return data["x"], data["y"]


def load_devices(path: Path) -> np.ndarray:
    """The device id of each row of a split."""
    with np.load(path, allow_pickle=False) as data:
        return data["device"]


class DatasetStep:
    name = "dataset"
    #: Steps whose files (in the job directory) this one reads.
    needs: tuple[str, ...] = ()

    def run(self, ctx: StepContext) -> dict[str, Any]:
        recipe = load_recipe(ctx.engine, ctx.model_id)
        previous = ctx.artifacts.get(self.name, {}).get("window")
        until = previous["until"] if previous else time.time()
        since = previous["since"] if previous else until - ctx.params.window_s
        sites = ctx.params.sites
        of_sites = f" of site(s) {', '.join(sites)}" if sites else ""
        ctx.log(f"labelled records of {ctx.model_id}{of_sites} from {_iso(since)} to {_iso(until)}")
        with Session(ctx.engine) as session:
            rows = session.exec(
                select(
                    Telemetry.device_id, Telemetry.seq, Telemetry.site_id, Telemetry.record, RecordLabel.label
                )
                .join(
                    RecordLabel,
                    (col(RecordLabel.device_id) == col(Telemetry.device_id))
                    & (col(RecordLabel.seq) == col(Telemetry.seq)),
                )
                .where(
                    col(Telemetry.model_id) == ctx.model_id,
                    col(Telemetry.ts) >= since,
                    col(Telemetry.ts) <= until,
                    col(Telemetry.received_at) <= until,
                    col(RecordLabel.received_at) <= until,
                )
                .where(col(Telemetry.site_id).in_(sites) if sites else true())
                .order_by(col(Telemetry.ts).desc(), col(Telemetry.device_id), col(Telemetry.seq))
                .limit(ctx.params.max_samples)
            ).all()
        ctx.check()
        skipped: Counter[str] = Counter()
        sites: Counter[str] = Counter()
        device_sites: dict[str, str] = {}
        keep: list[tuple[str, int, list[float], int]] = []
        for device_id, seq, site_id, record, label in rows:
            features = record.get("features") if isinstance(record, dict) else None
            if not isinstance(features, list) or len(features) != recipe.n_features:
                skipped["no features" if not features else "wrong feature count"] += 1
            elif not 0 <= label < recipe.n_classes:
                skipped["label out of range"] += 1
            else:
                keep.append((device_id, seq, features, label))
                sites[site_id] += 1
                device_sites[device_id] = site_id
        # Sorted by key: the arrays, hence their digest, do not depend on the database's row order.
        keep.sort(key=lambda r: (r[0], r[1]))
        if skipped:
            ctx.log("left out: " + ", ".join(f"{n} {why}" for why, n in sorted(skipped.items())))
        if len(keep) < ctx.params.min_samples:
            raise StepFailed(
                f"not enough labelled data ({len(keep)} < {ctx.params.min_samples}): labelled records of "
                f"{ctx.model_id}{of_sites} with features from {_iso(since)} to {_iso(until)}"
            )
        out = ctx.dir(self.name)
        sides: dict[str, list[tuple[list[float], int, str]]] = {"train": [], "validation": [], "heldout": []}
        for device_id, seq, features, label in keep:
            if not held_out(device_id, seq, ctx.params.holdout):
                side = "train"
            else:
                side = "validation" if validation(device_id, seq) else "heldout"
            sides[side].append((features, label, device_id))
        if not all(sides.values()):
            raise StepFailed(
                f"the split of {len(keep)} records into train, validation and test left one side empty: "
                "raise min_samples or holdout"
            )
        result: dict[str, Any] = {
            "window": {"since": since, "until": until},
            "records": len(keep),
            "skipped": dict(skipped),
            "sites": dict(sites),
            "device_sites": device_sites,
            "class_counts": dict(Counter(str(r[3]) for r in keep)),
        }
        for key, file in (("train", TRAIN), ("validation", VALIDATION), ("heldout", HELDOUT)):
            x = np.asarray([f for f, _, _ in sides[key]], dtype=np.float32)
            y = np.asarray([label for _, label, _ in sides[key]], dtype=np.int64)
            if not np.isfinite(x).all():
                raise StepFailed("records with NaN or infinite features in the window: fix the source")
            # Which device each row came from: a federated job's clients are the devices.
            np.savez(out / file, x=x, y=y, device=np.asarray([d for _, _, d in sides[key]], dtype=str))
            result[key] = len(y)
            result[f"{key}_sha256"] = digest(x, y)
        if previous and result["train_sha256"] != ctx.artifacts[self.name].get("train_sha256"):
            raise StepFailed("the data of the job's window changed since its first run (labels corrected?)")
        ctx.log(
            f"{len(keep)} records from {len(sites)} site(s): {result['train']} to train, "
            f"{result['validation']} to validate, {result['heldout']} held out to test"
        )
        return result

    def ready(self, ctx: StepContext) -> bool:
        done = ctx.artifacts.get(self.name)
        out = ctx.workdir / self.name
        if not done or not all((out / f).exists() for f in (TRAIN, VALIDATION, HELDOUT)):
            return False
        return digest(*load(out / TRAIN)) == done["train_sha256"]


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
