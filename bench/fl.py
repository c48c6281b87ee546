"""Benchmark of federated learning; prints one JSON object.

Flat against hierarchical FedAvg on the same simulated fleet (``--sites`` x ``--devices`` nodes,
each with its own labelled samples of the synthetic sensor; Flower's simulation engine): final
held-out accuracy, bytes crossing into the cloud per round, round and wall time; the gap to
centralised training on the pooled data. Then what FL costs a device: peak RSS of a process that
imports edgefleet's ClientApp (flwr + torch) and trains one local round, against one that imports
the agent's inference stack only, and the install size of torch, flwr and ray.

With ``--deployment`` it also times one round on the Deployment Engine, real processes on 127.0.0.1:
four devices straight under the cloud's SuperLink (flat), against two gateways each running their
two devices' round on a SuperLink of their own (hierarchical): wall time from ``flwr run`` to the
result, and bytes of updates into the cloud.

Run: ``.venv/bin/python bench/fl.py`` (100 clients on 5 sites, 3 rounds: the issue's figures; about
two minutes on 2 cores), or ``--sites 3 --devices 4`` for a small fleet; add ``--deployment`` for
the real-process round (about three more minutes), ``--non-iid 0.5`` for devices that each see
their own mix of classes (Dirichlet(0.5) per device), ``--recovery-devices 200`` for the learning
loop of ``fleet_configs/demo.yaml`` on a 200-device fleet (``recovery_seconds`` per drifted site, from
its alarm to every device of the site on the new version).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._machine import machine  # noqa: E402
from bench._output import stdout_for_json_only  # noqa: E402
from edge_agent.sources.synthetic import make_dataset  # noqa: E402
from fleet_learning.federated import ClientSpec, FederatedConfig, run_simulation  # noqa: E402
from fleet_learning.recipes import Hyperparameters, TrainingRecipe, build_model, default_recipe  # noqa: E402
from fleet_learning.trainer import Standardisation, evaluate, fit  # noqa: E402

SAMPLES_PER_DEVICE = 200

# VmHWM (peak RSS) of the probe itself: ru_maxrss would carry the forking benchmark's peak over exec.
_RSS_PROBE = """
{imports}
{work}
status = open("/proc/self/status").read().splitlines()
print(next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:")))
"""
_INFERENCE_IMPORTS = "import numpy, onnxruntime, sqlite3"
_CLIENT_IMPORTS = "import numpy, onnxruntime, sqlite3, torch, flwr\nimport fleet_learning.client_app"
_CLIENT_WORK = """
import numpy as np
from fleet_learning.recipes import default_recipe, build_model
from fleet_learning.trainer import Standardisation, fit
rng = np.random.default_rng(0)
x = rng.normal(size=(2000, 16)).astype(np.float32); y = rng.integers(0, 4, size=2000)
recipe = default_recipe()
fit(build_model(recipe), x, y, recipe.hyperparameters, standardisation=Standardisation.of(x), epochs=2)
"""


def _peak_rss(imports: str, work: str = "") -> int:
    out = subprocess.run(
        [sys.executable, "-c", _RSS_PROBE.format(imports=imports, work=work)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return int(out.stdout.strip().splitlines()[-1])


def _installed_bytes(module: str) -> int:
    package = Path(__import__(module).__file__).parent
    return int(subprocess.run(["du", "-sb", str(package)], capture_output=True, text=True).stdout.split()[0])


def device_cost() -> dict[str, object]:
    """Peak RSS of a device process with and without the FL client; install sizes."""
    inference = _peak_rss(_INFERENCE_IMPORTS)
    client = _peak_rss(_CLIENT_IMPORTS)
    training = _peak_rss(_CLIENT_IMPORTS, _CLIENT_WORK)
    mib = 1024 * 1024
    return {
        "rss_mib_inference_only": round(inference / mib, 1),
        "rss_mib_with_fl_client_imported": round(client / mib, 1),
        "rss_mib_fl_client_training": round(training / mib, 1),
        "rss_mib_added_by_fl": round((training - inference) / mib, 1),
        "install_mib_torch": round(_installed_bytes("torch") / mib, 1),
        "install_mib_flwr": round(_installed_bytes("flwr") / mib, 1),
        "install_mib_ray_simulation_only": round(_installed_bytes("ray") / mib, 1),
    }


def _deployed_round(
    work: Path,
    recipe: TrainingRecipe,
    initial: dict[str, torch.Tensor],
    standardisation: Standardisation,
    held_out: tuple[np.ndarray, np.ndarray],
    *,
    gateways: bool,
) -> dict[str, object]:
    """One FedAvg round over 4 devices on real processes: direct, or behind 2 gateways."""
    from fleet_learning.local_data import write_buffer
    from fleet_learning.server_app import RESULT_FILE, ServerJob, write_job_dir
    from tests.learning.flower_processes import Federation, free_port

    federation = Federation(work / "federation")
    try:
        federation.start_superlink()
        for s in range(2):
            link = federation.start_superlink(f"site-{s}-superlink", free_port()) if gateways else None
            if gateways:
                federation.start_supernode(
                    f"gateway-{s}",
                    {"site": f"site-{s}", "site-superlink": f"127.0.0.1:{link}", "site-min-devices": "2"},
                )
            for d in range(2):
                x, y = make_dataset(SAMPLES_PER_DEVICE, seed=1000 + s * 100 + d)
                buffer = write_buffer(work / f"agent-{s}-{d}" / "training.sqlite", recipe.feature_names, x, y)
                federation.start_supernode(
                    f"device-{s}-{d}", {"buffer-path": str(buffer), "site": f"site-{s}"}, superlink=link
                )
        nodes = 2 if gateways else 4
        config = FederatedConfig(
            rounds=1, min_clients=nodes, local_epochs=2, federated_evaluation=False, min_samples=10
        )
        job = write_job_dir(work / "job", ServerJob(config, recipe, initial, standardisation, held_out))
        time.sleep(5)  # the SuperNodes register with their SuperLinks
        started = time.perf_counter()
        run = federation.flwr(
            "run",
            str(ROOT / "fleet_learning" / "flower_app"),
            "edgefleet",
            "--run-config",
            f'job-dir="{job}"',
        )
        if run.returncode != 0:
            raise RuntimeError(run.stdout + run.stderr)
        federation.wait_for(job / RESULT_FILE, timeout=600)
        seconds = time.perf_counter() - started
        (stats,) = json.loads((job / RESULT_FILE).read_text())["rounds"]
        return {
            "round_seconds": round(seconds, 1),
            "updates_to_cloud": stats["responded"],
            "uplink_bytes": stats["bytes_up"],
            "accuracy": round(stats["central_accuracy"], 4),
        }
    finally:
        federation.stop()


def _skewed(x: np.ndarray, y: np.ndarray, seed: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Non-IID: resample a device's data to its own class mix, drawn from Dirichlet(alpha)."""
    rng = np.random.default_rng(seed)
    mix = rng.dirichlet([alpha] * int(y.max() + 1))
    weights = mix[y] / mix[y].sum()
    keep = rng.choice(len(y), size=len(y), replace=True, p=weights)
    return x[keep], y[keep]


def _fleet(sites: int, devices: int, non_iid: float | None) -> list[ClientSpec]:
    clients = []
    for s in range(sites):
        for d in range(devices):
            seed = 1000 + s * 100 + d
            x, y = make_dataset(SAMPLES_PER_DEVICE, seed=seed)
            if non_iid is not None:
                x, y = _skewed(x, y, seed, non_iid)
            clients.append(ClientSpec(f"site-{s}-dev-{d}", f"site-{s}", (x, y)))
    return clients


def recovery(devices: int, sites: int = 2) -> dict[str, object]:
    """`fleet-sim run fleet_configs/demo.yaml` at ``devices`` devices; the learning loop's figures."""
    with tempfile.TemporaryDirectory(prefix="fl-recovery-") as tmp:
        started = time.perf_counter()
        run = subprocess.run(
            [
                str(Path(sys.executable).parent / "fleet-sim"),
                "run",
                str(ROOT / "fleet_configs" / "demo.yaml"),
                "--sites",
                str(sites),
                "--devices",
                str(-(-devices // sites)),
                "--out",
                str(Path(tmp) / "run"),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        wall = time.perf_counter() - started
        report_file = Path(tmp) / "run" / "report.json"
        if not report_file.exists():
            return {"error": f"fleet-sim exited {run.returncode}: {run.stderr[-500:]}"}
        report = json.loads(report_file.read_text())
    per_site = report["learning"]["accuracy_per_site"] if report.get("learning") else {}
    return {
        "devices": report.get("devices", devices),
        "fleet_sim_exit_code": run.returncode,
        "wall_seconds": round(wall, 1),
        "recovery_seconds": {
            site: acc["recovery_seconds"] for site, acc in per_site.items() if acc["drifted_at_s"] is not None
        },
        "accuracy_before_drift_after_drift_after_recovery": {
            site: [acc["accuracy_before_drift"], acc["accuracy_after_drift"], acc["accuracy_after_recovery"]]
            for site, acc in per_site.items()
        },
        "invariants": report.get("invariants"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=5)
    parser.add_argument("--devices", type=int, default=20, help="devices per site")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--deployment", action="store_true", help="also time a real-process round")
    parser.add_argument(
        "--recovery-devices",
        type=int,
        default=0,
        metavar="N",
        help="also run fleet_configs/demo.yaml with N devices on 2 sites (the issue's figure: 200; about"
        " ten minutes on 2 cores) and report recovery_seconds per drifted site: its first alarm to the end"
        " of the rollout that recovered it",
    )
    parser.add_argument(
        "--non-iid", type=float, default=None, metavar="ALPHA", help="class mix per device ~ Dirichlet(ALPHA)"
    )
    args = parser.parse_args()
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    os.environ.setdefault("FLWR_HOME", tempfile.mkdtemp(prefix="flwr-home-"))
    with stdout_for_json_only() as emit:
        recipe = default_recipe()
        recipe.hyperparameters.batch_size = 32
        standardisation = Standardisation.of(make_dataset(2000, seed=7)[0])
        held_out = make_dataset(2000, seed=500)
        torch.manual_seed(0)
        initial = build_model(recipe).state_dict()
        clients = _fleet(args.sites, args.devices, args.non_iid)
        runs = {}
        for mode in ("flat", "hier"):
            config = FederatedConfig(
                rounds=args.rounds,
                min_clients=len(clients),
                local_epochs=args.local_epochs,
                hierarchical=mode == "hier",
                federated_evaluation=False,
                min_samples=10,
            )
            started = time.perf_counter()
            result = run_simulation(
                config, recipe, initial, clients, standardisation=standardisation, held_out=held_out
            )
            runs[mode] = (result, time.perf_counter() - started)
        # Centralised: the same network trained on every device's samples pooled in the cloud.
        pooled_x = np.concatenate([c.data[0] for c in clients])  # type: ignore[index]
        pooled_y = np.concatenate([c.data[1] for c in clients])  # type: ignore[index]
        central = build_model(recipe)
        central.load_state_dict(initial)
        epochs = args.rounds * args.local_epochs  # as many passes over the data as each device made
        hp = Hyperparameters(epochs=epochs, batch_size=32, lr=recipe.hyperparameters.lr)
        fit(central, pooled_x, pooled_y, hp, standardisation=standardisation)
        central_acc = evaluate(central, *held_out, standardisation=standardisation).accuracy
        figures: dict[str, object] = {
            "clients": len(clients),
            "sites": args.sites,
            "rounds": args.rounds,
            "local_epochs": args.local_epochs,
            "samples_per_device": SAMPLES_PER_DEVICE,
            "non_iid_alpha": args.non_iid,
            "initial_accuracy": round(runs["flat"][0].initial_accuracy or 0.0, 4),
            "central_accuracy": round(central_acc, 4),
        }
        for mode, (result, seconds) in runs.items():
            rounds = result.rounds
            figures[f"final_accuracy_{mode}"] = round(result.rounds[-1].central_accuracy or 0.0, 4)
            figures[f"uplink_bytes_per_round_{mode}"] = round(
                sum(r.cloud_uplink_bytes for r in rounds) / len(rounds)
            )
            figures[f"updates_to_cloud_per_round_{mode}"] = rounds[-1].updates_to_cloud
            # Round 1 includes starting the Ray actors; later rounds are the steady state.
            steady = rounds[1:] or rounds
            figures[f"round_seconds_{mode}"] = round(sum(r.seconds for r in steady) / len(steady), 2)
            figures[f"wall_seconds_{mode}"] = round(seconds, 1)
        figures["uplink_ratio_hier_over_flat"] = round(
            figures["uplink_bytes_per_round_hier"] / figures["uplink_bytes_per_round_flat"],
            4,  # type: ignore[operator]
        )
        figures["fl_vs_central_acc_gap_pts"] = round(
            100 * (central_acc - (runs["flat"][0].rounds[-1].central_accuracy or 0.0)), 2
        )
        if args.deployment:
            with tempfile.TemporaryDirectory(prefix="fl-bench-") as tmp:
                figures["deployment"] = {
                    mode: _deployed_round(
                        Path(tmp) / mode, recipe, initial, standardisation, held_out, gateways=mode == "hier"
                    )
                    for mode in ("flat", "hier")
                }
        if args.recovery_devices:
            figures["recovery"] = recovery(args.recovery_devices)
        figures["device"] = device_cost()
        figures["machine"] = machine()
        emit(json.dumps(figures))


if __name__ == "__main__":
    main()
