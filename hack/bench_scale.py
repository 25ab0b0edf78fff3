#!/usr/bin/env python3
"""Scale out: one against two `tidings dispatcher` processes, single Redis against
a 3-master Redis Cluster, with the CPU of every process per delivery (issue 17, item 5).

    .venv/bin/python hack/bench_scale.py [--events 40000] [--sources 12] [--rounds 2]
                                          [--redis-cluster] [--receiver go|python]
                                          [--cpu-limit CORES]

Starts a private redis-server (and, with --redis-cluster, a private 3-master
cluster through hack/redis-cluster.sh) and a subscriber: by default the Go
receiver of hack/build-receiver.sh, which costs a few µs per request where an
aiohttp one costs ~100 µs, CPU the dispatchers would otherwise share with it.
Each case then:

1. fills `--sources` fresh EventSources with `--events` events in all (before
   the dispatchers see any Trigger, so no load generator runs while measuring);
   on a cluster the sources are picked so their streams are spread evenly over
   the masters (and the script checks each stream is on the master it expects);
2. starts N real `tidings dispatcher --no-ingest` processes, waits until they
   are ready, then publishes one Trigger per source with every feature on
   (type + CEL filter, Standard Webhooks signing, rate limit, metrics);
3. times the Triggers' delivered count (entries read and acknowledged) to
   `--events`, and takes the CPU each process used meanwhile (/proc for the
   dispatchers and the subscriber, INFO for each Redis), and the machine's busy
   CPU (/proc/stat: other users of the machine included).

With `--cpu-limit CORES` every dispatcher process runs in a cgroup of its own
capped at that many cores (CFS quota), as a pod with `resources.limits.cpu`
runs: on this 2-core machine, where Redis, the subscriber and this script share
the cores with the dispatchers, one unlimited process already leaves too little
for a second one to show what it adds; capped processes show how delivery
scales with processes while the machine has room (needs root and the cgroup
`cpu` controller, v1 or v2).

Cases are interleaved per round (1, 2 processes; single Redis, then cluster)
as the shared machine's load drifts; best of the rounds for each. Ratios are
against the same run. Not a pass/fail test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).parent))
from bench_dispatch import World, add_source, delivered, fill, machine, subscriber_main, trigger
from redis.crc import key_slot

from tidings.api import keys, table
from tidings.api.process import connect_redis
from tidings.api.routes import Route
from tidings.api.sealing import ENV_KEY, Sealer, new_key
from tidings.cli.redis_server import free_port

HACK = Path(__file__).resolve().parent
# Linux's autogroup scheduling (kernel.sched_autogroup_enabled) shares the CPU
# fairly between sessions, not processes: on a loaded machine every process of
# one session together gets one session's share, so a second dispatcher in the
# same session would gain nothing. Each server here gets its own session, as
# each pod gets its own cgroup.
SESSIONS = "dispatchers, Redis and the subscriber each run in a session of their own"
TIDINGS = Path(sys.executable).parent / "tidings"
TICK = os.sysconf("SC_CLK_TCK")


# --- CPU accounting ------------------------------------------------------------------


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def autogroup() -> str:
    try:
        on = Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    except OSError:
        return "unknown"
    return "on" if on else "off"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, every user of it."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / TICK, sum(values[:8]) / TICK


async def redis_cpu(node: Redis) -> float:
    info = await node.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def redis_clients(node: Redis) -> int:
    return int((await node.info("clients"))["connected_clients"])


# --- the Redis deployments -----------------------------------------------------------


@dataclass
class Target:
    """A Redis (single or cluster) as the bench and the dispatchers reach it."""

    name: str
    url: str
    cluster: bool
    client: Redis
    nodes: dict[str, Redis] = field(default_factory=dict)  # "host:port" -> plain client

    def master_of(self, key: str) -> str:
        if not self.cluster:
            return next(iter(self.nodes))
        node = self.client.get_node_from_key(key)  # type: ignore[attr-defined]
        return str(node.name)

    async def close(self) -> None:
        for node in self.nodes.values():
            await node.aclose()
        await self.client.aclose()


def redis_up(script: str, state: Path) -> str:
    """A private Redis (hack/redis.sh) or 3-master cluster (hack/redis-cluster.sh)
    under `state`: its URL. Both daemonize, so each server has its own session."""
    env = {**os.environ, "TIDINGS_STATE_DIR": str(state)}
    up = subprocess.run(
        ["bash", str(HACK / script), "up"], env=env, capture_output=True, text=True, timeout=120
    )
    if up.returncode != 0:
        raise SystemExit(f"hack/{script} up failed:\n{up.stderr}")
    return up.stdout.strip().splitlines()[-1].split("=", 1)[1]


def redis_down(script: str, state: Path) -> None:
    env = {**os.environ, "TIDINGS_STATE_DIR": str(state)}
    subprocess.run(["bash", str(HACK / script), "down"], env=env, capture_output=True, timeout=60)


async def single_target(state: Path) -> Target:
    url = await asyncio.to_thread(redis_up, "redis.sh", state)
    client = connect_redis(url)
    return Target("single", url, False, client, {url.split("/")[2]: client})


async def cluster_target(state: Path) -> Target:
    url = await asyncio.to_thread(redis_up, "redis-cluster.sh", state)
    client = connect_redis(url, cluster=True)
    await client.initialize()
    nodes = {
        str(node.name): Redis(host=node.host, port=node.port)
        for node in client.get_primaries()  # type: ignore[attr-defined]
    }
    return Target("cluster", url, True, client, nodes)


# --- the subscriber ------------------------------------------------------------------


@dataclass
class Subscriber:
    pid: int
    base: str
    stop: Any


def start_subscriber(kind: str) -> Subscriber:
    port = free_port()
    if kind == "go":
        built = subprocess.run(
            ["bash", str(HACK / "build-receiver.sh")], capture_output=True, text=True, check=False
        )
        if built.returncode != 0:
            raise SystemExit(
                f"hack/build-receiver.sh failed (or use --receiver python):\n{built.stderr}"
            )
        process = subprocess.Popen(
            [built.stdout.strip(), "-listen", f"127.0.0.1:{port}"], start_new_session=True
        )

        def stop_go() -> None:
            process.terminate()
            process.wait()

        return Subscriber(process.pid, f"http://127.0.0.1:{port}", stop_go)
    child = multiprocessing.get_context("spawn").Process(target=own_session, args=(port,))
    child.start()

    def stop_python() -> None:
        child.terminate()
        child.join()

    assert child.pid is not None
    return Subscriber(child.pid, f"http://127.0.0.1:{port}", stop_python)


def own_session(port: int) -> None:
    os.setsid()  # its own scheduling group (see SESSIONS)
    subscriber_main(port)


async def wait_http(url: str, what: str, limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{what} did not answer 200 at {url} within {limit:.0f}s")
            await asyncio.sleep(0.1)


# --- CPU limits, as a pod's resources.limits.cpu -----------------------------------------

CGROUP_V1 = Path("/sys/fs/cgroup/cpu")
CGROUP_V2 = Path("/sys/fs/cgroup")
PERIOD_US = 100_000


class CpuLimit:
    """A cgroup per process capped at `cores` (CFS quota over a 100 ms period)."""

    def __init__(self, cores: float) -> None:
        self.cores = cores
        if (CGROUP_V1 / "cpu.cfs_quota_us").exists():
            self.root, self.v1 = CGROUP_V1 / "tidings-bench-scale", True
        elif "cpu" in _read(CGROUP_V2 / "cgroup.controllers").split():
            self.root, self.v1 = CGROUP_V2 / "tidings-bench-scale", False
        else:
            raise SystemExit(
                "bench_scale: --cpu-limit needs the cgroup cpu controller (v1 at "
                f"{CGROUP_V1} or v2 at {CGROUP_V2}); neither is there"
            )
        try:
            self.root.mkdir(exist_ok=True)
            if not self.v1:
                (self.root / "cgroup.subtree_control").write_text("+cpu")
        except OSError as error:
            raise SystemExit(
                f"bench_scale: --cpu-limit: cannot set up {self.root}: {error} (on cgroup v2 "
                "the parent group must delegate the cpu controller: cgroup.subtree_control)"
            ) from None
        self.groups: list[Path] = []

    def put(self, pid: int) -> None:
        group = self.root / f"dispatcher-{pid}"
        group.mkdir(exist_ok=True)  # a PID reused from an earlier run's leftover
        quota = int(self.cores * PERIOD_US)
        if self.v1:
            (group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (group / "cpu.cfs_quota_us").write_text(str(quota))
        else:
            (group / "cpu.max").write_text(f"{quota} {PERIOD_US}")
        (group / "cgroup.procs").write_text(str(pid))  # every thread of it
        self.groups.append(group)

    def throttled_seconds(self) -> float:
        """Time the processes spent throttled so far, summed over their groups."""
        total = 0.0
        for group in self.groups:
            for line in _read(group / "cpu.stat").splitlines():
                name, _, value = line.partition(" ")
                if name == "throttled_time":  # v1, ns
                    total += int(value) / 1e9
                elif name == "throttled_usec":  # v2
                    total += int(value) / 1e6
        return total

    def release(self) -> None:
        """Remove the groups of processes that have exited."""
        for group in self.groups:
            try:
                group.rmdir()
            except OSError as error:  # still populated: the process outlived its stop
                print(f"bench_scale: left {group} behind: {error}", file=sys.stderr)
        self.groups = []

    def close(self) -> None:
        self.release()
        with contextlib.suppress(OSError):
            self.root.rmdir()


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


# --- dispatcher processes ------------------------------------------------------------


class Dispatchers:
    """N `tidings dispatcher --no-ingest` processes, as a Deployment would run them."""

    def __init__(
        self,
        count: int,
        target: Target,
        seal_key: str,
        logs: Path,
        limit: CpuLimit | None = None,
    ) -> None:
        self.count, self.target, self.seal_key, self.logs = count, target, seal_key, logs
        self.limit = limit
        self.processes: list[subprocess.Popen[bytes]] = []

    async def start(self) -> None:
        for port in self.launch():
            await wait_http(
                f"http://127.0.0.1:{port}/readyz", f"a dispatcher (its log: {self.logs})"
            )

    def launch(self) -> list[int]:
        env = {**os.environ, ENV_KEY: self.seal_key}
        ports = []
        for i in range(self.count):
            port = free_port()
            command = [
                str(TIDINGS),
                "dispatcher",
                "--no-ingest",
                "--listen",
                f"127.0.0.1:{port}",
                "--redis-url",
                self.target.url,
                "--destinations-loopback",
                "allow",
                "--consumer-name",
                f"bench-{i}",
                "--grace",
                "1",
                "--drain-connections",
                "0",
            ]
            if self.target.cluster:
                command.append("--redis-cluster")
            with open(self.logs / f"dispatcher-{self.target.name}-{i}.log", "ab") as log:
                self.processes.append(
                    subprocess.Popen(
                        command,
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
            if self.limit is not None:
                self.limit.put(self.processes[-1].pid)
            ports.append(port)
        return ports

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def stop(self) -> None:
        for process in self.processes:
            process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes = []
        if self.limit is not None:
            self.limit.release()


# --- one case --------------------------------------------------------------------------


def spread_sources(target: Target, prefix: str, count: int) -> list[str]:
    """`count` source names whose streams fall evenly on the target's masters."""
    masters = list(target.nodes)
    quota = -(-count // len(masters))
    taken: dict[str, int] = dict.fromkeys(masters, 0)
    names: list[str] = []
    i = 0
    while len(names) < count:
        name = f"{prefix}-s{i}"
        master = target.master_of(keys.stream("bench", name))
        if taken[master] < quota:
            taken[master] += 1
            names.append(name)
        i += 1
    return names


async def placement(target: Target, streams: list[str], per_stream: int) -> dict[str, int]:
    """Streams per master, each checked on the node itself (a plain client there
    gets MOVED for a key it does not hold)."""
    counts: dict[str, int] = dict.fromkeys(target.nodes, 0)
    for stream in streams:
        master = target.master_of(stream)
        length = await target.nodes[master].xlen(stream)
        if length != per_stream:
            raise SystemExit(f"{stream}: {length} entries on {master}, expected {per_stream}")
        counts[master] += 1
    return counts


async def run_case(
    target: Target,
    processes: int,
    label: str,
    events: int,
    sources: int,
    subscriber: Subscriber,
    seal_key: str,
    logs: Path,
    limit: CpuLimit | None = None,
    concurrency: int = 100,
) -> dict[str, Any]:
    world, sealer = World(), Sealer(seal_key)
    redis = target.client
    names = spread_sources(target, label, sources)
    per_source = events // sources
    routes: list[Route] = []
    streams = []
    for name in names:
        stream = await add_source(redis, name, world, sealer)
        await fill(redis, stream, per_source)
        route = trigger(
            name, name, f"{subscriber.base}/hook", world, sealer, concurrency=concurrency
        )
        await redis.xgroup_create(route.stream, route.group, id="0")
        routes.append(route)
        streams.append(stream)
    on_masters = await placement(target, streams, per_source)
    total = per_source * len(names)

    # This process's pool grows to its size in the run before the count starts.
    await asyncio.gather(*(delivered(redis, r) for r in routes))
    clients_before = {n: await redis_clients(c) for n, c in target.nodes.items()}
    dispatchers = Dispatchers(processes, target, seal_key, logs, limit)
    try:
        await dispatchers.start()
        await asyncio.sleep(1.0)  # start-up work done before the clock starts
        disp0 = [process_cpu(pid) for pid in dispatchers.pids]
        sub0 = process_cpu(subscriber.pid)
        redis0 = {n: await redis_cpu(c) for n, c in target.nodes.items()}
        busy0, all0 = machine_cpu()
        own0 = time.process_time()
        throttled0 = limit.throttled_seconds() if limit else 0.0
        started = time.perf_counter()
        for route in routes:
            await table.put_route(redis, route)
        while True:
            done = sum(await asyncio.gather(*(delivered(redis, r) for r in routes)))
            elapsed = time.perf_counter() - started
            if done >= total or elapsed > 600:
                break
            await asyncio.sleep(0.1)
        own = time.process_time() - own0
        throttled = (limit.throttled_seconds() if limit else 0.0) - throttled0
        busy1, all1 = machine_cpu()
        redis_used = {n: await redis_cpu(c) - redis0[n] for n, c in target.nodes.items()}
        sub_used = process_cpu(subscriber.pid) - sub0
        disp_used = [
            process_cpu(pid) - before for pid, before in zip(dispatchers.pids, disp0, strict=True)
        ]
        rss = [rss_mib(pid) for pid in dispatchers.pids]
        # Pools keep their connections: what the processes hold after the run.
        clients = {n: await redis_clients(c) - clients_before[n] for n, c in target.nodes.items()}
    finally:
        dispatchers.stop()
    for route in routes:
        await table.delete_route(redis, route.namespace, route.name)
    for name, stream in zip(names, streams, strict=True):
        await table.delete_source(redis, "bench", name)
        await redis.delete(stream)
    cores = (all1 - all0) / elapsed
    return {
        "target": target.name,
        "processes": processes,
        "delivered": done,
        "seconds": elapsed,
        "rate": done / elapsed,
        "us_per_delivery": {
            "dispatchers": [c / done * 1e6 for c in disp_used],
            "redis": {n: c / done * 1e6 for n, c in redis_used.items()},
            "subscriber": sub_used / done * 1e6,
            "bench": own / done * 1e6,
        },
        "cores_used": {
            "dispatchers": [c / elapsed for c in disp_used],
            "redis": sum(redis_used.values()) / elapsed,
            "subscriber": sub_used / elapsed,
            "bench": own / elapsed,
            "machine_busy": (busy1 - busy0) / elapsed,
            "machine_cores": cores,
        },
        "streams_per_master": on_masters,
        "redis_connections_per_process": sum(clients.values()) / processes,
        "dispatcher_rss_mib": rss,
        "load_average": os.getloadavg(),
        "cpu_limit": limit.cores if limit else None,
        "throttled_seconds": throttled,
    }


async def table_cost(target: Target, routes: int, base: str, seal_key: str) -> dict[str, float]:
    """What one reload of a routing table of `routes` Triggers costs a dispatcher: every
    process reads the whole table on each change and every 10 s (TableWatcher)."""
    world, sealer = World(), Sealer(seal_key)
    sources = max(1, routes // 10)
    model = trigger("t", "s0", f"{base}/hook", world, sealer)
    async with target.client.pipeline(transaction=False) as pipe:
        for i in range(routes):
            name, source = f"t{i}", f"s{i % sources}"
            route = model.model_copy(
                update={
                    "name": name,
                    "source": source,
                    "stream": keys.stream("bench", source),
                    "group": keys.group(name),
                }
            )
            pipe.hset(keys.ROUTES, route.id, route.model_dump_json())
        await pipe.execute()
    stored = int(await target.client.memory_usage(keys.ROUTES) or 0)
    master = target.nodes[target.master_of(keys.ROUTES)]
    seconds, own, theirs = [], [], []
    for _ in range(3):
        redis0, own0, started = await redis_cpu(master), time.process_time(), time.perf_counter()
        loaded = await table.load(target.client)
        seconds.append(time.perf_counter() - started)
        own.append(time.process_time() - own0)
        theirs.append(await redis_cpu(master) - redis0)
    assert len(loaded.routes) == routes, f"loaded {len(loaded.routes)} of {routes} routes"
    await target.client.delete(keys.ROUTES)
    result = {
        "routes": routes,
        "bytes_per_route": stored / routes,
        "seconds": min(seconds),
        "process_cpu_s": min(own),
        "redis_cpu_s": min(theirs),
    }
    print(
        f"table        {target.name}: {routes} routes, {stored / routes:.0f} B each in Redis; "
        f"one reload {min(seconds):.2f} s, {min(own):.2f} s CPU in the dispatcher, "
        f"{min(theirs) * 1000:.0f} ms on the master holding {{routing}} (best of 3)",
        flush=True,
    )
    return result


async def idle_connections(
    target: Target, sources: int, base: str, seal_key: str, logs: Path, seconds: float = 10
) -> dict[str, float]:
    """One dispatcher process with `sources` idle sources (a Trigger each): the Redis
    connections it holds and its CPU, once every worker waits in the StreamWaker."""
    world, sealer = World(), Sealer(seal_key)
    redis = target.client
    names = spread_sources(target, "idle", sources)
    routes = []
    for name in names:
        await add_source(redis, name, world, sealer)
        route = trigger(name, name, f"{base}/hook", world, sealer)
        await redis.xgroup_create(route.stream, route.group, id="0", mkstream=True)
        await table.put_route(redis, route)
        routes.append(route)
    clients_before = {n: await redis_clients(c) for n, c in target.nodes.items()}
    dispatchers = Dispatchers(1, target, seal_key, logs)
    try:
        await dispatchers.start()
        await asyncio.sleep(5)  # every worker has looked once and waits
        pid = dispatchers.pids[0]
        own0, redis0, started = process_cpu(pid), await redis_cpu_all(target), time.monotonic()
        await asyncio.sleep(seconds)
        elapsed = time.monotonic() - started
        cpu_pct = (process_cpu(pid) - own0) / elapsed * 100
        redis_pct = (await redis_cpu_all(target) - redis0) / elapsed * 100
        clients = {n: await redis_clients(c) - clients_before[n] for n, c in target.nodes.items()}
    finally:
        dispatchers.stop()
    for route, name in zip(routes, names, strict=True):
        await table.delete_route(redis, route.namespace, route.name)
        await table.delete_source(redis, "bench", name)
        await redis.delete(route.stream)
    slots = len({key_slot(r.stream.encode()) for r in routes})
    print(
        f"idle         {target.name}: 1 process, {sources} idle sources ({slots} hash slots): "
        f"Redis connections {sum(clients.values())} ("
        + ", ".join(str(v) for v in clients.values())
        + f" per node); process {cpu_pct:.1f}% of a core, Redis {redis_pct:.1f}%",
        flush=True,
    )
    return {
        "sources": sources,
        "slots": slots,
        "connections": sum(clients.values()),
        "process_pct": cpu_pct,
        "redis_pct": redis_pct,
    }


async def redis_cpu_all(target: Target) -> float:
    return sum([await redis_cpu(c) for c in target.nodes.values()])


def describe(case: dict[str, Any]) -> str:
    us, cores = case["us_per_delivery"], case["cores_used"]
    dispatchers = sum(us["dispatchers"])
    redis = sum(us["redis"].values())
    ours = dispatchers + redis + us["subscriber"] + us["bench"]
    ours_cores = sum(cores["dispatchers"]) + cores["redis"] + cores["subscriber"] + cores["bench"]
    per_process = " + ".join(f"{u:.0f}" for u in us["dispatchers"])
    return (
        f"{case['target']:7} x{case['processes']}  {case['rate']:7.0f} deliveries/s "
        f"({case['delivered']} in {case['seconds']:.1f} s)  µs CPU per delivery: dispatchers "
        f"{per_process}, Redis {redis:.0f}, subscriber {us['subscriber']:.0f}, bench "
        f"{us['bench']:.0f} = {ours:.0f}; cores busy: ours {ours_cores:.2f} "
        f"(dispatchers {' + '.join(f'{c:.2f}' for c in cores['dispatchers'])}), machine "
        f"{cores['machine_busy']:.2f} of {cores['machine_cores']:.1f} (others "
        f"{max(0.0, cores['machine_busy'] - ours_cores):.2f}); Redis connections per process "
        f"{case['redis_connections_per_process']:.0f}, RSS "
        f"{'/'.join(f'{m:.0f}' for m in case['dispatcher_rss_mib'])} MiB; "
        f"load {case['load_average'][0]:.1f}"
        + (
            f"; capped at {case['cpu_limit']:g} core each, throttled "
            f"{case['throttled_seconds']:.1f} s"
            if case["cpu_limit"]
            else ""
        )
    )


async def main(options: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    subscriber = start_subscriber(options.receiver)
    targets: list[Target] = []
    seal_key = new_key()
    cases: list[dict[str, Any]] = []
    limit = CpuLimit(options.cpu_limit) if options.cpu_limit else None
    try:
        await wait_http(f"{subscriber.base}/stats", "the subscriber")
        targets.append(await single_target(work / "redis-state"))
        if options.redis_cluster:
            targets.append(await cluster_target(work / "cluster-state"))
        for round_ in range(options.rounds):
            for target in targets:
                for processes in (1, 2):
                    label = f"r{round_}{target.name[0]}{processes}"
                    case = await run_case(
                        target,
                        processes,
                        label,
                        options.events,
                        options.sources,
                        subscriber,
                        seal_key,
                        work,
                        limit,
                        options.concurrency,
                    )
                    case["round"] = round_ + 1
                    cases.append(case)
                    print(f"round {round_ + 1}  {describe(case)}", flush=True)
        summary = summarize(cases, targets) if cases else {}
        if options.idle_sources:
            summary["idle"] = [
                await idle_connections(t, options.idle_sources, subscriber.base, seal_key, work)
                for t in targets
            ]
        if options.table_routes:
            summary["table"] = [
                await table_cost(t, options.table_routes, subscriber.base, seal_key)
                for t in targets
            ]
    finally:
        for target in targets:
            await target.close()
        redis_down("redis.sh", work / "redis-state")
        if options.redis_cluster:
            redis_down("redis-cluster.sh", work / "cluster-state")
        subscriber.stop()
        if limit is not None:
            limit.close()
    return {"cases": cases, "summary": summary}


def summarize(cases: list[dict[str, Any]], targets: list[Target]) -> dict[str, Any]:
    best = {
        (t.name, n): max(
            (c for c in cases if c["target"] == t.name and c["processes"] == n),
            key=lambda c: c["rate"],
        )
        for t in targets
        for n in (1, 2)
    }
    summary: dict[str, Any] = {}
    one, two = best[("single", 1)], best[("single", 2)]
    summary["scale_out"] = two["rate"] / one["rate"]
    print(
        f"scale out    single Redis: 2 processes {two['rate']:.0f}/s vs 1 process "
        f"{one['rate']:.0f}/s (best of each): {summary['scale_out']:.2f} x (target >= 1.7)"
    )
    # The load drifts between rounds: ratios within one round (cases minutes apart at
    # most) say more than best against best.
    for t in targets:
        per_round = []
        for round_ in sorted({c["round"] for c in cases}):
            rates = {
                c["processes"]: c["rate"]
                for c in cases
                if c["round"] == round_ and c["target"] == t.name
            }
            per_round.append(rates[2] / rates[1])
        summary[f"scale_out_per_round_{t.name}"] = per_round
        print(
            f"per round    {t.name}: 2 processes / 1 process "
            + ", ".join(f"{r:.2f}" for r in per_round)
        )
    for n, case in ((1, one), (2, two)):
        us = case["us_per_delivery"]
        whole = sum(us["dispatchers"]) + sum(us["redis"].values()) + us["subscriber"]
        print(
            f"per core     {n} process(es): {sum(us['dispatchers']):.0f} µs dispatcher CPU per "
            f"delivery = {1e6 / sum(us['dispatchers']):.0f} deliveries/s per dispatcher core; "
            f"with Redis and the subscriber {whole:.0f} µs = {2e6 / whole:.0f}/s on 2 free cores"
        )
    if ("cluster", 2) in best:
        for n in (1, 2):
            c, s = best[("cluster", n)], best[("single", n)]
            summary[f"cluster_vs_single_{n}"] = c["rate"] / s["rate"]
            print(
                f"cluster      {n} process(es): 3-master cluster {c['rate']:.0f}/s vs single "
                f"Redis {s['rate']:.0f}/s: {c['rate'] / s['rate']:.2f}; streams per master "
                f"{c['streams_per_master']}; Redis µs per delivery per master "
                + ", ".join(f"{v:.0f}" for v in c["us_per_delivery"]["redis"].values())
            )
        summary["cluster_scale_out"] = best[("cluster", 2)]["rate"] / best[("cluster", 1)]["rate"]
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=40_000, help="events per case, in all")
    parser.add_argument("--sources", type=int, default=12, help="EventSources (one Trigger each)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--redis-cluster", action="store_true", help="also run on a 3-master Redis Cluster"
    )
    parser.add_argument("--receiver", choices=("go", "python"), default="go")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=100,
        help="each Trigger's delivery.concurrency: in flight over all processes (default 100)",
    )
    parser.add_argument(
        "--cpu-limit",
        type=float,
        default=0.0,
        metavar="CORES",
        help="cap each dispatcher process at this many cores, as a pod's CPU limit (0: none)",
    )
    parser.add_argument(
        "--idle-sources",
        type=int,
        default=300,
        help="then count one process's Redis connections with this many idle sources (0: skip)",
    )
    parser.add_argument(
        "--table-routes",
        type=int,
        default=10_000,
        help="then time one routing table reload of this many Triggers (0: skip)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    options = parser.parse_args()
    print(f"machine      {machine()}, load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"scheduling   autogroup {autogroup()}; {SESSIONS}")
    outcome = asyncio.run(main(options))
    if options.json:
        print(json.dumps(outcome, indent=2))
