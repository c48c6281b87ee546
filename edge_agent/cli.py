"""``edge-agent``: the device daemon's command line. Commands are wired here, built elsewhere."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from edge_agent import __version__, enroll, install
from edge_agent.agent import Agent
from edge_agent.check import check_config
from edge_agent.config import ENV_PREFIX, load_settings
from edge_agent.exceptions import AgentError

_EPILOG = f"""
Configuration is a YAML file; any setting can be overridden by an environment variable
named {ENV_PREFIX}<SECTION>__<KEY>, e.g. {ENV_PREFIX}MQTT__HOST=10.0.0.2.
Exit codes: 0 ok, 1 error, 2 invalid configuration, 3 model bundle refused.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description="edgefleet device agent: runs a signed model on sensor readings offline, keeps every"
        " result in a durable outbox, and syncs it to the site gateway over MQTT.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="run the agent until SIGINT/SIGTERM",
        description="Run the agent: source -> preprocess -> infer -> outbox -> MQTT. Inference goes on"
        " without a broker; the outbox holds results until the broker acknowledges them.",
    )
    run.add_argument("--config", required=True, help="agent YAML file")
    check = commands.add_parser(
        "check-config",
        help="validate a config and the model bundle it points to",
        description="Validate the YAML, the environment overrides, the trusted keys, the model bundle's"
        " signature and digests, and that the model loads in its runtime. Prints what is wrong.",
    )
    check.add_argument("--config", required=True, help="agent YAML file")
    install.add_parser(commands)
    enroll.add_parser(commands)
    args = parser.parse_args(argv)
    if args.command == "check-config":
        return check_config(args.config)
    if args.command == "install":
        return install.run(args)
    if args.command == "enroll":
        return enroll.run(args)
    return _run(args.config)


def _run(config_path: str) -> int:
    try:
        settings = load_settings(config_path)
    except AgentError as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return exc.exit_code
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )

    async def serve() -> None:
        # Built inside the loop: the MQTT client binds to the running loop.
        agent = Agent(settings)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, agent.stop)
        await agent.run()

    try:
        asyncio.run(serve())
    except AgentError as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
