"""The console's aiohttp application: routes, security headers, the pages.

Pages are rendered on the server (Jinja2, autoescaping on: a payload is text,
never markup) and work without JavaScript; `static/console.js` (hand-written,
no build step) only refreshes the live parts of a page every few seconds and
copies the curl example. Every action is an HTML form POST carrying a CSRF
token; the replay asks for confirmation on a page of its own that shows the
count.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError

from tidings.api import keys, table
from tidings.api.attempts import Attempt
from tidings.api.routes import CompiledSource, Route
from tidings.cli import trace as tracing
from tidings.console import data
from tidings.console.auth import (
    COOKIE,
    Gate,
    Identity,
    Question,
    Unauthenticated,
    WrongHost,
    can_get_source,
    can_get_trigger,
    can_list_replays,
    can_pause,
    can_replay,
)
from tidings.console.objects import (
    ClusterObjects,
    NotSupported,
    Objects,
    SourceView,
    TriggerView,
    api_error_text,
)
from tidings.sources import status as adapter_status
from tidings.sources.kubeapi import ApiError

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
# Same-origin everything; no inline script or style (the charts are SVG with
# presentation attributes, which CSP does not count as inline style).
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # same-origin, not no-referrer: with no-referrer browsers send `Origin: null`
    # on the console's own form posts, which then look like cross-site ones.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_STREAM_ID = re.compile(r"^\d+-\d+$")
DEAD_LETTERS_PER_PAGE = 20

IngestUrl = Callable[[SourceView], str]

CONFIG: web.AppKey[Console] = web.AppKey("console")


@dataclass
class Console:
    redis: Redis
    objects: Objects
    gate: Gate
    prefix: str  # where the console is mounted, ending in "/"
    ingest_url: IngestUrl  # the URL producers POST to, for a source page
    poll_seconds: float = 2.0
    secure_cookie: bool = False
    # "object": replay by creating a Replay (the operator runs it); "direct": hand
    # the dead letters back in Redis, as `tidings replay --redis-url` does.
    replay_mode: str = "direct"

    @property
    def replay_objects(self) -> ClusterObjects | None:
        if self.replay_mode == "object" and isinstance(self.objects, ClusterObjects):
            return self.objects
        return None

    def __post_init__(self) -> None:
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("tidings.console", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.filters["when"] = _when
        self.templates.filters["ago"] = _ago
        self.templates.filters["duration"] = _duration
        self.templates.globals["quote"] = quote


def _when(ms: int | float) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _ago(ms: int | float) -> str:
    if not ms:
        return "-"
    return _duration(max(0.0, time.time() - ms / 1000)) + " ago"


def _duration(seconds: float | None) -> str:
    """Two units at most, as kubectl shows ages: 90 s is "1m 30s"."""
    if seconds is None:
        return "-"
    if 0 < seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    left = int(seconds)
    units = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
    for index, (unit, size) in enumerate(units):
        if left >= size or unit == "s":
            shown = f"{left // size}{unit}"
            if unit != "s":
                small, small_size = units[index + 1]
                rest = left % size // small_size
                if rest:
                    shown += f" {rest}{small}"
            return shown
    return "0s"


# --- plumbing ------------------------------------------------------------------------


class Refused(Exception):
    """403: the viewer may not; the message names what they lack."""


def _console(request: web.Request) -> Console:
    return request.app[CONFIG]


def _identity(request: web.Request) -> Identity:
    identity: Identity = request["identity"]
    return identity


def render(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    console = _console(request)
    identity: Identity | None = request.get("identity")
    context.setdefault("page", "")
    body = console.templates.get_template(template).render(
        prefix=console.prefix,
        identity=identity,
        csrf=console.gate.csrf_token(identity) if identity else "",
        poll_ms=int(console.poll_seconds * 1000),
        auth_mode=console.gate.mode,
        **context,
    )
    return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")


def wants_json(request: web.Request) -> bool:
    return "application/json" in request.headers.get("Accept", "")


def problem(request: web.Request, status: int, title: str, message: str) -> web.Response:
    if wants_json(request):
        return web.json_response({"status": status, "error": message}, status=status)
    return render(request, "error.html", status=status, title=title, message=message)


@web.middleware
async def security(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Headers on every answer; who the viewer is; CSRF on every POST."""
    console = _console(request)
    try:
        response = await _guarded(request, handler, console)
    except web.HTTPException as http:
        response = http
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


