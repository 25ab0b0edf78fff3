"""The RBAC rules an adapter's ServiceAccount needs, as data (for the operator,
the Helm chart and the tests that prove them; docs/sources.md explains them).

All rules are namespaced (a Role in the EventSource's namespace), except for a
Kubernetes source watching another namespace or a cluster-scoped kind: grant
those rules there (RoleBinding in that namespace, or a ClusterRole).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tidings.api.types import GROUP, EventSourceSpec

LEASE_RULE: dict[str, Any] = {
    "apiGroups": ["coordination.k8s.io"],
    "resources": ["leases"],
    "verbs": ["get", "create", "update"],
}


def rules_for(
    spec: EventSourceSpec,
    *,
    name: str,
    spec_from_env: bool = True,
    dsn_from_env: bool = True,
    s3_credentials_from_env: bool = True,
    plurals: Mapping[tuple[str, str], str] | None = None,
) -> list[dict[str, Any]]:
    """Rules for the adapter of EventSource `name` with `spec`.

        `spec_from_env`: the spec comes in $TIDINGS_EVENTSOURCE_SPEC (the operator's
        Deployment), so no `get` on eventsources for it — except for Postgres, whose
        adapter reads its EventSource before creating a slot or publication (so it
        never re-creates them for an EventSource being deleted). `dsn_from_env`: the DSN comes in
        $TIDINGS_PG_DSN, so no `get` on the Secret; `s3_credentials_from_env` likewise
        for an objectStore poll adapter's access keys ($TIDINGS_S3_ACCESS_KEY_ID,
        $TIDINGS_S3_SECRET_ACCESS_KEY) and the CA of caSecretRef (a mounted file,
    $TIDINGS_S3_CA_FILE). `plurals` maps (apiVersion,
        kind) of watched resources to their plural resource names."""
    rules = [dict(LEASE_RULE)]
    if not spec_from_env or spec.postgres is not None:
        rules.append(
            {
                "apiGroups": [GROUP],
                "resources": ["eventsources"],
                "resourceNames": [name],
                "verbs": ["get"],
            }
        )
    if spec.postgres is not None and not dsn_from_env:
        rules.append(
            {
                "apiGroups": [""],
                "resources": ["secrets"],
                "resourceNames": [spec.postgres.connection_secret_ref.name],
                "verbs": ["get"],
            }
        )
    store = spec.object_store
    if (
        store is not None
        and store.mode == "poll"
        and store.credentials_secret_ref is not None
        and not s3_credentials_from_env
    ):
        names = [store.credentials_secret_ref.name]
        if store.ca_secret_ref is not None and store.ca_secret_ref.name not in names:
            names.append(store.ca_secret_ref.name)
        rules.append(
            {
                "apiGroups": [""],
                "resources": ["secrets"],
                "resourceNames": names,
                "verbs": ["get"],
            }
        )
    if spec.kubernetes is not None:
        for resource in spec.kubernetes.resources:
            key = (resource.api_version, resource.kind)
            if plurals is None or key not in plurals:
                raise ValueError(
                    f"no plural name given for {resource.kind} in {resource.api_version}"
                )
            group = resource.api_version.rpartition("/")[0]
            rules.append(
                {
                    "apiGroups": [group],
                    "resources": [plurals[key]],
                    "verbs": ["get", "list", "watch"],
                }
            )
    return rules
