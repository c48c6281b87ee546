"""``model-compiler example``: a small trained model and its data sets, to try ``build`` end to end.

A first user has no model yet, and the walkthrough (docs/deploy.md) should not make them write one:
this writes the MLP the simulators use for the agent's synthetic sensor (16 features, 4 classes),
trained for a few seconds on that sensor's data, with evaluation and calibration sets that carry
the device's preprocessing (feature names, mean, scale).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from model_compiler.exceptions import InputError

#: The entry point ``build --model`` loads: ``model.py:sensor_mlp``.
_MODEL_PY = '''"""The example model of `model-compiler example`: 16 sensor features -> 4 classes."""

import torch


def sensor_mlp() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
'''


def add(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = commands.add_parser(
        "example",
        help="write a small trained example model and its data sets, to try build",
        description="Write model.py (entry point sensor_mlp), weights.pt (trained on the agent's synthetic"
        " sensor), eval.npz and calibration.npz (with the device's preprocessing) into --out; then"
        " `model-compiler build --model OUT/model.py:sensor_mlp --weights OUT/weights.pt --eval OUT/eval.npz"
        " --calibration OUT/calibration.npz ...`. Another --seed trains other weights (a new version).",
    )
    p.add_argument("--out", type=Path, required=True, help="folder to write into")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and the training (default 0)")
    p.add_argument("--epochs", type=int, default=10, help="training epochs (default 10, about two seconds)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, console: Console) -> int:
    # Imported here: torch loads in seconds, and the other commands do not need it.
    import numpy as np
    import torch

    from edge_agent.sources.synthetic import FEATURE_NAMES, make_dataset

    if args.epochs < 1:
        raise InputError("--epochs must be at least 1")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.py").write_text(_MODEL_PY)
    namespace: dict[str, object] = {}
    exec(compile(_MODEL_PY, str(out / "model.py"), "exec"), namespace)  # the file just written
    torch.manual_seed(args.seed)
    model = namespace["sensor_mlp"]()  # type: ignore[operator]

    x, y = make_dataset(3000, seed=args.seed)
    mean, scale = x.mean(0), x.std(0) + 1e-6
    scaled = ((x - mean) / scale).astype(np.float32)
    train, held = slice(0, 2000), slice(2000, 3000)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    inputs, targets = torch.from_numpy(scaled[train]), torch.from_numpy(y[train]).long()
    for _ in range(args.epochs):
        for start in range(0, len(inputs), 64):
            optimiser.zero_grad()
            loss = torch.nn.functional.cross_entropy(
                model(inputs[start : start + 64]), targets[start : start + 64]
            )
            loss.backward()
            optimiser.step()
    torch.save(model.state_dict(), out / "weights.pt")
    preprocessing = {"feature_names": np.array(FEATURE_NAMES), "mean": mean, "scale": scale}
    np.savez(out / "eval.npz", x=scaled[held], y=y[held], **preprocessing)
    np.savez(out / "calibration.npz", x=scaled[:500], **preprocessing)
    with torch.no_grad():
        accuracy = float((model(torch.from_numpy(scaled[held])).argmax(1).numpy() == y[held]).mean())
    console.print(
        f"wrote model.py, weights.pt, eval.npz, calibration.npz to {out}"
        f" (held-out accuracy {accuracy:.3f}); next: model-compiler build"
        f" --model {out / 'model.py'}:sensor_mlp --weights {out / 'weights.pt'} --eval {out / 'eval.npz'}"
        f" --calibration {out / 'calibration.npz'} --key KEY --model-id sensor-mlp --out build/"
    )
    return 0
