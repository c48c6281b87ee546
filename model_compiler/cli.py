"""``model-compiler``: wires the commands; each lives in model_compiler/commands/."""

from __future__ import annotations

import argparse
import logging
import sys

from rich.console import Console

from fleet_protocol import ProtocolError
from model_compiler import __version__
from model_compiler.commands import build, example, keys, verify
from model_compiler.exceptions import CompilerError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="model-compiler",
        description="Turn a torch model into signed, quantized (and pruned) bundles for ONNX Runtime, "
        "OpenVINO and LiteRT, measured on your eval set. Exit codes: 0 ok, 2 bad input, 3 over the "
        "profile's budget, 4 a target failed, 5 verification failed.",
    )
    parser.add_argument("--version", action="version", version=f"model-compiler {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (build, keys, verify, example):
        module.add(commands)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    # Wide enough for the build table even when output goes to a file or a CI log.
    console = Console(width=None if sys.stdout.isatty() else 140)
    try:
        return int(args.run(args, console))
    except CompilerError as exc:
        console.print(f"[red]model-compiler:[/] {exc}", soft_wrap=True)
        return exc.exit_code
    except (ProtocolError, OSError) as exc:
        console.print(f"[red]model-compiler:[/] {exc}", soft_wrap=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
