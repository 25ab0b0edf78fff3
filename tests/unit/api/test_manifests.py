"""Loading manifests for `tidings dev`: files and folders, errors that name the
file, object and field, and compiling with the operator's compiler."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tidings.api.manifests import (
    LocalServices,
    ManifestError,
    compile_all,
    fingerprint,
    load,
)
from tidings.api.sealing import Sealer, new_key

REPO = Path(__file__).resolve().parents[3]
SOURCE = """
apiVersion: tidings.dev/v1alpha1
kind: EventSource
metadata: {name: orders, namespace: shop}
spec: {http: {auth: {allowAnonymous: true}}}
"""
TRIGGER = """
apiVersion: tidings.dev/v1alpha1
kind: Trigger
metadata: {name: NAME, namespace: shop}
spec:
  source: orders
  subscriber: {ref: {name: mailer, port: 8080}, path: /hooks}
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def sealer() -> Sealer:
    return Sealer(new_key())


@pytest.mark.parametrize(
    "folder", sorted(p.name for p in (REPO / "examples").iterdir() if p.is_dir())
)
def test_every_example_folder_loads(folder: str) -> None:
    # Raises ManifestError naming file, object and field if anything is invalid.
    load([REPO / "examples" / folder])


def test_the_examples_define_sources_and_triggers() -> None:
    folders = [p for p in (REPO / "examples").iterdir() if p.is_dir()]
    loaded = [load([folder]) for folder in folders]
    assert sum(len(m.sources) for m in loaded) >= 3
    assert sum(len(m.triggers) for m in loaded) >= 3


def test_the_quickstart_compiles_and_delivers_to_the_local_subscriber() -> None:
    manifests = load([REPO / "examples" / "quickstart"])
    compiled = compile_all(manifests, sealer())
    assert compiled.errors == {}
    assert list(compiled.sources) == ["shop/orders"]
    route = compiled.routes["shop/print-orders"]
    assert route.subscriber_url == "http://127.0.0.1:9000/events"
    assert compiled.sources["shop/orders"].ingest.token_sealed  # type: ignore[union-attr]


def test_folders_are_read_recursively_with_multi_document_files_and_lists(tmp_path: Path) -> None:
    write(tmp_path, "a/source.yaml", SOURCE + "---\n" + TRIGGER.replace("NAME", "one"))
    listed = "apiVersion: v1\nkind: List\nitems:\n" + "".join(
        "- " + TRIGGER.replace("NAME", "two").strip().replace("\n", "\n  ") + "\n"
    )
    write(tmp_path, "b/nested/list.yml", listed)
    write(tmp_path, "kustomization.yaml", "resources: [a/source.yaml]\n")
    write(tmp_path, ".hidden/skip.yaml", "not: [valid")
    manifests = load([tmp_path])
    assert sorted(manifests.triggers) == [("shop", "one"), ("shop", "two")]
    assert list(manifests.sources) == [("shop", "orders")]


def test_a_bad_field_is_reported_with_file_object_and_field(tmp_path: Path) -> None:
    bad = TRIGGER.replace("NAME", "late") + "  delivery: {timeout: soon, retry: {jitter: 2}}\n"
    path = write(tmp_path, "trigger.yaml", SOURCE + "---\n" + bad)
    with pytest.raises(ManifestError) as failed:
        load([tmp_path])
    lines = failed.value.errors
    assert len(lines) == 2  # every problem, not just the first
    assert lines[0].startswith(f"{path} (document 2): Trigger shop/late: spec.delivery.timeout: ")
    assert "spec.delivery.retry.jitter" in lines[1]


def test_an_object_defined_twice_names_both_places(tmp_path: Path) -> None:
    first = write(tmp_path, "a.yaml", SOURCE)
    write(tmp_path, "b.yaml", SOURCE)
    with pytest.raises(ManifestError) as failed:
        load([tmp_path])
    assert f"EventSource shop/orders: defined twice (also in {first})" in str(failed.value)


def test_yaml_syntax_errors_and_missing_paths_are_reported(tmp_path: Path) -> None:
    broken = write(tmp_path, "broken.yaml", "kind: [unclosed")
    with pytest.raises(ManifestError) as failed:
        load([broken, tmp_path / "nope.yaml"])
    text = str(failed.value)
    assert f"{broken}: cannot be read" in text
    assert f"{tmp_path / 'nope.yaml'}: no such file or folder" in text


