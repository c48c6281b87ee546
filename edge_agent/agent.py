"""The device agent: source -> preprocess -> infer -> outbox -> sync.

Inference never waits for the network: the pipeline only ever waits for the outbox's
writer (a local disk), and the syncer drains the outbox whenever a broker is reachable.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from edge_agent import __version__
from edge_agent.config import AgentSettings
from edge_agent.exceptions import ModelLoadError
from edge_agent.inference_placement import InferencePlacement
from edge_agent.metrics import AgentMetrics, serve_metrics
from edge_agent.model import LoadedModel, Predictions, load_model, load_trusted_keys, output_problem
from edge_agent.ota.slots import Slots
from edge_agent.ota.updater import Updater, runs
from edge_agent.outbox import Outbox, PackedRecords
from edge_agent.readings import ReadingBuffer
from edge_agent.records import rows_as_bytes
from edge_agent.sources import Reading, SensorSource, build_source
from edge_agent.state_store import JsonStore
from edge_agent.sync import Syncer
from edge_agent.training_buffer import FILENAME as TRAINING_FILE
from edge_agent.training_buffer import Samples, TrainingBuffer, parse_labels
from fleet_protocol import (
    DesiredState,
    DeviceEvent,
    Health,
    ModelReason,
    OtaState,
    OtaStatus,
    ReportedState,
    Severity,
)
from fleet_protocol.pacing import ByteBudget

log = logging.getLogger(__name__)

_HOUSEKEEPING_S = 1.0
#: Readings are judged over windows this long: most of a window refused degrades health.
_INPUT_WINDOW_S = 10.0
_INPUT_WINDOW_MIN = 10
#: At most one log line per this many seconds about refused input (readings, label batches).
_INPUT_LOG_EVERY_S = 60.0


@dataclass(slots=True)
class _SampledRecords(PackedRecords):
    """Records for the outbox, with their inputs for the training buffer (keyed by the seqs they get)."""

    samples: Samples | None = None


class Agent:
    """One device. Many can share a process and a loop (the simulators do)."""

    def __init__(
        self,
        settings: AgentSettings,
        *,
        source: SensorSource | None = None,
        outbox_executor: Executor | None = None,
        inference_executor: Executor | None = None,
        on_stored: Callable[[int, Samples], None] | None = None,
    ) -> None:
        """``on_stored(first_seq, samples)``: told of every micro-batch of records once stored, with
        each reading's ground truth (the simulators' labeller publishes labels from it)."""
        self.settings = settings
        self.metrics = AgentMetrics()
        self.source = source or build_source(settings.source)
        self.outbox = Outbox(
            settings.data_dir / "outbox.sqlite",
            max_bytes=settings.outbox.max_bytes,
            max_pending=settings.outbox.max_pending,
            synchronous=settings.outbox.synchronous,
            executor=outbox_executor,
        )
        self.training: TrainingBuffer | None = None
        if settings.training_buffer.enabled:
            self.training = TrainingBuffer(
                settings.data_dir / TRAINING_FILE,
                max_bytes=settings.training_buffer.max_bytes,
                # The outbox's writer thread, not one of its own: two writer threads each take and
                # release the GIL at every row sqlite3 binds, and handing it back and forth cost more
                # than the inserts (each database's executemany took 0.46 s of a 0.6 s run of 50,000
                # readings in bench/agent.py; one thread for both, 0.43 s for the two).
                executor=outbox_executor or self.outbox.executor,
            )
        self._on_stored = on_stored
        if self.training is not None or on_stored is not None:
            self.outbox.on_stored = self._records_stored
        self._inline_labels = settings.source.inline_labels
        self._training_reported = {"matched": 0, "unmatched": 0, "evicted": 0}
        self._labels_logged_at = -_INPUT_LOG_EVERY_S
        budget = None
        if settings.mqtt.bandwidth_bytes_per_hour is not None:
            budget = ByteBudget(settings.mqtt.bandwidth_bytes_per_hour)
        self.syncer = Syncer(
            device_id=settings.device_id,
            site=settings.site,
            config=settings.mqtt,
            outbox=self.outbox,
            metrics=self.metrics,
            report_state=self.reported_state,
            on_desired=self.apply_desired,
            budget=budget,
            on_labels=self._labels_received if self.training is not None else None,
        )
        self._placement = InferencePlacement(settings.inference.executor, settings.inference.inline_max_ms)
        self._own_inference_executor = inference_executor is None and settings.inference.executor != "inline"
        self._inference_executor = inference_executor
        if self._own_inference_executor:
            self._inference_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="infer")
        self._desired_store = JsonStore(settings.data_dir / "desired.json", "desired_state")
        self.model: LoadedModel | None = None
        self._model_ready = asyncio.Event()
        #: The last switch of models: from the old model's last batch to the new one's first.
        self.swap_gap_s: float | None = None
        #: At that switch, the longest gap between two batches of the same model in the 5-10 s
        #: before it: what the machine's own scheduling gave, to set the swap gap against.
        self.steady_gap_s: float | None = None
        self._last_batch_end = 0.0
        self._gap_from: float | None = None
        self._gaps = _RecentMax(_STEADY_WINDOW_S)
        # Held while a batch runs: a switch of models waits for the batch, never cuts into it.
        self._model_lock = asyncio.Lock()
        ota = settings.ota
        self.slots = Slots(ota.models_dir or settings.data_dir / "models", settings.model_dir)
        self._recent: deque[Any] = deque(maxlen=ota.recent_inputs)
        self._packer = msgpack.Packer(use_bin_type=True)
        self.updater: Updater | None = None
        if ota.enabled:
            self.updater = Updater(
                slots=self.slots,
                journal=JsonStore(settings.data_dir / "ota.json", "ota"),
                trusted_keys=[],  # read with the model, off the loop, in `run`
                runtimes=ota.runtimes,
                threads=settings.inference.threads,
                token=ota.token,
                download_timeout_s=ota.download_timeout_s,
                retry_min_s=ota.retry_min_s,
                retry_max_s=ota.retry_max_s,
                emit=self._ota_event,
                state_changed=lambda: self.syncer.state_changed(),
                current=lambda: self.model,
                promote=self._promote,
                recent_inputs=lambda: list(self._recent),
                withdrawn=JsonStore(settings.data_dir / "withdrawn.json", "withdrawn"),
            )
        self.health = Health.OK
        self.reason: str | None = None
        self.desired: DesiredState | None = None
        self.rejected: Counter[str] = Counter()
        self._rejected_reported: Counter[str] = Counter()
        #: One refused reading per reason (its detail: which feature, which keys came).
        self._rejected_example: dict[str, str] = {}
        self._window_seen = 0
        self._window_refused: Counter[str] = Counter()
        self._window_example: dict[str, str] = {}
        self._window_started = time.monotonic()
        #: Set while most of the last window's readings were refused: why, with an example.
        self.input_problem: str | None = None
        self._input_logged_at = -_INPUT_LOG_EVERY_S
        self._dropped_reported: dict[str, int] = {}
        #: The manifest sha256 of the running model whose retired signing key was last reported.
        self._retired_signer_reported: str | None = None
        self._stop = asyncio.Event()
        self.started = asyncio.Event()
        self.source_done = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the agent to finish: drain the pipeline, flush the outbox, go offline cleanly."""
        self._stop.set()

    async def run(self) -> None:
        await self.outbox.open()
        if self.training is not None:
            await self.training.open()
            # Prometheus counters count this process's work; the file keeps the totals (`counts`).
            held = self.training.live_counts()
            self._training_reported = {
                "matched": held.labels_matched,
                "unmatched": held.labels_unmatched,
                "evicted": held.evicted,
            }
        try:
            # Verifying digests and building a session is disk and CPU work: keep it off the loop.
            self.model = await asyncio.to_thread(self._load_model)
            self._model_ready.set()
        except ModelLoadError as exc:
            # Keep running: report the failure and wait for a good model via desired state.
            self.health, self.reason = Health.FAILED, str(exc)
            log.error("no model to run: %s", exc)
            self._event("model.load_failed", Severity.ERROR, str(exc))
        stored = await self._desired_store.load()
        if stored is not None:
            try:
                self.desired = DesiredState.model_validate(stored)
                self.syncer.encoding = self.desired.telemetry_encoding
            except ValueError as exc:
                # Not fatal: the broker's retained desired state brings it again on connect.
                message = f"stored desired state is invalid, ignored until the broker sends it again: {exc}"
                log.warning("%s", message)
                self._event("desired.invalid_stored", Severity.WARNING, message[:4000])
        if self.updater is not None:
            self.updater.trusted_keys = await asyncio.to_thread(load_trusted_keys, self.settings.trusted_keys)
            await self.updater.resume()
            if self.desired is not None and self.desired.model is not None:
                self.updater.request(self.desired.model, self.desired.revision)
        metrics_runner = None
        if self.settings.metrics.port is not None:
            metrics_runner = await serve_metrics(
                self.metrics, self.settings.metrics.host, self.settings.metrics.port
            )
        queue = ReadingBuffer(self.settings.inference.queue_size)
        background = [
            asyncio.create_task(self.outbox.run_writer(), name="outbox-writer"),
            asyncio.create_task(self._housekeeping(), name="housekeeping"),
        ]
        if self.training is not None:
            background.append(asyncio.create_task(self.training.run_writer(), name="training-writer"))
        sync_task = asyncio.create_task(self.syncer.run(), name="sync")
        # Without a runnable model these wait for one: an update over the air can bring it.
        reader = asyncio.create_task(self._read_source(queue), name="source")
        infer = asyncio.create_task(self._infer_loop(queue), name="infer")
        self.started.set()
        try:
            await self._wait_for_stop([reader, infer, sync_task, *background])
        finally:
            await self._shutdown(queue, reader, infer, sync_task, background)
            if metrics_runner is not None:
                await metrics_runner.cleanup()

    async def _wait_for_stop(self, tasks: list[asyncio.Task[Any]]) -> None:
        """Return on `stop`; re-raise the first task that failed."""
        stop = asyncio.create_task(self._stop.wait())
        pending = set(tasks)
        try:
            while not self._stop.is_set():
                done, pending = await asyncio.wait(pending | {stop}, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task is not stop and not task.cancelled() and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
                pending.discard(stop)
        finally:
            stop.cancel()

    async def _shutdown(
        self,
        queue: ReadingBuffer,
        reader: asyncio.Task[None] | None,
        infer: asyncio.Task[None] | None,
        sync_task: asyncio.Task[None],
        background: list[asyncio.Task[Any]],
    ) -> None:
        if self.updater is not None:
            await self.updater.stop()
        if reader is not None:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        queue.close()
        if infer is not None and not self._model_ready.is_set():
            infer.cancel()  # it never had a model to run: nothing was read
        if infer is not None:
            # What was read gets inferred and stored: a clean stop loses no reading.
            await asyncio.gather(infer, return_exceptions=True)
        await self.outbox.flush()
        await self.syncer.stop()
        try:
            async with asyncio.timeout(5.0):
                await asyncio.gather(sync_task, return_exceptions=True)
        except TimeoutError:
            sync_task.cancel()
            await asyncio.gather(sync_task, return_exceptions=True)
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        if self.training is not None:
            await self.training.close()  # first: it writes on the outbox's thread, which closes with it
        await self.outbox.close()
        await self.source.aclose()
        if self.model is not None:
            self.model.close()
        if self._own_inference_executor and self._inference_executor is not None:
            self._inference_executor.shutdown(wait=False)

    def _load_model(self) -> LoadedModel:
        """The active slot's model; if it cannot run, the previous one, then the provisioned one.

        Each was installed (or provisioned) verified, so one signed by a key retired since still
        runs: a device must not stop inferring, offline perhaps for days, because its operator
        rotated keys. It says so (health degraded, ``model.signer_retired``) until an update signed
        by a current key replaces it; new bundles signed by the retired key are refused. A key
        removed from ``trusted_keys`` (a compromised one) is another matter: nothing it signed runs.
        """
        keys = load_trusted_keys(self.settings.trusted_keys)
        first: ModelLoadError | None = None
        for bundle in self.slots.candidates():
            try:
                model = load_model(bundle, keys, threads=self.settings.inference.threads, allow_retired=True)
            except ModelLoadError as exc:
                log.error("cannot run %s: %s", bundle, exc)
                first = first or exc
                continue
            if bundle != self.slots.active():
                log.warning("running %s: the active slot %s did not load", bundle, self.slots.active())
                self.slots.switch(bundle)
            return model
        assert first is not None
        raise first

    # -- the data path -----------------------------------------------------------------

    async def _read_source(self, queue: ReadingBuffer) -> None:
        await self._model_ready.wait()
        try:
            async for reading in self.source.readings(self.outbox.saved_cursor):
                await queue.put(reading)
        finally:
            self.source_done.set()
            queue.close()

    async def _infer_loop(self, queue: ReadingBuffer) -> None:
        max_batch = self.settings.inference.micro_batch_max
        await self._model_ready.wait()
        while True:
            # Micro-batch whatever is waiting: one model call for many readings.
            batch = await queue.take(max_batch)
            if not batch:
                return  # the source ended (or the agent stops) and everything read is stored
            async with self._model_lock:
                records = await self._infer(batch)
                self._batch_done()
            if records is not None:
                await self.outbox.put_packed(records)

    async def _infer(self, readings: list[Reading]) -> PackedRecords | None:
        assert self.model is not None
        model = self.model
        raw, kept_index, rejected = model.preprocessor.batch([r.values for r in readings])
        self._window_seen += len(readings)
        for exc in rejected:
            self.rejected[exc.reason] += 1
            self._window_refused[exc.reason] += 1
            self.metrics.rejected.labels(exc.reason).inc()
            self._rejected_example.setdefault(exc.reason, str(exc))
            self._window_example.setdefault(exc.reason, str(exc))
            log.debug("rejected reading: %s", exc)
        if not kept_index:
            return None
        kept = [readings[i] for i in kept_index]
        scaled = model.preprocessor.scale(raw)
        try:
            predictions, seconds = await self._predict(model, scaled)
        except Exception as exc:  # the runtime failed on this batch: counted, and the agent goes on
            self._model_failed(model, f"raised {exc!r}", len(kept), ModelReason.RUNTIME_ERROR)
            return None
        problem = output_problem(model, predictions.outputs, len(kept))
        if problem is not None:  # no record is made of outputs that mean nothing
            self._model_failed(model, problem, len(kept), ModelReason.SMOKE_TEST_FAILED)
            return None
        self.metrics.inference_seconds.observe(seconds)
        self.metrics.batch_size.observe(len(kept))
        self.metrics.inferences.inc(len(kept))
        # The last few real inputs: what a new model's smoke test runs on.
        self._recent.extend(r.values for r in kept[-(self._recent.maxlen or 1) :])
        if self.updater is not None and self.updater.challenger is not None:
            await self._shadow(self.updater.challenger, kept, predictions, seconds)
        return self._records(model, kept, raw, predictions)

    async def _predict(self, model: LoadedModel, scaled: np.ndarray) -> tuple[Predictions, float]:
        """One model call and its duration, on the loop or the inference thread (`InferencePlacement`).

        The clock runs inside the call: time waiting for the (shared) inference thread is not the
        model's latency, and the shadow gates compare models by it.
        """
        if self._placement.inline(model, len(scaled)):
            self.metrics.inference_batches.labels("loop").inc()
            predictions, seconds = _timed(model, scaled)
        else:
            self.metrics.inference_batches.labels("thread").inc()
            loop = asyncio.get_running_loop()
            predictions, seconds = await loop.run_in_executor(self._inference_executor, _timed, model, scaled)
        self._placement.observe(model, len(scaled), seconds)
        return predictions, seconds

    async def _shadow(
        self, challenger: LoadedModel, kept: list[Reading], champion: Predictions, champion_s: float
    ) -> None:
        """The same readings through the new model; only compared, never stored."""
        assert self.updater is not None
        raw, index, _ = challenger.preprocessor.batch([r.values for r in kept])
        if len(index) != len(kept):
            return  # the new model reads other features: compare on batches both can read
        scaled = challenger.preprocessor.scale(raw)
        try:
            predictions, seconds = await self._predict(challenger, scaled)
        except Exception as exc:  # the update fails; the running model is untouched
            self.updater.challenger_raised(exc)
            return
        self.updater.observe_shadow(champion, champion_s, predictions, seconds)

    def _model_failed(self, model: LoadedModel, what: str, readings: int, reason: ModelReason) -> None:
        """A model that raises, or gives non-finite outputs or outputs of another shape than its
        manifest declares, is rolled back when an update installed it; otherwise reported."""
        self.rejected["runtime_error"] += readings
        self.metrics.rejected.labels("runtime_error").inc(readings)
        log.error("%s %s on a batch of %d readings", model.manifest.ref, what, readings)
        if self.updater is not None and self.updater.installed(model):
            self.updater.roll_back(f"{model.manifest.ref} {what}", reason)
        elif self.health is Health.OK:
            self.health, self.reason = Health.DEGRADED, f"{model.manifest.ref} {what}"
            self.syncer.state_changed()

    def _batch_done(self) -> None:
        now = time.perf_counter()
        if self._gap_from is not None:
            self.swap_gap_s = now - self._gap_from
            self.metrics.swap_gap.set(self.swap_gap_s)
            self._gap_from = None
        elif self._last_batch_end:
            self._gaps.add(now, now - self._last_batch_end)
        self._last_batch_end = now

    async def _promote(self, model: LoadedModel) -> None:
        """Switch models between two batches: no reading waits longer than one batch."""
        async with self._model_lock:
            if self.model is not None and self._last_batch_end:
                self._gap_from = self._last_batch_end
                self.steady_gap_s = self._gaps.value()
            old, self.model = self.model, model
            if self.health is Health.FAILED:  # it had no model to run; now it has
                self.health, self.reason = Health.OK, None
        self._model_ready.set()
        if old is not None:
            old.close()
        self.syncer.state_changed()

    def _records(
        self, model: LoadedModel, readings: list[Reading], raw: np.ndarray, p: Predictions
    ) -> PackedRecords:
        manifest = model.manifest
        n = len(readings)
        # Everything numeric is converted per batch (numpy), not per record; arrays stay bytes.
        outputs = rows_as_bytes(p.outputs)
        anomaly, low = p.anomaly.tolist(), p.low_confidence.tolist()
        none: list[Any] = [None] * n
        predicted = p.predicted.tolist() if p.predicted is not None else none
        confidence = np.round(p.confidence, 6).tolist() if p.confidence is not None else none
        mode = self.settings.inference.features
        raw_rows = rows_as_bytes(raw) if mode == "raw" or self.outbox.on_stored is not None else none
        features = raw_rows if mode == "raw" else none
        truth = [r.label for r in readings]
        labels = truth if self._inline_labels else none
        summaries = none
        if mode == "summary":
            summaries = [
                {"mean": [m], "min": [lo], "max": [hi]}
                for m, lo, hi in zip(
                    raw.mean(1).tolist(), raw.min(1).tolist(), raw.max(1).tolist(), strict=True
                )
            ]
        device, model_id, version = self.settings.device_id, manifest.model_id, manifest.version
        pack = self._packer.pack
        # The layout of edge_agent.records.FIELDS, packed here: no object per record.
        bodies = [
            pack(
                [
                    device,
                    r.ts,
                    model_id,
                    version,
                    outputs[i],
                    predicted[i],
                    confidence[i],
                    anomaly[i],
                    low[i],
                    features[i],
                    summaries[i],
                    labels[i],
                ]
            )
            for i, r in enumerate(readings)
        ]
        flagged = [a or lo for a, lo in zip(anomaly, low, strict=True)]
        cursor = next((r.cursor for r in reversed(readings) if r.cursor is not None), None)
        if self.outbox.on_stored is None:
            return PackedRecords(bodies, flagged, cursor)
        ts = [r.ts for r in readings]
        samples = Samples(model_id, version, model.preprocessor.feature_names, ts, raw_rows, predicted, truth)
        return _SampledRecords(bodies, flagged, cursor, samples)

    # -- the training buffer -------------------------------------------------------------

    def _records_stored(self, parts: list[tuple[int, PackedRecords]]) -> None:
        for first_seq, part in parts:
            if not isinstance(part, _SampledRecords) or part.samples is None:
                continue
            if self.training is not None:
                self.training.add(first_seq, part.samples)
            if self._on_stored is not None:
                self._on_stored(first_seq, part.samples)

    def _labels_received(self, payload: bytes) -> None:
        assert self.training is not None
        parsed = parse_labels(payload, device_id=self.settings.device_id, site=self.settings.site)
        if isinstance(parsed, tuple):
            reason, detail = parsed
            self.training.refused()
            self.metrics.training_labels.labels("refused").inc()
            now = time.monotonic()
            if now - self._labels_logged_at >= _INPUT_LOG_EVERY_S:  # a broken labeller must not fill the log
                log.warning("refused a label batch (%s): %s", reason, detail)
                self._labels_logged_at = now
            return
        self.training.add_labels(parsed.labels)

    # -- state, desired state, events -------------------------------------------------

    def reported_state(self) -> ReportedState:
        stats = self.outbox.stats
        manifest = self.model.manifest if self.model else None
        health, reason = self.health, self.reason
        if health is Health.OK and stats.dropped_write_error:
            health = Health.DEGRADED
            reason = f"outbox write errors lost {stats.dropped_write_error} records; last: {stats.last_error}"
        elif health is Health.OK and self.input_problem is not None:
            health, reason = Health.DEGRADED, self.input_problem
        elif health is Health.OK and (
            stats.evicted_routine or stats.evicted_flagged or stats.dropped_disk_full
        ):
            health = Health.DEGRADED
            reason = (
                f"outbox bound dropped records: {stats.evicted_routine} routine, {stats.evicted_flagged}"
                f" flagged evicted, {stats.dropped_disk_full} lost to a full disk"
            )
        if health is Health.OK and (retired := self._retired_signer()) is not None:
            health, reason = Health.DEGRADED, retired
        model_reason = None
        want = self.desired.model if self.desired is not None else None
        if want is not None and not runs(self.model, want):
            if self.updater is None:
                model_reason = ModelReason.OTA_UNSUPPORTED
                reason = f"desired model {want.model_id}@{want.version}: updates over the air are off"
            else:
                model_reason = self.updater.reason()
                status = self.updater.status
                if status is not None and status.reason is not None and health is Health.OK:
                    health = Health.DEGRADED
                    reason = f"update to {want.model_id}@{want.version} failed: {status.detail}"
        return ReportedState(
            device_id=self.settings.device_id,
            site=self.settings.site,
            online=True,
            health=health,
            reason=reason,
            agent_version=__version__,
            model_id=manifest.model_id if manifest else None,
            model_version=manifest.version if manifest else None,
            runtime=manifest.runtime.value if manifest else None,
            last_seq=stats.last_seq,
            outbox_depth=stats.depth + stats.pending,
            outbox_bytes=stats.bytes,
            evicted=stats.evicted_routine + stats.evicted_flagged,
            desired_revision=self.desired.revision if self.desired else None,
            model_reason=model_reason,
            ota=self.updater.status if self.updater is not None else None,
        )

    async def apply_desired(self, desired: DesiredState) -> None:
        if self.desired is not None and desired.revision <= self.desired.revision:
            return  # a retained copy of what we already applied, or an older one
        await self._desired_store.save(desired.model_dump(mode="json"))
        self.desired = desired
        self.syncer.encoding = desired.telemetry_encoding
        log.info("applied desired state revision %d", desired.revision)
        if self.updater is not None and desired.model is not None:
            self.updater.request(desired.model, desired.revision)
        self.syncer.state_changed()

    def _ota_event(self, kind: str, status: OtaStatus) -> None:
        if status.state in (OtaState.PROMOTED, OtaState.ROLLED_BACK, OtaState.REFUSED):
            self.metrics.ota_updates.labels(status.state.value).inc()
        severity = {
            OtaState.ROLLED_BACK: Severity.ERROR,
            OtaState.REFUSED: Severity.ERROR,
        }.get(status.state, Severity.INFO)
        what = f"{status.model_id}@{status.version}"
        message = f"{kind.removeprefix('ota.')} {what}" + (f": {status.detail}" if status.detail else "")
        self._event(kind, severity, message[:4000], **status.model_dump(mode="json", exclude_none=True))

    def _event(self, kind: str, severity: Severity, message: str, **data: Any) -> None:
        self.syncer.emit(
            DeviceEvent(
                device_id=self.settings.device_id, kind=kind, severity=severity, message=message, data=data
            )
        )

    async def _housekeeping(self) -> None:
        while True:
            stats = self.outbox.stats
            self.metrics.outbox_depth.set(stats.depth + stats.pending)
            self.metrics.outbox_bytes.set(stats.bytes)
            dropped = {
                "routine": stats.evicted_routine,
                "flagged": stats.evicted_flagged,
                "disk_full": stats.dropped_disk_full,
                "write_error": stats.dropped_write_error,
            }
            delta = {k: v - self._dropped_reported.get(k, 0) for k, v in dropped.items()}
            if any(delta.values()):
                for kind, count in delta.items():
                    if count:
                        self.metrics.evicted.labels(kind).inc(count)
                if delta["write_error"]:
                    self._event(
                        "outbox.write_failed",
                        Severity.ERROR,
                        f"outbox write failed: {delta['write_error']} more records lost ({stats.last_error})",
                        error=stats.last_error,
                        **dropped,
                    )
                if delta["routine"] or delta["flagged"] or delta["disk_full"]:
                    self._event(
                        "outbox.evicted",
                        Severity.WARNING,
                        f"outbox bound reached: {sum(delta.values()) - delta['write_error']} more records"
                        " dropped",
                        **dropped,
                    )
                self._dropped_reported = dropped
                self.syncer.state_changed()
            new = self.rejected - self._rejected_reported
            if new:
                top, _ = new.most_common(1)[0]
                example = self._rejected_example.get(top, "")
                self._event(
                    "input.rejected",
                    Severity.WARNING,
                    f"{sum(new.values())} readings refused, most for {top}: {example}",
                    **{k: int(v) for k, v in new.items()},
                    example={"reason": top, "detail": example},
                )
                self._rejected_reported = self.rejected.copy()
                self._rejected_example.clear()
            self._judge_input_window()
            self._training_metrics()
            self._report_retired_signer()
            await asyncio.sleep(_HOUSEKEEPING_S)

    def _retired_signer(self) -> str | None:
        """Why the running model is reported, when the key that signed it is retired."""
        model = self.model
        signer = model.signer if model is not None else None
        if model is None or signer is None or not signer.retired():
            return None
        assert signer.retired_at is not None
        return (
            f"running {model.manifest.ref}, signed by key {signer.key_id}, retired at"
            f" {signer.retired_at.isoformat()}: it runs on, but no bundle signed by that key is installed any"
            " more; roll out one signed by a current key"
        )

    def _report_retired_signer(self) -> None:
        """Once per model: an event (and a state) when the running model's key is, or becomes, retired."""
        model = self.model
        if model is None or model.manifest_sha256 == self._retired_signer_reported:
            return
        why = self._retired_signer()
        if why is None:
            return
        self._retired_signer_reported = model.manifest_sha256
        assert model.signer is not None
        log.warning("%s", why)
        self._event(
            "model.signer_retired",
            Severity.WARNING,
            why,
            model_id=model.manifest.model_id,
            version=model.manifest.version,
            key_id=model.signer.key_id,
            retired_at=model.signer.retired_at.isoformat() if model.signer.retired_at else None,
        )
        self.syncer.state_changed()

    def _training_metrics(self) -> None:
        if self.training is None:
            return
        counts = self.training.live_counts()
        self.metrics.training_samples.set(counts.samples)
        self.metrics.training_labelled.set(counts.labelled)
        now = {
            "matched": counts.labels_matched,
            "unmatched": counts.labels_unmatched,
            "evicted": counts.evicted,
        }
        for key, value in now.items():
            delta = value - self._training_reported[key]
            if delta > 0:
                if key == "evicted":
                    self.metrics.training_evicted.inc(delta)
                else:
                    self.metrics.training_labels.labels(key).inc(delta)
        self._training_reported = now

    def _judge_input_window(self) -> None:
        """Degrade health while most readings of a window are refused; recover when they fit again."""
        now = time.monotonic()
        if now - self._window_started < _INPUT_WINDOW_S:
            return
        seen, reasons, examples = self._window_seen, self._window_refused, self._window_example
        refused = sum(reasons.values())
        self._window_seen, self._window_refused, self._window_example = 0, Counter(), {}
        self._window_started = now
        before = self.input_problem
        if seen >= _INPUT_WINDOW_MIN and refused * 2 > seen:
            top = reasons.most_common(1)[0][0]
            example = examples.get(top, "")
            self.input_problem = (
                f"{refused} of {seen} readings refused in the last {_INPUT_WINDOW_S:.0f} s, most for {top}:"
                f" {example}"
            )
            if now - self._input_logged_at >= _INPUT_LOG_EVERY_S:
                log.warning("input does not fit the model: %s", self.input_problem)
                self._input_logged_at = now
        elif seen >= _INPUT_WINDOW_MIN:
            self.input_problem = None
        if before != self.input_problem and (before is None or self.input_problem is None):
            self.syncer.state_changed()


def _timed(model: LoadedModel, scaled: np.ndarray) -> tuple[Predictions, float]:
    started = time.perf_counter()
    predictions = model.predict(scaled)
    return predictions, time.perf_counter() - started


_STEADY_WINDOW_S = 5.0


class _RecentMax:
    """The largest value added in the current and the previous window of ``window_s`` seconds."""

    __slots__ = ("_current", "_previous", "_start", "_window_s")

    def __init__(self, window_s: float) -> None:
        self._window_s = window_s
        self._start = 0.0
        self._current = self._previous = 0.0

    def add(self, now: float, value: float) -> None:
        if now - self._start >= self._window_s:
            # A window with nothing added is over too: only the last two count.
            stale = now - self._start >= 2 * self._window_s
            self._previous, self._current, self._start = (0.0 if stale else self._current), 0.0, now
        self._current = max(self._current, value)

    def value(self) -> float | None:
        best = max(self._current, self._previous)
        return best or None
