"""The chart's Grafana dashboard against real data: a real Prometheus (built from
Go modules by hack/build-promtool.sh) scraping a real `tidings dev`, which
delivers traffic made to touch every panel: deliveries that succeed, succeed on
a retry, are refused (dead letters), fail until the Trigger is in Backoff, or
trip the filter expression; ingest requests refused for a missing token; a
schedule source; and, given a PostgreSQL, a capturing adapter and one that
cannot capture (a missing table).

Shared by tests/integration/helm/test_chart_dashboard.py (every panel's query
answers) and hack/render_dashboard.py (the picture in docs/observability.md).
Grafana itself is not run: its frontend cannot be built here. The panels' PromQL
is what Grafana would send, with its template variables substituted as Grafana
substitutes them (`panel_queries`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "helm" / "tidings" / "dashboards" / "tidings.json"


# --- the dashboard's queries ---------------------------------------------------------


@dataclass(frozen=True)
class PanelQuery:
    panel: str  # the panel's title
    ref: str  # the target's refId
    expr: str  # PromQL, template variables substituted
    legend: str  # legendFormat, e.g. "{{trigger}} {{outcome}}"


def load_dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(path.read_text())
    return dashboard


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows included, rows themselves excluded."""
    found: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Grafana's interpolation of `$name`, `${name}` and `[[name]]`; a variable the
    dashboard uses but `variables` lacks is an error, not left in the query."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        if name not in variables:
            raise KeyError(f"template variable ${name} in {expr!r} has no value")
        return variables[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)|\[\[(\w+)\]\]", value, expr)


def trigger_regex(triggers: list[str] | None) -> str:
    """$trigger as Grafana formats a multi-value variable inside a =~ matcher:
    the variable's allValue for All, else the values regex-escaped in (a|b)."""
    if not triggers:
        return ".*"
    # Grafana's prometheusSpecialRegexEscape: doubled, as the regex sits in a PromQL string.
    escaped = [
        re.sub(r"([$^*{}\[\]'+?.()|])", r"\\\\\1", t.replace("\\", "\\\\\\\\")) for t in triggers
    ]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def panel_queries(
    dashboard: dict[str, Any],
    *,
    rate_interval: str,
    interval: str = "1s",
    triggers: list[str] | None = None,
) -> list[PanelQuery]:
    """Every target of every panel, as Grafana would send it to Prometheus.
    `rate_interval` is Grafana's $__rate_interval: at least four scrape intervals."""
    variables = {
        "trigger": trigger_regex(triggers),
        "__rate_interval": rate_interval,
        "__interval": interval,
        "__range": rate_interval,
        "datasource": "prometheus",
    }
    return [
        PanelQuery(
            panel=panel["title"],
            ref=target.get("refId", "A"),
            expr=substitute(target["expr"], variables),
            legend=target.get("legendFormat", ""),
        )
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
    ]


# --- Prometheus ----------------------------------------------------------------------


class PromQLError(Exception):
    """Prometheus refused a query (errorType bad_data: it does not parse)."""


