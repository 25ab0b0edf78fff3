#!/usr/bin/env python3
"""CPU per delivery POST: aiohttp's ClientSession against tidings.dispatcher.http_post.

    .venv/bin/python hack/bench_http_client.py [--requests 5000] [--rounds 5]
        [--concurrency 100] [--loop asyncio|uvloop|both]

Both clients post the same request over loopback keep-alive connections to
the fast Go receiver (hack/build-receiver.sh; it answers 200 to any POST):
a binary-mode CloudEvent as the dispatcher builds it (build_request with a
signing secret, a custom header and trace context), `--concurrency` requests
in flight at a time, the answer read as delivery reads it. aiohttp is driven
as the dispatcher drove it before http_post (delivery.send as it was, the
guard's resolver and socket factory, one ClientTimeout per Trigger, no
redirects, no decompression); the lean client through today's delivery.send
and the same guard (policy LOCAL).

Rounds alternate between the two clients (the machine is shared: compare
within one run). Per round: this process's CPU time / requests (the receiver
runs apart and is not counted) and requests/s; then the median per client
and the ratio lean / aiohttp. Not a pass/fail test.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from tidings.api.attempts import BODY_LIMIT
from tidings.api.destinations import LOCAL
from tidings.api.events import CloudEvent, encode
from tidings.dispatcher import delivery
from tidings.dispatcher.guard import Guard
from tidings.dispatcher.http_post import Client
from tidings.dispatcher.retry import Failure, parse_retry_after

HERE = Path(__file__).resolve().parent
SECRET = "whsec_" + base64.b64encode(b"b" * 32).decode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def sample_request() -> delivery.Request:
    event = CloudEvent(
        id="bench-000001",
        source="/bench",
        type="com.example.order.created",
        subject="orders/1",
        data={"n": 1, "plan": "pro", "items": [{"sku": "A-1", "qty": 2}]},
    )
    fields = encode(event)
    raw = fields["e"] if isinstance(fields["e"], bytes) else str(fields["e"]).encode()
    stored = __import__("json").loads(raw)
    stored["traceparent"] = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    return delivery.build_request(
        stored,
        raw,
        format="binary",
        headers={"X-Tenant": "acme"},
        signing_keys=[delivery.signing_key(SECRET)],
    )


async def rounds(url: str, requests: int, rounds: int, concurrency: int) -> dict[str, list[float]]:
    request = sample_request()
    guard = Guard(LOCAL)
    # The dispatcher's client before http_post: the guard's resolver and sockets.
    connector = aiohttp.TCPConnector(
        resolver=guard.guarded_resolver(),
        socket_factory=guard.socket_factory,
        limit=0,
        ttl_dns_cache=60,
    )
    session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
    timeout = aiohttp.ClientTimeout(total=10)
    lean = Client(Guard(LOCAL))

    async def via_aiohttp() -> None:
        result = await aiohttp_send(session, url, request, 10, timeout)
        assert result.ok, result.failure

    async def via_lean() -> None:
        result = await delivery.send(lean, url, request, 10)
        assert result.ok, result.failure

    clients: dict[str, Callable[[], Awaitable[None]]] = {"aiohttp": via_aiohttp, "lean": via_lean}
    cpu: dict[str, list[float]] = {name: [] for name in clients}
    rate: dict[str, list[float]] = {name: [] for name in clients}
    for post in clients.values():  # warm up: connections open, caches filled
        await asyncio.gather(*(post() for _ in range(concurrency)))
    for number in range(rounds):
        order = list(clients.items()) if number % 2 == 0 else list(clients.items())[::-1]
        for name, post in order:
            cpu_start, wall_start = time.process_time(), time.perf_counter()
            done = 0
            while done < requests:
                batch = min(concurrency, requests - done)
                await asyncio.gather(*(post() for _ in range(batch)))
                done += batch
            cpu_used, wall = time.process_time() - cpu_start, time.perf_counter() - wall_start
            cpu[name].append(cpu_used / requests * 1e6)
            rate[name].append(requests / wall)
            print(
                f"  round {number + 1} {name:8} {cpu[name][-1]:7.1f} µs CPU/request "
                f"{rate[name][-1]:8,.0f} req/s",
                flush=True,
            )
    await session.close()
    await lean.close()
    return {f"{name} cpu": values for name, values in cpu.items()} | {
        f"{name} rate": values for name, values in rate.items()
    }


async def aiohttp_send(
    session: aiohttp.ClientSession,
    url: str,
    request: delivery.Request,
    seconds: float,
    client_timeout: aiohttp.ClientTimeout,
) -> delivery.Result:
    """delivery.send as it was over aiohttp (the baseline; errors not classified)."""
    started = time.perf_counter()
    async with session.post(
        url,
        data=request.body,
        headers=request.headers,
        timeout=client_timeout,
        allow_redirects=False,
        ssl=True,
    ) as response:
        body = await response.read()
        status = response.status
        kept = body[:BODY_LIMIT]
        if 200 <= status < 300:
            return delivery.Result(status, time.perf_counter() - started, None, kept)
        message = body[:200].decode(errors="replace") or (response.reason or "")
        retry_after = parse_retry_after(response.headers.get("Retry-After"), time.time())
        failure = Failure("status", status, f"HTTP {status}: {message}".strip(), retry_after)
        return delivery.Result(status, time.perf_counter() - started, failure, kept)


def run_with(loop: str, coroutine: Any) -> Any:
    if loop == "uvloop":
        import uvloop

        return uvloop.run(coroutine)
    return asyncio.run(coroutine)


def machine() -> str:
    cpu = platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return f"{os.cpu_count()} cores ({cpu}), Python {sys.version.split()[0]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000, help="per client per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--loop", choices=("asyncio", "uvloop", "both"), default="uvloop")
    options = parser.parse_args()
    binary = subprocess.run(
        ["bash", str(HERE / "build-receiver.sh")], check=True, capture_output=True, text=True
    ).stdout.strip()
    port = free_port()
    receiver = subprocess.Popen([binary, "-listen", f"127.0.0.1:{port}"])
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/hook"
        print(f"{machine()}, aiohttp {aiohttp.__version__}, load average {os.getloadavg()}")
        loops = ("asyncio", "uvloop") if options.loop == "both" else (options.loop,)
        for loop in loops:
            print(
                f"{loop}: {options.rounds} rounds x {options.requests} requests per client, "
                f"{options.concurrency} in flight",
                flush=True,
            )
            results = run_with(
                loop, rounds(url, options.requests, options.rounds, options.concurrency)
            )
            old, new = results["aiohttp cpu"], results["lean cpu"]
            print(
                f"{loop}: CPU per request, median (min-max): aiohttp {statistics.median(old):.1f} "
                f"({min(old):.1f}-{max(old):.1f}) µs, lean {statistics.median(new):.1f} "
                f"({min(new):.1f}-{max(new):.1f}) µs; ratio lean/aiohttp "
                f"{statistics.median(new) / statistics.median(old):.2f} (per round: "
                + ", ".join(f"{n / o:.2f}" for o, n in zip(old, new, strict=True))
                + f"); req/s median aiohttp {statistics.median(results['aiohttp rate']):,.0f}, "
                f"lean {statistics.median(results['lean rate']):,.0f}"
            )
        print(f"load average after: {os.getloadavg()}")
    finally:
        receiver.terminate()
        receiver.wait()


if __name__ == "__main__":
    main()
