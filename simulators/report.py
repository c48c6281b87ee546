"""The end-of-run report in the terminal (rich); ``report.json`` and ``report.html`` are beside it."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from simulators.runner import RunResult

_SHOWN = (
    "sites",
    "devices",
    "seconds",
    "records_produced",
    "records_delivered_unique",
    "records_counted_at_controller",
    "records_stored_whole",
    "records_per_s",
    "anomalies_delivered",
    "anomalies_missing_at_controller",
    "telemetry_bytes",
    "upstream_bytes",
    "upstream_bytes_ratio",
    "training_accuracy",
    "device_model_accuracy",
    "accuracy_before_drift",
    "accuracy_after_drift",
    "rejected_payloads",
)


def print_report(result: RunResult, console: Console) -> None:
    summary = result.summary()
    table = Table(title=f"edgefleet run: {summary['scenario']}", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    for key in _SHOWN:
        table.add_row(key.replace("_", " "), str(summary[key]))
    for line in summary["events"]:
        table.add_row("event", line)
    scores = [d["score"] for d in summary["drift_scores"] if d["score"] is not None]
    if scores:
        table.add_row("drift score, first / highest", f"{scores[0]:.3f} / {max(scores):.3f}")
    console.print(table)
    for name, ok in summary["invariants"].items():
        console.print(f"  {'[green]PASS[/]' if ok else '[red]FAIL[/]'} {name.replace('_', ' ')}")
    if summary["crashed"]:
        console.print(f"  crashed: {', '.join(summary['crashed'])}")
    if summary["devices_off_model"]:
        console.print(
            f"  off their desired model without a reason: {', '.join(summary['devices_off_model'])}"
        )
    console.print(f"report: {result.run_dir / 'report.json'}, {result.run_dir / 'report.html'}")
