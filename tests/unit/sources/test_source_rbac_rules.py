"""The adapter RBAC rules as data (proven against a real API server in
tests/integration/sources/test_source_rbac.py)."""

from __future__ import annotations

from tidings.api.types import EventSourceSpec
from tidings.sources import rbac

GET_EVENTSOURCE = {
    "apiGroups": ["tidings.dev"],
    "resources": ["eventsources"],
    "resourceNames": ["users-db"],
    "verbs": ["get"],
}


def test_a_postgres_adapter_may_read_its_eventsource_even_with_the_spec_in_its_env() -> None:
    spec = EventSourceSpec.model_validate(
        {"postgres": {"connectionSecretRef": {"name": "db", "key": "dsn"}, "tables": ["users"]}}
    )
    rules = rbac.rules_for(spec, name="users-db", spec_from_env=True)
    assert GET_EVENTSOURCE in rules
    assert not any(rule["resources"] == ["secrets"] for rule in rules)  # DSN from the env


def test_a_schedule_adapter_with_the_spec_in_its_env_needs_only_the_lease() -> None:
    spec = EventSourceSpec.model_validate({"schedule": {"cron": "@daily"}})
    assert rbac.rules_for(spec, name="users-db", spec_from_env=True) == [rbac.LEASE_RULE]
    assert GET_EVENTSOURCE in rbac.rules_for(spec, name="users-db", spec_from_env=False)


def test_an_objectstore_poll_adapter_reads_its_credentials_secret_only_without_the_env() -> None:
    spec = EventSourceSpec.model_validate(
        {
            "objectStore": {
                "endpoint": "http://s3:7070",
                "bucket": "uploads",
                "mode": "poll",
                "credentialsSecretRef": {"name": "s3-creds"},
            }
        }
    )
    # The operator's Deployment: spec and access keys in the env, the Lease only.
    assert rbac.rules_for(spec, name="uploads", spec_from_env=True) == [rbac.LEASE_RULE]
    rules = rbac.rules_for(spec, name="uploads", s3_credentials_from_env=False)
    assert {
        "apiGroups": [""],
        "resources": ["secrets"],
        "resourceNames": ["s3-creds"],
        "verbs": ["get"],
    } in rules


def test_an_objectstore_poll_adapter_without_the_env_may_read_its_ca_secret_too() -> None:
    spec = EventSourceSpec.model_validate(
        {
            "objectStore": {
                "endpoint": "https://s3:7070",
                "bucket": "uploads",
                "mode": "poll",
                "credentialsSecretRef": {"name": "s3-creds"},
                "caSecretRef": {"name": "s3-ca", "key": "ca.crt"},
            }
        }
    )
    # The operator's Deployment mounts the CA: still the Lease only.
    assert rbac.rules_for(spec, name="uploads", spec_from_env=True) == [rbac.LEASE_RULE]
    rules = rbac.rules_for(spec, name="uploads", s3_credentials_from_env=False)
    assert {
        "apiGroups": [""],
        "resources": ["secrets"],
        "resourceNames": ["s3-creds", "s3-ca"],
        "verbs": ["get"],
    } in rules
