"""What every Tidings process shares: the common options (--redis-url,
--log-format, --log-level) and logging as text or JSON lines."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any


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
