"""objectStore sources in the operator: poll runs an adapter with its access
keys by secretKeyRef; notify gets an ingest token and status saying what to
configure on the store."""

from __future__ import annotations

from tidings.api.types import EventSourceSpec
from tidings.operator import adapters, status
from tidings.operator.adapters import AdapterSettings
from tidings.operator.world import source_dependencies

SETTINGS = AdapterSettings(image="tidings:1.0", redis_url="redis://redis:6379/0")
URL = "http://tidings-ingest.tidings.svc.cluster.local/sources/media/uploads"


def store(**fields: object) -> EventSourceSpec:
    return EventSourceSpec.model_validate(
        {"objectStore": {"endpoint": "http://s3:7070", "bucket": "uploads", **fields}}
    )


POLL = store(
    mode="poll",
    credentialsSecretRef={"name": "s3-creds", "accessKeyIdKey": "id", "secretAccessKeyKey": "sk"},
)
NOTIFY = store(mode="notify", events=["created", "deleted"])


def test_only_poll_mode_runs_an_adapter() -> None:
    assert adapters.has_adapter(POLL) and not adapters.has_adapter(NOTIFY)


def test_the_poll_adapter_gets_its_access_keys_by_secret_key_ref() -> None:
    deployment = adapters.adapter_deployment("media", "uploads", "uid", POLL, SETTINGS)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["source", "objectStore", "--eventsource", "media/uploads"]
    env = {e["name"]: e.get("valueFrom") for e in container["env"]}
    assert env["TIDINGS_S3_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "s3-creds", "key": "id"}}
    assert env["TIDINGS_S3_SECRET_ACCESS_KEY"] == {
        "secretKeyRef": {"name": "s3-creds", "key": "sk"}
    }


def test_a_notify_source_without_a_token_secret_gets_a_generated_one() -> None:
    assert adapters.needs_generated_token(NOTIFY)
    assert not adapters.needs_generated_token(POLL)
    assert ("Secret", "media", "uploads-ingest-token") in source_dependencies(
        "media", "uploads", NOTIFY
    )
    assert ("Secret", "media", "s3-creds") in source_dependencies("media", "uploads", POLL)


def test_notify_instructions_name_the_url_both_auth_forms_and_the_secret() -> None:
    text = adapters.notify_instructions(NOTIFY, "uploads", URL)
    assert text is not None
    assert f"to {URL} with the header 'Authorization: Bearer <token>'" in text
    assert f"{URL}?token=<token>" in text
    assert "key 'token' of Secret uploads-ingest-token" in text
    assert "s3:ObjectCreated:*, s3:ObjectRemoved:*" in text
    assert adapters.notify_instructions(POLL, "uploads", URL) is None


def test_notify_instructions_for_hmac_and_anonymous() -> None:
    hmac = store(mode="notify", auth={"hmacSecretRef": {"name": "sig", "key": "k"}})
    text = adapters.notify_instructions(hmac, "uploads", URL)
    assert text is not None and "HMAC-SHA256" in text and "Secret sig" in text
    anonymous = store(mode="notify", auth={"allowAnonymous": True})
    assert "allowAnonymous" in (adapters.notify_instructions(anonymous, "uploads", URL) or "")


def test_a_ready_notify_source_says_what_to_configure_on_the_store() -> None:
    facts = status.SourceFacts(
        namespace="media",
        name="uploads",
        generation=1,
        kind="objectStore",
        url=URL,
        compile_error=None,
        adapter_expected=False,
        adapter=None,
        instructions=adapters.notify_instructions(NOTIFY, "uploads", URL),
    )
    built = status.source_status(facts, None, now="T1").to_wire()
    assert built["url"] == URL
    [ready] = built["conditions"]
    assert ready["status"] == "True"
    assert ready["message"].startswith("accepting S3 notifications: configure bucket 'uploads'")


def test_the_ca_of_ca_secret_ref_is_mounted_as_a_file_and_checked_before_the_adapter_runs() -> None:
    spec = store(
        endpoint="https://s3.internal:7070",
        mode="poll",
        credentialsSecretRef={"name": "s3-creds"},
        caSecretRef={"name": "s3-ca", "key": "ca.pem"},
    )
    deployment = adapters.adapter_deployment("media", "uploads", "uid", spec, SETTINGS)
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["volumes"] == [
        {
            "name": "s3-ca",
            "secret": {"secretName": "s3-ca", "items": [{"key": "ca.pem", "path": "ca.crt"}]},
        }
    ]
    assert container["volumeMounts"] == [
        {"name": "s3-ca", "mountPath": "/etc/tidings/s3-ca", "readOnly": True}
    ]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TIDINGS_S3_CA_FILE"] == "/etc/tidings/s3-ca/ca.crt"
    # Watched: the EventSource is reconciled again when the CA Secret appears.
    assert ("Secret", "media", "s3-ca") in source_dependencies("media", "uploads", spec)
    # Without caSecretRef: no volume at all.
    plain = adapters.adapter_deployment("media", "uploads", "uid", POLL, SETTINGS)
    assert "volumes" not in plain["spec"]["template"]["spec"]


def test_the_consumed_secrets_values_are_a_digest_in_the_pod_template() -> None:
    spec = store(
        endpoint="https://s3:7070",
        mode="poll",
        credentialsSecretRef={"name": "s3-creds"},
        caSecretRef={"name": "s3-ca", "key": "ca.crt"},
    )
    refs = adapters.consumed_secrets(spec)
    assert refs == [
        ("s3-creds", "accessKeyId"),
        ("s3-creds", "secretAccessKey"),
        ("s3-ca", "ca.crt"),
    ]

    def annotation(values: dict[tuple[str, str], str | None]) -> str:
        deployment = adapters.adapter_deployment("media", "uploads", "uid", spec, SETTINGS, values)
        return str(deployment["spec"]["template"]["metadata"]["annotations"][adapters.SECRETS_HASH])

    wrong = dict(zip(refs, ["AKID", "wrong-secret", "PEM"], strict=True))
    fixed = dict(zip(refs, ["AKID", "right-secret", "PEM"], strict=True))
    new_ca = dict(zip(refs, ["AKID", "right-secret", "PEM 2"], strict=True))
    assert len({annotation(wrong), annotation(fixed), annotation(new_ca)}) == 3
    assert annotation(fixed) == annotation(dict(fixed))
    assert "right-secret" not in str(
        adapters.adapter_deployment("media", "uploads", "uid", spec, SETTINGS, fixed)
    )
    # Without values (a source that reads no Secret): no annotation, no roll on upgrade.
    plain = adapters.adapter_deployment("media", "uploads", "uid", spec, SETTINGS)
    assert adapters.SECRETS_HASH not in plain["spec"]["template"]["metadata"]["annotations"]
