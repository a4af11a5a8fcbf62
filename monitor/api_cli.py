"""The `sentinel-monitor api` commands: serve the HTTP API alone, and make a bearer token."""

from __future__ import annotations

import argparse
import json
from typing import Any

from monitor.errors import ConfigError
from monitor.settings import API_ROLES, Settings

EXIT_OK = 0


def add_api_commands(commands: Any) -> None:
    """Add `api serve` and `api token` to the `sentinel-monitor` subcommands."""
    api = commands.add_parser("api", help="the HTTP API").add_subparsers(dest="action", required=True)

    serve = api.add_parser("serve", help="serve the HTTP API alone, without consuming or scoring")
    serve.add_argument("--host", default=None, help="address to listen on (default: api.host)")
    serve.add_argument("--port", type=_port, default=None, help="TCP port, 0 for any free one (default: api.port)")
    serve.set_defaults(handler=_serve)

    token = api.add_parser("token", help="print a new random token and the api.tokens entry that accepts it")
    token.add_argument(
        "--name", default=None, help="who uses the token (default: ROLE-1, e.g. viewer-1)"
    )
    token.add_argument("--role", choices=API_ROLES, default="viewer", help="viewer or reviewer (default viewer)")
    token.set_defaults(handler=_token)


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from monitor.api.server import serve_foreground
    from storage.engine import create_engine, create_session_factory

    host = args.host or settings.api.host
    port = settings.api.port if args.port is None else args.port
    engine = create_engine(settings=settings.database)
    try:
        serve_foreground(settings, create_session_factory(engine=engine), host=host, port=port)
    finally:
        engine.dispose()
    return EXIT_OK


def _token(args: argparse.Namespace, settings: Settings) -> int:
    from monitor.api.auth import new_token, token_digest

    name = f"{args.role}-1" if args.name is None else args.name
    if not name.strip():
        raise ConfigError("--name is empty; name the person or service that will hold the token")
    token = new_token()
    entry = {"name": name, "role": args.role, "sha256": token_digest(token)}
    print(f"token (shown once; store it where its holder keeps secrets): {token}")
    print()
    print("add this table to the configuration file:")
    print()
    print("[[api.tokens]]")
    for key, value in entry.items():
        print(f"{key} = {json.dumps(value)}")
    print()
    print("or, in the environment, add the entry to the JSON list of SENTINEL_API__TOKENS:")
    print(json.dumps(entry))
    return EXIT_OK


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}; use a number from 0 to 65535") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}; use a number from 0 to 65535")
    return value
