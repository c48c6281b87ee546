"""``model-compiler build``."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from fleet_protocol.signing import load_private_key
from model_compiler.build import BuildReport, BuildRequest, build
from model_compiler.inputs import load_dataset
from model_compiler.profiles import load_profile


def add(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = commands.add_parser(
        "build",
        help="torch model -> signed bundles for every target, with a measured table",
        description="Export, quantize (and optionally prune) a torch model for each target, measure every "
        "result in its own runtime on the eval set, then write one signed bundle (directory and .tar) "
        "per target plus report.json. Data files are .npz with x (model inputs, preprocessed) and y "
        "(labels); optional feature_names, mean, scale describe the device's preprocessing.",
    )
    p.add_argument("--model", required=True, help="path/to/model.py:factory returning a torch.nn.Module")
    p.add_argument("--weights", type=Path, help="state_dict saved with torch.save")
    p.add_argument("--calibration", type=Path, help="calibration .npz for int8 (without: dynamic int8)")
    p.add_argument("--eval", dest="eval_data", required=True, type=Path, help="evaluation .npz")
    p.add_argument("--train", dest="train_data", type=Path, help="training .npz (for the pruning fine-tune)")
    p.add_argument(
        "--trained-on",
        type=Path,
        help="the .npz the weights were trained on: its sha256 becomes the lineage's training data"
        " (default: the --train set if given, else none)",
    )
    p.add_argument(
        "--targets",
        default="onnx-fp32,onnx-int8,openvino-fp32,openvino-int8,tflite-fp32,tflite-int8",
        help="comma-separated targets (default: all six)",
    )
    p.add_argument("--profile", help="hardware profile name (fleet_configs/profiles) or YAML path")
    p.add_argument("--prune", dest="prune_ratio", type=float, help="prune this fraction of weights (NNCF)")
    p.add_argument("--finetune-steps", type=int, default=100, help="fine-tune batches after pruning")
    p.add_argument(
        "--max-drop",
        dest="max_drop_pts",
        type=float,
        help="accuracy-aware int8 (OpenVINO): largest accepted drop, in points",
    )
    p.add_argument("--key", type=Path, required=True, help="ed25519 private key (model-compiler keygen)")
    p.add_argument("--model-id", default="model")
    p.add_argument("--version", default="1.0.0", help="semantic version of this build")
    p.add_argument("--parent", help="model_id@version this one derives from (lineage)")
    p.add_argument(
        "--withdraw",
        default="",
        help="comma-separated versions of this model the release withdraws (e.g. a bad 1.3.0): signed into"
        " each manifest's withdrawn_versions; a device that installs it refuses those versions from then on",
    )
    p.add_argument("--labels", help="comma-separated class names")
    p.add_argument("--anomaly-classes", default="", help="comma-separated class indices flagged as anomalies")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, console: Console) -> int:
    request = BuildRequest(
        model=args.model,
        weights=args.weights,
        calibration=args.calibration,
        eval_data=args.eval_data,
        train_data=args.train_data,
        training_data_sha256=load_dataset(args.trained_on).sha256 if args.trained_on else None,
        targets=[t.strip() for t in args.targets.split(",") if t.strip()],
        out=args.out,
        key=load_private_key(args.key),
        model_id=args.model_id,
        version=args.version,
        parent=args.parent,
        profile=load_profile(args.profile) if args.profile else None,
        prune_ratio=args.prune_ratio,
        finetune_steps=args.finetune_steps,
        max_drop_pts=args.max_drop_pts,
        labels=args.labels.split(",") if args.labels else None,
        anomaly_classes=[int(c) for c in args.anomaly_classes.split(",") if c],
        withdrawn_versions=[v.strip() for v in args.withdraw.split(",") if v.strip()],
    )
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console
    ) as bar:
        tasks: dict[str, int] = {}

        def progress(step: str, done: bool) -> None:
            if step not in tasks:
                tasks[step] = bar.add_task(f"building {step}", total=1)
            if done:
                bar.update(tasks[step], completed=1, description=f"[green]built[/] {step}")

        report = build(request, progress)
    console.print(render_table(report))
    for target, reason in report.refused.items():
        console.print(f"[yellow]refused by profile[/] {target}: {reason}")
    console.print(f"bundles and report.json in {args.out}")
    return 0


def render_table(report: BuildReport) -> Table:
    table = Table(title=f"{report.model_id}@{report.version} (torch accuracy {report.torch_accuracy})")
    for column in ("target", "size KB", "accuracy", "drop pts", "max |diff|", "p50 ms", "p95 ms", "mem MB"):
        table.add_column(column, justify="right" if column != "target" else "left")
    for r in report.rows:
        table.add_row(
            r.target,
            f"{r.size_bytes / 1024:.1f}",
            str(r.accuracy),
            str(r.accuracy_drop_pts),
            f"{r.max_abs_diff_vs_torch:.2e}",
            f"{r.latency_p50_ms:.3f}",
            f"{r.latency_p95_ms:.3f}",
            f"{r.memory_mb:.1f}",
        )
    return table
