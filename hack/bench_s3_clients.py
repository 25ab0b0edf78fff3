"""Which S3 client should the objectStore poll adapter list buckets with?
Lists one bucket of N objects (paged ListObjectsV2, 1,000 keys a page) with
the MinIO Python SDK (what the adapter uses) and, when they are importable,
obstore and botocore, against a real Versity Gateway.

    .venv/bin/python hack/bench_s3_clients.py [--objects 10000] [--rounds 5]

obstore and botocore are not dependencies of Tidings (botocore pins
python-dateutil<3, which kubernetes >= 37 refuses). To compare them, install
them into a scratch venv outside the repo and run the script with it; it needs
nothing from Tidings, only `minio` and the standard library:

    python3 -m venv /tmp/obvenv && /tmp/obvenv/bin/pip install minio obstore botocore
    /tmp/obvenv/bin/python hack/bench_s3_clients.py

The store: by default its own Versity Gateway (`hack/s3.sh up` with a private
state directory, stopped afterwards; `--state DIR` keeps it, and the filled
bucket, for the next run). With `--env` the one described by S3_ENDPOINT,
AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (`eval "$(hack/s3.sh env)"`).

Each listing reads what the adapter needs of every object (key, ETag, size,
last modified). After one warm-up listing per client, `--rounds` rounds list
with each client in turn (the order rotates, so a busy moment of a shared
machine does not fall on one client), and the medians are printed: wall time,
this process's CPU time (all threads: obstore lists on its own Rust threads),
CPU seconds per 10,000 objects, the ratios against the MinIO SDK of the same
run, and the gateway's CPU time when its pid is known. Not a pass/fail test:
paste the output into docs/benchmarks.md ("objectStore: which S3 client").
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.metadata
import io
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from minio import Minio

REPO = Path(__file__).resolve().parents[1]
PREFIX = "data/"

HOW_TO_ADD = (
    "python3 -m venv /tmp/obvenv && /tmp/obvenv/bin/pip install minio obstore botocore\n"
    "  /tmp/obvenv/bin/python hack/bench_s3_clients.py"
)


@dataclass(frozen=True)
class Store:
    endpoint: str
    access_key_id: str
    secret_access_key: str
    gateway_pid: int | None  # to read its CPU time; None for a store we did not start


# A lister reads every object under PREFIX and returns how many it saw.
Lister = Callable[[], int]


def minio_client(store: Store) -> Minio:
    return Minio(
        urlsplit(store.endpoint).netloc,
        access_key=store.access_key_id,
        secret_key=store.secret_access_key,
        secure=store.endpoint.startswith("https://"),
        region="us-east-1",
    )


def minio_lister(store: Store, bucket: str) -> Lister:
    client = minio_client(store)

    def run() -> int:
        seen = 0
        for obj in client.list_objects(bucket, prefix=PREFIX, recursive=True):
            _ = (obj.object_name, obj.etag, obj.size, obj.last_modified)
            seen += 1
        return seen

    return run


def obstore_lister(store: Store, bucket: str) -> Lister | None:
    try:
        obstore: Any = importlib.import_module("obstore")
        stores: Any = importlib.import_module("obstore.store")
    except ImportError:
        return None
    s3 = stores.S3Store(
        bucket,
        endpoint=store.endpoint,
        access_key_id=store.access_key_id,
        secret_access_key=store.secret_access_key,
        region="us-east-1",
        client_options={"allow_http": True},
    )

    def run() -> int:
        seen = 0
        # obstore's prefixes are whole path segments: "data/" lists data/…
        for chunk in obstore.list(s3, prefix=PREFIX, chunk_size=1000):
            for meta in chunk:
                _ = (meta["path"], meta["e_tag"], meta["size"], meta["last_modified"])
                seen += 1
        return seen

    return run


def botocore_lister(store: Store, bucket: str) -> Lister | None:
    try:
        session: Any = importlib.import_module("botocore.session")
    except ImportError:
        return None
    client = session.get_session().create_client(
        "s3",
        endpoint_url=store.endpoint,
        aws_access_key_id=store.access_key_id,
        aws_secret_access_key=store.secret_access_key,
        region_name="us-east-1",
    )

    def run() -> int:
        seen = 0
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=PREFIX)
        for page in pages:
            for obj in page.get("Contents", []):
                _ = (obj["Key"], obj["ETag"], obj["Size"], obj["LastModified"])
                seen += 1
        return seen

    return run


def version_of(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def cpu_of(pid: int | None) -> float | None:
    """A process's user+system CPU seconds (Linux /proc), or None."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Sample:
    wall: float
    cpu: float
    gateway_cpu: float | None


def measure(lister: Lister, objects: int, gateway_pid: int | None) -> Sample:
    gateway_before = cpu_of(gateway_pid)
    cpu_before, wall_before = time.process_time(), time.perf_counter()
    seen = lister()
    wall, cpu = time.perf_counter() - wall_before, time.process_time() - cpu_before
    gateway_after = cpu_of(gateway_pid)
    if seen != objects:
        raise SystemExit(f"a listing saw {seen} objects, not {objects}")
    gateway = None
    if gateway_before is not None and gateway_after is not None:
        gateway = gateway_after - gateway_before
    return Sample(wall, cpu, gateway)


