"""``cloud-controller rollout create|status|list|pause|resume|abort``: the rollout API from a terminal."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cloud_controller.api_client import ApiClient, api_options
from cloud_controller.exceptions import ConfigError

_STATES = ("running", "paused", "succeeded", "aborted", "failed")


def add(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    rollout = commands.add_parser(
        "rollout",
        help="roll a model version out to a group in waves with gates",
        description="Talks to a running controller's API (operator token to change, viewer to read).",
    )
    sub = rollout.add_subparsers(dest="rollout_command", required=True, metavar="ROLLOUT_COMMAND")
    api = api_options(
        "an API token: operator to create, pause, resume or abort, viewer to read", ca_file=True
    )

    create = sub.add_parser(
        "create",
        parents=[api],
        help="start a rollout: wave 0's devices get the version now",
        description="Start rolling MODEL@VERSION out to GROUP. The engine advances a wave when at least "
        "--min-installed of its devices run the version and held it for --soak seconds, fails the rollout "
        "(every device back on the previous version) when a gate breaks, pauses it when --install-deadline "
        "passes short of --min-installed, and after the last wave makes the version the group's deployment.",
    )
    create.add_argument("--model", required=True, help="model id in the registry")
    create.add_argument("--version", required=True, help="version of that model (it must have a bundle)")
    create.add_argument("--group", required=True, help="device group name (see GET /api/v1/groups)")
    create.add_argument(
        "--waves",
        default="1%,10%,50%,100%",
        help="cumulative targets, comma separated: N%% of the group's devices or a count N; "
        "e.g. '1%%,10%%,50,100%%' (default 1%%,10%%,50%%,100%%)",
    )
    create.add_argument(
        "--soak",
        type=float,
        default=60,
        metavar="SECONDS",
        help="seconds each wave holds its gates before the next (default 60)",
    )
    create.add_argument(
        "--shadow",
        type=float,
        default=0,
        metavar="SECONDS",
        help="seconds devices run the new model in shadow beside the current one before switching; "
        "0: no shadow (default)",
    )
    create.add_argument(
        "--install-deadline",
        type=float,
        default=300,
        metavar="SECONDS",
        help="installs later than this after a wave starts do not count; the rollout pauses when it "
        "passes short of --min-installed (default 300)",
    )
    create.add_argument(
        "--min-installed",
        type=float,
        default=0.9,
        metavar="SHARE",
        help="share 0..1 of a wave's devices on the version for it to pass (default 0.9)",
    )
    create.add_argument(
        "--min-agreement",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="mean shadow agreement 0..1 below which the rollout fails; devices also refuse below it "
        "(default 0)",
    )
    create.add_argument(
        "--max-latency-ratio",
        type=float,
        default=None,
        metavar="RATIO",
        help="mean challenger/champion p95 latency above which the rollout fails; devices also refuse "
        "above it (default: no limit)",
    )
    create.add_argument(
        "--max-failed",
        type=float,
        default=0.2,
        metavar="SHARE",
        help="share 0..1 of rolled back or refused devices above which the rollout fails (default 0.2)",
    )
    create.set_defaults(run=_create)

    status = sub.add_parser("status", parents=[api], help="a rollout's waves, gate values and decisions")
    status.add_argument("rollout_id", metavar="ID", help="rollout id, e.g. r-1a2b3c4d")
    status.set_defaults(run=_status)

    listing = sub.add_parser("list", parents=[api], help="rollouts, newest first")
    listing.add_argument("--state", choices=_STATES, help="only rollouts in this state")
    listing.set_defaults(run=_list)

    for name, text in (
        ("pause", "pause a running rollout: no wave advances until it is resumed"),
        ("resume", "resume a paused rollout; the current wave's install deadline counts from now"),
        ("abort", "abort a rollout: every device it reached gets the previous version back"),
    ):
        p = sub.add_parser(name, parents=[api], help=text, description=text[0].upper() + text[1:] + ".")
        p.add_argument("rollout_id", metavar="ID", help="rollout id, e.g. r-1a2b3c4d")
        p.set_defaults(run=_operate, action=name)


def parse_waves(text: str) -> list[dict[str, float | int]]:
    """'1%,10%,50,100%' -> [{"percent": 1}, {"percent": 10}, {"count": 50}, {"percent": 100}]."""
    waves: list[dict[str, float | int]] = []
    for part in (p.strip() for p in text.split(",")):
        try:
            waves.append({"percent": float(part[:-1])} if part.endswith("%") else {"count": int(part)})
        except ValueError:
            raise ConfigError(f"--waves: {part!r} is neither N% nor a count") from None
    return waves


def _client(args: argparse.Namespace) -> ApiClient:
    return ApiClient.from_args(args)


def _create(args: argparse.Namespace) -> int:
    body = {
        "model_id": args.model,
        "version": args.version,
        "group": args.group,
        "waves": parse_waves(args.waves),
        "soak_s": args.soak,
        "shadow_s": args.shadow,
        "gates": {
            "install_deadline_s": args.install_deadline,
            "min_installed": args.min_installed,
            "min_agreement": args.min_agreement,
            "max_latency_ratio": args.max_latency_ratio,
            "max_failed": args.max_failed,
        },
    }
    created = _client(args).post("/rollouts", body)
    _show(args, created, lambda c: c.print(f"rollout {created['id']} {created['state']}: wave 0 started"))
    return 0


def _status(args: argparse.Namespace) -> int:
    status = _client(args).get(f"/rollouts/{args.rollout_id}")
    _show(args, status, lambda c: _print_status(c, status))
    return 0


def _list(args: argparse.Namespace) -> int:
    found = _client(args).get("/rollouts", state=args.state)

    def table(console: Console) -> None:
        out = Table("id", "model", "group", "from", "state", "wave", "created (UTC)", title="Rollouts")
        for r in found["data"]:
            previous = r["previous"]
            out.add_row(
                r["id"],
                f"{r['model_id']}@{r['version']}",
                r["group"],
                f"{previous['model_id']}@{previous['version']}" if previous else "-",
                r["state"],
                f"{r['current_wave']} of 0-{len(r['waves']) - 1}",
                _when(r["created_at"]),
            )
        console.print(out)

    _show(args, found, table)
    return 0


def _operate(args: argparse.Namespace) -> int:
    changed = _client(args).post(f"/rollouts/{args.rollout_id}/{args.action}")
    _show(args, changed, lambda c: c.print(f"rollout {changed['id']} {changed['state']}"))
    return 0


def _show(args: argparse.Namespace, answer: Any, tables: Any) -> None:
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        tables(Console(width=160))


def _print_status(console: Console, s: dict[str, Any]) -> None:
    previous = s["previous"]
    gates = s["gates"]
    origin = f" (from {previous['model_id']}@{previous['version']})" if previous else ""
    console.print(
        f"[bold]{s['id']}[/bold] {escape(s['model_id'])}@{escape(s['version'])} to group "
        f"{escape(s['group'])}{escape(origin)}: [bold]{s['state']}[/bold], wave {s['current_wave']}, "
        f"soak {s['soak_s']:g} s, shadow {s['shadow_s']:g} s"
    )
    ratio = gates["max_latency_ratio"]
    console.print(
        "gates: "
        f"installed >= {gates['min_installed']:.0%} within {gates['install_deadline_s']:g} s, "
        f"failed <= {gates['max_failed']:.0%}, agreement >= {gates['min_agreement']:.0%}, "
        f"latency ratio <= {f'{ratio:g}x' if ratio is not None else 'any'}, no non-finite output"
    )
    waves = Table(
        "wave",
        "target",
        "devices",
        "pending",
        "in progress",
        "promoted",
        "failed",
        "installed",
        "failed share",
        "agreement",
        "latency ratio",
        "non-finite",
        "started (UTC)",
        title="Waves (cumulative)",
    )
    for w in s["waves"]:
        by, g = w["by_state"], w["gates"]
        waves.add_row(
            str(w["index"]),
            str(w["target"]),
            str(w["devices"]),
            str(by["pending"]),
            str(by["downloading"] + by["verified"] + by["shadow"]),
            str(by["promoted"]),
            str(by["rolled_back"] + by["refused"]),
            f"{g['installed']:.0%}" if g else "",
            f"{g['failed']:.0%}" if g else "",
            f"{g['agreement']:.1%}" if g and g["agreement"] is not None else "",
            f"{g['latency_ratio']:.2f}x" if g and g["latency_ratio"] is not None else "",
            str(g["non_finite"]) if g else "",
            _when(w["started_at"]) if w["started_at"] else "",
        )
    console.print(waves)
    decisions = Table("at (UTC)", "wave", "action", "reason", title="Decisions")
    for d in s["decisions"]:
        decisions.add_row(_when(d["at"]), str(d["wave"]), d["action"], d["reason"])
    console.print(decisions)


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))
