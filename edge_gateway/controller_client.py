"""The gateway's one HTTP client to the cloud controller (aiohttp): ingest, desired state, bundles.

Every call raises `UpstreamError` on failure, with ``retry`` telling the caller whether the
same request may succeed later (network, 5xx, auth) or never will as it is (4xx on content).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import ssl
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from edge_gateway.exceptions import ConfigError, UpstreamError
from fleet_protocol import ProtocolError, decode
from fleet_protocol.ingest import IngestResult, SiteDesiredStates
from fleet_protocol.tls import TlsConfigError, check_private_key_mode

_CHUNK = 1 << 16
#: Statuses that say the request itself is wrong: sending it again cannot help.
_CONTENT_ERRORS = {400, 404, 409, 413, 415, 422}
#: The ``Retry-After`` of a 429 is honoured within these bounds (seconds): the controller's rate
#: limit asks for a few seconds at a time.
_MIN_RETRY_AFTER_S, _MAX_RETRY_AFTER_S = 0.1, 600.0


@dataclass(frozen=True, slots=True)
class Desired:
    states: SiteDesiredStates
    etag: str | None


class ControllerClient:
    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        timeout_s: float = 30.0,
        ca_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
    ) -> None:
        """``ca_file``: the CA of the controller's certificate when it is not a public one.

        ``cert_file``, ``key_file``: the gateway's fleet certificate, shown in the TLS handshake; a
        controller served with ``--client-ca`` takes it instead of a token (None or "": send none).
        """
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=min(timeout_s, 10.0))
        self._session: aiohttp.ClientSession | None = None
        self._tls: ssl.SSLContext | bool = True  # the system's CAs
        if ca_file is not None or cert_file is not None:
            try:
                self._tls = ssl.create_default_context(cafile=None if ca_file is None else str(ca_file))
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"upstream.ca_file {ca_file}: {exc}") from None
        if cert_file is not None:
            if key_file is None:
                raise ConfigError("upstream.cert_file needs upstream.key_file")
            assert isinstance(self._tls, ssl.SSLContext)
            try:
                check_private_key_mode(key_file)
                self._tls.load_cert_chain(str(cert_file), str(key_file))
            except TlsConfigError as exc:
                raise ConfigError(f"upstream.key_file: {exc}") from None
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"upstream.cert_file {cert_file} with key {key_file}: {exc}") from None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers=self._headers, timeout=self._timeout, connector=aiohttp.TCPConnector(ssl=self._tls)
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def ingest(self, gzipped_json: bytes) -> IngestResult:
        """POST one gzip-compressed `IngestBatch`."""
        headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
        try:
            async with self._http().post(
                f"{self.base_url}/api/v1/ingest", data=gzipped_json, headers=headers
            ) as response:
                body = await response.read()
                if response.status != 200:
                    raise _status_error("ingest", response.status, body, response.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamError(f"ingest: controller unreachable: {_failure(exc)}") from None
        try:
            return IngestResult.model_validate_json(body)
        except ValueError as exc:
            raise UpstreamError(f"ingest: unexpected answer from controller: {exc}") from None

    async def desired(self, site: str, etag: str | None) -> Desired | None:
        """The site's desired states, or None when unchanged since ``etag`` (304)."""
        headers = {"If-None-Match": etag} if etag else {}
        try:
            async with self._http().get(
                f"{self.base_url}/api/v1/sites/{site}/desired", headers=headers
            ) as response:
                body = await response.read()
                if response.status == 304:
                    return None
                if response.status != 200:
                    raise _status_error("desired state", response.status, body)
                tag = response.headers.get("ETag")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamError(f"desired state: controller unreachable: {_failure(exc)}") from None
        try:
            return Desired(decode(body, SiteDesiredStates, max_bytes=64 * 1024 * 1024), tag)
        except ProtocolError as exc:
            raise UpstreamError(
                f"desired state: refused the controller's answer: {exc}", retry=True
            ) from None

    async def download_bundle(self, sha256: str, part: Path) -> None:
        """Download bundle ``sha256`` into ``part``, resuming what a previous attempt left there.

        The file is checked against its sha256 once complete; a mismatch deletes it.
        """
        offset = await asyncio.to_thread(_size, part)
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            async with self._http().get(
                f"{self.base_url}/api/v1/bundles/{sha256}",
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=None, sock_read=self._timeout.total),
            ) as response:
                if response.status == 416:  # the part is already whole
                    pass
                elif response.status in (200, 206):
                    # 200 to a range request: the server sends it all again, so start over.
                    mode = "ab" if response.status == 206 else "wb"
                    handle = await asyncio.to_thread(part.open, mode)
                    try:
                        async for chunk in response.content.iter_chunked(_CHUNK):
                            await asyncio.to_thread(handle.write, chunk)
                    finally:
                        await asyncio.to_thread(handle.close)
                else:
                    raise _status_error(f"bundle {sha256[:12]}", response.status, await response.read())
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamError(f"bundle {sha256[:12]}: download interrupted: {_failure(exc)}") from None
        if await asyncio.to_thread(_sha256, part) != sha256:
            await asyncio.to_thread(part.unlink, True)
            raise UpstreamError(f"bundle {sha256[:12]}: downloaded bytes do not match their sha256")


def _failure(exc: BaseException) -> str:
    """What went wrong, for a log line, never the request's headers (the gateway's token).

    The repr of aiohttp's `ClientResponseError` (a malformed answer, a redirect loop) carries the
    request's headers, ``Authorization`` among them; its str names the status, message and URL only.
    """
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"{type(exc).__name__}({exc})"
    return repr(exc)


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _status_error(what: str, status: int, body: bytes, retry_after: str | None = None) -> UpstreamError:
    detail = body[:500].decode(errors="replace")
    return UpstreamError(
        f"{what}: controller answered {status}: {detail}",
        status=status,
        retry=status not in _CONTENT_ERRORS,
        retry_after=_retry_after(retry_after) if status == 429 else None,
    )


def _retry_after(header: str | None) -> float | None:
    """A 429's ``Retry-After`` in seconds, or None when absent or not a number (the controller
    sends whole seconds, never an HTTP date)."""
    try:
        seconds = float(header) if header is not None else math.nan
    except ValueError:
        return None
    if not math.isfinite(seconds):
        return None
    # Bounded both ways: 0 must not become a busy loop, nor a garbled header park the uplink for days.
    return min(max(seconds, _MIN_RETRY_AFTER_S), _MAX_RETRY_AFTER_S)
