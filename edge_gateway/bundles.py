"""The site's bundle cache: each bundle crosses the uplink once, whatever the number of devices.

Bundles are stored by sha256 (the controller's content address). Concurrent requests for a
bundle that is not here yet share one download (single flight); an interrupted download
resumes with a range request; a download that does not hash to its name is thrown away.
Devices get bundles from the gateway's HTTP server, with range requests too.

A cached bundle's drift reference (``drift_reference.json``) is handed to the drift
statistics, verified by signature when the gateway has trusted keys, and otherwise trusted
because its bytes hash to the address the controller named (which verified the signature
when the bundle was uploaded).
"""

from __future__ import annotations

import asyncio
import logging
import re
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_gateway.controller_client import ControllerClient
from edge_gateway.exceptions import UpstreamError
from edge_gateway.metrics import GatewayMetrics
from fleet_protocol import (
    DRIFT_REFERENCE_FILE,
    MANIFEST_FILE,
    BundleManifest,
    DriftReference,
    ProtocolError,
    decode,
)
from fleet_protocol.signing import verify_bundle

log = logging.getLogger(__name__)

SHA256 = re.compile(r"^[0-9a-f]{64}$")

OnReference = Callable[[str, str, DriftReference], None]


class BundleNotAvailable(Exception):
    """The bundle is not cached and cannot be fetched now; the message says why."""


class BundleCache:
    def __init__(
        self,
        directory: Path,
        client: ControllerClient | None,
        metrics: GatewayMetrics,
        *,
        trusted_keys: list[Ed25519PublicKey],
        on_reference: OnReference,
    ) -> None:
        self.directory = directory
        self.client = client
        self.metrics = metrics
        self.trusted_keys = trusted_keys
        self.on_reference = on_reference
        self._inflight: dict[str, asyncio.Task[Path]] = {}

    def path(self, sha256: str) -> Path:
        return self.directory / sha256

    async def start(self) -> None:
        """Create the folder and read the drift references of what is cached already."""
        await asyncio.to_thread(self.directory.mkdir, parents=True, exist_ok=True)
        cached = await asyncio.to_thread(
            lambda: [p for p in self.directory.iterdir() if SHA256.match(p.name)]
        )
        for path in cached:
            await self._read_reference(path)

    async def get(self, sha256: str) -> Path:
        """The bundle's path, downloading it first if needed; one download per bundle at a time."""
        if not SHA256.match(sha256):
            raise BundleNotAvailable(f"{sha256!r} is not a sha256")
        path = self.path(sha256)
        if await asyncio.to_thread(path.is_file):
            return path
        task = self._inflight.get(sha256)
        if task is None:
            task = self._inflight[sha256] = asyncio.create_task(self._fetch(sha256))
            task.add_done_callback(lambda _: self._inflight.pop(sha256, None))
        # Shielded: one impatient device hanging up must not cancel everyone's download.
        return await asyncio.shield(task)

    async def _fetch(self, sha256: str) -> Path:
        if self.client is None:
            raise BundleNotAvailable("no controller is configured to fetch bundles from")
        part = self.directory / f"{sha256}.part"
        try:
            await self.client.download_bundle(sha256, part)
        except UpstreamError as exc:
            self.metrics.bundle_fetches.labels("failed").inc()
            raise BundleNotAvailable(str(exc)) from None
        path = self.path(sha256)
        await asyncio.to_thread(part.replace, path)
        self.metrics.bundle_fetches.labels("ok").inc()
        log.info("cached bundle %s", sha256[:12])
        await self._read_reference(path)
        return path

    async def _read_reference(self, path: Path) -> None:
        try:
            found = await asyncio.to_thread(read_reference, path, self.trusted_keys)
        except (ProtocolError, tarfile.TarError, OSError, EOFError) as exc:
            log.warning("bundle %s: no usable drift reference: %s", path.name[:12], exc)
            return
        if found is not None:
            manifest, reference = found
            self.on_reference(manifest.model_id, manifest.version, reference)


def read_reference(
    archive: Path, trusted_keys: list[Ed25519PublicKey]
) -> tuple[BundleManifest, DriftReference] | None:
    """The manifest and drift reference of a bundle archive, or None when it carries none."""
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(archive, "r:*") as tar:
        tar.extractall(tmp, filter="data")
        root = Path(tmp)
        if trusted_keys:
            manifest = verify_bundle(root, trusted_keys)
        else:
            manifest = decode((root / MANIFEST_FILE).read_bytes(), BundleManifest, max_bytes=4 << 20)
        if DRIFT_REFERENCE_FILE not in manifest.files:
            return None
        reference = decode((root / DRIFT_REFERENCE_FILE).read_bytes(), DriftReference, max_bytes=16 << 20)
        return manifest, reference
