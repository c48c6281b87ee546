"""``edge-agent install``: the agent (and the gateway, when asked) as hardened systemd services.

What it writes is data (a list of `Entry`), shown by ``--dry-run`` and written under ``--root``;
deploy/systemd/ holds the same units rendered for the default prefix, /opt/edgefleet/venv.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from edge_agent.exceptions import AgentError

USER = "edgefleet"
UNIT_DIR = Path("/etc/systemd/system")
SYSUSERS_FILE = Path("/etc/sysusers.d/edgefleet.conf")
CONFIG_DIR = Path("/etc/edgefleet")
STATE_ROOT = Path("/var/lib/edgefleet")
DEFAULT_PREFIX = Path("/opt/edgefleet/venv")

#: The sandbox, shared by both units.
_HARDENING = """\
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
RemoveIPC=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallErrorNumber=EPERM
CapabilityBoundingSet=
UMask=0027
"""


@dataclass(frozen=True)
class Service:
    """One daemon's unit: its command, its state directories, what differs from the other."""

    unit: str
    description: str
    command: str
    config: str
    state: tuple[str, ...]
    extra: str


SERVICES = {
    "agent": Service(
        unit="edge-agent.service",
        description="edgefleet device agent: offline inference, durable outbox, MQTT sync",
        command="edge-agent",
        config="agent.yaml",
        # models/: where a config's model_dir points (models/current), the first bundle put there by hand.
        state=("agent", "models"),
        extra=(
            "# On SIGTERM the agent drains, flushes its outbox and goes offline cleanly.\n"
            "# Not MemoryDenyWriteExecute=: OpenVINO's CPU plugin (oneDNN) generates code at run time.\n"
            "# PrivateDevices=yes below: a device running OpenVINO's GPU or NPU plugin needs it off.\n"
        ),
    ),
    "gateway": Service(
        unit="edge-gateway.service",
        description="edgefleet site gateway: the site's broker, validation, durable uplink to the controller",
        command="edge-gateway",
        config="gateway.yaml",
        state=("gateway",),
        extra=(
            "# SIGTERM to the gateway alone: it stops the Mosquitto it runs once its store is committed;\n"
            "# whatever is left when it has exited is killed.\n"
            "KillMode=mixed\n"
        ),
    ),
}


_DESCRIPTION = f"""\
Install the agent as a systemd service. It writes:

  {UNIT_DIR}/edge-agent.service
      runs PREFIX/bin/edge-agent run --config {CONFIG_DIR}/agent.yaml as user {USER}, restarted
      on failure, sandboxed (ProtectSystem=strict: only its state dirs are writable,
      NoNewPrivileges, a system call filter...); no watchdog: the agent does not speak sd_notify
  {SYSUSERS_FILE}
      the system user {USER} (systemd-sysusers creates it)
  {CONFIG_DIR}/ (0755)
      the config dir: put agent.yaml and the fleet's public key there, and any private key
      (an MQTT client key) as 0640 root:{USER}
  {STATE_ROOT}/agent/ and {STATE_ROOT}/models/ (0750)
      the state dirs: outbox, state and downloaded models; the first bundle goes in models/current

With --service gateway: edge-gateway.service and {STATE_ROOT}/gateway/ as well.
Config files are never written. Without --root it then creates the user and runs
`systemctl daemon-reload`; it enables and starts nothing, and prints the command that does."""


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = commands.add_parser(
        "install",
        help="install the agent (and the gateway) as hardened systemd services",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--service",
        action="append",
        choices=sorted(SERVICES),
        help="what to install: agent (the default) or gateway; repeat for both",
    )
    p.add_argument(
        "--prefix",
        type=Path,
        default=Path(sys.prefix),
        help="the venv the commands are installed in, as the target system sees it (default: this one,"
        " %(default)s)",
    )
    p.add_argument(
        "--root",
        type=Path,
        help="write under this directory instead of / (an image being built, a test); creates no user"
        " and reloads nothing (systemd-sysusers creates the user at the target's boot)",
    )
    p.add_argument("--dry-run", action="store_true", help="print what would be written, write nothing")


def run(args: argparse.Namespace) -> int:
    """The command: print the error and return its exit code instead of raising."""
    try:
        services = list(dict.fromkeys(args.service or ["agent"]))
        return install(services, prefix=args.prefix, root=args.root, dry_run=args.dry_run)
    except AgentError as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return exc.exit_code


