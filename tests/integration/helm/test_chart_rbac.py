"""The chart's RBAC is sufficient and least privilege, on the real API server
(real RBAC authorization): its ServiceAccounts and roles are applied as the
chart renders them; the real `tidings operator` (with the chart's own flags)
and the real source adapters run with those accounts' tokens through their
flows, the real dispatcher delivers with no Kubernetes identity at all; and
requests outside the roles are refused (`kubectl auth can-i --as`)."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from helm_harness import REPO, Helm, find
from redis.asyncio import Redis

from tidings.api import keys
from tidings.api.sealing import new_key
from tidings.cli.redis_server import RedisServer
from tidings.sources import status

# The operator's test harness (a process runner, kubectl bound to a namespace).
sys.path.insert(0, str(REPO / "tests" / "integration" / "operator"))
from operator_harness import Cluster, OperatorProcess, eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
# What kubernetes EventSources may watch in this test (sources.kubernetes.resources).
WATCH_VALUES = {
    "sources": {"kubernetes": {"resources": [{"apiGroups": [""], "resources": ["configmaps"]}]}}
}


@dataclass
class Install:
    """The chart's accounts and roles, applied; a kubeconfig per account."""

    release: str
    namespace: str  # the release's
    watched: str  # watched by the operator, holds the EventSources
    other: str  # not watched
    rendered: list[dict[str, Any]]
    kubeconfigs: dict[str, Path]

    def account(self, component: str) -> str:
        return f"{self.release}-tidings-{component}"

    def user(self, component: str, namespace: str | None = None) -> str:
        return f"system:serviceaccount:{namespace or self.namespace}:{self.account(component)}"


def kubeconfig_for(kubectl: Any, admin: Path, account: str, namespace: str, path: Path) -> Path:
    token = kubectl("create", "token", account, "-n", namespace, "--duration=1h")
    assert token.returncode == 0, token.stderr
    config = yaml.safe_load(admin.read_text())
    config["users"] = [{"name": account, "user": {"token": token.stdout.strip()}}]
    cluster = config["clusters"][0]["name"]
    config["contexts"] = [
        {"name": account, "context": {"cluster": cluster, "user": account, "namespace": namespace}}
    ]
    config["current-context"] = account
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def install_rbac(
    helm: Helm,
    kubectl: Any,
    kubeconfig: Path,
    tmp_path: Path,
    *,
    watch_all: bool,
) -> Iterator[Install]:
    suffix = uuid.uuid4().hex[:6]
    names = [f"rbac-{role}-{suffix}" for role in ("release", "shop", "other")]
    for name in names:
        assert kubectl("create", "namespace", name).returncode == 0
    release_ns, watched, other = names
    values = tmp_path / "watch.yaml"
    values.write_text(yaml.safe_dump(WATCH_VALUES))
    settings = [f"sources.namespaces={{{watched}}}", "operator.peering.installCRDs=false"]
    if not watch_all:
        settings.append(f"operator.watchNamespaces={{{watched}}}")
    release = f"r{suffix}"
    rendered = helm.render(release, release_ns, values=[values], set=settings)
    objects = [o for o in rendered if o["kind"] in RBAC_KINDS]
    done = kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objects))
    assert done.returncode == 0, done.stderr
    install = Install(release, release_ns, watched, other, rendered, {})
    for component, namespace in (("operator", release_ns), ("source", watched)):
        install.kubeconfigs[component] = kubeconfig_for(
            kubectl,
            kubeconfig,
            install.account(component),
            namespace,
            tmp_path / f"{component}.kubeconfig",
        )
    try:
        yield install
    finally:
        cluster_scoped = [
            f"{o['kind'].lower()}/{o['metadata']['name']}"
            for o in objects
            if o["kind"] in ("ClusterRole", "ClusterRoleBinding")
        ]
        kubectl("delete", "--ignore-not-found", *cluster_scoped)
        for name in names:
            kubectl("delete", "namespace", name, "--wait=false")


