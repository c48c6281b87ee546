"""``cloud-controller serve``."""

from __future__ import annotations

import argparse


def add(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = commands.add_parser(
        "serve",
        help="run the API and dashboard (uvicorn)",
        description="Migrate the database to the latest schema, then serve the API at "
        "/api/v1, OpenAPI docs at /docs, the dashboard at /, /metrics, /healthz, /readyz; over HTTPS "
        "with --certfile and --keyfile. With --client-ca too, a gateway may authenticate by its fleet "
        "client certificate instead of a token (a certificate is asked for, never required: other "
        "callers use tokens; a token, when sent, wins); --crl refuses revoked ones.",
    )
    p.add_argument("--config", help="controller YAML (EDGEFLEET_CONTROLLER__* variables override it)")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--certfile", help="PEM certificate (chain): serve HTTPS (settings: tls_certfile)")
    p.add_argument("--keyfile", help="PEM private key of --certfile (settings: tls_keyfile)")
    p.add_argument(
        "--client-ca",
        help="the fleet CA (pki init's ca.pem): gateways may show a certificate it signed instead of a "
        "token; devices' and other CAs' certificates are refused (settings: tls_client_ca)",
    )
    p.add_argument(
        "--crl",
        help="the fleet CRL (pki init's crl.pem): its certificates are refused, read again when the "
        "file changes, within tls_crl_check_s (settings: tls_crl_file)",
    )
    p.add_argument(
        "--no-migrate", action="store_true", help="refuse to change the schema; run `migrate` first"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # Imported here: the other commands (`rollout ...` above all) should not load the server stack.
    import ssl

    import uvicorn

    from cloud_controller.app import create_app
    from cloud_controller.client_cert import ClientCertAuth, protocol_class
    from cloud_controller.exceptions import ConfigError
    from cloud_controller.logs import log_config
    from cloud_controller.migrate import upgrade
    from cloud_controller.settings import load_settings

    given = {
        "host": args.host,
        "port": args.port,
        "tls_certfile": args.certfile,
        "tls_keyfile": args.keyfile,
        "tls_client_ca": args.client_ca,
        "tls_crl_file": args.crl,
    }
    settings = load_settings(args.config, **{k: v for k, v in given.items() if v is not None})
    for path in (settings.tls_certfile, settings.tls_keyfile, settings.tls_client_ca, settings.tls_crl_file):
        if path is not None and not path.is_file():
            raise ConfigError(f"TLS file {path} does not exist: cannot serve HTTPS")
    client_certs = ClientCertAuth.from_settings(settings)  # reads the CA and the CRL: fails here
    if not args.no_migrate:
        upgrade(settings.database_url)
    app = create_app(settings)
    client_tls: dict[str, object] = {}
    if client_certs is not None:
        # Asked for, not required: OpenSSL verifies a certificate shown against the fleet CA, and
        # the protocol hands it to `api.deps.current_token`, which checks the rest.
        app.state.client_certs = client_certs
        client_tls = {
            "ssl_cert_reqs": ssl.CERT_OPTIONAL,
            "ssl_ca_certs": str(settings.tls_client_ca),
            "http": protocol_class(),
        }
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=log_config(),
        ssl_certfile=settings.tls_certfile,
        ssl_keyfile=settings.tls_keyfile,
        **client_tls,  # type: ignore[arg-type]
    )
    return 0
