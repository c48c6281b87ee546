"""``cloud-controller serve``."""

from __future__ import annotations

import argparse


def add(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = commands.add_parser(
        "serve",
        help="run the API and dashboard (uvicorn)",
        description="Migrate the database to the latest schema, then serve the API at "
        "/api/v1, OpenAPI docs at /docs, the dashboard at /, /metrics, /healthz, /readyz; over HTTPS "
        "with --certfile and --keyfile.",
    )
    p.add_argument("--config", help="controller YAML (EDGEFLEET_CONTROLLER__* variables override it)")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--certfile", help="PEM certificate (chain): serve HTTPS (settings: tls_certfile)")
    p.add_argument("--keyfile", help="PEM private key of --certfile (settings: tls_keyfile)")
    p.add_argument(
        "--no-migrate", action="store_true", help="refuse to change the schema; run `migrate` first"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # Imported here: the other commands (`rollout ...` above all) should not load the server stack.
    import uvicorn

    from cloud_controller.app import create_app
    from cloud_controller.exceptions import ConfigError
    from cloud_controller.logs import log_config
    from cloud_controller.migrate import upgrade
    from cloud_controller.settings import load_settings

    given = {"host": args.host, "port": args.port, "tls_certfile": args.certfile, "tls_keyfile": args.keyfile}
    settings = load_settings(args.config, **{k: v for k, v in given.items() if v is not None})
    for path in (settings.tls_certfile, settings.tls_keyfile):
        if path is not None and not path.is_file():
            raise ConfigError(f"TLS file {path} does not exist: cannot serve HTTPS")
    if not args.no_migrate:
        upgrade(settings.database_url)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=log_config(),
        ssl_certfile=settings.tls_certfile,
        ssl_keyfile=settings.tls_keyfile,
    )
    return 0
