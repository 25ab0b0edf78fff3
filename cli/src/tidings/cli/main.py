"""The `tidings` command. Each subcommand lives next to the code it runs and
exposes `register(subparsers, summary)`; this file only lists them (importing only the
one run) and sets up logging."""

from __future__ import annotations

import argparse
import importlib
import sys

from tidings.api import tracing
from tidings.api.process import setup_logging
from tidings.api.settings import LogSettings, SettingsError, load

# name -> (module with `register(subparsers, summary)`, its line in `tidings --help`).
# Only the module of the command given is imported: each pulls in its plane
# (Kopf, the Kubernetes client, aiohttp...), which `tidings send` and `--help`
# should not pay for.
COMMANDS = {
    "crds": ("tidings.cli.crds", "print the CRDs as YAML (tidings crds | kubectl apply -f -)"),
    "send": ("tidings.cli.send", "post a test event to an EventSource's ingest endpoint"),
    "dev": (
        "tidings.cli.dev",
        "run manifests locally: ingest + delivery in one process, no cluster",
    ),
    "dispatcher": (
        "tidings.dispatcher.cli",
        "Serve ingest and deliver events to subscribers (the data plane).",
    ),
    "operator": (
        "tidings.operator.main",
        "run the operator: EventSources and Triggers into the routing table, with status",
    ),
    "source": (
        "tidings.sources.cli",
        "run the adapter of one EventSource (postgres, kubernetes, schedule)",
    ),
    "replay": ("tidings.cli.replay", "deliver a Trigger's dead letters again"),
    "console": (
        "tidings.cli.console",
        "the web console: sources, Triggers, attempts, dead letters, replay",
    ),
    "tail": ("tidings.cli.tail", "follow a Trigger's delivery attempts"),
    "trace": ("tidings.cli.trace", "what happened to one event, for every Trigger of its source"),
}

# The commands that handle events, so trace them when OTEL_* turns tracing on.
TRACED = ("dispatcher", "source", "dev")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser for `command` alone (its module imported), or, for anything
    else (`tidings --help`, no or an unknown command), one that lists every
    command and imports none of them."""
    parser = argparse.ArgumentParser(
        prog="tidings", description="Eventing for Kubernetes: sources, triggers, delivery."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    if command in COMMANDS:
        module, summary = COMMANDS[command]
        importlib.import_module(module).register(subparsers, summary)
    else:
        for name, (_, summary) in COMMANDS.items():
            subparsers.add_parser(name, help=summary)
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    # Only the first argument names a command: `tidings --help dispatcher` lists them all.
    parser = build_parser(argv[0] if argv else None)
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
