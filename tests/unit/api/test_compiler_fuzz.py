"""The compiler, fuzzed: random EventSource and Trigger manifests through
`tidings dev`'s loader and the operator's compiler (tidings.api.manifests,
tidings.api.routes). Every manifest either loads and compiles into a valid
route or compiled source, or is refused with an error that names the field:
ManifestError lines `FILE: KIND NS/NAME: FIELD: message`, or a CompileError
whose reason is a CamelCase word and whose message starts with the spec field.
Never any other exception.

The manifests start from the shipped examples and a few that use every
field, mutated 1-4 times at random paths (a value replaced by junk of another
type or by a tricky string — durations, CEL, cron, URLs, names — a key
deleted, an unknown key added). Profiles: tests/fuzzing.py.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import yaml
from hypothesis import given
from hypothesis import strategies as st

from fuzzing import examples
from tidings.api.manifests import ManifestError, compile_all, load
from tidings.api.routes import CompiledSource, Route
from tidings.api.sealing import Sealer, new_key

REPO = Path(__file__).resolve().parents[3]
SEALER = Sealer(new_key())
EXAMPLES = 300  # ~45 s here; tidings-deep: 10x (tests/fuzzing.py)


def _seeds() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted((REPO / "examples").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") in ("EventSource", "Trigger"):
                docs.append(doc)
    meta = {"name": "all", "namespace": "shop"}
    docs.append(
        {
            "apiVersion": "tidings.dev/v1alpha1",
            "kind": "EventSource",
            "metadata": meta,
            "spec": {
                "http": {
                    "auth": {
                        "tokenSecretRef": {"name": "tok", "key": "token"},
                        "hmacSecretRef": {"name": "tok", "key": "hmac"},
                        "hmacHeader": "X-Hub-Signature-256",
                    },
                    "maxBodyBytes": 4096,
                    "dedupeWindow": "10m",
                },
                "retention": {"maxAge": "24h", "maxEvents": 1000},
            },
        }
    )
    docs.append(
        {
            "apiVersion": "tidings.dev/v1alpha1",
            "kind": "Trigger",
            "metadata": {"name": "every-field", "namespace": "shop"},
            "spec": {
                "source": "all",
                "filter": {
                    "types": ["com.shop.order.created"],
                    "attributes": {"subject": "orders"},
                    "prefix": {"type": "com.shop."},
                    "expression": "event.data.total > 100 && has(event.data.email)",
                },
                "subscriber": {
                    "ref": {"kind": "Service", "name": "mailer", "port": 8080},
                    "path": "/h",
                },
                "delivery": {
                    "format": "structured",
                    "timeout": "5s",
                    "retry": {
                        "maxAttempts": 5,
                        "backoff": "linear",
                        "initialDelay": "500ms",
                        "maxDelay": "1m",
                        "jitter": 0.1,
                        "retryAfterMax": "2m",
                        "retryOn": ["network", "timeout", "429", "5xx"],
                    },
                    "maxAge": "1h",
                    "deadLetter": {"uri": "http://127.0.0.1:9999/dlq"},
                    "deadLetterRetention": {"maxEvents": 10, "maxAge": "1h"},
                    "concurrency": 10,
                    "rateLimit": {"perSecond": 5.5, "burst": 10},
                    "ordering": {"key": "event.subject"},
                    "headers": {"X-Env": "test"},
                    "signing": {"secretRef": {"name": "tok", "key": "whsec"}},
                },
                "paused": False,
            },
        }
    )
    return docs


SEEDS = _seeds()
SECRET = {
    "apiVersion": "v1",
    "kind": "Secret",
    "metadata": {"name": "tok", "namespace": "shop"},
    "stringData": {
        "token": "t",
        "hmac": "h",
        "whsec": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "dsn": "postgresql://u@h/db",
    },
}

TRICKY_STRINGS = st.sampled_from(
    [
        "",
        " ",
        "0s",
        "1ms",
        "-5s",
        "1.5h",
        "1h30m",
        "10d",
        "h",
        "99999999999999999999h",
        "1e400h",
        "NaN",
        "inf",
        "0.0000001ns",
        "* * * * *",
        "61 * * * *",
        "@hourly",
        "* * *",
        "event.data.x >",
        "has(event.x)",
        "1/0 == 1",
        "event.x.y == 'a'",
        "unknown_var == 1",
        "event.data.plan",
        "size(",
        "'",
        '"',
        "\\",
        "http://x",
        "https://a b",
        "ftp://x",
        "http://[::1]:99999/",
        "http://",
        "/path",
        "path",
        "A",
        "a-",
        "-a",
        "a" * 300,
        "a.b",
        "Service",
        "Pod",
        "network",
        "5xx",
        "600",
        "4xx",
        "abc",
        "exponential",
        "binary",
        "structured",
        "data",
        "insert",
        "public.users",
        "Europe/Berlin",
        "Mars/Olympus",
        "created",
        "notify",
        "poll",
        "skip",
        "emit",
        "\x00",
        "é",
        "😀",
        "\ud800",
    ]
)
JUNK = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(),
        TRICKY_STRINGS,
        st.text(max_size=12),
    ),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside `doc` (dict keys and list indexes)."""
    found: list[tuple[Any, ...]] = [prefix] if prefix else []
    if isinstance(doc, dict):
        for key, value in doc.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            found += _paths(value, (*prefix, index))
    return found


