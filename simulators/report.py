"""The end-of-run report in the terminal (rich); ``report.json`` is written by the runner."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from simulators.runner import RunResult


def print_report(result: RunResult, console: Console) -> None:
    summary = result.summary()
    table = Table(title=f"edgefleet run: {summary['scenario']}", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    for key in (
        "sites",
        "devices",
        "seconds",
        "records_produced",
        "records_delivered_unique",
        "duplicates_delivered",
        "records_per_s",
        "anomalies_delivered",
        "device_model_accuracy",
        "training_accuracy",
        "telemetry_bytes",
        "rejected_payloads",
    ):
        table.add_row(key.replace("_", " "), str(summary[key]))
    for fault in summary["faults"]:
        table.add_row("fault", fault)
    console.print(table)
    for name, ok in summary["invariants"].items():
        console.print(f"  {'[green]PASS[/]' if ok else '[red]FAIL[/]'} {name.replace('_', ' ')}")
    console.print(f"report: {result.run_dir / 'report.json'}")
