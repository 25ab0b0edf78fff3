#!/usr/bin/env python3
"""What one Trigger status write costs the API server and etcd: server-side apply
(what the operator sends) against a JSON merge patch of the same status.

Against the real kube-apiserver + etcd of hack/control-plane.sh: N Triggers are
created, then each round writes every one's status once, 16 at a time (as the
operator's client pool does), alternating the two kinds of write; CPU is read
from /proc for the API server and etcd processes of that control plane.

    eval "$(bash hack/control-plane.sh env)"
    .venv/bin/python hack/bench_status_write.py [--triggers 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kubernetes  # type: ignore[import-untyped]
import yaml

from tidings.operator.kube import APPLY, FIELD_MANAGER, load_config

GROUP, VERSION, PLURAL = "tidings.dev", "v1alpha1", "triggers"
CONDITIONS = ("Ready", "SourceReady", "SubscriberResolved", "Delivering")


def processes(name: str, home: str) -> list[int]:
    """Pids of the program `name` started for this control plane (its state dir is
    in the command line)."""
    found = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True).stdout.split()
    mine = []
    for pid in found:
        try:
            with open(f"/proc/{pid}/cmdline") as cmdline:
                if home in cmdline.read():
                    mine.append(int(pid))
        except OSError:
            continue
    return mine


def cpu_seconds(pids: list[int]) -> float:
    ticks = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime + stime
    return ticks / os.sysconf("SC_CLK_TCK")


def status(namespace: str, generation: int) -> dict[str, Any]:
    """A status as the operator writes it, different each round."""
    return {
        "observedGeneration": 1,
        "subscriberURI": f"http://mailer.{namespace}.svc.cluster.local/{generation}",
        "conditions": [
            {
                "type": kind,
                "status": "True",
                "reason": "Ready",
                "message": f"round {generation}",
                "lastTransitionTime": "2026-11-30T00:00:00Z",
                "observedGeneration": 1,
            }
            for kind in CONDITIONS
        ],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--triggers", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    kubeconfig = os.environ.get("KUBECONFIG")
    if not kubeconfig:
        raise SystemExit('no cluster: eval "$(bash hack/control-plane.sh env)" first')
    home = os.path.dirname(kubeconfig)
    server, etcd = processes("kube-apiserver", home), processes("etcd", home)
    if not server or not etcd:
        raise SystemExit(f"no kube-apiserver/etcd of {home} found")
    api = kubernetes.client.CustomObjectsApi(kubernetes.client.ApiClient(load_config(kubeconfig)))
    namespace = f"bench-status-{uuid.uuid4().hex[:6]}"
    subprocess.run(["kubectl", "create", "namespace", namespace], check=True, capture_output=True)
    manifests = "---\n".join(
        yaml.safe_dump(
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "Trigger",
                "metadata": {"name": f"t{n}"},
                "spec": {"source": "users", "subscriber": {"ref": {"name": "mailer"}}},
            }
        )
        for n in range(args.triggers)
    )
    subprocess.run(
        ["kubectl", "apply", "-n", namespace, "-f", "-"],
        input=manifests.encode(),
        check=True,
        capture_output=True,
    )

    def applied(n: int, generation: int) -> None:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Trigger",
            "metadata": {"name": f"t{n}", "namespace": namespace},
            "status": status(namespace, generation),
        }
        api.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, f"t{n}", body,
            field_manager=FIELD_MANAGER, force=True, _content_type=APPLY,
        )  # fmt: skip

    def merged(n: int, generation: int) -> None:
        api.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, f"t{n}", {"status": status(namespace, generation)},
            field_manager=FIELD_MANAGER, _content_type="application/merge-patch+json",
        )  # fmt: skip

    writes: dict[str, Callable[[int, int], None]] = {
        "server-side apply": applied,
        "merge patch": merged,
    }
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in writes}
    generation = 0
    try:
        with ThreadPoolExecutor(16) as pool:
            for _ in range(args.rounds):
                for name, write in writes.items():
                    generation += 1
                    before_server, before_etcd = cpu_seconds(server), cpu_seconds(etcd)
                    started = time.monotonic()
                    generations = [generation] * args.triggers
                    list(pool.map(write, range(args.triggers), generations))
                    took = time.monotonic() - started
                    per = 1000 / args.triggers
                    results[name].append(
                        (
                            (cpu_seconds(server) - before_server) * per,
                            (cpu_seconds(etcd) - before_etcd) * per,
                            took,
                        )
                    )
    finally:
        subprocess.run(
            ["kubectl", "delete", "namespace", namespace, "--wait=false"], capture_output=True
        )
    print(f"{args.triggers} Triggers, {args.rounds} rounds, load {os.getloadavg()[0]:.1f}")
    base = sum(r[0] for r in results["server-side apply"])
    for name, rounds in results.items():
        cells = "; ".join(
            f"API server {a:.2f} ms, etcd {e:.2f} ms, {w:.1f} s" for a, e, w in rounds
        )
        ratio = sum(r[0] for r in rounds) / base if base else float("nan")
        print(f"{name:18} per write: {cells} (API server CPU {ratio:.2f}x apply)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
