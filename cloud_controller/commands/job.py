"""``cloud-controller job start|status|list|cancel``: the jobs API from a terminal."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cloud_controller.api_client import ApiClient, api_options
from cloud_controller.commands.rollout import parse_waves

_STATES = ("queued", "running", "succeeded", "failed", "cancelled")


def add(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    job = commands.add_parser(
        "job",
        help="start, follow and cancel retraining jobs",
        description="Talks to a running controller's API (operator token to start or cancel, viewer to "
        "read). A worker (`cloud-controller worker`) runs the jobs.",
    )
    sub = job.add_subparsers(dest="job_command", required=True, metavar="JOB_COMMAND")
    api = api_options("an API token: operator to start or cancel, viewer to read", ca_file=True)

    start = sub.add_parser(
        "start",
        parents=[api],
        help="queue a retraining job for a model",
        description="Queue a job: dataset (labelled records of the model within --window), train (the "
        "model's registered recipe), build (ONNX fp32/int8, OpenVINO int8 by NNCF, signed), evaluate "
        "(candidate against production on the held-out records), register (stage candidate with "
        "lineage), rollout (when the candidate beats production by --margin: waves with gates).",
    )
    start.add_argument("--model", required=True, help="model id in the registry (it needs a recipe)")
    start.add_argument("--kind", choices=("retrain", "federated"), default="retrain", help="default retrain")
    start.add_argument("--window", type=float, metavar="SECONDS", help="data window (default 7 days)")
    start.add_argument("--min-samples", type=int, metavar="N", help="fewer labelled records fail (200)")
    start.add_argument("--epochs", type=int, metavar="N", help="overrides the recipe's epochs")
    start.add_argument(
        "--margin", type=float, metavar="ACC", help="accuracy the candidate must gain over production (0.02)"
    )
    start.add_argument("--group", help="group to roll out to (default: the group running production)")
    start.add_argument("--waves", help="cumulative targets, e.g. '10%%,50%%,100%%' (the default)")
    start.add_argument("--soak", type=float, metavar="SECONDS", help="seconds each wave holds its gates (60)")
    start.add_argument("--no-rollout", action="store_true", help="stop once the candidate is registered")
    start.add_argument("--wait", action="store_true", help="follow the job until it ends")
    start.set_defaults(run=_start)

    status = sub.add_parser("status", parents=[api], help="a job's steps, logs and artifacts")
    status.add_argument("job_id", metavar="ID", help="job id, e.g. j-1a2b3c4d")
    status.add_argument("--wait", action="store_true", help="follow the job until it ends")
    status.set_defaults(run=_status)

    listing = sub.add_parser("list", parents=[api], help="jobs, newest first")
    listing.add_argument("--state", choices=_STATES, help="only jobs in this state")
    listing.add_argument("--model", help="only jobs of this model")
    listing.set_defaults(run=_list)

    cancel = sub.add_parser(
        "cancel",
        parents=[api],
        help="cancel a job",
        description="Cancel a job: a queued one at once, a running one at its worker's next check "
        "(between steps, and inside training and build). Production is untouched.",
    )
    cancel.add_argument("job_id", metavar="ID", help="job id, e.g. j-1a2b3c4d")
    cancel.set_defaults(run=_cancel)


def _client(args: argparse.Namespace) -> ApiClient:
    return ApiClient.from_args(args)


def _start(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {
        "window_s": args.window,
        "min_samples": args.min_samples,
        "epochs": args.epochs,
        "margin": args.margin,
        "group": args.group,
        "waves": parse_waves(args.waves) if args.waves else None,
        "soak_s": args.soak,
    }
    params = {k: v for k, v in params.items() if v is not None}
    if args.no_rollout:
        params["rollout"] = False
    created = _client(args).post("/jobs", {"kind": args.kind, "model_id": args.model, "params": params})
    if not args.wait:
        _show(args, created, lambda c: c.print(f"job {created['id']} {created['state']}"))
        return 0
    args.job_id = created["id"]
    return _status(args)


def _status(args: argparse.Namespace) -> int:
    client = _client(args)
    status = client.get(f"/jobs/{args.job_id}")
    while args.wait and status["state"] in ("queued", "running"):
        time.sleep(2)
        status = client.get(f"/jobs/{args.job_id}")
    _show(args, status, lambda c: _print_status(c, status))
    return 0 if status["state"] != "failed" or not args.wait else 1


def _list(args: argparse.Namespace) -> int:
    found = _client(args).get("/jobs", state=args.state, model_id=args.model)

    def table(console: Console) -> None:
        out = Table(
            "id", "kind", "model", "state", "step", "trigger", "created (UTC)", "outcome", title="Jobs"
        )
        for j in found["data"]:
            out.add_row(
                j["id"],
                j["kind"],
                escape(j["model_id"]),
                j["state"],
                j["step"] or "",
                j["trigger"],
                _when(j["created_at"]),
                escape(j["error"] or j["outcome"] or ""),
            )
        console.print(out)

    _show(args, found, table)
    return 0


def _cancel(args: argparse.Namespace) -> int:
    changed = _client(args).post(f"/jobs/{args.job_id}/cancel")
    word = (
        "cancelled"
        if changed["state"] == "cancelled"
        else "asked to stop (its worker stops at its next check)"
    )
    _show(args, changed, lambda c: c.print(f"job {changed['id']} {word}"))
    return 0


def _show(args: argparse.Namespace, answer: Any, tables: Any) -> None:
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        tables(Console(width=160))


def _print_status(console: Console, s: dict[str, Any]) -> None:
    console.print(
        f"[bold]{s['id']}[/bold] {s['kind']} of {escape(s['model_id'])}: [bold]{s['state']}[/bold]"
        f" (trigger {s['trigger']}{escape(': ' + s['trigger_ref']) if s['trigger_ref'] else ''}, "
        f"attempts {s['attempts']}, worker {escape(s['worker_id'] or '-')})"
    )
    if s["error"]:
        console.print(f"[red]error:[/red] {escape(s['error'])}")
    if s["outcome"]:
        console.print(f"outcome: {escape(s['outcome'])}")
    steps = Table("step", "state", "started (UTC)", "seconds", "last log line", title="Steps")
    for step in s["steps"]:
        took = (
            f"{step['ended_at'] - step['started_at']:.1f}" if step["started_at"] and step["ended_at"] else ""
        )
        steps.add_row(
            step["name"],
            step["state"],
            _when(step["started_at"]) if step["started_at"] else "",
            took,
            escape(step["log"][-1]) if step["log"] else "",
        )
    console.print(steps)
    if s["rounds"]:
        rounds = Table(
            "round", "loss", "accuracy", "sampled", "responded", "declined", "failed", title="Rounds"
        )
        for r in s["rounds"]:
            rounds.add_row(
                str(r["round"]),
                f"{r['loss']:.4f}" if r["loss"] is not None else "",
                f"{r['accuracy']:.4f}" if r["accuracy"] is not None else "",
                str(r["sampled"]),
                str(r["responded"]),
                str(r["declined"]),
                str(r["failed"]),
            )
        console.print(rounds)


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))