def prometheus_binary() -> str:
    """$PROMETHEUS, else the server hack/build-promtool.sh built (and caches)."""
    built = subprocess.run(
        ["bash", str(REPO / "hack" / "build-promtool.sh"), "prometheus"],
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    if built.returncode != 0:
        raise RuntimeError(
            "the Prometheus server is needed: hack/build-promtool.sh prometheus builds it "
            "with Go from the module proxy, or set PROMETHEUS=/path/to/prometheus\n"
            + built.stderr[-2000:]
        )
    return built.stdout.strip().splitlines()[-1]


class Prometheus:
    """A real Prometheus server on a free loopback port, scraping `targets`
    (host:port, /metrics) every `scrape_interval`; its TSDB under `directory`."""

    def __init__(
        self, binary: str, directory: Path, targets: list[str], scrape_interval: str = "1s"
    ) -> None:
        self.binary = binary
        self.directory = directory
        self.targets = targets
        self.scrape_interval = scrape_interval
        self.url = ""
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> Prometheus:
        from tidings.cli.redis_server import free_port

        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "prometheus.yml"
        config.write_text(
            json.dumps(
                {
                    "global": {
                        "scrape_interval": self.scrape_interval,
                        "evaluation_interval": self.scrape_interval,
                    },
                    "scrape_configs": [
                        {"job_name": "tidings", "static_configs": [{"targets": self.targets}]}
                    ],
                }
            )
        )
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        log = open(self.directory / "prometheus.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                self.binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Prometheus did not start: {self.log()[-3000:]}")
            time.sleep(0.2)
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def log(self) -> str:
        path = self.directory / "prometheus.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/PATH; the `data` of a success, PromQLError for an error."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as error:
            answer = json.loads(error.read())
        if answer.get("status") != "success":
            raise PromQLError(f"{answer.get('errorType')}: {answer.get('error')}")
        return answer["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query: [{metric: {labels}, value: [t, "v"]}, …]."""
        data = self.api("query", query=expr, time=str(at or time.time()))
        result: list[dict[str, Any]] = data["result"]
        return result

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        """A range query: [{metric: {labels}, values: [[t, "v"], …]}, …]."""
        data = self.api("query_range", query=expr, start=str(start), end=str(end), step=str(step))
        result: list[dict[str, Any]] = data["result"]
        return result

    def scraped(self, within: float = 60.0) -> None:
        """Wait until every target has been scraped successfully."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            up = self.query("up")
            if len(up) == len(self.targets) and all(s["value"][1] == "1" for s in up):
                return
            time.sleep(0.5)
        raise AssertionError(f"Prometheus did not scrape {self.targets}: {self.log()[-2000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# --- a subscriber with one behaviour per path ----------------------------------------


class Subscriber:
    """A real HTTP server on loopback: /ok answers 200, /flaky 500 to an event's
    first attempt and 200 after, /reject 400 (not retried: dead-lettered), /down 503
    (retried until the Trigger is in Backoff)."""

    def __init__(self) -> None:
        seen: set[str] = set()
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                event_id = self.headers.get("webhook-id") or self.headers.get("ce-id") or ""
                status = 200
                if self.path.startswith("/flaky"):
                    with lock:
                        status = 200 if event_id in seen else 500
                        seen.add(event_id)
                elif self.path.startswith("/reject"):
                    status = 400
                elif self.path.startswith("/down"):
                    status = 503
                else:
                    # Some spread in the attempt-duration histogram.
                    time.sleep((hash(event_id) % 40) / 1000)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- tidings dev with traffic --------------------------------------------------------

MANIFESTS = """
apiVersion: tidings.dev/v1alpha1
kind: EventSource
metadata: {{name: orders, namespace: {ns}}}
spec:
  http: {{auth: {{allowAnonymous: true}}}}
---
apiVersion: tidings.dev/v1alpha1
kind: EventSource
metadata: {{name: partners, namespace: {ns}}}
spec:
  http: {{}}
---
apiVersion: tidings.dev/v1alpha1
kind: EventSource
metadata: {{name: ticks, namespace: {ns}}}
spec:
  schedule: {{cron: "* * * * *"}}
---
apiVersion: tidings.dev/v1alpha1
kind: Trigger
metadata: {{name: fulfilment, namespace: {ns}}}
spec:
  source: orders
  subscriber: {{uri: "{ok}"}}
---
apiVersion: tidings.dev/v1alpha1
kind: Trigger
metadata: {{name: invoices, namespace: {ns}}}
spec:
  source: orders
  subscriber: {{uri: "{flaky}"}}
  delivery:
    retry: {{initialDelay: 1s, maxDelay: 2s}}
---
apiVersion: tidings.dev/v1alpha1
kind: Trigger
metadata: {{name: refunds, namespace: {ns}}}
spec:
  source: orders
  subscriber: {{uri: "{reject}"}}
---
apiVersion: tidings.dev/v1alpha1
kind: Trigger
metadata: {{name: warehouse, namespace: {ns}}}
spec:
  source: orders
  subscriber: {{uri: "{down}"}}
  delivery:
    maxAge: 1h
    retry: {{maxAttempts: 1000, initialDelay: 1s, maxDelay: 2s}}
    backoff: {{minAttempts: 3, window: 0s, maxProbeInterval: 2s}}
---
apiVersion: tidings.dev/v1alpha1
kind: Trigger
metadata: {{name: big-orders, namespace: {ns}}}
spec:
  source: orders
  # Some orders carry amount as a string: a type error, dead-lettered and counted.
  filter: {{expression: "event.data.amount > 100"}}
  subscriber: {{uri: "{ok}"}}
"""

POSTGRES_MANIFESTS = """
---
apiVersion: v1
kind: Secret
metadata: {{name: shop-db, namespace: {ns}}}
stringData: {{dsn: "{dsn}"}}
---
apiVersion: tidings.dev/v1alpha1
kind: EventSource
metadata: {{name: users-db, namespace: {ns}}}
spec:
  postgres:
    connectionSecretRef: {{name: shop-db, key: dsn}}
    tables: [public.{table}]
---
apiVersion: tidings.dev/v1alpha1
kind: EventSource
metadata: {{name: legacy-db, namespace: {ns}}}
spec:
  postgres:
    # This table does not exist: the adapter keeps retrying, never capturing.
    connectionSecretRef: {{name: shop-db, key: dsn}}
    tables: [public.{table}_gone]
---
apiVersion: tidings.dev/v1alpha1
kind: Trigger
metadata: {{name: user-sync, namespace: {ns}}}
spec:
  source: users-db
  subscriber: {{uri: "{ok}"}}
"""


@dataclass
class Stack:
    """`tidings dev` (its own Redis) in `directory` with the manifests above, the
    subscriber, traffic from a thread, and Prometheus scraping dev's /metrics."""

    directory: Path
    namespace: str = "shop"
    pg_dsn: str | None = None
    scrape_interval: str = "1s"
    orders_per_second: float = 4.0
    dev: subprocess.Popen[bytes] | None = None
    prometheus: Prometheus | None = None
    subscriber: Subscriber | None = None
    url: str = ""
    sent: dict[str, int] = field(default_factory=dict)  # ingest status -> count
    _stop: threading.Event = field(default_factory=threading.Event)
    _traffic: threading.Thread | None = None

    @property
    def table(self) -> str:
        return f"dash_{self.namespace.replace('-', '_')}_users"

    def start(self, prometheus_binary: str) -> Stack:
        from tidings.cli.redis_server import free_port

        self.directory.mkdir(parents=True, exist_ok=True)
        self.subscriber = Subscriber()
        manifests = MANIFESTS.format(
            ns=self.namespace,
            ok=self.subscriber.url("/ok"),
            flaky=self.subscriber.url("/flaky"),
            reject=self.subscriber.url("/reject"),
            down=self.subscriber.url("/down"),
        )
        if self.pg_dsn:
            self._pg(f"DROP TABLE IF EXISTS {self.table}")
            self._pg(f"CREATE TABLE {self.table} (id serial PRIMARY KEY, name text)")
            manifests += POSTGRES_MANIFESTS.format(
                ns=self.namespace, dsn=self.pg_dsn, table=self.table, ok=self.subscriber.url("/ok")
            )
        folder = self.directory / "manifests"
        folder.mkdir(exist_ok=True)
        (folder / "shop.yaml").write_text(manifests)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        log = open(self.directory / "dev.log", "wb")  # noqa: SIM115
        tidings_cli = [sys.executable, "-m", "tidings.cli"]
        self.dev = subprocess.Popen(
            [*tidings_cli, "dev", "-f", str(folder), "--listen", f"127.0.0.1:{port}"],
            cwd=self.directory,
            # Its own redis-server (not a shared one: dev owns the routing table).
            env={**os.environ, "REDIS_URL": ""},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self._wait_for_dev()
        self.prometheus = Prometheus(
            prometheus_binary,
            self.directory / "prometheus",
            [f"127.0.0.1:{port}"],
            self.scrape_interval,
        ).start()
        self.prometheus.scraped()
        self._traffic = threading.Thread(target=self._send_traffic, daemon=True)
        self._traffic.start()
        return self

    def dev_log(self) -> str:
        return (self.directory / "dev.log").read_text(errors="replace")

    def _wait_for_dev(self, within: float = 120.0) -> None:
        deadline = time.monotonic() + within
        assert self.dev is not None
        while "tidings dev: ready" not in self.dev_log():
            if self.dev.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tidings dev did not start:\n{self.dev_log()[-3000:]}")
            time.sleep(0.2)

    def _pg(self, statement: str) -> None:
        import psycopg

        assert self.pg_dsn is not None
        with psycopg.connect(self.pg_dsn, autocommit=True) as conn:
            conn.execute(statement.encode())

    def _send_traffic(self) -> None:
        from tidings.cli.send import build_request, post

        n = 0
        while not self._stop.is_set():
            n += 1
            # Every fifth order has its amount as a string: big-orders' filter fails on it.
            amount: Any = "lots" if n % 5 == 0 else (n * 37) % 250
            requests = [
                build_request(
                    base_url=self.url,
                    source=f"{self.namespace}/orders",
                    event_type="com.example.order.created",
                    data={"order": n, "amount": amount},
                )
            ]
            if n % 8 == 0:  # no token: 401
                requests.append(
                    build_request(
                        base_url=self.url,
                        source=f"{self.namespace}/partners",
                        event_type="com.example.partner.update",
                        data={"n": n},
                    )
                )
            for request in requests:
                with contextlib.suppress(OSError):
                    status, _ = post(request, timeout=5)
                    self.sent[str(status)] = self.sent.get(str(status), 0) + 1
            if self.pg_dsn and n % 3 == 0:
                with contextlib.suppress(Exception):
                    self._pg(f"INSERT INTO {self.table} (name) VALUES ('user {n}')")
            self._stop.wait(1 / self.orders_per_second)

    def stop(self) -> None:
        self._stop.set()
        if self._traffic is not None:
            self._traffic.join(10)
        if self.prometheus is not None:
            self.prometheus.stop()
        if self.dev is not None and self.dev.poll() is None:
            self.dev.terminate()
            try:
                self.dev.wait(30)
            except subprocess.TimeoutExpired:
                self.dev.kill()
                self.dev.wait()
        if self.subscriber is not None:
            self.subscriber.stop()
        if self.pg_dsn:
            self._drop_postgres_state()

    def _drop_postgres_state(self) -> None:
        from tidings.api.types import PostgresSource
        from tidings.sources import pgsetup

        for name, table in (("users-db", self.table), ("legacy-db", f"{self.table}_gone")):
            spec = PostgresSource.model_validate(
                {"connectionSecretRef": {"name": "shop-db", "key": "dsn"}, "tables": [table]}
            )
            with contextlib.suppress(Exception):
                asyncio.run(
                    pgsetup.cleanup(spec, self.pg_dsn or "", namespace=self.namespace, name=name)
                )
        with contextlib.suppress(Exception):
            self._pg(f"DROP TABLE IF EXISTS {self.table}")
