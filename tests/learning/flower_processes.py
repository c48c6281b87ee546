"""A Flower federation of real processes on 127.0.0.1: one SuperLink and its SuperNodes.

Each process starts ``flower-superexec`` children (and those start ``flwr-serverapp`` /
``flwr-clientapp``) in sessions of their own, so stopping walks the process tree and ends every
descendant this federation started, by pid.

With ``node_auth`` every SuperLink runs Flower's CLI-managed SuperNode authentication
(``--enable-supernode-auth``): each SuperNode gets an EC key pair (:mod:`fleet_learning.node_keys`)
whose public key is registered with ``flwr supernode register`` before the SuperNode starts.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

from fleet_learning.node_keys import NodeKeyPair, write_node_keys

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Federation:
    """With ``tls`` (the default), every link is TLS with a certificate of a fleet CA for 127.0.0.1.

    With ``node_auth`` (needs ``tls``: Flower refuses it on a plain link), SuperLinks admit only
    SuperNodes whose public key was registered through their Control API.
    """

    def __init__(self, root: Path, *, tls: bool = True, node_auth: bool = False) -> None:
        if node_auth and not tls:
            raise ValueError("Flower's SuperNode authentication needs TLS")
        self.root = root
        self.node_auth = node_auth
        #: Each SuperNode's process, and (with ``node_auth``) its key pair.
        self.named: dict[str, subprocess.Popen[bytes]] = {}
        self.node_keys: dict[str, NodeKeyPair] = {}
        self.tls: dict[str, Path] | None = None
        if tls:
            from cloud_controller.pki import FleetPki

            pki = FleetPki.init(root / "ca")
            cert, key = pki.issue("flower-superlink", "broker", hosts=["127.0.0.1"])
            out = pki.write_identity(root / "tls", "flower-superlink", cert, key)
            self.tls = {
                "ca": out / "ca.pem",
                "cert": out / "flower-superlink.pem",
                "key": out / "flower-superlink.key",
            }
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
            f'address = "127.0.0.1:{self.port}"\n{self._client_transport()}\n'
        )

    def _client_transport(self) -> str:
        return "insecure = true" if self.tls is None else f'root-certificates = "{self.tls["ca"]}"'

    def _server_tls(self) -> list[str]:
        if self.tls is None:
            return ["--insecure"]
        return [
            "--ssl-ca-certfile",
            str(self.tls["ca"]),
            "--ssl-certfile",
            str(self.tls["cert"]),
            "--ssl-keyfile",
            str(self.tls["key"]),
        ]

    def _node_tls(self) -> list[str]:
        return ["--insecure"] if self.tls is None else ["--root-certificates", str(self.tls["ca"])]

    def site_node_config(self) -> dict[str, str]:
        """What a gateway's node config needs to reach its site SuperLink (TLS: the CA)."""
        return {} if self.tls is None else {"site-superlink-ca": str(self.tls["ca"])}

    def _start(self, name: str, args: list[str]) -> None:
        log = (self.root / f"{name}.log").open("wb")
        process = subprocess.Popen(
            [str(BIN / args[0]), *args[1:]],
            env=self.env,
            cwd=self.root,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes.append(process)
        self.named[name] = process

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def start_superlink(self, name: str = "superlink", port: int | None = None) -> int:
        """The cloud's SuperLink (``self.port``), or another one (a site gateway's); returns its port."""
        port = port or self.port
        self._start(
            name,
            [
                "flower-superlink",
                *self._server_tls(),
                "--disable-runtime-dependency-installation",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--database",
                str(self.root / f"{name}.db"),
                *(["--enable-supernode-auth"] if self.node_auth else []),
            ],
        )
        # Listening before anything uses it: `flwr run` against a SuperLink still starting fails.
        self.wait_listening(port)
        return port

    def start_supernode(
        self,
        name: str,
        node_config: dict[str, str],
        superlink: int | None = None,
        *,
        keys: NodeKeyPair | None = None,
        register: bool = True,
        sign: bool = True,
    ) -> int | None:
        """Start a SuperNode of ``superlink`` (default: the cloud's). With ``node_auth``: its key pair
        (``keys``, or a new one in ``root/node-keys/<name>/``), registered first unless ``register``
        is false, and given to the SuperNode unless ``sign`` is false (a SuperNode started without
        one); returns the node id the SuperLink gave the key (None: nothing registered)."""
        config = " ".join(f'{key}="{value}"' for key, value in node_config.items())
        auth: list[str] = []
        node_id = None
        if self.node_auth and sign:
            keys = keys or write_node_keys(self.root / "node-keys" / name)
            self.node_keys[name] = keys
            if register:
                node_id = self.register(keys.public_key, superlink)
            auth = ["--auth-supernode-private-key", str(keys.private_key)]
        self._start(
            name,
            [
                "flower-supernode",
                *self._node_tls(),
                "--superlink",
                f"127.0.0.1:{superlink or self.port}",
                "--port",
                str(free_port()),
                *auth,
                "--node-config",
                config,
            ],
        )
        return node_id

    def connection(self, superlink: int | None = None) -> str:
        """The name of ``superlink``'s connection in ``FLWR_HOME/config.toml`` (added on first use)."""
        if superlink is None or superlink == self.port:
            return "edgefleet"
        name = f"link-{superlink}"
        config = self.home / "config.toml"
        if f"[superlink.{name}]" not in config.read_text():
            with config.open("a") as out:
                out.write(
                    f'\n[superlink.{name}]\naddress = "127.0.0.1:{superlink}"\n{self._client_transport()}\n'
                )
        return name

    def flwr_json(self, *args: str, timeout: float = 60) -> dict:
        """``flwr ARGS --format json``: its JSON answer (flwr may print other lines before it)."""
        done = self.flwr(*args, "--format", "json", timeout=timeout)
        found = re.search(r"^\{", done.stdout, re.MULTILINE)
        if found is None:
            raise AssertionError(f"flwr {' '.join(args)}: no JSON answer: {done.stdout}{done.stderr}")
        answer = json.loads(done.stdout[found.start() :])
        if not answer.get("success"):
            raise AssertionError(f"flwr {' '.join(args)} failed: {answer}")
        return answer

    def register(self, public_key: Path, superlink: int | None = None) -> int:
        """``flwr supernode register``: the SuperLink admits this key from now on; its node id."""
        self.wait_listening(superlink or self.port)
        answer = self.flwr_json("supernode", "register", str(public_key), self.connection(superlink))
        return int(answer["node-id"])

    def unregister(self, node_id: int, superlink: int | None = None) -> None:
        self.flwr_json("supernode", "unregister", str(node_id), self.connection(superlink))

    def nodes(self, superlink: int | None = None) -> dict[int, str]:
        """``flwr supernode list``: every node the SuperLink knows, by id, and its status
        (``registered``, ``online``, ``offline``, ``unregistered``)."""
        answer = self.flwr_json("supernode", "list", self.connection(superlink))
        return {int(node["node-id"]): node["status"] for node in answer["nodes"]}

    def wait_listening(self, port: int, timeout: float = 60) -> None:
        """Until something accepts connections on ``port`` (a SuperLink just started)."""
        deadline = time.monotonic() + timeout
        while True:
            with socket.socket() as sock, contextlib.suppress(OSError):
                sock.connect(("127.0.0.1", port))
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing listens on 127.0.0.1:{port}; see {self.root}/*.log")
            time.sleep(0.2)

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
