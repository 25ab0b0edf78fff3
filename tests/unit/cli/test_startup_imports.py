"""Start-up cost as behaviour: what a command imports before it does anything.

`--help`, a bad flag and the commands that do not run a plane must not load
the planes' libraries (Kopf and the Kubernetes client take seconds on a busy
machine; `tidings dev` and the Redis tools `replay`, `tail`, `trace` and
`console` still load theirs with their module), and no process
loads a library only some of its inputs need (CEL, MinIO, psycopg) before it
meets one. hack/bench_startup.py measures the time."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# What the control plane, the data plane and the optional kinds bring in.
PLANES = ("kopf", "kubernetes", "aiohttp", "redis", "pydantic", "prometheus_client")
ON_DEMAND = ("cel", "minio", "psycopg", "opentelemetry.sdk.trace", "jinja2")


def imported_after(code: str) -> set[str]:
    """The top-level packages (and the on-demand modules) loaded by `code`,
    run in a fresh interpreter; a SystemExit (from --help or an error) is fine."""
    script = (
        "import sys, json\n"
        f"try:\n    {code}\nexcept SystemExit:\n    pass\n"
        "names = set(sys.modules)\n"
        "print(json.dumps(sorted(names)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    modules = set(json.loads(done.stdout.strip().splitlines()[-1]))
    return {name.split(".")[0] for name in modules} | modules


def main_with(*argv: str) -> str:
    return f"from tidings.cli.main import main; main({list(argv)!r})"


@pytest.mark.parametrize(
    "argv",
    [
        ("--help",),
        (),
        ("no-such-command",),
        ("operator", "--help"),
        ("dispatcher", "--help"),
        ("source", "--help"),
        ("source", "schedule", "--eventsource", "no-namespace"),
        ("send", "--help"),
    ],
)
def test_help_and_usage_errors_load_no_plane(argv: tuple[str, ...]) -> None:
    loaded = imported_after(main_with(*argv))
    assert loaded.isdisjoint(PLANES + ON_DEMAND), sorted(loaded & set(PLANES + ON_DEMAND))


def test_operator_refusing_its_settings_loads_neither_kopf_nor_the_kubernetes_client() -> None:
    loaded = imported_after(main_with("operator", "--health-interval", "soon"))
    assert loaded.isdisjoint(("kopf", "kubernetes", "aiohttp")), loaded & {"kopf", "kubernetes"}


def test_dispatcher_refusing_its_settings_loads_no_data_plane() -> None:
    loaded = imported_after(main_with("dispatcher", "--listen", "nowhere"))
    assert loaded.isdisjoint(("aiohttp", "redis", "pydantic")), loaded & {"aiohttp", "redis"}


def test_a_command_loads_only_its_own_module() -> None:
    loaded = imported_after(main_with("send", "--help"))
    assert "tidings.cli.send" in loaded
    others = {"tidings.cli.dev", "tidings.cli.console", "tidings.console.app", "tidings.cli.trace"}
    assert loaded.isdisjoint(others), loaded & others


def test_the_running_dispatcher_loads_neither_the_control_plane_nor_optional_kinds() -> None:
    """What `tidings dispatcher` imports to serve (tidings.dispatcher.cli.serve): not
    even the API types, whose pydantic models only the compiler reads."""
    loaded = imported_after(
        "import tidings.cli.main, tidings.dispatcher.cli, tidings.dispatcher.engine, "
        "tidings.dispatcher.ingest, tidings.dispatcher.routing"
    )
    unwanted = {"kopf", "kubernetes", "cel", "minio", "psycopg", "jinja2", "tidings.console"}
    unwanted |= {"tidings.api.types"}
    assert loaded.isdisjoint(unwanted), loaded & unwanted


def test_cel_loads_with_the_first_expression() -> None:
    loaded = imported_after(
        "from tidings.api.routes import CompiledFilter\n"
        "    from tidings.dispatcher.filtering import Filter\n"
        "    Filter(CompiledFilter(types=['a']))"
    )
    assert "cel" not in loaded
    loaded = imported_after(
        "from tidings.api.routes import CompiledFilter\n"
        "    from tidings.dispatcher.filtering import Filter\n"
        "    assert Filter(CompiledFilter(expression='event.type == \"a\"'))({'type': 'a'})"
    )
    assert "cel" in loaded
    # ...but not the binding's own command-line tool (tidings.api.expressions).
    assert loaded.isdisjoint(("typer", "prompt_toolkit", "rich")), loaded & {"typer", "rich"}


def test_a_source_adapter_loads_only_its_kinds_client() -> None:
    """`tidings source schedule` needs neither MinIO (objectStore) nor psycopg (postgres)."""
    loaded = imported_after(
        main_with("source", "--help") + "\n    import tidings.sources.cli, tidings.sources.schedule"
    )
    assert loaded.isdisjoint(("minio", "psycopg", "kopf")), loaded & {"minio", "psycopg"}


def test_the_running_operator_loads_no_database_or_object_store_client() -> None:
    """What `tidings operator` imports before Kopf starts (tidings.operator.main.serve):
    psycopg only with a Postgres source, MinIO never, nor the adapter command."""
    loaded = imported_after(
        "import tidings.cli.main, tidings.operator.main, kopf\n"
        "    from tidings.operator import handlers, orphans, context, kube, loop"
    )
    unwanted = {"psycopg", "minio", "cel", "tidings.sources.cli", "tidings.console", "jinja2"}
    assert loaded.isdisjoint(unwanted), loaded & unwanted


def test_the_operator_builds_the_core_and_apps_clients_on_first_use() -> None:
    """The generated CoreV1Api and AppsV1Api (about a second of CPU) wait for the
    first Secret or Deployment the operator writes."""
    before = (
        "import kubernetes.client\n"
        "    from tidings.operator.kube import Kube\n"
        "    kube = Kube(kubernetes.client.Configuration())\n"
    )
    clients = {"kubernetes.client.api.core_v1_api", "kubernetes.client.api.apps_v1_api"}
    assert imported_after(before).isdisjoint(clients)
    assert clients <= imported_after(before + "    kube._core, kube._apps")
