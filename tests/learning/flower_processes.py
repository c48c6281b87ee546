"""A Flower federation of real processes on 127.0.0.1: one SuperLink and its SuperNodes.

Each process starts ``flower-superexec`` children (and those start ``flwr-serverapp`` /
``flwr-clientapp``) in sessions of their own, so stopping walks the process tree and ends every
descendant this federation started, by pid.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Federation:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.home = root / "flwr-home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.env = {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",  # the SuperLink execs flower-superexec
            "FLWR_HOME": str(self.home),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
        }
        self.processes: list[subprocess.Popen[bytes]] = []
        # `flwr run <app> edgefleet` finds the SuperLink through FLWR_HOME/config.toml.
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "edgefleet"\n\n[superlink.edgefleet]\n'
            f'address = "127.0.0.1:{self.port}"\ninsecure = true\n'
        )

    def _start(self, name: str, args: list[str]) -> None:
        log = (self.root / f"{name}.log").open("wb")
        self.processes.append(
            subprocess.Popen(
                [str(BIN / args[0]), *args[1:]],
                env=self.env,
                cwd=self.root,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )

    def start_superlink(self, name: str = "superlink", port: int | None = None) -> int:
        """The cloud's SuperLink (``self.port``), or another one (a site gateway's); returns its port."""
        port = port or self.port
        self._start(
            name,
            [
                "flower-superlink",
                "--insecure",
                "--disable-runtime-dependency-installation",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--database",
                str(self.root / f"{name}.db"),
            ],
        )
        return port

    def start_supernode(self, name: str, node_config: dict[str, str], superlink: int | None = None) -> None:
        config = " ".join(f'{key}="{value}"' for key, value in node_config.items())
        self._start(
            name,
            [
                "flower-supernode",
                "--insecure",
                "--superlink",
                f"127.0.0.1:{superlink or self.port}",
                "--port",
                str(free_port()),
                "--node-config",
                config,
            ],
        )

    def flwr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "flwr"), *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def wait_for(self, path: Path, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not path.exists():
            dead = [p.args for p in self.processes if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise AssertionError(f"no {path.name} (exited early: {dead}); see {self.root}/*.log")
            time.sleep(0.5)

    def stop(self) -> list[psutil.Process]:
        """Terminate every process of the federation and its descendants; return any left alive."""
        tree: list[psutil.Process] = []
        for process in self.processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                parent = psutil.Process(process.pid)
                tree += [parent, *parent.children(recursive=True)]
        for process in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.terminate()
        _, alive = psutil.wait_procs(tree, timeout=15)
        for process in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        _, still = psutil.wait_procs(alive, timeout=5)
        for process in self.processes:
            process.wait(timeout=5)
        return still
