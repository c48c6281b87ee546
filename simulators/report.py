"""The end-of-run report in the terminal (rich); ``report.json`` and ``report.html`` are beside it."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from simulators.result import RunResult

_SHOWN = (
    "sites",
    "devices",
    "seconds",
    "records_produced",
    "records_delivered_unique",
    "records_counted_at_controller",
    "records_stored_whole",
    "records_lost",
    "records_counted_twice",
    "records_per_s",
    "anomalies_delivered",
    "anomalies_missing_at_controller",
    "telemetry_bytes",
    "upstream_bytes",
    "upstream_bytes_ratio",
    "labels_published",
    "training_accuracy",
    "device_model_accuracy",
    "accuracy_before_drift",
    "accuracy_after_drift",
    "rejected_payloads",
)
#: A record delivered and not counted is a loss only once the run has waited long enough to tell.
_LABELS = {"records_lost": "records delivered, not counted"}
_LAG_SHOWN = (
    ("event loop delay, p95 / max (s)", ("loop_delay_p95_s", "loop_delay_max_s")),
    ("events fired late, max (s)", ("event_lateness_max_s",)),
    ("sensors behind schedule, max (s)", ("readings_behind_max_s",)),
)


def verdict_word(ok: bool | None) -> str:
    return {True: "PASS", False: "FAIL", None: "NOT JUDGED"}[ok]


def _examples(summary: dict[str, Any], what: str) -> str:
    return ", ".join(summary[f"records_{what}_examples"])


def _lost_label(summary: dict[str, Any]) -> str:
    """Delivered and not counted is a loss only if the run waited long enough to tell."""
    if summary["invariants"]["no_acknowledged_record_lost"] is None:
        return "records not counted at the controller when the run ended (not judged)"
    if not summary["drained"]:
        timeout = summary["drain_timeout_s"]
        return f"records not counted at the controller within the drain timeout of {timeout:g} s"
    return "records lost"


def print_report(result: RunResult, console: Console) -> None:
    summary = result.summary()
    lag: dict[str, Any] = summary["simulator"]
    if lag.get("behind"):
        # First: every figure below comes from a run that did not keep its schedule.
        console.print(f"[bold red]SIMULATOR FELL BEHIND:[/] {lag['message']}", soft_wrap=True)
    table = Table(title=f"edgefleet run: {summary['scenario']}", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    partial = set(summary["figures_from_partial_view"])
    for key in _SHOWN:
        label = _LABELS.get(key, key.replace("_", " "))
        table.add_row(label + (" (partial view)" if key in partial else ""), str(summary[key]))
    for label, keys in _LAG_SHOWN:
        table.add_row(label, " / ".join(str(lag.get(k, "n/a")) for k in keys))
    for line in summary["events"]:
        table.add_row("event", line)
    learning = summary["learning"]
    if learning is not None:
        for site, acc in learning["accuracy_per_site"].items():
            figures = (
                acc["accuracy_before_drift"],
                acc["accuracy_after_drift"],
                acc["accuracy_after_recovery"],
            )
            table.add_row(
                f"{site} accuracy before drift / after drift / after recovery",
                " / ".join("n/a" if v is None else f"{v:.3f}" for v in figures),
            )
            if acc.get("recovery_seconds") is not None:
                table.add_row(f"{site} recovery, alarm to rollout end (s)", f"{acc['recovery_seconds']:.1f}")
        for alarm in learning["alarms"]:
            state = "resolved" if alarm["resolved_at"] else "open"
            table.add_row("alarm", f"{alarm['kind']} at {alarm['site_id']}: {alarm['value']:.3f}, {state}")
    scores = [d["score"] for d in summary["drift_scores"] if d["score"] is not None]
    if scores:
        table.add_row("drift score, first / highest", f"{scores[0]:.3f} / {max(scores):.3f}")
    console.print(table)
    colour = {True: "green", False: "red", None: "yellow"}
    for name, ok in summary["invariants"].items():
        console.print(f"  [{colour[ok]}]{verdict_word(ok)}[/] {name.replace('_', ' ')}")
    if summary["records_lost"]:
        console.print(
            f"  {_lost_label(summary)}: {summary['records_lost']}, e.g. {_examples(summary, 'lost')}"
        )
        if summary["records_in_transit_at_drain_timeout"]:
            console.print(f"  still on their way: {summary['records_in_transit_at_drain_timeout']}")
    if summary["records_counted_twice"]:
        twice = summary["records_counted_twice"]
        console.print(f"  records counted twice: {twice}, e.g. {_examples(summary, 'counted_twice')}")
    if summary["crashed"]:
        console.print(f"  crashed: {', '.join(summary['crashed'])}")
    ota = summary["ota"]
    if ota is not None:
        for name, problems in ota["problems"].items():
            console.print(f"  {name.replace('_', ' ')}: {'; '.join(problems)}", soft_wrap=True)
        downloads = ", ".join(
            f"{site} {f['downloads']:g} for {f['bundles']}"
            for site, f in ota["bundle_downloads_per_site"].items()
        )
        console.print(f"  bundle downloads over each uplink: {downloads}")
        if ota["swap_gap_ms_max"] is not None:
            console.print(f"  longest pause of inference at a model switch: {ota['swap_gap_ms_max']} ms")
    if learning is not None:
        for what, found in learning["problems"].items():
            console.print(f"  learning, {what}: {'; '.join(found)}", soft_wrap=True)
    if summary["devices_unknown_to_controller"]:
        console.print(f"  unknown to the controller: {', '.join(summary['devices_unknown_to_controller'])}")
    if summary["devices_off_model"]:
        console.print(
            "  off their desired model without a final model_reason:"
            f" {', '.join(summary['devices_off_model'])}"
        )
    if lag.get("behind"):
        console.print(f"  [bold red]exit {summary['exit_code']}[/]: the simulator fell behind (see the top)")
    console.print(f"report: {result.run_dir / 'report.json'}, {result.run_dir / 'report.html'}")