async def _guarded(
    request: web.Request,
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    console: Console,
) -> web.StreamResponse:
    route_name = request.match_info.route.name
    if route_name == "login-post":  # no session yet: login_guard checks the origin
        return await handler(request)
    if route_name == "healthz":
        return await handler(request)
    public = route_name in ("static", "login")
    try:
        request["identity"] = await console.gate.identify(
            peer=request.remote, headers=request.headers, cookie=request.cookies.get(COOKIE)
        )
    except Unauthenticated as error:
        if public:
            return await handler(request)
        if console.gate.mode == "token" and not wants_json(request) and request.method == "GET":
            raise web.HTTPSeeOther(
                f"{console.prefix}login?" + urlencode({"next": request.path_qs})
            ) from None
        return problem(request, 401, "Not signed in", str(error))
    except WrongHost as error:
        return problem(request, 403, "Refused", str(error))
    except ApiError as error:
        return problem(request, 503, "Kubernetes API unavailable", api_error_text(error))
    if request.method == "POST":
        form = await request.post()
        token = str(form.get("csrf", "")) or request.headers.get("X-CSRF-Token", "")
        if not same_origin(request):
            return problem(
                request, 403, "Refused", "cross-site request: use the console's own pages"
            )
        if not console.gate.csrf_ok(request["identity"], token):
            return problem(
                request,
                403,
                "Refused",
                "missing or wrong CSRF token: submit the form from the console's own page",
            )
    try:
        return await handler(request)
    except Refused as error:
        return problem(request, 403, "Not allowed", str(error))
    except ApiError as error:
        if error.status == 403:
            return problem(request, 403, "Not allowed", api_error_text(error))
        return problem(request, 503, "Kubernetes API unavailable", api_error_text(error))
    except (RedisError, OSError) as error:
        return problem(request, 503, "Redis unavailable", f"{type(error).__name__}: {error}")


