"""Flower's CLI-managed SuperNode authentication on the Deployment Engine, as real processes.

The SuperLink runs with ``--enable-supernode-auth`` over TLS: a SuperNode takes part only if its
public key was registered (``flwr supernode register``) and it signs with the private key
(``--auth-supernode-private-key``). Three registered devices run a round of edgefleet's app; a
SuperNode with a key nobody registered, and one with no key at all, are refused and exit before the
run; unregistering a device's key (``flwr supernode unregister``) cuts it off, and it cannot come
back with that key.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from fleet_learning.config import FederatedConfig
from fleet_learning.deployment import SuperLink, run_deployed
from fleet_learning.local_data import write_buffer
from fleet_learning.node_keys import NodeKeyError, write_node_keys
from fleet_learning.recipes import TrainingRecipe
from fleet_learning.server_app import ServerJob
from fleet_learning.trainer import Standardisation
from tests.learning.data import sensor_data
from tests.learning.flower_processes import Federation

pytestmark = pytest.mark.slow

SAMPLES = 200  # per device; a fifth is kept for local evaluation, the rest trains
REFUSED = ("stranger", "keyless")


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Federation]:
    federation = Federation(tmp_path / "federation", node_auth=True)
    yield federation
    left = federation.stop()
    assert not left, f"processes survived the federation: {left}"


def _until(what: str, condition, timeout: float, federation: Federation):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout:.0f} s; see {federation.root}/*.log")
        time.sleep(0.5)
    return value


def test_only_registered_supernodes_take_part(
    tmp_path: Path,
    federation: Federation,
    recipe: TrainingRecipe,
    initial_state: dict[str, torch.Tensor],
    standardisation: Standardisation,
    held_out,
) -> None:
    federation.start_superlink()
    ids = {}
    for i in range(3):
        x, y = sensor_data(SAMPLES, seed=60 + i)
        buffer = write_buffer(tmp_path / f"device-{i}" / "training.sqlite", recipe.feature_names, x, y)
        ids[f"device-{i}"] = federation.start_supernode(f"device-{i}", {"buffer-path": str(buffer)})
    stranger = tmp_path / "stranger-buffer.sqlite"
    write_buffer(stranger, recipe.feature_names, *sensor_data(SAMPLES, seed=70))
    federation.start_supernode("stranger", {"buffer-path": str(stranger)}, register=False)
    federation.start_supernode("keyless", {"buffer-path": str(stranger)}, sign=False)
    keys = federation.node_keys["device-0"]
    assert keys.private_key.stat().st_mode & 0o777 == 0o600

    # Refused at connection: each exits (Flower's exit code 305), and the SuperLink never lists it.
    for name in REFUSED:
        _until(f"{name} exits", lambda name=name: federation.named[name].poll() is not None, 60, federation)
        assert federation.named[name].returncode != 0
    assert "[code: 2004] Failed to activate SuperNode" in federation.log("stranger")
    assert "Exit Code: 305" in federation.log("stranger")
    assert "[code: 2001] SuperNode authentication is enabled" in federation.log("keyless")
    assert "Exit Code: 305" in federation.log("keyless")
    link_log = federation.log("superlink")
    assert "No SuperNode found with the given public key" in link_log

    def all_online() -> dict[int, str] | None:
        nodes = federation.nodes()
        return nodes if len(nodes) == 3 and set(nodes.values()) == {"online"} else None

    online = _until("3 SuperNodes online", all_online, 60, federation)
    assert online == dict.fromkeys(ids.values(), "online")

    config = FederatedConfig(
        strategy="fedavg",
        rounds=1,
        min_clients=3,
        local_epochs=1,
        federated_evaluation=False,
        round_timeout_s=60,
    )
    # The controller's worker runs the job as on any federation: registration is the Fleet API's
    # business, the Control API that `flwr run` uses is the same.
    assert federation.tls is not None
    link = SuperLink(f"127.0.0.1:{federation.port}", federation.tls["ca"])
    job = ServerJob(config, recipe, initial_state, standardisation, held_out)
    deployed = run_deployed(job, link, tmp_path / "run", timeout_s=120, status_every_s=2)
    (round_1,) = deployed.result.rounds
    assert (round_1.sampled, round_1.responded, round_1.failed) == (3, 3, 0)
    assert round_1.examples == 3 * SAMPLES * 4 // 5  # the three registered devices' data, no one else's

    # Unregistering a key cuts its SuperNode off at its next request (HTTP 401: it stops itself) ...
    federation.unregister(ids["device-0"])
    device_0 = federation.named["device-0"]
    _until("device-0 stops", lambda: device_0.poll() is not None, 30, federation)
    nodes = federation.nodes()
    assert nodes[ids["device-0"]] == "unregistered"
    # Whichever Fleet API call it made next (a pull, a heartbeat, ...) was refused.
    after_unregister = federation.log("superlink").split("/v1/control/unregister-node", 1)[1]
    assert re.search(r'"POST /v1/fleet/[a-z-]+ HTTP/1\.1" 401', after_unregister), after_unregister
    assert [nodes[ids[f"device-{i}"]] for i in (1, 2)] == ["online", "online"]
    # ... and the same key cannot come back without being registered again.
    federation.start_supernode("device-0-again", {"buffer-path": str(stranger)}, keys=keys, register=False)
    again = federation.named["device-0-again"]
    _until("device-0-again exits", lambda: again.poll() is not None, 60, federation)
    assert again.returncode != 0
    assert "[code: 2004] Failed to activate SuperNode" in federation.log("device-0-again")


def test_node_keys_are_what_flower_reads(tmp_path: Path) -> None:
    """The key pair loads the way ``flower-supernode`` and ``flwr supernode register`` load it."""
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes

    pair = write_node_keys(tmp_path / "keys")
    assert pair.private_key.stat().st_mode & 0o777 == 0o600
    private = load_ssh_private_key(pair.private_key.read_bytes(), None)
    assert try_load_public_key(pair.public_key) == public_key_to_bytes(private.public_key())
    assert pair.public_line().startswith("ecdsa-sha2-nistp384 ")
    # Again: the key is kept (its registration stays valid), the public key rewritten from it.
    pair.public_key.unlink()
    assert write_node_keys(tmp_path / "keys") == pair
    assert try_load_public_key(pair.public_key) == public_key_to_bytes(private.public_key())
    pair.private_key.chmod(0o644)
    with pytest.raises(NodeKeyError, match="readable by group or others"):
        write_node_keys(tmp_path / "keys")