def test_a_wrong_tidings_api_version_is_an_error_but_other_projects_triggers_are_skipped(
    tmp_path: Path,
) -> None:
    write(
        tmp_path, "knative.yaml", TRIGGER.replace("tidings.dev/v1alpha1", "eventing.knative.dev/v1")
    )
    manifests = load([tmp_path])
    assert manifests.triggers == {} and len(manifests.ignored) == 1
    write(tmp_path, "typo.yaml", SOURCE.replace("v1alpha1", "v1"))
    with pytest.raises(ManifestError) as failed:
        load([tmp_path])
    assert "apiVersion: 'tidings.dev/v1'; use tidings.dev/v1alpha1" in str(failed.value)


def test_secrets_decode_data_and_prefer_string_data(tmp_path: Path) -> None:
    write(
        tmp_path,
        "secret.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s, namespace: shop}\n"
        "data: {a: aGVsbG8=, b: aWdub3JlZA==}\nstringData: {b: plain}\n",
    )
    assert load([tmp_path]).secrets[("shop", "s")] == {"a": "hello", "b": "plain"}


def test_a_trigger_that_does_not_compile_is_reported_and_the_others_still_compile(
    tmp_path: Path,
) -> None:
    orphan = TRIGGER.replace("NAME", "orphan").replace("source: orders", "source: missing")
    write(tmp_path, "all.yaml", "---\n".join([SOURCE, TRIGGER.replace("NAME", "ok"), orphan]))
    compiled = compile_all(load([tmp_path]), sealer())
    assert list(compiled.routes) == ["shop/ok"]
    assert compiled.errors["Trigger shop/orphan"].startswith("SourceNotFound: spec.source")


def test_service_refs_go_to_localhost_unless_mapped(tmp_path: Path) -> None:
    write(tmp_path, "all.yaml", SOURCE + "---\n" + TRIGGER.replace("NAME", "t"))
    manifests = load([tmp_path])
    default = compile_all(manifests, sealer()).routes["shop/t"]
    assert default.subscriber_url == "http://127.0.0.1:8080/hooks"
    for mapping in ("mailer=http://10.0.0.5:81/", "shop/mailer=http://10.0.0.5:81"):
        services = LocalServices.parse([mapping])
        mapped = compile_all(manifests, sealer(), services).routes["shop/t"]
        assert mapped.subscriber_url == "http://10.0.0.5:81/hooks"
    with pytest.raises(ValueError, match="NAME=URL"):
        LocalServices.parse(["mailer:9000"])


def test_a_service_manifest_supplies_the_port_when_the_ref_has_none(tmp_path: Path) -> None:
    trigger = TRIGGER.replace("NAME", "t").replace("port: 8080", "kind: Service")
    service = "apiVersion: v1\nkind: Service\nmetadata: {name: mailer, namespace: shop}\n"
    service += "spec: {ports: [{port: 7000}]}\n"
    write(tmp_path, "all.yaml", "---\n".join([SOURCE, trigger, service]))
    route = compile_all(load([tmp_path]), sealer()).routes["shop/t"]
    assert route.subscriber_url == "http://127.0.0.1:7000/hooks"


def test_the_fingerprint_changes_when_a_file_is_added_or_edited(tmp_path: Path) -> None:
    path = write(tmp_path, "a.yaml", SOURCE)
    before = fingerprint([tmp_path])
    write(tmp_path, "b.yaml", SOURCE)
    added = fingerprint([tmp_path])
    assert added != before
    time.sleep(0.01)
    path.write_text(SOURCE + "\n")
    assert fingerprint([tmp_path]) != added


def test_a_field_path_quotes_keys_that_are_not_plain_words() -> None:
    # Found by the fuzzed compiler: an unknown key ":" read `spec.:: Extra inputs...`.
    from tidings.api.manifests import _field_path

    assert _field_path(["spec", ":"]) == 'spec[":"]'
    assert _field_path(["spec", "headers", "X: y", 0]) == 'spec.headers["X: y"][0]'
    assert _field_path(["spec", "deadLetter", "ref"]) == "spec.deadLetter.ref"
