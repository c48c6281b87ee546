"""The managed site broker: a Mosquitto the gateway starts, watches and restarts.

Why Mosquitto and not a broker inside the Python process: it is the broker everywhere else
in the fleet (one behaviour to reason about), it moves about 12k QoS 1 messages/s here against
3-5k for amqtt, it survives the gateway (devices keep publishing while the gateway restarts),
and amqtt cannot share an environment with Flower. The config it gets keeps QoS 1 messages
for a gateway that is away (persistence, no queue limit), so a gateway restart loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

from edge_gateway.broker_acl import TlsListener, tls_listener_lines
from edge_gateway.exceptions import BrokerError

log = logging.getLogger(__name__)

_RESTART_DELAY_S = 1.0
ACL_FILE = "acl"


#: Mosquitto's store in its ``persistence_location`` (its default ``persistence_file``).
STORE_FILE = "mosquitto.db"


def mosquitto_config(workdir: Path, listen: str, port: int, tls: TlsListener | None = None) -> str:
    """A config for a site broker that keeps what it accepted for subscribers that are away.

    With ``tls``, the one listener takes only clients with a certificate of the fleet CA, and the
    ACL in ``workdir/acl`` (`broker_acl.acl`) says what each may do; without, anyone may do anything.
    """
    lines = [f"listener {port} {listen}"]
    if tls is None:
        lines.append("allow_anonymous true")
    else:
        lines += tls_listener_lines(tls, workdir / ACL_FILE)
    lines += [
        "persistence true",
        f"persistence_location {workdir}/",
        # At most a second of accepted messages is lost if the broker itself is killed.
        "autosave_interval 1",
        # The default (1000) would drop QoS 1 messages for a gateway that is away for a while.
        "max_queued_messages 0",
        # The gateway acknowledges after committing a batch: let a batch be in flight.
        "max_inflight_messages 1000",
        f"log_dest file {workdir}/mosquitto.log",
    ]
    if os.geteuid() == 0:
        lines.append("user root")  # else Mosquitto drops to a user that cannot write workdir
    return "\n".join(lines) + "\n"


def reach_host(listen: str) -> str:
    """The address a client on this machine reaches a listener on ``listen`` at."""
    return "127.0.0.1" if listen in ("0.0.0.0", "::") else listen


def find_mosquitto() -> str:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        raise BrokerError(
            "no broker configured (broker.host) and mosquitto is not installed to start one:"
            " install it (apt-get install mosquitto) or point broker.host at the site broker"
        )
    return binary


class ManagedBroker:
    """``await start()``; `run` restarts it when it dies; ``await stop()``."""

    def __init__(
        self,
        workdir: Path,
        *,
        listen: str = "0.0.0.0",
        port: int = 1883,
        tls: TlsListener | None = None,
        acl: str | None = None,
        crl_check_s: float = 10.0,
        acl_watch: Path | None = None,
        acl_refresh: Callable[[], str] | None = None,
        prime: Callable[[str, int], Awaitable[None]] | None = None,
    ) -> None:
        self.workdir, self.listen, self.port = workdir, listen, port
        self.tls, self.acl, self.crl_check_s = tls, acl, crl_check_s
        if tls is not None and acl is None:
            raise ValueError("a TLS listener needs an ACL")
        #: When this file changes, ``acl_refresh()`` gives the new ACL and the broker reloads it.
        self.acl_watch, self.acl_refresh = acl_watch, acl_refresh
        self._acl_seen: float | None = self._mtime(acl_watch)
        #: Called with a host and port of its own before devices can reach a broker without a store:
        #: the gateway opens its persistent session there (`_prime`).
        self.prime = prime
        self.binary = find_mosquitto()
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self._stopping = False
        self._crl_seen: float | None = None

    async def start(self) -> None:
        await asyncio.to_thread(self.workdir.mkdir, parents=True, exist_ok=True)
        if self.acl is not None:
            await asyncio.to_thread((self.workdir / ACL_FILE).write_text, self.acl)
        self._crl_seen = await asyncio.to_thread(self._crl_mtime)
        if self.prime is not None and not await asyncio.to_thread((self.workdir / STORE_FILE).exists):
            await self._prime(self.prime)
        self.process = await self._launch(self.listen, self.port)
        log.info("managed broker listening on %s:%d", self.listen, self.port)

    async def _prime(self, prime: Callable[[str, int], Awaitable[None]]) -> None:
        """A broker without a store keeps nothing for the gateway until the gateway subscribes:
        a device's QoS 1 publish before that is acknowledged and dropped, and the device deletes
        the record. So a first start (or a lost store) opens a listener on another port only, lets
        ``prime`` open the gateway's persistent session there, and saves it before devices can
        connect; from then on the broker keeps their messages for the gateway."""
        # The address the gateway reaches the broker at (its certificate names it), another port.
        host = reach_host(self.listen)
        port = await asyncio.to_thread(_free_port, host)
        process = await self._launch(host, port)
        try:
            await prime(host, port)
        except Exception as exc:  # the gateway's own link cannot reach it: say so, as a start failure
            raise BrokerError(f"cannot open the gateway's session on the new broker: {exc}") from None
        finally:
            await self._terminate(process)  # SIGTERM: Mosquitto writes its store
        if not await asyncio.to_thread((self.workdir / STORE_FILE).exists):
            log.error(
                "the managed broker wrote no store after priming: devices that publish before"
                " the gateway subscribes may lose messages"
            )
        else:
            log.info("managed broker: the gateway's session is saved before devices can connect")

    async def _launch(self, listen: str, port: int) -> asyncio.subprocess.Process:
        config = self.workdir / "mosquitto.conf"
        text = mosquitto_config(self.workdir, listen, port, self.tls)
        await asyncio.to_thread(config.write_text, text)
        process = await asyncio.create_subprocess_exec(
            self.binary,
            "-c",
            str(config),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        host = reach_host(listen)
        for _ in range(200):
            if process.returncode is not None:
                log_file = self.workdir / "mosquitto.log"
                raise BrokerError(f"mosquitto exited at start (code {process.returncode}): see {log_file}")
            if await asyncio.to_thread(_listening, host, port):
                return process
            await asyncio.sleep(0.05)
        await self._terminate(process)
        raise BrokerError(f"mosquitto did not listen on port {port} within 10 s")

    def _crl_mtime(self) -> float | None:
        return self._mtime(self.tls.crl_file if self.tls is not None else None)

    @staticmethod
    def _mtime(path: Path | None) -> float | None:
        if path is None:
            return None
        try:
            return path.stat().st_mtime
        except OSError:
            return None

    async def _reload_acl_if_changed(self, process: asyncio.subprocess.Process) -> None:
        """A new ACL from ``acl_refresh`` when ``acl_watch`` changed, applied by SIGHUP: Mosquitto
        reads its ACL file again and keeps every connection. A refresh that fails keeps the ACL."""
        if self.acl_watch is None or self.acl_refresh is None:
            return
        seen = await asyncio.to_thread(self._mtime, self.acl_watch)
        if seen == self._acl_seen:
            return
        self._acl_seen = seen
        try:
            text = await asyncio.to_thread(self.acl_refresh)
        except (OSError, ValueError) as exc:
            log.error("%s changed but cannot be used (%s): the broker keeps its ACL", self.acl_watch, exc)
            return
        self.acl = text
        await asyncio.to_thread((self.workdir / ACL_FILE).write_text, text)
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGHUP)
        log.info("%s changed: the broker reloaded its ACL", self.acl_watch)

    async def run(self) -> None:
        """Watch the broker; start it again whenever it exits or its CRL changes, until `stop`."""
        while not self._stopping:
            assert self.process is not None
            process = self.process
            try:
                watching = self._crl_seen is not None or self.acl_watch is not None
                async with asyncio.timeout(self.crl_check_s if watching else None):
                    code = await process.wait()
            except TimeoutError:
                await self._reload_acl_if_changed(process)
                if await asyncio.to_thread(self._crl_mtime) == self._crl_seen:
                    continue
                # Mosquitto reads its CRL when a listener starts, and a connection already open
                # stays open: a restart cuts off a revoked identity now. Queued messages persist.
                log.warning("the CRL changed: restarting the broker to apply it")
                await self._terminate(process)
                code = None
            if self._stopping:
                return
            if code is not None:
                self.restarts += 1
                log.error("managed broker exited with code %s: restarting it", code)
                await asyncio.sleep(_RESTART_DELAY_S)
            try:
                await self.start()
            except BrokerError as exc:
                log.error("%s; trying again", exc)

    async def stop(self) -> None:
        self._stopping = True
        if self.process is not None:
            await self._terminate(self.process)

    @staticmethod
    async def _terminate(process: asyncio.subprocess.Process) -> None:
        """SIGTERM (Mosquitto saves its store), SIGKILL after 10 s."""
        if process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            async with asyncio.timeout(10):
                await process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