def start_gateway(state: Path) -> tuple[Store, dict[str, str]]:
    """hack/s3.sh up with a private state directory: a gateway of our own."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(Path.home()),
        "TIDINGS_STATE_DIR": str(state),
    }
    if os.environ.get("VERSITYGW"):
        env["VERSITYGW"] = os.environ["VERSITYGW"]
    done = subprocess.run(
        ["bash", str(REPO / "hack" / "s3.sh"), "up"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"hack/s3.sh up failed:\n{done.stderr}")
    line = done.stdout.split("export ", 1)[1]
    exported = dict(part.split("=", 1) for part in line.split() if "=" in part)
    pid = int((state / "s3" / "versitygw.pid").read_text())
    store = Store(
        exported["S3_ENDPOINT"],
        exported["AWS_ACCESS_KEY_ID"],
        exported["AWS_SECRET_ACCESS_KEY"],
        pid,
    )
    return store, env


def stop_gateway(env: dict[str, str]) -> None:
    subprocess.run(
        ["bash", str(REPO / "hack" / "s3.sh"), "down"],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )


def fill(store: Store, bucket: str, objects: int) -> None:
    """The bucket with `objects` small objects under PREFIX (kept if already there)."""
    client = minio_client(store)
    if client.bucket_exists(bucket):
        present = sum(1 for _ in client.list_objects(bucket, prefix=PREFIX, recursive=True))
        if present == objects:
            print(f"# reusing {bucket}: {objects} objects", flush=True)
            return
        raise SystemExit(f"bucket {bucket} holds {present} objects, not {objects}")
    client.make_bucket(bucket)
    began = time.perf_counter()

    def put(i: int) -> None:
        body = f"{i},a,b,c\n".encode()
        client.put_object(bucket, f"{PREFIX}{i:07d}.csv", io.BytesIO(body), len(body))

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(objects)))
    print(f"# filled {bucket}: {objects} objects in {time.perf_counter() - began:.0f} s")


def machine() -> str:
    model = "?"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"{platform.machine()}, {os.cpu_count()} cores ({model}), {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}"
    )


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--env", action="store_true", help="use the store in S3_ENDPOINT etc.")
    parser.add_argument("--state", type=Path, help="keep the gateway's state here")
    args = parser.parse_args()

    gateway_env: dict[str, str] | None = None
    scratch: Path | None = None
    if args.env:
        store = Store(
            os.environ["S3_ENDPOINT"],
            os.environ["AWS_ACCESS_KEY_ID"],
            os.environ["AWS_SECRET_ACCESS_KEY"],
            None,
        )
    else:
        state = args.state or Path(tempfile.mkdtemp(prefix="tidings-bench-s3-"))
        scratch = None if args.state else state
        store, gateway_env = start_gateway(state)
    try:
        bucket = f"bench-clients-{args.objects}"
        fill(store, bucket, args.objects)
        listers: dict[str, Lister] = {"minio": minio_lister(store, bucket)}
        for name, make in (("obstore", obstore_lister), ("botocore", botocore_lister)):
            lister = make(store, bucket)
            if lister is not None:
                listers[name] = lister
        run(listers, args.objects, args.rounds, store)
    finally:
        if gateway_env is not None:
            stop_gateway(gateway_env)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def run(listers: dict[str, Lister], objects: int, rounds: int, store: Store) -> None:
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"# {started}; {machine()}")
    print(f"# store: Versity Gateway at {store.endpoint}; load average before: {load()}")
    samples: dict[str, list[Sample]] = {name: [] for name in listers}
    for lister in listers.values():
        measure(lister, objects, store.gateway_pid)  # warm-up: connections, the store's caches
    names = list(listers)
    for index in range(rounds):
        for name in names[index % len(names) :] + names[: index % len(names)]:
            samples[name].append(measure(listers[name], objects, store.gateway_pid))
    print(f"# load average after: {load()}; medians of {rounds} rounds, {objects} objects")

    def median(name: str, pick: Callable[[Sample], float | None]) -> float | None:
        values = [v for v in map(pick, samples[name]) if v is not None]
        return statistics.median(values) if values else None

    base_wall = median("minio", lambda s: s.wall) or 1.0
    base_cpu = median("minio", lambda s: s.cpu) or 1.0
    print(
        "| client | version | wall | CPU (this process) | CPU per 10k objects "
        "| wall / MinIO | CPU / MinIO | gateway CPU |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in listers:
        wall = median(name, lambda s: s.wall) or 0.0
        cpu = median(name, lambda s: s.cpu) or 0.0
        gateway = median(name, lambda s: s.gateway_cpu)
        print(
            f"| {name} | {version_of(name)} | {wall:.2f} s | {cpu:.2f} s "
            f"| {cpu * 10_000 / objects:.2f} s | {wall / base_wall:.2f} | {cpu / base_cpu:.2f} "
            f"| {'' if gateway is None else f'{gateway:.2f} s'} |"
        )
    missing = [name for name in ("obstore", "botocore") if name not in listers]
    if missing:
        print(f"\n{', '.join(missing)} not importable here; to compare, run in a scratch venv:")
        print(f"  {HOW_TO_ADD}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
