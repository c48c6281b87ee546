"""``edge-gateway``: the site daemon's command line. Commands are wired here, built elsewhere."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from edge_gateway.check import check_config
from edge_gateway.config import ENV_PREFIX, load_settings
from edge_gateway.exceptions import ConfigError, GatewayError
from fleet_protocol import ProtocolError

_EPILOG = f"""
Configuration is a YAML file (see fleet_configs/gateway.example.yaml); any setting can be
overridden by an environment variable named {ENV_PREFIX}<SECTION>__<KEY>, e.g.
{ENV_PREFIX}UPSTREAM__URL=https://cloud.example:8000.
Exit codes: 0 ok, 1 error, 2 invalid configuration, 4 managed broker cannot start.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="edge-gateway",
        description="edgefleet site gateway: follows every device of a site over MQTT, validates,"
        " deduplicates, summarises and filters their telemetry, keeps it in a durable queue and sends it"
        " to the cloud controller; relays desired state down and caches model bundles for the site.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="run the gateway until SIGINT/SIGTERM",
        description="Run the gateway. Without broker.host it starts and supervises a Mosquitto of its own"
        " on broker.port. Without upstream.url it keeps everything in its queue.",
    )
    run.add_argument("--config", required=True, help="gateway YAML file")
    check = commands.add_parser(
        "check-config",
        help="validate a config",
        description="Validate the YAML and the environment overrides, the trusted keys, that the data"
        " folder is writable and, for a managed broker, that Mosquitto is installed. Prints what is wrong.",
    )
    check.add_argument("--config", required=True, help="gateway YAML file")
    args = parser.parse_args(argv)
    if args.command == "check-config":
        return check_config(args.config)
    return _run(args.config)


def _run(config_path: str) -> int:
    try:
        settings = load_settings(config_path)
    except GatewayError as exc:
        print(f"edge-gateway: {exc}", file=sys.stderr)
        return exc.exit_code
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )

    async def serve() -> None:
        # Built inside the loop: the MQTT client binds to the running loop.
        from edge_gateway.gateway import Gateway

        gateway = Gateway(settings)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, gateway.stop)
        await gateway.run()

    try:
        asyncio.run(serve())
    except GatewayError as exc:
        print(f"edge-gateway: {exc}", file=sys.stderr)
        return exc.exit_code
    except (ProtocolError, OSError) as exc:  # a trusted key that is not one, or is not there
        print(f"edge-gateway: {exc}", file=sys.stderr)
        return ConfigError.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
