"""Operator settings that shape behaviour under failure."""

from __future__ import annotations

from tidings.operator.adapters import AdapterSettings
from tidings.operator.context import Settings


def test_retries_after_errors_back_off_to_a_cap() -> None:
    settings = Settings(adapters=AdapterSettings(image="i", redis_url="r"))
    delays = [settings.retry_after(n) for n in range(1, 12)]
    assert 0.8 <= delays[0] <= 1.2
    assert delays[3] > delays[0] * 4  # doubling (with ±20 % jitter)
    assert max(delays) <= settings.retry_max * 1.2
    assert min(delays[-3:]) >= settings.retry_max * 0.8  # stays at the cap


def test_kopf_keeps_its_bookkeeping_out_of_status_and_filters_on_the_server() -> None:
    import kopf
    from kopf._cogs.structs import references

    from tidings.operator.handlers import NoDiffBase, configure

    settings = kopf.OperatorSettings()
    configure(settings)
    assert isinstance(settings.persistence.progress_storage, kopf.AnnotationsProgressStorage)
    assert isinstance(settings.persistence.diffbase_storage, NoDiffBase)
    assert settings.persistence.finalizer == "tidings.dev/cleanup"
    assert settings.scanning.disabled  # no cluster-wide CRD / Namespace permissions needed

    def resource(group: str, plural: str) -> references.Resource:
        return references.Resource(group=group, version="v1", plural=plural, namespaced=True)

    deployments, secrets = resource("apps", "deployments"), resource("", "secrets")
    assert list(settings.watching.label_selectors.collect(deployments)) == [
        "app.kubernetes.io/managed-by=tidings-operator"
    ]
    assert list(settings.watching.field_selectors.collect(secrets)) == ["type!=helm.sh/release.v1"]
    assert list(settings.watching.field_selectors.collect(resource("", "services"))) == []
