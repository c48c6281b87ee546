"""The jobs worker as a real `cloud-controller worker` process beside the controller.

Same database and bundle store as the controller, the fleet's signing key (the devices trust its
public key, and the controller's ``trusted_keys`` hold it), and its job files in the run directory.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleet_protocol.signing import private_key_pem
from simulators.controller import ControllerProcess
from simulators.scenario import SimError

_COMMAND = (sys.executable, "-m", "cloud_controller.cli", "worker")


class WorkerProcess:
    def __init__(self, workdir: Path, controller: ControllerProcess, signing_key: Ed25519PrivateKey) -> None:
        self.workdir = workdir
        self.log = workdir / "worker.log"
        self.key_file = workdir / "signing.pem"
        self.env = {
            **controller.env,
            "EDGEFLEET_CONTROLLER__SIGNING_KEY": str(self.key_file),
            "EDGEFLEET_CONTROLLER__JOB_DIR": str(workdir / "jobs"),
        }
        self._key = signing_key
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the worker (blocking, quick: it needs no answer to be ready)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.key_file.write_bytes(private_key_pem(self._key))
        self.key_file.chmod(0o600)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                # --poll 1: a job queued by the timeline starts within a second; --lease 15: renewed
                # every 5 s, so a worker starved by a busy machine keeps its job.
                [*_COMMAND, "--id", "fleet-sim-worker", "--poll", "1", "--lease", "15"],
                env=self.env,
                stdout=log,
                stderr=log,
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def exited(self) -> bool:
        """Started, and no longer running (the run stops it only after the fleet)."""
        return self.process is not None and self.process.poll() is not None

    def check(self) -> None:
        """SimError if the worker exited: jobs would wait in the queue forever."""
        if self.process is not None and self.process.poll() is not None:
            raise SimError(f"cloud-controller worker exited ({self.process.returncode}): see {self.log}")

    def stop(self) -> None:
        """SIGTERM (the worker puts a running job back in the queue), killed after 20 s."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
