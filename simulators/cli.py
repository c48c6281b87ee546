"""``fleet-sim``: runs a simulated fleet end to end. Commands are wired here, built elsewhere."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import textwrap
import time
from pathlib import Path

from rich.console import Console

from simulators.events import describe, kinds
from simulators.scenario import SimError, load_scenario


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fleet-sim",
        description="Simulate an edgefleet fleet on this machine: a cloud controller, and per site a"
        " Mosquitto, an uplink proxy and an edge-gateway, all real processes; a first model trained,"
        " compiled and signed by model-compiler and deployed; virtual devices that are real edge agents"
        " streaming through it all, with faults and drift on the timeline the scenario declares."
        " Ends with a report (terminal, report.json, report.html) and its invariants.",
        epilog="Event kinds: " + ", ".join(kinds()),
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="run a scenario YAML (e.g. fleet_configs/demo.yaml)",
        description="Run a scenario and print the report (terminal, report.json, report.html).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_wrap(
            "Exit codes: 0 every invariant holds; 1 an invariant failed; 2 the scenario is invalid"
            " or cannot run; 4 the simulator itself fell behind (its event loop stalled, an event fired"
            " late, or the sensors lagged their schedule by more than the scenario's lag_limit_s, or the"
            " observer could not read everything the brokers accepted), or records were still on their"
            " way when the drain timed out: the report says so at the top, names about how many devices"
            " this machine held on schedule, and marks the verdicts it could not judge NOT JUDGED; rerun"
            " with fewer devices or a longer drain_timeout_s (a FAIL judged on complete evidence still"
            " exits 1); 130 interrupted (Ctrl-C)."
        )
        + "\n\n"
        + _events_help(),
    )
    run.add_argument("scenario", help="scenario YAML")
    run.add_argument("--devices", type=int, help="devices per site (overrides the file)")
    run.add_argument("--sites", type=int, help="number of sites (overrides the file)")
    run.add_argument("--duration", type=float, help="seconds of streaming (overrides the file)")
    run.add_argument("--out", type=Path, help="run directory (default runs/<name>-<time>)")
    run.add_argument("-v", "--verbose", action="store_true", help="log the daemons' warnings too")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.ERROR,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # paho reports every socket the faults break; a handler filter, because importing the
        # model tool chain resets logger levels.
        for handler in logging.getLogger().handlers:
            handler.addFilter(lambda record: record.name != "mqtt")
    console = Console()
    try:
        scenario = load_scenario(
            args.scenario, devices_per_site=args.devices, sites=args.sites, duration_s=args.duration
        )
    except SimError as exc:
        console.print(f"[red]fleet-sim:[/] {exc}", soft_wrap=True)
        return exc.exit_code
    run_dir = args.out or Path("runs") / f"{scenario.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return asyncio.run(_run(scenario, run_dir, console))


async def _run(scenario, run_dir: Path, console: Console) -> int:  # type: ignore[no-untyped-def]
    from simulators.report import print_report
    from simulators.runner import run_scenario

    task = asyncio.create_task(run_scenario(scenario, run_dir, console))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Ctrl-C cancels the run; its `finally` stops agents and brokers cleanly.
        loop.add_signal_handler(sig, task.cancel)
    try:
        result = await task
    except asyncio.CancelledError:
        console.print("[yellow]interrupted: everything was stopped cleanly[/]")
        return 130
    except SimError as exc:
        console.print(f"[red]fleet-sim:[/] {exc}", soft_wrap=True)
        return exc.exit_code
    print_report(result, console)
    return result.exit_code()


def _wrap(text: str, indent: str = "") -> str:
    return textwrap.fill(text, width=100, initial_indent=indent, subsequent_indent=indent + "  ")


def _events_help() -> str:
    """Every kind of timeline event, what it does, and its own fields."""
    lines = [
        _wrap(
            "Timeline events (the scenario's `events`: each {at_s, kind, site: <index>|all, for_s, ...};"
            " a typo in a field is an error naming the event):"
        )
    ]
    for kind, summary, fields in describe():
        lines.append(_wrap(f"{kind}: {summary}", "  "))
        for name, text in fields.items():
            lines.append(_wrap(f"{name}: {text}", "      "))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
