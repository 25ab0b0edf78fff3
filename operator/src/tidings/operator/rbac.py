"""The Kubernetes permissions the operator needs, exactly (docs/operator.md).

`NAMESPACED_RULES` are needed in every watched namespace: as a ClusterRole
bound cluster-wide when watching all namespaces, or as a Role bound in each
namespace given with `--namespace`. `PEERING_*` only with peering (not with
`--standalone`). tests/integration/operator/test_operator_rbac.py (namespaced)
and test_operator_clusterwide.py (all namespaces) run the operator as a
ServiceAccount holding only these through a whole lifecycle; removing any one
verb made that test fail (checked once, verb by verb).
"""

from __future__ import annotations

from typing import Any

Rule = dict[str, Any]

NAMESPACED_RULES: list[Rule] = [
    # Watched and indexed; Kopf patches its finalizer and annotations on them.
    {
        "apiGroups": ["tidings.dev"],
        "resources": ["eventsources", "triggers", "replays"],
        "verbs": ["list", "watch", "patch"],
    },
    # Status is written with server-side apply (a PATCH).
    {
        "apiGroups": ["tidings.dev"],
        "resources": ["eventsources/status", "triggers/status", "replays/status"],
        "verbs": ["patch"],
    },
    # TriggerGrants: a namespace's consent to other namespaces' Triggers, indexed.
    {"apiGroups": ["tidings.dev"], "resources": ["triggergrants"], "verbs": ["list", "watch"]},
    # Subscriber refs are resolved from an index of Services.
    {"apiGroups": [""], "resources": ["services"], "verbs": ["list", "watch"]},
    # Secrets: indexed (token, HMAC, signing, DSN refs), the generated ingest
    # token created, adapter config applied, both deleted with their source.
    {
        "apiGroups": [""],
        "resources": ["secrets"],
        "verbs": ["get", "list", "watch", "create", "patch", "delete"],
    },
    # Adapter Deployments of postgres / kubernetes / schedule sources.
    {
        "apiGroups": ["apps"],
        "resources": ["deployments"],
        "verbs": ["list", "watch", "create", "patch", "delete"],
    },
    # Events (core/v1): BackoffStarted / BackoffEnded, and Kopf's handler failures.
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
]

# Nothing cluster-scoped is needed besides peering: Kopf discovers the served
# resources through API discovery (open to every authenticated user) and does
# not watch CRDs, so install the CRDs before starting the operator.
CLUSTER_RULES: list[Rule] = []

# With peering: the peering object in each watched namespace (namespaced mode)...
PEERING_NAMESPACED_RULES: list[Rule] = [
    {
        "apiGroups": ["kopf.dev"],
        "resources": ["kopfpeerings"],
        "verbs": ["list", "watch", "patch", "create"],
    },
]
# ... or the cluster-wide one (all namespaces).
PEERING_CLUSTER_RULES: list[Rule] = [
    {
        "apiGroups": ["kopf.dev"],
        "resources": ["clusterkopfpeerings"],
        "verbs": ["list", "watch", "patch", "create"],
    },
]
