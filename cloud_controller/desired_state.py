"""The one place desired state is computed.

What a device should run comes from *layers*, newest first: the newest deployment of each group,
and every active rollout. A device takes the first layer whose group selects it, except that a
rollout holds only the devices its started waves reach (`waves.py`); the rest of its group fall
through to the layer below, which is what they ran before the rollout. When a rollout ends it is
no longer a layer: after an abort or a failure its devices fall through to the previous version
(the group's deployment; without one, the version most of them ran when it started, a layer under all);
after a success the deployment it made (newer than everything) gives the group the new version.

Revisions: a device applies only a revision above the last it applied, so each device's last
revision is stored with a digest of its assignment (`DesiredRevision`); a different assignment
gets a higher revision, the same one keeps its revision (and so the site's ETag holds).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from cloud_controller.models import Bundle, Deployment, DesiredRevision, Device, DeviceGroup, ModelVersion
from cloud_controller.rollout_models import ACTIVE, Rollout, RolloutState
from cloud_controller.waves import FULL, position
from fleet_protocol import DesiredState, ModelAssignment, RolloutDirective

#: The digest of "no model": a device that never had one needs no stored revision.
NO_MODEL = "-"
#: What a device without a stored revision has: revision 0, no model.
_NEVER = (0, NO_MODEL, 0.0)
_CHUNK = 500
_ATTEMPTS = 3


class DeviceRef(Protocol):
    """What desired state depends on, of a device (a `Device` or a row of these columns)."""

    id: str
    labels: dict[str, str]
    runtime: str | None


# eq=False: layers are told apart (and cached by) identity; a selector dict is not hashable.
@dataclass(frozen=True, eq=False)
class Layer:
    """A group's assignment: a deployment, or an active rollout (which holds only its waves' devices)."""

    created_at: float
    selector: dict[str, str]
    model_id: str
    version: str
    rollout_id: str | None = None
    threshold: int = FULL
    directive: RolloutDirective | None = None

    def selects(self, labels: dict[str, str]) -> bool:
        return selector_selects(self.selector, labels)

    def holds(self, device_id: str) -> bool:
        return self.rollout_id is None or position(self.rollout_id, device_id) < self.threshold


def selector_selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """A group's label selector against a device's labels ({} selects every device)."""
    return all(labels.get(key) == value for key, value in selector.items())


def load_layers(session: Session) -> list[Layer]:
    """Every layer, newest first; then, under all, what aborted rollouts put groups back on."""
    selectors = {g.id: g.selector for g in session.exec(select(DeviceGroup)).all()}
    layers: dict[object, Layer] = {}
    # An older deployment of a group is hidden by its newest one whatever the device: skip it.
    for d in session.exec(select(Deployment).order_by(col(Deployment.id).desc())).all():
        if d.group_id not in layers:
            layers[d.group_id] = Layer(d.created_at, selectors[d.group_id], d.model_id, d.version)
    for r in session.exec(select(Rollout).where(col(Rollout.state).in_(ACTIVE))).all():
        layers[r.id] = rollout_layer(r, selectors[r.group_id])
    newest_first = sorted(layers.values(), key=lambda layer: layer.created_at, reverse=True)
    deployed = {key for key, layer in layers.items() if layer.rollout_id is None}
    return newest_first + _put_back(session, selectors, deployed)  # type: ignore[arg-type]


def _put_back(session: Session, selectors: dict[int, dict[str, str]], deployed: set[int]) -> list[Layer]:
    """Under every other layer: a group that has no deployment keeps the version its newest aborted
    or failed rollout found its devices running (hand-provisioned devices go back to it)."""
    out: dict[int, Layer] = {}
    ended = select(Rollout).where(
        col(Rollout.state).in_((RolloutState.ABORTED, RolloutState.FAILED)),
        col(Rollout.previous_version).is_not(None),
    )
    for r in session.exec(ended.order_by(col(Rollout.created_at).desc())).all():
        if r.group_id in deployed or r.group_id in out or r.previous_model_id is None:
            continue
        assert r.previous_version is not None
        out[r.group_id] = Layer(r.created_at, selectors[r.group_id], r.previous_model_id, r.previous_version)
    return list(out.values())


def rollout_layer(rollout: Rollout, selector: dict[str, str]) -> Layer:
    started = rollout.progress[rollout.current_wave] if rollout.progress else None
    return Layer(
        rollout.created_at,
        selector,
        rollout.model_id,
        rollout.version,
        rollout_id=rollout.id,
        threshold=int(started["threshold"]) if started else 0,
        directive=RolloutDirective(
            rollout_id=rollout.id,
            shadow_s=rollout.shadow_s,
            min_agreement=rollout.gates["min_agreement"],
            max_latency_ratio=rollout.gates.get("max_latency_ratio"),
        ),
    )


def resolve(layers: Sequence[Layer], device_id: str, labels: dict[str, str]) -> Layer | None:
    """The layer that gives the device its model, if any."""
    return next((layer for layer in layers if layer.selects(labels) and layer.holds(device_id)), None)


def owner(layers: Sequence[Layer], labels: dict[str, str]) -> Layer | None:
    """The newest layer whose group selects the device: a rollout's device when that is the rollout."""
    return next((layer for layer in layers if layer.selects(labels)), None)


