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
import socket
from pathlib import Path

from edge_gateway.exceptions import BrokerError

log = logging.getLogger(__name__)

_RESTART_DELAY_S = 1.0


def mosquitto_config(workdir: Path, listen: str, port: int) -> str:
    """A config for a site broker that keeps what it accepted for subscribers that are away."""
    lines = [
        f"listener {port} {listen}",
        "allow_anonymous true",
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

    def __init__(self, workdir: Path, *, listen: str = "0.0.0.0", port: int = 1883) -> None:
        self.workdir, self.listen, self.port = workdir, listen, port
        self.binary = find_mosquitto()
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self._stopping = False

    async def start(self) -> None:
        await asyncio.to_thread(self.workdir.mkdir, parents=True, exist_ok=True)
        config = self.workdir / "mosquitto.conf"
        await asyncio.to_thread(config.write_text, mosquitto_config(self.workdir, self.listen, self.port))
        self.process = await asyncio.create_subprocess_exec(
            self.binary,
            "-c",
            str(config),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        host = "127.0.0.1" if self.listen in ("0.0.0.0", "::") else self.listen
        for _ in range(200):
            if self.process.returncode is not None:
                raise BrokerError(
                    f"mosquitto exited at start (code {self.process.returncode}):"
                    f" see {self.workdir / 'mosquitto.log'}"
                )
            if await asyncio.to_thread(_listening, host, self.port):
                log.info("managed broker listening on %s:%d", self.listen, self.port)
                return
            await asyncio.sleep(0.05)
        raise BrokerError(f"mosquitto did not listen on port {self.port} within 10 s")

    async def run(self) -> None:
        """Watch the broker; start it again whenever it exits, until `stop`."""
        while not self._stopping:
            assert self.process is not None
            code = await self.process.wait()
            if self._stopping:
                return
            self.restarts += 1
            log.error("managed broker exited with code %s: restarting it", code)
            await asyncio.sleep(_RESTART_DELAY_S)
            try:
                await self.start()
            except BrokerError as exc:
                log.error("%s; trying again", exc)

    async def stop(self) -> None:
        self._stopping = True
        if self.process is None or self.process.returncode is not None:
            return
        self.process.terminate()
        try:
            async with asyncio.timeout(10):
                await self.process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False
