"""`tidings crds`: print the CustomResourceDefinitions (for `kubectl apply -f -`)."""

from __future__ import annotations

import argparse
from typing import Any

from tidings.api.crd import crds, render


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "crds", help="print the CRDs as YAML (tidings crds | kubectl apply -f -)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print("---\n".join(render(crd) for crd in crds().values()), end="")
    return 0
