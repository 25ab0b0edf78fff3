"""The in-cluster side of the e2e tests, run in pods from the Tidings image
(its Python has aiohttp); the tests mount this file from a ConfigMap.

    python e2e_app.py sink [--port 9000]
        A subscriber that answers 200 and counts every delivery by CloudEvent id.
        GET /stats?prefix=P&expect=N -> {"received", "unique", "duplicates", "missing", ...}
        GET /received?source=S -> [[type, subject, id], ...] of every delivery from source S
    python e2e_app.py produce --url URL --token T --prefix P --count N --rate R
        Sends N events (ids P0 … P(N-1)) at R per second to ingest. An attempt that
        is not answered 202 (a connection cut by a dying pod, a 503) is retried until
        it is, so every id ends up stored; every answer is counted. Prints one line
        `RESULT {json}` at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import time

from aiohttp import ClientError, ClientSession, ClientTimeout, web


def sink(port: int) -> None:
    counts: collections.Counter[str] = collections.Counter()
    by_source: collections.defaultdict[str, list[list[str]]] = collections.defaultdict(list)

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        attributes = {
            k[3:].lower(): v for k, v in request.headers.items() if k.lower().startswith("ce-")
        }
        if "id" not in attributes and body:  # structured mode
            attributes = {k: str(v) for k, v in json.loads(body).items() if k != "data"}
        event_id = attributes.get("id", "?")
        counts[event_id] += 1
        by_source[attributes.get("source", "")].append(
            [attributes.get("type", ""), attributes.get("subject", ""), event_id]
        )
        return web.Response(status=200)

    async def received(request: web.Request) -> web.Response:
        return web.json_response(by_source.get(request.query.get("source", ""), []))

    async def stats(request: web.Request) -> web.Response:
        prefix = request.query.get("prefix", "")
        expect = int(request.query.get("expect", "0"))
        mine = {k: v for k, v in counts.items() if k.startswith(prefix)}
        missing = [f"{prefix}{i}" for i in range(expect) if f"{prefix}{i}" not in mine]
        return web.json_response(
            {
                "received": sum(mine.values()),
                "unique": len(mine),
                "duplicates": sum(v - 1 for v in mine.values()),
                "missing": len(missing),
                "first_missing": missing[:10],
            }
        )

    app = web.Application()
    app.router.add_get("/stats", stats)
    app.router.add_get("/received", received)
    app.router.add_post("/{tail:.*}", receive)
    web.run_app(app, host="0.0.0.0", port=port, access_log=None, print=None)


async def produce(args: argparse.Namespace) -> None:
    answers: collections.Counter[str] = collections.Counter()
    accepted = 0
    failed: list[str] = []
    limit = asyncio.Semaphore(args.concurrency)
    start = time.monotonic()
    headers = {
        "Authorization": f"Bearer {args.token}",
        "Content-Type": "application/json",
        "ce-specversion": "1.0",
        "ce-source": "/e2e",
        "ce-type": args.type,
    }

    async def send(session: ClientSession, i: int) -> None:
        nonlocal accepted
        await asyncio.sleep(max(0.0, start + i / args.rate - time.monotonic()))
        event_id = f"{args.prefix}{i}"
        deadline = time.monotonic() + args.give_up
        async with limit:
            while True:
                try:
                    async with session.post(
                        args.url, data=json.dumps({"i": i}), headers={**headers, "ce-id": event_id}
                    ) as reply:
                        await reply.read()
                        answers[str(reply.status)] += 1
                        if reply.status == 202:
                            accepted += 1
                            return
                except (TimeoutError, OSError, ClientError) as error:
                    answers[type(error).__name__] += 1
                if time.monotonic() > deadline:
                    failed.append(event_id)
                    return
                await asyncio.sleep(0.2)

    async with ClientSession(timeout=ClientTimeout(total=10)) as session:
        await asyncio.gather(*(send(session, i) for i in range(args.count)))
    result = {
        "sent": args.count,
        "accepted": accepted,
        "failed": len(failed),
        "first_failed": failed[:10],
        "answers": dict(answers),
        "seconds": round(time.monotonic() - start, 1),
    }
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    sink_args = commands.add_parser("sink")
    sink_args.add_argument("--port", type=int, default=9000)
    produce_args = commands.add_parser("produce")
    produce_args.add_argument("--url", required=True)
    produce_args.add_argument("--token", required=True)
    produce_args.add_argument("--prefix", required=True)
    produce_args.add_argument("--count", type=int, required=True)
    produce_args.add_argument("--rate", type=float, default=500)
    produce_args.add_argument("--concurrency", type=int, default=32)
    produce_args.add_argument("--type", default="dev.tidings.e2e")
    produce_args.add_argument("--give-up", type=float, default=120, help="seconds per event")
    args = parser.parse_args()
    if args.command == "sink":
        sink(args.port)
    else:
        asyncio.run(produce(args))


if __name__ == "__main__":
    main()
