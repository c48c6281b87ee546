"""A Mosquitto per site, each on its own free port, that faults (and tests) can kill and restart.

Persistence with a one-second autosave keeps persistent sessions and queued QoS 1 messages
across a clean restart and, but for the last second, across a kill -9.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from edge_gateway.broker import ACL_FILE
from edge_gateway.broker_acl import TlsListener, tls_listener_lines
from simulators.scenario import SimError


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SiteBroker:
    """A site's Mosquitto; with ``tls`` (and its ``acl``) it takes only fleet certificates."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        *,
        tls: TlsListener | None = None,
        acl: str | None = None,
    ) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).exists():
            raise SimError(
                "mosquitto is not installed: run `apt-get install mosquitto` (make install does it in CI)"
            )
        self.binary, self.workdir, self.port = binary, workdir, port or free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "mosquitto.conf"
        if tls is not None:
            # The lines a gateway's managed broker gets (edge_gateway.broker_acl): one behaviour.
            (workdir / ACL_FILE).write_text(acl or "")
            access = "\n".join(tls_listener_lines(tls, workdir / ACL_FILE)) + "\n"
        else:
            access = "allow_anonymous true\n"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\n{access}user root\npersistence true\n"
            f"persistence_location {workdir}/\nautosave_interval 1\nmax_queued_messages 0\n"
            # Gateways acknowledge after committing a batch: let a batch be in flight to them.
            "max_inflight_messages 1000\n"
            f"log_dest file {workdir}/mosquitto.log\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "-c", str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if self.process.poll() is not None:
                    raise SimError(f"mosquitto exited at start: see {self.workdir}/mosquitto.log") from None
                time.sleep(0.05)
        raise SimError(f"mosquitto did not listen on port {self.port}")

    def kill(self) -> None:
        """kill -9: the broker keeps only what its last autosave wrote."""
        self.stop(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None