def same_origin(request: web.Request) -> bool:
    """What the browser says about where a POST comes from (Sec-Fetch-Site, else
    Origin); clients that send neither (curl, scripts) are judged by the CSRF token."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("Origin")
    return origin is None or origin == f"{request.scheme}://{request.host}"


async def require(request: web.Request, question: Question) -> None:
    if not await _console(request).gate.allowed(_identity(request), question):
        who = _identity(request).label
        raise Refused(f"{who} may not {question.describe()}")


async def visible(
    request: web.Request,
) -> tuple[list[SourceView], list[TriggerView]]:
    """The EventSources and Triggers this viewer may get, each checked."""
    console = _console(request)
    identity = _identity(request)
    sources, triggers = await asyncio.gather(console.objects.sources(), console.objects.triggers())
    gate = console.gate
    source_ok = await asyncio.gather(
        *(gate.allowed(identity, can_get_source(s.namespace, s.name)) for s in sources)
    )
    trigger_ok = await asyncio.gather(
        *(gate.allowed(identity, can_get_trigger(t.namespace, t.name)) for t in triggers)
    )
    return (
        [s for s, ok in zip(sources, source_ok, strict=True) if ok],
        [t for t, ok in zip(triggers, trigger_ok, strict=True) if ok],
    )


def _name(request: web.Request, part: str) -> str:
    value = request.match_info[part]
    if not _NAME.fullmatch(value):
        raise web.HTTPNotFound(text=f"{part} {value!r} is not a Kubernetes name")
    return value


async def _trigger(request: web.Request) -> tuple[TriggerView, Route | None]:
    namespace, name = _name(request, "namespace"), _name(request, "name")
    await require(request, can_get_trigger(namespace, name))
    console = _console(request)
    found = next(
        (
            t
            for t in await console.objects.triggers()
            if t.namespace == namespace and t.name == name
        ),
        None,
    )
    if found is None:
        raise web.HTTPNotFound(text=f"no Trigger {namespace}/{name}")
    routes = (await table.load(console.redis)).routes
    return found, routes.get(found.id)


# --- pages ---------------------------------------------------------------------------


@dataclass
class TriggerRow:
    trigger: TriggerView
    route: Route | None
    state: data.DeliveryState | None
    rates: data.Rates | None
    expiry: float | None


async def _row(redis: Redis, trigger: TriggerView, route: Route | None) -> TriggerRow:
    if route is None:
        return TriggerRow(trigger, None, None, None, None)
    state, rates = await asyncio.gather(data.delivery_state(redis, route), data.rates(redis, route))
    return TriggerRow(trigger, route, state, rates, data.dead_letter_expiry_seconds(state, route))


async def overview(request: web.Request) -> web.StreamResponse:
    console = _console(request)
    sources, triggers = await visible(request)
    routes = (await table.load(console.redis)).routes
    rows = await asyncio.gather(*(_row(console.redis, t, routes.get(t.id)) for t in triggers))
    return render(request, "overview.html", sources=sources, rows=rows, page="overview")


async def trigger_page(request: web.Request) -> web.StreamResponse:
    console = _console(request)
    trigger, route = await _trigger(request)
    failed_only = request.query.get("failed") == "1"
    before = request.query.get("before") or None
    if before is not None and not _STREAM_ID.fullmatch(before):
        before = None
    row = await _row(console.redis, trigger, route)
    attempts: list[Attempt] = []
    dead = data.DeadLetterPage([], 0, None)
    if route is not None:
        attempts, dead = await asyncio.gather(
            data.recent_attempts(console.redis, route, failed_only=failed_only),
            data.dead_letter_page(console.redis, route, before=before, count=DEAD_LETTERS_PER_PAGE),
        )
    identity = _identity(request)
    may_pause, may_replay, may_list_replays = await asyncio.gather(
        console.gate.allowed(identity, can_pause(trigger.namespace, trigger.name)),
        console.gate.allowed(identity, can_replay(trigger.namespace)),
        console.gate.allowed(identity, can_list_replays(trigger.namespace)),
    )
    replays = []
    cluster = console.replay_objects
    if cluster is not None and may_list_replays:
        replays = (await cluster.replays(trigger.namespace, trigger.name))[:5]
    return render(
        request,
        "trigger.html",
        page="trigger",
        t=trigger,
        row=row,
        attempts=attempts,
        failed_only=failed_only,
        dead=dead,
        before=before,
        may_pause=may_pause and console.objects.can_pause,
        may_replay=may_replay,
        pause_note=console.objects.pause_note,
        replays=replays,
        replay_created=request.query.get("replay", ""),
        replayed=request.query.get("replayed", ""),
        kept=request.query.get("kept", ""),
        paused_now=request.query.get("paused", ""),
    )


async def pause(request: web.Request) -> web.StreamResponse:
    console = _console(request)
    namespace, name = _name(request, "namespace"), _name(request, "name")
    await require(request, can_pause(namespace, name))
    form = await request.post()
    paused = form.get("paused") == "true"
    try:
        await console.objects.set_paused(namespace, name, paused, _identity(request).label)
    except NotSupported as error:
        return problem(request, 409, "Not here", str(error))
    target = f"{console.prefix}t/{namespace}/{name}?paused={'true' if paused else 'false'}"
    if wants_json(request):
        return web.json_response({"paused": paused})
    raise web.HTTPSeeOther(target)


async def replay(request: web.Request) -> web.StreamResponse:
    console = _console(request)
    namespace, name = _name(request, "namespace"), _name(request, "name")
    await require(request, can_get_trigger(namespace, name))
    await require(request, can_replay(namespace))
    form = await request.post()
    replay_all = form.get("all") == "1"
    ids = [str(i) for i in form.getall("id", []) if _STREAM_ID.fullmatch(str(i))]
    route = (await table.load(console.redis)).routes.get(f"{namespace}/{name}")
    if route is None:
        return problem(
            request, 409, "Not compiled", f"Trigger {namespace}/{name} is not in the routing table"
        )
    if not replay_all and not ids:
        return problem(
            request, 400, "Nothing chosen", "choose dead letters to replay (id), or all=1"
        )
    count = len(ids)
    if replay_all:
        count = int(await console.redis.xlen(keys.dead_letters(namespace, route.source, name)))
    if form.get("confirm") != "yes":
        return render(
            request,
            "confirm.html",
            page="trigger",
            namespace=namespace,
            name=name,
            ids=ids,
            replay_all=replay_all,
            count=count,
            paused=route.paused,
        )
    who = _identity(request).label
    cluster = console.replay_objects
    if cluster is not None:
        name_of = await cluster.create_replay(namespace, name, None if replay_all else ids, who)
        log.info("console: %s created Replay %s/%s of %s", who, namespace, name_of, route.id)
        if wants_json(request):
            return web.json_response({"replay": name_of}, status=201)
        raise web.HTTPSeeOther(
            f"{console.prefix}t/{namespace}/{name}?" + urlencode({"replay": name_of})
        )
    moved, kept = await data.replay_dead_letters(console.redis, route, None if replay_all else ids)
    log.info("console: %s replayed %d dead letter(s) of %s", who, moved, route.id)
    if wants_json(request):
        return web.json_response({"replayed": moved, "kept": kept})
    raise web.HTTPSeeOther(
        f"{console.prefix}t/{namespace}/{name}?" + urlencode({"replayed": moved, "kept": kept})
    )


async def source_page(request: web.Request) -> web.StreamResponse:
    console = _console(request)
    namespace, name = _name(request, "namespace"), _name(request, "name")
    await require(request, can_get_source(namespace, name))
    source = next(
        (s for s in await console.objects.sources() if s.namespace == namespace and s.name == name),
        None,
    )
    if source is None:
        raise web.HTTPNotFound(text=f"no EventSource {namespace}/{name}")
    _, triggers = await visible(request)
    mine = [t for t in triggers if t.namespace == namespace and t.source == name]
    health = await adapter_status.read(console.redis, namespace, name)
    recent = await data.recent_events(console.redis, namespace, name)
    return render(
        request,
        "source.html",
        page="source",
        s=source,
        triggers=mine,
        health=health,
        recent=recent,
        ingest_url=console.ingest_url(source) if source.ingests else "",
    )


async def event_page(request: web.Request) -> web.StreamResponse:
    console = _console(request)
    sources, triggers = await visible(request)
    chosen = request.query.get("source", "")
    event_id = request.query.get("id", "").strip()
    context: dict[str, Any] = {
        "page": "event",
        "sources": sources,
        "chosen": chosen,
        "event_id": event_id,
        "found": None,
        "from_dead_letter": False,
        "traces": [],
        "payload": "",
        "cut": False,
        "searched": bool(chosen and event_id),
    }
    if chosen and event_id:
        namespace, _, name = chosen.partition("/")
        if not (_NAME.fullmatch(namespace) and _NAME.fullmatch(name)):
            return problem(request, 400, "Bad source", f"source {chosen!r}: write it as NS/NAME")
        await require(request, can_get_source(namespace, name))
        loaded = await table.load(console.redis)
        source = loaded.sources.get(chosen)
        mine = {t.id for t in triggers if t.namespace == namespace and t.source == name}
        routes = sorted(
            (r for r in loaded.routes_of(namespace, name) if r.id in mine), key=lambda r: r.name
        )
        found = await _stored(console.redis, source, event_id, routes) if source else None
        if found is not None:
            stored, event = found
            context["found"] = stored
            context["payload"], context["cut"] = data.pretty_payload(event)
            context["from_dead_letter"] = stored.event is None
            # The same verdicts as `tidings trace`, for the Triggers the viewer may see.
            context["traces"] = [await tracing.verdict(console.redis, r, stored) for r in routes]
    return render(request, "event.html", **context)


async def _stored(
    redis: Redis, source: CompiledSource, event_id: str, routes: list[Route]
) -> tuple[tracing.Stored, dict[str, Any]] | None:
    """The event as `tidings trace` finds it (the event index), else among the
    stream's newest events or in a Trigger's dead letters (whose copy outlives the
    stream); with its payload."""
    try:
        stored = await tracing.find_event(redis, source, event_id)
        if stored.event is not None:
            return stored, stored.event
    except tracing.TraceError:
        pass
    found = await data.find_event(redis, source.namespace, source.name, event_id, routes)
    if found is None:
        return None
    event = None if found.from_dead_letter else found.event
    return tracing.Stored(event_id, found.stream_id, found.ingested_ms, event), found.event


async def login_form(request: web.Request) -> web.StreamResponse:
    return render(request, "login.html", page="login", error="", next=_next(request))


def _next(request: web.Request) -> str:
    target = request.query.get("next", "")
    prefix = _console(request).prefix
    # Only a path of this console: never an open redirect.
    return target if target.startswith(prefix) and not target.startswith("//") else prefix


async def login(request: web.Request) -> web.StreamResponse:
    console = _console(request)
    form = await request.post()
    token = str(form.get("token", "")).strip()
    try:
        identity = await console.gate.identify(
            peer=request.remote, headers={"Authorization": f"Bearer {token}"}, cookie=None
        )
    except Unauthenticated as error:
        return render(
            request, "login.html", status=401, page="login", error=str(error), next=_next(request)
        )
    response = web.HTTPSeeOther(_next(request))
    response.set_cookie(
        COOKIE,
        token,
        httponly=True,
        samesite="Strict",
        secure=console.secure_cookie,
        path=console.prefix,
        max_age=8 * 3600,
    )
    log.info("console: %s signed in", identity.user)
    raise response


async def login_guard(request: web.Request) -> web.StreamResponse:
    """POST /login needs no CSRF token (there is no session yet) but must be
    same-origin: a cross-site form could otherwise sign a victim in as someone else."""
    if not same_origin(request):
        return problem(request, 403, "Refused", "cross-site sign-in: use the console's own page")
    return await login(request)


async def logout(request: web.Request) -> web.StreamResponse:
    console = _console(request)
    response = web.HTTPSeeOther(f"{console.prefix}login")
    response.del_cookie(COOKIE, path=console.prefix)
    raise response


async def healthz(request: web.Request) -> web.StreamResponse:
    return web.Response(text="ok\n")


def build_console(console: Console) -> web.Application:
    """The console as an aiohttp application, to run alone or be mounted at
    `console.prefix` (tidings dev's /console/)."""
    app = web.Application(middlewares=[security])
    app[CONFIG] = console
    app.router.add_get("/", overview, name="overview")
    app.router.add_get("/healthz", healthz, name="healthz")
    app.router.add_get("/t/{namespace}/{name}", trigger_page)
    app.router.add_post("/t/{namespace}/{name}/pause", pause)
    app.router.add_post("/t/{namespace}/{name}/replay", replay)
    app.router.add_get("/s/{namespace}/{name}", source_page)
    app.router.add_get("/event", event_page)
    if console.gate.mode == "token":
        app.router.add_get("/login", login_form, name="login")
        app.router.add_route("POST", "/login", login_guard, name="login-post")
        app.router.add_post("/logout", logout)
    app.router.add_static("/static", STATIC, name="static", append_version=False)
    return app
