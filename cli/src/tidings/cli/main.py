"""The `tidings` command. Each subcommand lives next to the code it runs and
exposes `register(subparsers)`; this file only lists them and sets up logging."""

from __future__ import annotations

import argparse
import importlib
import sys

from tidings.api import tracing
from tidings.api.process import setup_logging
from tidings.api.settings import LogSettings, SettingsError, load

# name -> module with `register(subparsers)`; each sets `func` on its parser.
COMMANDS = {
    "crds": "tidings.cli.crds",
    "send": "tidings.cli.send",
    "dev": "tidings.cli.dev",
    "dispatcher": "tidings.dispatcher.cli",
    "operator": "tidings.operator.main",
    "source": "tidings.sources.cli",
    "replay": "tidings.cli.replay",
    "console": "tidings.cli.console",
    "tail": "tidings.cli.tail",
    "trace": "tidings.cli.trace",
}

# The commands that handle events, so trace them when OTEL_* turns tracing on.
TRACED = ("dispatcher", "source", "dev")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tidings", description="Eventing for Kubernetes: sources, triggers, delivery."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS.values():
        importlib.import_module(module).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if hasattr(args, "log_format"):
        try:
            common = load(LogSettings, args)
        except SettingsError as error:
            parser.error(str(error))
        setup_logging(common.log_format, common.log_level)
    if args.command in TRACED:
        try:
            tracing.setup(f"tidings-{args.command}")
        except SettingsError as error:
            parser.error(str(error))
    try:
        result: int | None = args.func(args)
    finally:
        tracing.shutdown()  # exports the spans still buffered
    return result or 0


if __name__ == "__main__":
    sys.exit(main())
