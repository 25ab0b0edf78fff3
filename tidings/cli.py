"""The `tidings` command. Each subcommand lives next to the code it runs and
exposes `register(subparsers)`; this file only lists them and sets up logging."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from typing import Any

# name -> module with `register(subparsers)`; each sets `func` on its parser.
COMMANDS = {
    "crds": "tidings.api.crd_cli",
    "send": "tidings.dispatcher.send",
    "dev": "tidings.dispatcher.dev",
    "dispatcher": "tidings.dispatcher.cli",
    "operator": "tidings.operator.main",
    "source": "tidings.dispatcher.sources.cli",
    "replay": "tidings.dispatcher.replay",
}


def add_common_options(parser: argparse.ArgumentParser, *, redis: bool = True) -> None:
    """Options every process takes: --redis-url / REDIS_URL, --log-format, --log-level."""
    if redis:
        parser.add_argument(
            "--redis-url",
            default=os.environ.get("REDIS_URL"),
            help="Redis URL (default: $REDIS_URL), e.g. redis://127.0.0.1:6379/0",
        )
    parser.add_argument(
        "--log-format",
        choices=["text", "json"],
        default=os.environ.get("TIDINGS_LOG_FORMAT", "text"),
    )
    parser.add_argument("--log-level", default=os.environ.get("TIDINGS_LOG_LEVEL", "INFO"))


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with any `extra=` fields kept."""

    _STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in self._STANDARD})
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(log_format: str = "text", level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-5s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tidings", description="Eventing for Kubernetes: sources, triggers, delivery."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS.values():
        importlib.import_module(module).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if hasattr(args, "log_format"):
        setup_logging(args.log_format, args.log_level)
    result: int | None = args.func(args)
    return result or 0


if __name__ == "__main__":
    sys.exit(main())
