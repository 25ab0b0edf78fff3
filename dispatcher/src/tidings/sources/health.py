"""The HTTP endpoint of `tidings source --listen HOST:PORT`, in the adapter's own loop.

GET /healthz   200 whenever the event loop answers: a wedged process (a
               blocked loop, a stopped process) fails the liveness probe
GET /readyz    200 while this replica's adapter reports Running; 503 with
               the state and reason otherwise (a standby waiting for the
               Lease is alive but not ready)
GET /metrics   Prometheus text (tidings.sources.metrics)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

# aiohttp and Prometheus come with the server (`tidings source --help` reads LISTEN_ENV).
if TYPE_CHECKING:
    from aiohttp import web
    from prometheus_client import CollectorRegistry

    from tidings.sources.metrics import SourceSeries

LISTEN_ENV = "TIDINGS_SOURCE_LISTEN"


def readiness(series: SourceSeries) -> tuple[int, dict[str, object]]:
    """The /readyz status code and body."""
    if series.ready:
        return 200, {"ready": True, "eventsource": series.eventsource, "state": series.state}
    if series.state == "Standby":
        why = "a standby: another replica holds the Lease; this one takes over if it stops"
    elif not series.state:
        why = "the adapter has not started yet"
    else:
        why = f"the adapter is {series.state} ({series.reason}): {series.message}"
    return 503, {
        "ready": False,
        "eventsource": series.eventsource,
        "state": series.state or "Starting",
        "reason": why,
    }


def build_app(registry: CollectorRegistry, series: SourceSeries) -> web.Application:
    from aiohttp import web
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def readyz(request: web.Request) -> web.Response:
        status, body = readiness(series)
        return web.json_response(body, status=status)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


async def serve(
    registry: CollectorRegistry, series: SourceSeries, host: str, port: int
) -> web.AppRunner:
    """Start serving; the caller calls `cleanup()` on the runner returned."""
    from aiohttp import web

    runner = web.AppRunner(build_app(registry, series), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