class _Assignments:
    """Model assignments by (layer, runtime), with their digests; bundles read once per version."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.bundles: dict[tuple[str, str], list[Bundle]] = {}
        self.made: dict[tuple[Layer, str | None], tuple[ModelAssignment | None, str]] = {}

    def get(self, layer: Layer | None, runtime: str | None) -> tuple[ModelAssignment | None, str]:
        if layer is None:
            return None, NO_MODEL
        key = (layer, runtime)
        if key not in self.made:
            model = self._make(layer, runtime)
            digest = hashlib.sha256(model.model_dump_json().encode()).hexdigest() if model else NO_MODEL
            self.made[key] = (model, digest)
        return self.made[key]

    def _make(self, layer: Layer, runtime: str | None) -> ModelAssignment | None:
        bundles = self._bundles(layer.model_id, layer.version)
        if not bundles:
            return None
        # The bundle for the engine the device runs, when the registry has one.
        bundle = next((b for b in bundles if b.runtime == runtime), bundles[0])
        return ModelAssignment(
            model_id=layer.model_id,
            version=layer.version,
            manifest_sha256=bundle.manifest_sha256,
            bundle_url=f"/api/v1/bundles/{bundle.sha256}",
            rollout=layer.directive,
        )

    def _bundles(self, model_id: str, version: str) -> list[Bundle]:
        if (model_id, version) not in self.bundles:
            self.bundles[model_id, version] = list(
                self.session.exec(
                    select(Bundle)
                    .join(ModelVersion, col(ModelVersion.id) == Bundle.model_version_id)
                    .where(ModelVersion.model_id == model_id, ModelVersion.version == version)
                    .order_by(col(Bundle.created_at), col(Bundle.sha256))
                ).all()
            )
        return self.bundles[model_id, version]


@dataclass(frozen=True)
class Issued:
    """A device's desired model with the revision it was issued under."""

    device_id: str
    revision: int
    issued_at: float
    model: ModelAssignment | None

    def state(self) -> DesiredState:
        return DesiredState(
            device_id=self.device_id, revision=self.revision, issued_at=self.issued_at, model=self.model
        )


def issue(*, session: Session, devices: Sequence[DeviceRef], site_id: str | None = None) -> list[Issued]:
    """Each device's desired model and revision; new revisions are stored (and committed) first.

    ``site_id``: every device of that site is in ``devices``, and their stored revisions are read
    by a join instead of by id.
    """
    for attempt in range(_ATTEMPTS):
        layers = load_layers(session)
        assignments = _Assignments(session)
        wanted = {d.id: assignments.get(resolve(layers, d.id, d.labels), d.runtime) for d in devices}
        stored = _stored(session, wanted, site_id)
        changed = {
            device_id: digest
            for device_id, (_, digest) in wanted.items()
            if stored.get(device_id, _NEVER)[1] != digest
        }
        if not changed:
            break
        _store(session, changed, stored, force=attempt == _ATTEMPTS - 1)
        stored |= _stored(session, changed, None)
        if all(stored[device_id][1] == digest for device_id, digest in changed.items()):
            break
        # A concurrent request stored another assignment under a higher revision: it read newer
        # data than this one did (or older, and the next computation corrects it). Read again.
        session.expire_all()
    return [
        Issued(device_id, *_revision(stored.get(device_id, _NEVER)), model)
        for device_id, (model, _) in wanted.items()
    ]


def _revision(stored: tuple[int, str, float]) -> tuple[int, float]:
    return stored[0], stored[2]


def _stored(
    session: Session, device_ids: Iterable[str], site_id: str | None
) -> dict[str, tuple[int, str, float]]:
    columns = (
        DesiredRevision.device_id,
        DesiredRevision.revision,
        DesiredRevision.fingerprint,
        DesiredRevision.issued_at,
    )
    if site_id is not None:
        rows = session.exec(
            select(*columns)
            .join(Device, col(Device.id) == DesiredRevision.device_id)
            .where(Device.site_id == site_id)
        ).all()
        return {r[0]: (r[1], r[2], r[3]) for r in rows}
    ids = list(device_ids)
    out: dict[str, tuple[int, str, float]] = {}
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        for r in session.exec(select(*columns).where(col(DesiredRevision.device_id).in_(chunk))).all():
            out[r[0]] = (r[1], r[2], r[3])
    return out


def _store(
    session: Session, changed: dict[str, str], stored: dict[str, tuple[int, str, float]], *, force: bool
) -> None:
    """New revisions for changed assignments: above the device's last, and above any revision of the
    scheme before this one (deployment ids), since they start from the time in milliseconds.

    ``force``: write over another digest stored meanwhile too, so that what is answered is what is
    stored (a device must never get one revision with two assignments); a stale assignment written
    so gets a higher revision again at the next computation.
    """
    now = time.time()
    insert: Any = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    rows = [
        {
            "device_id": device_id,
            "revision": max(stored.get(device_id, _NEVER)[0] + 1, int(now * 1000)),
            "fingerprint": digest,
            "issued_at": now,
        }
        for device_id, digest in changed.items()
    ]
    for start in range(0, len(rows), _CHUNK):
        statement = insert(DesiredRevision).values(rows[start : start + _CHUNK])
        # Written only over an older revision with another digest: of two requests racing, the
        # higher revision stays, and both answer with what is stored.
        newer = col(DesiredRevision.revision) < statement.excluded.revision
        other = col(DesiredRevision.fingerprint) != statement.excluded.fingerprint
        session.execute(
            statement.on_conflict_do_update(
                index_elements=["device_id"],
                set_={
                    "revision": statement.excluded.revision,
                    "fingerprint": statement.excluded.fingerprint,
                    "issued_at": statement.excluded.issued_at,
                },
                where=newer if force else newer & other,
            )
        )
    session.commit()


def etag(issued: Sequence[Issued]) -> str:
    """A strong ETag over a site's answer: a device's state changes only with its revision."""
    body = "\n".join(f"{i.device_id}:{i.revision}" for i in issued).encode()
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def desired_for_devices(*, session: Session, devices: Sequence[DeviceRef]) -> list[DesiredState]:
    return [i.state() for i in issue(session=session, devices=devices)]
