"""`tidings crds`: print the CustomResourceDefinitions (for `kubectl apply -f -`)."""

from __future__ import annotations

import argparse
from typing import Any

from tidings.api.crd import crds, main, render


def register(subparsers: Any, summary: str) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser("crds", help=summary)
    action = parser.add_mutually_exclusive_group()
    action.add_argument(
        "--write", action="store_true", help="regenerate crds/ and helm/tidings/crds/ in the repo"
    )
    action.add_argument("--check", action="store_true", help="exit 1 if those files are stale")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.write or args.check:
        return main(["--check"] if args.check else [])
    print("---\n".join(render(crd) for crd in crds().values()), end="")
    return 0