@pytest.fixture(scope="module")
def crds(kubectl: Any) -> None:
    peering = subprocess.run(
        [sys.executable, "-m", "tidings.cli", "operator", "--print-peering-crds"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for args, stdin in (
        (("apply", "-f", str(REPO / "crds")), None),
        (("apply", "-f", "-"), peering),
    ):
        done = kubectl(*args, input=stdin)
        assert done.returncode == 0, done.stderr


@pytest.fixture
def namespaced(
    helm: Helm, kubectl: Any, kubeconfig: Path, tmp_path: Path, crds: None
) -> Iterator[Install]:
    """The chart with operator.watchNamespaces: one watched namespace."""
    yield from install_rbac(helm, kubectl, kubeconfig, tmp_path, watch_all=False)


@pytest.fixture
def clusterwide(
    helm: Helm, kubectl: Any, kubeconfig: Path, tmp_path: Path, crds: None
) -> Iterator[Install]:
    """The chart with its defaults: the operator watches all namespaces."""
    yield from install_rbac(helm, kubectl, kubeconfig, tmp_path, watch_all=True)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def chart_args(install: Install, component: str) -> list[str]:
    """The container args the chart gives a component, minus what only makes
    sense in a pod (the liveness listener) and the namespaces (the harness adds them)."""
    deployment = find(install.rendered, "Deployment", install.account(component))
    args: list[str] = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[0] == component
    return [a for a in args[1:] if not a.startswith(("--liveness=", "--namespace="))]


def can_i(kubectl: Any, user: str, *request: str) -> bool:
    done = kubectl("auth", "can-i", "--as", user, *request)
    assert done.stdout.strip() in ("yes", "no"), done.stdout + done.stderr
    return done.stdout.strip() == "yes"


class Subscriber:
    """A local HTTP endpoint standing for a subscriber Service."""

    def __init__(self) -> None:
        self.received: list[dict[str, str]] = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"

    async def __aenter__(self) -> Subscriber:
        async def hook(request: web.Request) -> web.Response:
            self.received.append(dict(request.headers))
            return web.Response(status=200)

        app = web.Application()
        app.router.add_post("/hook", hook)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()


def spawn(
    args: list[str], log_path: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """`tidings ARGS…` in the background, its output in log_path."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "tidings.cli", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )


def refusals(logs: str) -> list[str]:
    # Every 403 reads "Forbidden" in the log; bare digits also occur in timestamps.
    return [line for line in logs.splitlines() if "forbidden" in line.lower()]


async def test_the_operator_runs_every_flow_as_the_charts_service_account_and_dispatchers_need_none(
    namespaced: Install,
    kubectl: Any,
    redis_server: RedisServer,
    redis: Redis,
    tmp_path: Path,
    pg_dsn: str,
) -> None:
    install = namespaced
    cluster = Cluster(kubectl, install.watched)
    seal_key = new_key()
    operator = OperatorProcess(
        namespaces=[install.watched],
        redis_url=redis_server.url,
        kubeconfig=install.kubeconfigs["operator"],
        seal_key=seal_key,
        log_path=tmp_path / "operator.log",
        args=[*chart_args(install, "operator"), "--destinations-loopback=allow"],
    ).start()
    port = free_port()
    dispatcher_args = [
        a for a in chart_args(install, "dispatcher") if not a.startswith("--listen=")
    ]
    # No kubeconfig, no token, no API server address: dispatchers live on Redis alone.
    dispatcher = spawn(
        ["dispatcher", *dispatcher_args],
        tmp_path / "dispatcher.log",
        env={
            "PATH": "/usr/bin:/bin",
            "REDIS_URL": redis_server.url,
            "TIDINGS_SEAL_KEY": seal_key,
            "TIDINGS_LISTEN": f"127.0.0.1:{port}",
            "TIDINGS_DESTINATIONS_LOOPBACK": "allow",  # the subscriber listens on loopback
            "KUBECONFIG": "/nonexistent",
        },
    )
    try:
        async with Subscriber() as subscriber:
            cluster.apply(
                {
                    "apiVersion": "tidings.dev/v1alpha1",
                    "kind": "EventSource",
                    "metadata": {"name": "orders"},
                    "spec": {"http": {}},
                },
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {"name": "hook"},
                    "stringData": {"secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"},
                },
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {"name": "mailer"},
                    "spec": {"ports": [{"port": 8080}]},
                },
                {
                    "apiVersion": "tidings.dev/v1alpha1",
                    "kind": "Trigger",
                    "metadata": {"name": "to-local"},
                    "spec": {
                        "source": "orders",
                        "subscriber": {"uri": subscriber.url},
                        "delivery": {"signing": {"secretRef": {"name": "hook", "key": "secret"}}},
                    },
                },
                {
                    "apiVersion": "tidings.dev/v1alpha1",
                    "kind": "Trigger",
                    "metadata": {"name": "to-service"},
                    "spec": {"source": "orders", "subscriber": {"ref": {"name": "mailer"}}},
                },
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {"name": "db"},
                    # A real database: deleting the EventSource connects to drop its slot.
                    "stringData": {"dsn": pg_dsn},
                },
                {
                    "apiVersion": "tidings.dev/v1alpha1",
                    "kind": "EventSource",
                    "metadata": {"name": "db"},
                    "spec": {
                        "postgres": {
                            "connectionSecretRef": {"name": "db", "key": "dsn"},
                            "tables": ["public.users"],
                        }
                    },
                },
                {
                    "apiVersion": "tidings.dev/v1alpha1",
                    "kind": "EventSource",
                    "metadata": {"name": "ticks"},
                    "spec": {"schedule": {"cron": "@hourly"}},
                },
            )
            for name in ("to-local", "to-service"):
                await eventually(
                    lambda n=name: (
                        (cluster.condition("trigger", n, "Ready") or {}).get("status") == "True"
                    ),  # type: ignore[misc]
                    within=60,
                )
            # Adapter Deployments run as the chart's adapter account.
            for source in ("db", "ticks"):
                deployment = await eventually(
                    lambda s=source: cluster.get("deployment", f"tidings-source-{s}"), within=30
                )  # type: ignore[misc]
                pod = deployment["spec"]["template"]["spec"]
                assert pod["serviceAccountName"] == install.account("source")
            # The generated ingest token, created by the operator, opens ingest.
            token_secret = await eventually(
                lambda: cluster.get("secret", "orders-ingest-token"), within=30
            )
            token = base64.b64decode(token_secret["data"]["token"]).decode()
            async with aiohttp.ClientSession() as http:

                async def post() -> bool:
                    async with http.post(
                        f"http://127.0.0.1:{port}/sources/{install.watched}/orders?type=com.shop.created",
                        json={"id": 1},
                        headers={"Authorization": f"Bearer {token}"},
                    ) as answer:
                        return answer.status == 202

                await eventually(post, within=30, interval=0.5)
            received = await eventually(lambda: subscriber.received, within=30)
            assert received[0]["ce-type"] == "com.shop.created"
            assert received[0]["webhook-signature"].startswith("v1,")

        for kind, name in (
            ("trigger", "to-local"),
            ("trigger", "to-service"),
            ("eventsource", "orders"),
            ("eventsource", "db"),
            ("eventsource", "ticks"),
        ):
            cluster.delete(kind, name, wait=True)
        assert cluster.get("deployment", "tidings-source-db") is None
        assert cluster.get("secret", "orders-ingest-token") is None
    finally:
        operator.stop()
        dispatcher.terminate()
        dispatcher.wait(30)
        print(operator.logs()[-20000:])
    assert refusals(operator.logs()) == []


async def test_adapters_run_as_the_charts_source_account_and_watch_only_what_it_grants(
    namespaced: Install,
    kubectl: Any,
    redis_server: RedisServer,
    redis: Redis,
    tmp_path: Path,
    pg_dsn: str,
) -> None:
    install = namespaced
    cluster = Cluster(kubectl, install.watched)

    def kubernetes_source(name: str, kind: str) -> dict[str, Any]:
        return {
            "apiVersion": "tidings.dev/v1alpha1",
            "kind": "EventSource",
            "metadata": {"name": name},
            "spec": {"kubernetes": {"resources": [{"apiVersion": "v1", "kind": kind}]}},
        }

    cluster.apply(kubernetes_source("maps", "ConfigMap"), kubernetes_source("keys", "Secret"))
    adapters = {
        name: spawn(
            [
                "source",
                "kubernetes",
                f"--eventsource={install.watched}/{name}",
                f"--kubeconfig={install.kubeconfigs['source']}",
                f"--redis-url={redis_server.url}",
                "--lease-seconds=6",
            ],
            tmp_path / f"{name}.log",
        )
        for name in ("maps", "keys")
    }
    try:
        # ConfigMaps are granted: a change becomes an event in the source's stream.
        await eventually(lambda: status.read(redis, install.watched, "maps"), within=30)
        cluster.apply(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "prices"},
                "data": {"tea": "3"},
            }
        )

        async def prices_event() -> bool:
            entries = await redis.xrange(keys.stream(install.watched, "maps"))
            return any(b"prices" in fields[keys.FIELD_EVENT.encode()] for _, fields in entries)

        await eventually(prices_event, within=30, interval=0.3)
        current = await status.read(redis, install.watched, "maps")
        assert current is not None and current.state == "Running", current
        lease = cluster.get("lease", "tidings-source-maps")
        assert lease is not None and lease["spec"]["holderIdentity"]

        # Secrets are not: the adapter reports Forbidden and names the fix.
        async def forbidden() -> bool:
            reported = await status.read(redis, install.watched, "keys")
            return reported is not None and reported.reason == "Forbidden"

        await eventually(forbidden, within=30, interval=0.3)
        reported = await status.read(redis, install.watched, "keys")
        assert reported is not None and "get, list and watch" in reported.message
    finally:
        for process in adapters.values():
            process.terminate()
            process.wait(30)
        for name in adapters:
            print((tmp_path / f"{name}.log").read_text()[-5000:])
    maps_log = (tmp_path / "maps.log").read_text()
    assert refusals(maps_log) == []


def test_requests_outside_the_namespaced_roles_are_denied(
    namespaced: Install, kubectl: Any
) -> None:
    i = namespaced
    operator, source, dispatcher = (
        i.user("operator"),
        i.user("source", i.watched),
        i.user("dispatcher"),
    )
    w, o, r = i.watched, i.other, i.namespace
    # What the operator needs, in the namespace it watches...
    assert can_i(kubectl, operator, "get", "secrets", "-n", w)
    assert can_i(kubectl, operator, "create", "deployments.apps", "-n", w)
    assert can_i(kubectl, operator, "patch", "triggers.tidings.dev/status", "-n", w)
    # ...and nothing outside it, nor more than it needs inside it.
    assert not can_i(kubectl, operator, "get", "secrets", "-n", o)
    assert not can_i(kubectl, operator, "get", "secrets", "-n", r)
    assert not can_i(kubectl, operator, "list", "secrets", "--all-namespaces")
    assert not can_i(kubectl, operator, "list", "eventsources.tidings.dev", "-n", o)
    assert not can_i(kubectl, operator, "create", "pods", "-n", w)
    assert not can_i(kubectl, operator, "update", "deployments.apps", "-n", w)
    assert not can_i(kubectl, operator, "delete", "eventsources.tidings.dev", "-n", w)
    assert not can_i(kubectl, operator, "create", "rolebindings.rbac.authorization.k8s.io", "-n", w)
    assert not can_i(kubectl, operator, "list", "customresourcedefinitions.apiextensions.k8s.io")
    assert not can_i(kubectl, operator, "list", "nodes")
    # Adapters: their Lease and EventSource, the granted kinds, in their namespace only.
    assert can_i(kubectl, source, "update", "leases.coordination.k8s.io", "-n", w)
    assert can_i(kubectl, source, "watch", "configmaps", "-n", w)
    assert not can_i(kubectl, source, "get", "secrets", "-n", w)
    assert not can_i(kubectl, source, "watch", "configmaps", "-n", o)
    assert not can_i(kubectl, source, "create", "leases.coordination.k8s.io", "-n", o)
    assert not can_i(kubectl, source, "patch", "eventsources.tidings.dev", "-n", w)
    assert not can_i(kubectl, source, "delete", "leases.coordination.k8s.io", "-n", w)
    # Dispatchers: nothing at all.
    for verb, resource in (
        ("get", "secrets"),
        ("list", "configmaps"),
        ("get", "eventsources.tidings.dev"),
        ("list", "triggers.tidings.dev"),
        ("get", "leases.coordination.k8s.io"),
        ("list", "services"),
        ("create", "events"),
    ):
        for namespace in (r, w):
            assert not can_i(kubectl, dispatcher, verb, resource, "-n", namespace), (verb, resource)
    listed = kubectl("auth", "can-i", "--list", "--as", dispatcher, "-n", r)
    assert listed.returncode == 0, listed.stderr
    # Resource rules start in the first column; non-resource URLs (/healthz…) are indented.
    resources = {
        line.split()[0] for line in listed.stdout.splitlines()[1:] if line and not line[0].isspace()
    }
    # Only what every authenticated user has: reviews of its own access.
    assert resources <= {
        "selfsubjectreviews.authentication.k8s.io",
        "selfsubjectaccessreviews.authorization.k8s.io",
        "selfsubjectrulesreviews.authorization.k8s.io",
    }, listed.stdout


def test_watching_all_namespaces_grants_the_same_verbs_everywhere_and_nothing_more(
    clusterwide: Install, kubectl: Any
) -> None:
    i = clusterwide
    operator = i.user("operator")
    for namespace in (i.watched, i.other, i.namespace):
        assert can_i(kubectl, operator, "list", "secrets", "-n", namespace)
        assert can_i(kubectl, operator, "create", "deployments.apps", "-n", namespace)
    assert can_i(kubectl, operator, "patch", "clusterkopfpeerings.kopf.dev")
    assert not can_i(kubectl, operator, "create", "pods", "-n", i.other)
    assert not can_i(kubectl, operator, "create", "clusterroles.rbac.authorization.k8s.io")
    assert not can_i(kubectl, operator, "list", "nodes")
    assert not can_i(kubectl, operator, "list", "namespaces")
    assert not can_i(kubectl, operator, "delete", "customresourcedefinitions.apiextensions.k8s.io")
    # Adapters stay in the namespaces the chart gave them an account in.
    source = i.user("source", i.watched)
    assert can_i(kubectl, source, "list", "configmaps", "-n", i.watched)
    assert not can_i(kubectl, source, "list", "configmaps", "-n", i.other)
    dispatcher = i.user("dispatcher")
    assert not can_i(kubectl, dispatcher, "get", "secrets", "-n", i.other)
    assert not can_i(kubectl, dispatcher, "list", "eventsources.tidings.dev", "--all-namespaces")


def test_no_binding_in_the_cluster_names_the_dispatchers_account(
    namespaced: Install, kubectl: Any
) -> None:
    """The dispatcher's account is bound by no binding at all."""
    done = kubectl("get", "rolebindings,clusterrolebindings", "--all-namespaces", "-o", "json")
    assert done.returncode == 0, done.stderr
    dispatcher = namespaced.account("dispatcher")
    for binding in json.loads(done.stdout)["items"]:
        for subject in binding.get("subjects") or []:
            assert not (
                subject.get("kind") == "ServiceAccount"
                and subject.get("name") == dispatcher
                and subject.get("namespace") == namespaced.namespace
            ), binding["metadata"]["name"]
