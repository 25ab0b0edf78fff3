"""One active operator replica, by Kopf peering.

Replicas register in a peering object (ClusterKopfPeering when watching all
namespaces, a KopfPeering in each watched namespace otherwise) and keep it
alive; a replica that sees a live peer with a higher priority pauses (its
watches and daemons stop), and resumes when that peer is gone. Equal
priorities pause everyone, so each replica picks a random priority unless
`--priority` is given. A replica that exits cleanly removes itself at once; a
killed one is presumed dead after the peering lifetime (`--peering-lifetime`).

Peering needs the KopfPeering CRDs below (`tidings operator
--print-peering-crds`; the Helm chart installs them) and the peering object,
which the operator creates at start if missing. `--standalone` runs without
peering: then exactly one replica must run.
"""

from __future__ import annotations

from typing import Any

import yaml

GROUP = "kopf.dev"
VERSION = "v1"
CLUSTER_PLURAL = "clusterkopfpeerings"
NAMESPACED_PLURAL = "kopfpeerings"
DEFAULT_NAME = "tidings"


def _crd(kind: str, plural: str, scope: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "tidings"},
        },
        "spec": {
            "scope": scope,
            "group": GROUP,
            "names": {"kind": kind, "plural": plural, "singular": plural[:-1]},
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    # Kopf writes peers into .status with plain patches: no status subresource.
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "status": {
                                    "type": "object",
                                    "x-kubernetes-preserve-unknown-fields": True,
                                }
                            },
                        }
                    },
                }
            ],
        },
    }


CRDS = [
    _crd("ClusterKopfPeering", CLUSTER_PLURAL, "Cluster"),
    _crd("KopfPeering", NAMESPACED_PLURAL, "Namespaced"),
]


def crds_yaml() -> str:
    return yaml.safe_dump_all(CRDS, sort_keys=False)


def peering_object(name: str, namespace: str | None) -> dict[str, Any]:
    kind = "KopfPeering" if namespace else "ClusterKopfPeering"
    meta: dict[str, Any] = {"name": name, "labels": {"app.kubernetes.io/part-of": "tidings"}}
    if namespace:
        meta["namespace"] = namespace
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": meta}