def _parent(doc: Any, path: tuple[Any, ...]) -> Any:
    for part in path[:-1]:
        doc = doc[part]
    return doc


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    doc = json.loads(json.dumps(draw(st.sampled_from(SEEDS))))
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p in _paths(doc) if p[0] not in ("apiVersion", "kind")]
        if not paths:  # everything mutable was deleted: give it a spec again
            doc["spec"] = draw(JUNK)
            continue
        path = draw(st.sampled_from(paths))
        parent = _parent(doc, path)
        op = draw(st.sampled_from(["replace", "replace", "tricky", "delete", "add"]))
        if op == "replace":
            parent[path[-1]] = draw(JUNK)
        elif op == "tricky":
            parent[path[-1]] = draw(TRICKY_STRINGS)
        elif op == "delete":
            del parent[path[-1]]
        else:
            target = parent[path[-1]]
            if isinstance(target, dict):
                target[draw(st.text(max_size=10))] = draw(JUNK)
            elif isinstance(target, list):
                target.append(draw(JUNK))
            else:
                parent[path[-1]] = draw(JUNK)
    return doc


FIELD = re.compile(
    r": (apiVersion|metadata|spec|status)"
    r'(\.[\w-]+|\[\d+\]|\["(?:[^"\\]|\\.)*"\])*: \S'
)
DUPLICATE = re.compile(r": (EventSource|Trigger|Secret) [^:]*: defined twice")


def _check_route(route: Route) -> None:
    assert Route.model_validate_json(route.model_dump_json()) == route
    delivery = route.delivery
    for seconds in (
        delivery.timeout,
        delivery.max_age,
        delivery.retry.initial_delay,
        delivery.retry.max_delay,
        delivery.retry.retry_after_max,
        delivery.dead_letter_max_age,
    ):
        assert math.isfinite(seconds) and seconds >= 0, route
    assert delivery.retry.max_attempts >= 1 and delivery.concurrency >= 1, route
    assert math.isfinite(delivery.retry.jitter) and 0 <= delivery.retry.jitter <= 1, route
    assert route.subscriber_url.startswith(("http://", "https://")), route


def _check_source(source: CompiledSource) -> None:
    assert CompiledSource.model_validate_json(source.model_dump_json()) == source
    assert math.isfinite(source.retention_max_age) and source.retention_max_age >= 0
    if source.ingest is not None:
        assert source.ingest.max_body_bytes >= 1
        assert math.isfinite(source.ingest.dedupe_window) and source.ingest.dedupe_window >= 0


@examples(EXAMPLES)
@given(docs=st.lists(mutated(), min_size=1, max_size=3))
def test_a_manifest_compiles_or_is_refused_naming_its_field(
    tmp_path: Path, docs: list[dict[str, Any]]
) -> None:
    path = tmp_path / "objects.json"  # one file, rewritten by every example
    # The unmutated EventSources too (those whose name no document took), so most
    # Triggers find theirs and go on to be compiled.
    taken = {
        (str(d["metadata"].get("namespace")), str(d["metadata"].get("name")))
        for d in docs
        if isinstance(d.get("metadata"), dict)
    }
    sources = [
        d
        for d in SEEDS
        if d["kind"] == "EventSource"
        and (d["metadata"].get("namespace"), d["metadata"]["name"]) not in taken
    ]
    body = {"kind": "List", "items": [SECRET, *docs, *sources]}
    path.write_text(json.dumps(body))
    try:
        manifests = load([path])
    except ManifestError as error:
        for line in error.errors:
            assert line.startswith(str(path)), line
            assert FIELD.search(line) or DUPLICATE.search(line), f"names no field: {line}"
        return
    compiled = compile_all(manifests, SEALER)
    for what, error in compiled.errors.items():
        reason, _, message = error.partition(": ")
        assert re.fullmatch(r"[A-Z][A-Za-z]+", reason), f"{what}: {error}"
        assert message.startswith("spec"), f"{what}: names no field: {error}"
    for route in compiled.routes.values():
        _check_route(route)
    for source in compiled.sources.values():
        _check_source(source)
