"""The device's model update, as a state machine written down before every transition.

download -> verify (manifest sha256, signature, digests, runtime) -> load -> smoke test ->
shadow beside the running model (when the rollout asks) -> switch -> promoted. A failure
before loading refuses the bundle; one after it rolls back, and the running model never
stopped. The journal (``ota.json``, fsynced) says where an update stood, so a killed agent
finishes or undoes it on restart: a download resumes, an unpacked bundle is verified again,
a shadow period starts over, and a switch that happened is health-checked.

Two rules come from signed manifests and the device's trusted keys (issue #13):

- A bundle signed by a key retired before now (``trusted_keys[].retired_at``, the device clock)
  is refused (``signature_invalid``), checked at verification and again just before the switch.
  Bundles installed before the retirement (active, previous, provisioned) still run: a rollback
  to the previous slot loads it as it was installed.
- Every installed manifest's ``withdrawn_versions`` are remembered (``withdrawn.json``); a desired
  state, or a downloaded manifest, naming one of them is refused (``withdrawn``). The automatic
  rollback to the previous slot is local and stays allowed, even to a withdrawn version.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import shutil
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.exceptions import InvalidReading, ModelLoadError
from edge_agent.model import LoadedModel, load_model, output_problem
from edge_agent.ota.fetch import FetchError, address, fetch_bundle
from edge_agent.ota.hooks import crash_point
from edge_agent.ota.shadow import ShadowRun, rss_mb
from edge_agent.ota.slots import Slots, manifest_sha256
from edge_agent.state_store import JsonStore
from fleet_protocol import (
    BundleError,
    BundleManifest,
    DigestMismatch,
    ModelAssignment,
    ModelReason,
    OtaState,
    OtaStatus,
    Runtime,
    SignatureError,
)
from fleet_protocol.pacing import Backoff
from fleet_protocol.signing import TrustedKey, verify_bundle

log = logging.getLogger(__name__)

#: The module each runtime needs on the device.
_RUNTIME_MODULES = {
    Runtime.ONNXRUNTIME: "onnxruntime",
    Runtime.OPENVINO: "openvino",
    Runtime.LITERT: "ai_edge_litert",
}

Emit = Callable[[str, OtaStatus], None]
Promote = Callable[[LoadedModel], Awaitable[None]]


class UpdateFailed(Exception):
    def __init__(self, reason: ModelReason, detail: str, *, loaded: bool) -> None:
        super().__init__(detail)
        self.reason, self.detail, self.loaded = reason, detail, loaded


class Updater:
    def __init__(
        self,
        *,
        slots: Slots,
        journal: JsonStore,
        trusted_keys: list[TrustedKey],
        runtimes: Sequence[Runtime] | None,
        threads: int,
        token: str | None,
        download_timeout_s: float,
        retry_min_s: float,
        retry_max_s: float,
        emit: Emit,
        state_changed: Callable[[], None],
        current: Callable[[], LoadedModel | None],
        promote: Promote,
        recent_inputs: Callable[[], list[Any]],
        withdrawn: JsonStore | None = None,
    ) -> None:
        self.slots, self.journal, self.trusted_keys = slots, journal, trusted_keys
        #: model_id -> version -> the ref of the installed manifest that withdrew it.
        self.withdrawn: dict[str, dict[str, str]] = {}
        self._withdrawn_store = withdrawn
        self.runtimes, self.threads, self.token = runtimes, threads, token
        self.download_timeout_s = download_timeout_s
        self.backoff = Backoff(retry_min_s, retry_max_s)
        self._emit, self._state_changed = emit, state_changed
        self._current, self._promote, self._recent = current, promote, recent_inputs
        self.status: OtaStatus | None = None
        self.target: ModelAssignment | None = None
        self.revision: int | None = None
        self.challenger: LoadedModel | None = None
        self.shadow: ShadowRun | None = None
        self._challenger_failed: asyncio.Future[str] | None = None
        self._task: asyncio.Task[None] | None = None

    # -- what the agent asks -------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return self._task is not None and not self._task.done()

    async def resume(self) -> None:
        """At start: take up what the journal says was under way, or restore the last outcome."""
        await self._load_withdrawn()
        running = self._current()
        if running is not None:
            # It was installed (or provisioned) and verified: a crash between the switch and
            # writing its withdrawals down loses none.
            await self.remember_withdrawn(running.manifest)
        saved = await self.journal.load()
        if not saved:
            return
        try:
            self.status = OtaStatus.model_validate(saved["status"])
            self.target = ModelAssignment.model_validate(saved["target"])
            self.revision = saved.get("revision")
        except (KeyError, ValueError) as exc:
            log.warning("OTA journal unreadable (%s): starting without it", exc)
            self.status = self.target = None
            return
        phase = saved.get("phase")
        running = self._current()
        if (
            phase == "switch"
            and running is not None
            and running.manifest_sha256 == self.target.manifest_sha256
        ):
            # Killed after the switch, before it was written down: the new model runs; confirm it.
            log.info("finishing the switch to %s@%s", self.target.model_id, self.target.version)
            await self._done(OtaState.PROMOTED, None, None)
            await asyncio.to_thread(self.slots.collect)
        elif phase in ("download", "verify", "shadow", "switch"):
            log.info("resuming the update to %s@%s (%s)", self.target.model_id, self.target.version, phase)
            self._start(self.target, self.revision, skip_shadow=phase == "switch")

    def request(self, target: ModelAssignment, revision: int) -> None:
        """The desired state names ``target``: go there unless already there or already refused."""
        if runs(self._current(), target):
            # Already there (a rollout aborted back to what runs): an update elsewhere stops here.
            why = f"the desired state names {target.model_id}@{target.version} again, which runs"
            stopped = self._task
            if self._cancel(why):
                self._task = asyncio.create_task(self._cancelled(stopped, why), name="ota-cancelled")
            return
        same = self.target is not None and self.target.manifest_sha256 == target.manifest_sha256
        if same and self.busy:
            return
        final = self.status is not None and self.status.state in (OtaState.REFUSED, OtaState.ROLLED_BACK)
        if same and final and self.revision == revision:
            return  # failed for this revision already; a new revision asks again
        self._start(target, revision)  # a withdrawn version is refused first thing, nothing fetched

    # -- withdrawn versions ----------------------------------------------------------------

    def withdrawn_by(self, model_id: str, version: str) -> str | None:
        """The ref of the installed manifest that withdrew ``model_id@version``, if one did."""
        return self.withdrawn.get(model_id, {}).get(version)

    async def remember_withdrawn(self, manifest: BundleManifest) -> None:
        """Write down the versions an installed, verified manifest withdraws (the list only grows)."""
        known = self.withdrawn.setdefault(manifest.model_id, {})
        new = {v: manifest.ref for v in manifest.withdrawn_versions if v not in known}
        if not new:
            return
        known.update(new)
        log.info("%s withdraws %s: they will not be installed", manifest.ref, ", ".join(sorted(new)))
        if self._withdrawn_store is not None:
            await self._withdrawn_store.save(self.withdrawn)

    async def _load_withdrawn(self) -> None:
        if self._withdrawn_store is None:
            return
        saved = await self._withdrawn_store.load()
        if not isinstance(saved, dict):
            return
        # Merged into what is known: a malformed entry is dropped, never the whole list.
        for model_id, versions in saved.items():
            if isinstance(model_id, str) and isinstance(versions, dict):
                known = self.withdrawn.setdefault(model_id, {})
                for version, by in versions.items():
                    if isinstance(version, str) and isinstance(by, str):
                        known.setdefault(version, by)

    def _refuse_withdrawn(self, model_id: str, version: str) -> None:
        by = self.withdrawn_by(model_id, version)
        if by is not None:
            raise UpdateFailed(
                ModelReason.WITHDRAWN,
                f"{model_id}@{version} is withdrawn by the signed manifest of {by}, installed on this"
                " device: refusing to install it (release the model again under a new version)",
                loaded=False,
            )

    def reason(self) -> ModelReason | None:
        """Why the device is not on ``self.target`` (the caller checked that it is not)."""
        if self.busy:
            return ModelReason.UPDATE_PENDING
        if self.status is not None and self.status.reason is not None:
            return self.status.reason
        return ModelReason.UPDATE_PENDING

    def installed(self, model: LoadedModel) -> bool:
        """Whether ``model`` is what the last update promoted (so there is a way back)."""
        status = self.status
        return (
            status is not None
            and status.state is OtaState.PROMOTED
            and status.manifest_sha256 == model.manifest_sha256
            and self.slots.previous() is not None
        )

    def roll_back(self, detail: str, reason: ModelReason = ModelReason.RUNTIME_ERROR) -> None:
        """The promoted model fails while running (it raises, or its outputs are not finite or not
        of its declared shape): back to the previous slot (once)."""
        if self.busy:
            return
        self._task = asyncio.create_task(self._roll_back(detail, reason), name="ota-rollback")

    async def _roll_back(self, detail: str, reason: ModelReason) -> None:
        previous = self.slots.previous()
        if previous is None:
            return
        try:
            # Installed before: it runs even if its key was retired since (and even if a newer
            # manifest withdrew its version): the way back is local.
            model = await asyncio.to_thread(
                load_model, previous, self.trusted_keys, threads=self.threads, allow_retired=True
            )
        except ModelLoadError as exc:
            log.error("cannot roll back to %s: %s", previous, exc)
            return
        await asyncio.to_thread(self.slots.switch, previous)
        await self._promote(model)
        log.warning("rolled back to %s: %s", model.manifest.ref, detail)
        await self._done(OtaState.ROLLED_BACK, reason, detail)

    def observe_shadow(self, champion: Any, champion_s: float, challenger: Any, challenger_s: float) -> None:
        """One batch through both models (the agent's inference path calls this)."""
        if self.shadow is not None:
            self.shadow.add(champion, champion_s, challenger, challenger_s)

    def challenger_raised(self, exc: BaseException) -> None:
        if self._challenger_failed is not None and not self._challenger_failed.done():
            self._challenger_failed.set_result(f"{exc.__class__.__name__}: {exc}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self._drop_challenger()

    # -- the update ------------------------------------------------------------------------

    def _cancel(self, why: str) -> bool:
        """Stop an update under way, and say so (``ota.cancelled``): it is neither refused nor rolled back."""
        if self._task is None or self._task.done() or self.target is None:
            return False
        self._task.cancel()
        log.info("update to %s@%s cancelled: %s", self.target.model_id, self.target.version, why)
        self._emit(
            "ota.cancelled", self._status(self.status.state if self.status else OtaState.IDLE, None, why)
        )
        self.shadow = None  # its figures belong to the cancelled update
        return True

    async def _cancelled(self, stopped: asyncio.Task[None] | None, why: str) -> None:
        """An update stopped with nothing after it: idle in the reported state and in the journal.

        Otherwise the device would go on reporting the stopped step (``shadow``) as under way, and a
        restart would take the update up again from the journal.
        """
        if stopped is not None:
            await asyncio.gather(stopped, return_exceptions=True)  # its last journal write lands first
        await self._done(OtaState.IDLE, None, why)

    def _start(self, target: ModelAssignment, revision: int | None, *, skip_shadow: bool = False) -> None:
        self._cancel(f"the desired state now names {target.model_id}@{target.version}")
        self.shadow = None
        self.target, self.revision = target, revision
        self.backoff.reset()
        self._task = asyncio.create_task(self._run(target, skip_shadow), name="ota")

    async def _run(self, target: ModelAssignment, skip_shadow: bool) -> None:
        try:
            await self._update(target, skip_shadow)
        except UpdateFailed as failed:
            state = OtaState.ROLLED_BACK if failed.loaded else OtaState.REFUSED
            log.warning(
                "update to %s@%s %s: %s (%s)",
                target.model_id,
                target.version,
                state.value,
                failed.reason.value,
                failed.detail,
            )
            await self._done(state, failed.reason, failed.detail)
        except asyncio.CancelledError:
            self._drop_challenger()
            raise
        finally:
            self._drop_challenger()

    async def _update(self, target: ModelAssignment, skip_shadow: bool) -> None:
        self._refuse_withdrawn(target.model_id, target.version)
        sha = target.manifest_sha256
        slot = self.slots.slot(sha)
        if not await asyncio.to_thread(slot.is_dir):
            await self._download_and_unpack(target)
        await self._write("verify", OtaState.VERIFIED)
        manifest = await self._verify(slot, target)
        self._emit("ota.verified", self._status(OtaState.VERIFIED))
        crash_point("verified")
        rss_before = rss_mb()
        try:
            # Verified just above, its key's retirement included; judged again before the switch.
            model = await asyncio.to_thread(
                load_model, slot, self.trusted_keys, threads=self.threads, allow_retired=True
            )
        except ModelLoadError as exc:
            raise UpdateFailed(ModelReason.LOAD_FAILED, str(exc), loaded=True) from None
        try:
            await asyncio.to_thread(self._smoke, model)
            directive = target.rollout
            if directive is not None and directive.shadow_s > 0 and not skip_shadow:
                await self._shadow(model, directive, rss_before)
            signer = model.signer
            if signer is not None and signer.retired():
                # Its key retired while it was verified or shadowed: not installed after all.
                assert signer.retired_at is not None
                raise UpdateFailed(
                    ModelReason.SIGNATURE_INVALID,
                    f"bundle is signed by key {signer.key_id}, retired at {signer.retired_at.isoformat()}"
                    " (while the update was under way)",
                    loaded=True,
                )
        except BaseException:
            self.challenger = None
            model.close()
            raise
        await self._write("switch", OtaState.SHADOW if self.shadow else OtaState.VERIFIED)
        crash_point("switch")
        await asyncio.to_thread(self.slots.switch, slot)
        await self._promote(model)
        log.info("now running %s (was the update's target)", manifest.ref)
        await self.remember_withdrawn(manifest)
        await self._done(OtaState.PROMOTED, None, None)
        crash_point("promoted")
        await asyncio.to_thread(self.slots.collect)

    async def _download_and_unpack(self, target: ModelAssignment) -> None:
        urls = [u for u in (target.bundle_url, target.fallback_url) if u]
        if not urls:
            raise UpdateFailed(
                ModelReason.DOWNLOAD_FAILED, "the desired state names no bundle URL", loaded=False
            )
        await asyncio.to_thread(self.slots.root.mkdir, parents=True, exist_ok=True)
        archive = self.slots.root / f"{address(urls[0]) or target.manifest_sha256}.tar"
        await self._write("download", OtaState.DOWNLOADING)
        self._emit("ota.downloading", self._status(OtaState.DOWNLOADING))
        while True:
            try:
                await fetch_bundle(urls, archive, token=self.token, timeout_s=self.download_timeout_s)
                break
            except FetchError as exc:
                if exc.digest:
                    raise UpdateFailed(ModelReason.DIGEST_MISMATCH, str(exc), loaded=False) from None
                if exc.disk_full:
                    raise UpdateFailed(ModelReason.DISK_FULL, str(exc), loaded=False) from None
                # The site cache or the link may come back: the update waits, the model runs on.
                delay = self.backoff.next_delay()
                self.status = self._status(OtaState.DOWNLOADING, ModelReason.DOWNLOAD_FAILED, str(exc))
                if self.backoff.attempt & (self.backoff.attempt - 1) == 0:
                    log.warning("bundle download failed (%s); retrying in %.1fs", exc, delay)
                    self._state_changed()
                await asyncio.sleep(delay)
        try:
            partial = await asyncio.to_thread(self.slots.unpack, archive, target.manifest_sha256)
            crash_point("unpack")
        except OSError as exc:
            reason = ModelReason.DISK_FULL if exc.errno == 28 else ModelReason.DIGEST_MISMATCH
            raise UpdateFailed(reason, f"cannot unpack the bundle: {exc}", loaded=False) from None
        except Exception as exc:  # tarfile's errors: not an archive, unsafe paths
            raise UpdateFailed(
                ModelReason.DIGEST_MISMATCH, f"the bundle is not a valid archive: {exc}", loaded=False
            ) from None
        try:
            await self._verify(partial, target)
        except UpdateFailed:
            await asyncio.to_thread(_remove_tree, partial)
            raise
        await asyncio.to_thread(self.slots.commit_slot, partial, target.manifest_sha256)
        await asyncio.to_thread(archive.unlink, True)

    async def _verify(self, bundle: Path, target: ModelAssignment) -> Any:
        """The manifest the desired state named, signed by a trusted key, every digest right."""
        try:
            sha = await asyncio.to_thread(manifest_sha256, bundle)
        except OSError as exc:
            raise UpdateFailed(ModelReason.DIGEST_MISMATCH, f"no manifest: {exc}", loaded=False) from None
        if sha != target.manifest_sha256:
            raise UpdateFailed(
                ModelReason.MANIFEST_MISMATCH,
                f"manifest sha256 {sha[:12]} is not the {target.manifest_sha256[:12]} the desired state"
                " names",
                loaded=False,
            )
        try:
            # A key retired before now refuses the bundle here (KeyRetired is a SignatureError).
            manifest = await asyncio.to_thread(verify_bundle, bundle, self.trusted_keys)
        except SignatureError as exc:
            raise UpdateFailed(ModelReason.SIGNATURE_INVALID, str(exc), loaded=False) from None
        except (DigestMismatch, BundleError) as exc:
            raise UpdateFailed(ModelReason.DIGEST_MISMATCH, str(exc), loaded=False) from None
        # The version the signed manifest says, whatever the desired state called it.
        self._refuse_withdrawn(manifest.model_id, manifest.version)
        module = _RUNTIME_MODULES[manifest.runtime]
        allowed = self.runtimes is None or manifest.runtime in self.runtimes
        if not allowed or importlib.util.find_spec(module) is None:
            raise UpdateFailed(
                ModelReason.RUNTIME_UNSUPPORTED,
                f"{manifest.ref} needs the {manifest.runtime.value} runtime, which this device does not run",
                loaded=False,
            )
        return manifest

    def _smoke(self, model: LoadedModel) -> None:
        """Recent real inputs through the new model: finite outputs of the declared width."""
        rows: list[list[float]] = []
        for values in self._recent():
            with contextlib.suppress(InvalidReading):
                rows.append(model.preprocessor.vector(values))
        if not rows:  # nothing read yet: the training mean is a plausible input
            mean = model.manifest.preprocessing.mean or [0.0] * len(model.preprocessor.feature_names)
            rows = [list(mean)]
        batch = model.preprocessor.scale(np.asarray(rows, dtype=np.float32))
        try:
            outputs = model.predict(batch).outputs
        except Exception as exc:
            raise UpdateFailed(
                ModelReason.SMOKE_TEST_FAILED, f"the smoke inference raised {exc!r}", loaded=True
            ) from None
        problem = output_problem(model, outputs, len(rows))
        if problem is not None:
            raise UpdateFailed(ModelReason.SMOKE_TEST_FAILED, f"the smoke inference {problem}", loaded=True)

    async def _shadow(self, model: LoadedModel, directive: Any, rss_before: float) -> None:
        self.shadow = ShadowRun(directive, rss_before_mb=rss_before)
        self._challenger_failed = asyncio.get_running_loop().create_future()
        self.challenger = model
        await self._write("shadow", OtaState.SHADOW)
        self._emit("ota.shadow", self._status(OtaState.SHADOW))
        crash_point("shadow")
        while not self.shadow.due():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.2):
                    error = await asyncio.shield(self._challenger_failed)
                raise UpdateFailed(ModelReason.RUNTIME_ERROR, f"the new model raised: {error}", loaded=True)
        stats = self.shadow.stats()
        why = self.shadow.verdict()
        self.challenger = None  # the agent stops feeding it; the switch (or close) follows
        self._emit("ota.shadow", self._status(OtaState.SHADOW, shadow=stats))
        if why is not None:
            raise UpdateFailed(ModelReason.SHADOW_GATE_FAILED, why, loaded=True)

    # -- bookkeeping ----------------------------------------------------------------------

    def _status(
        self,
        state: OtaState,
        reason: ModelReason | None = None,
        detail: str | None = None,
        shadow: Any = None,
    ) -> OtaStatus:
        assert self.target is not None
        if shadow is None and self.shadow is not None:
            shadow = self.shadow.stats()
        return OtaStatus(
            state=state,
            model_id=self.target.model_id,
            version=self.target.version,
            manifest_sha256=self.target.manifest_sha256,
            rollout_id=self.target.rollout.rollout_id if self.target.rollout else None,
            reason=reason,
            detail=detail[:2048] if detail else None,
            shadow=shadow,
        )

    async def _write(self, phase: str, state: OtaState) -> None:
        """Write down where the update stands before acting on it."""
        self.status = self._status(state)
        await self.journal.save(
            {
                "phase": phase,
                "revision": self.revision,
                "target": self.target.model_dump(mode="json") if self.target else None,
                "status": self.status.model_dump(mode="json"),
            }
        )
        self._state_changed()

    async def _done(self, state: OtaState, reason: ModelReason | None, detail: str | None) -> None:
        self.status = self._status(state, reason, detail)
        await self.journal.save(
            {
                "phase": "done",
                "revision": self.revision,
                "target": self.target.model_dump(mode="json") if self.target else None,
                "status": self.status.model_dump(mode="json"),
            }
        )
        kind = {
            OtaState.PROMOTED: "ota.promoted",
            OtaState.ROLLED_BACK: "ota.rolled_back",
            OtaState.REFUSED: "ota.refused",
        }.get(state)
        if kind is not None:  # IDLE after a cancel: `ota.cancelled` went out already
            self._emit(kind, self.status)
        self._state_changed()
        self.shadow = None

    def _drop_challenger(self) -> None:
        challenger, self.challenger = self.challenger, None
        if challenger is not None:
            challenger.close()


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def runs(model: LoadedModel | None, target: ModelAssignment) -> bool:
    """Whether ``model`` is the version ``target`` names (any of its bundles: int8 or fp32 alike)."""
    return (
        model is not None
        and model.manifest.model_id == target.model_id
        and model.manifest.version == target.version
    )