def render_unit(service: Service, prefix: Path) -> str:
    """The unit file of ``service`` with its command under ``prefix``/bin."""
    state = " ".join(f"{STATE_ROOT.name}/{name}" for name in service.state)
    return (
        f"# {service.unit}, written by `edge-agent install`.\n"
        "[Unit]\n"
        f"Description={service.description}\n"
        "After=network-online.target\n"
        "Wants=network-online.target\n"
        "\n"
        "[Service]\n"
        "# Type=exec, and no WatchdogSec=: the daemon does not speak sd_notify.\n"
        "Type=exec\n"
        f"ExecStart={prefix}/bin/{service.command} run --config {CONFIG_DIR}/{service.config}\n"
        f"User={USER}\n"
        f"Group={USER}\n"
        "Restart=on-failure\n"
        "RestartSec=5\n"
        "# Exit code 2: the configuration is invalid, and a restart does not change that.\n"
        "RestartPreventExitStatus=2\n"
        "TimeoutStopSec=60\n"
        f"{service.extra}"
        "# Writable: the state directories only (ProtectSystem=strict); systemd creates them for the user.\n"
        f"StateDirectory={state}\n"
        "StateDirectoryMode=0750\n"
        f"ConfigurationDirectory={CONFIG_DIR.name}\n"
        f"{_HARDENING}"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


def render_sysusers() -> str:
    return (
        "# The user edgefleet's daemons run as; written by `edge-agent install`, read by systemd-sysusers.\n"
        f'u {USER} - "edgefleet device daemons" {STATE_ROOT} /usr/sbin/nologin\n'
    )


@dataclass(frozen=True)
class Entry:
    """A file (``content``) or a directory (``content`` None) on the target system."""

    path: Path
    mode: int
    content: str | None = None


def plan(services: list[str], prefix: Path) -> list[Entry]:
    """Everything ``install`` writes for ``services``, in order."""
    chosen = [SERVICES[name] for name in services]
    entries = [
        Entry(CONFIG_DIR, 0o755),
        Entry(SYSUSERS_FILE, 0o644, render_sysusers()),
        Entry(STATE_ROOT, 0o755),
    ]
    entries += [Entry(STATE_ROOT / name, 0o750) for service in chosen for name in service.state]
    entries += [Entry(UNIT_DIR / s.unit, 0o644, render_unit(s, prefix)) for s in chosen]
    return entries


def install(
    services: list[str], *, prefix: Path, root: Path | None, dry_run: bool, out: TextIO = sys.stdout
) -> int:
    """Write the plan under ``root`` (default /), or only print it; return the exit code.

    Without ``root``, the commands must exist under ``prefix`` and, once the files are written, the
    user is created and systemd reloaded. Config files in /etc/edgefleet are never written.
    """
    if root is None:
        for name in services:
            binary = prefix / "bin" / SERVICES[name].command
            if not os.access(binary, os.X_OK):
                raise AgentError(f"no {SERVICES[name].command} at {binary}: give --prefix, the venv it is in")
    target = root or Path("/")
    entries = plan(services, prefix)
    for entry in entries:
        where = target / entry.path.relative_to("/")
        kind = "dir " if entry.content is None else "file"
        print(f"{'would write' if dry_run else 'write'} {kind} {oct(entry.mode)[2:]} {where}", file=out)
        if not dry_run:
            _write(where, entry)
    if dry_run:
        for entry in entries:
            if entry.path.suffix == ".service" and entry.content is not None:
                print(f"\n--- {entry.path}\n{entry.content}", file=out, end="")
        return 0
    if root is None:
        _activate(out)
    units = " ".join(SERVICES[name].unit for name in services)
    print(
        f"next: put {', '.join(SERVICES[n].config for n in services)} and the fleet's public key in"
        f" {CONFIG_DIR}, then `systemctl enable --now {units}`",
        file=out,
    )
    return 0


def _write(path: Path, entry: Entry) -> None:
    try:
        if entry.content is None:
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(entry.content)
        path.chmod(entry.mode)
    except OSError as exc:
        raise AgentError(f"cannot write {path}: {exc.strerror}; run as root, or give --root") from None


def _activate(out: TextIO) -> None:
    """Create the user now (instead of at the next boot) and make systemd read the new units."""
    if shutil.which("systemd-sysusers"):
        _run(["systemd-sysusers", str(SYSUSERS_FILE)], out)
    if Path("/run/systemd/system").is_dir():  # systemd is the init: it has units to reload
        _run(["systemctl", "daemon-reload"], out)
    else:
        print("systemd is not running here: nothing reloaded", file=out)


def _run(command: list[str], out: TextIO) -> None:
    print(f"run {' '.join(command)}", file=out)
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise AgentError(f"{command[0]} failed ({result.returncode}): {result.stderr.strip()}")
