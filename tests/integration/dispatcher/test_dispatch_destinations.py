"""The destination policy inside the dispatcher's HTTP client, on a real Redis.

No test here sends a packet to a forbidden or external address: names are
resolved by a resolver the test controls; the "forbidden" destination that can
be observed is a loopback canary (loopback is forbidden by a cluster's default
policy), which counts every TCP connection it accepts; and every test's
dispatcher creates sockets through a factory that fails the test for any
address that is not loopback."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from dispatch_harness import Plane, Subscriber, wait_until
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from tidings.api import table
from tidings.api.destinations import CLUSTER, LOCAL, DestinationPolicy
from tidings.api.routes import Route, compile_trigger
from tidings.api.types import TriggerSpec
from tidings.dispatcher import deadletter
from tidings.dispatcher.engine import Dispatcher
from tidings.dispatcher.guard import DestinationRefused, Guard
from tidings.dispatcher.routing import TableWatcher
from tidings.operator import health


class MapResolver(AbstractResolver):
    """Names to the addresses the test says; records every lookup."""

    def __init__(self, names: dict[str, str]) -> None:
        self.names = names
        self.lookups: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.lookups.append(host)
        if host not in self.names:
            raise OSError(f"test resolver: no such name {host}")
        address = self.names[host]
        return [
            {
                "hostname": host,
                "host": address,
                "port": port,
                "family": socket.AF_INET6 if ":" in address else socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self) -> None:
        pass


class LoopbackOnly(Guard):
    """The real guard, and a test's own last line: a socket for anything but
    loopback fails the test instead of being created."""

    escaped: list[str]

    def socket_factory(self, addr_info: Any) -> socket.socket:
        address = ipaddress.ip_address(str(addr_info[4][0]).split("%")[0])
        sock = super().socket_factory(addr_info)  # the policy's refusal raises first
        if not address.is_loopback:
            sock.close()
            self.escaped.append(str(address))
            raise AssertionError(f"a socket to {address} was about to connect")
        return sock


class Canary:
    """A loopback TCP listener counting the connections it accepts."""

    def __init__(self) -> None:
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> Canary:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            writer.close()

        self._server = await asyncio.start_server(accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture
async def canary() -> AsyncIterator[Canary]:
    listener = await Canary().start()
    yield listener
    await listener.stop()


async def guarded_dispatcher(
    plane: Plane, policy: DestinationPolicy, resolver: MapResolver
) -> tuple[Dispatcher, LoopbackOnly, CollectorRegistry]:
    redis = Redis.from_url(plane.redis_url)
    watcher = TableWatcher(redis, resync_interval=1.0)
    await watcher.start()
    registry = CollectorRegistry()
    dispatcher = Dispatcher(
        redis, watcher, sealer=plane.sealer, registry=registry, destinations=policy
    )
    guard = LoopbackOnly(policy, resolver)
    guard.escaped = []
    dispatcher.guard = guard
    await dispatcher.start()
    plane.dispatchers.append(dispatcher)
    plane.watchers.append(watcher)
    return dispatcher, guard, registry


async def add_route(plane: Plane, name: str, url: str) -> Route:
    """A route to `url` as an operator with another policy (or an older version)
    would have published it: the dispatcher must not rely on the operator's check.
    Published once, with its final URL (the dispatcher never sees another)."""
    spec = TriggerSpec.model_validate(
        {"source": "src", "subscriber": {"uri": "http://placeholder.test/"}}
    )
    route = compile_trigger(
        namespace=plane.namespace,
        name=name,
        spec=spec,
        world=plane.world,
        sealer=plane.sealer,
        destinations=LOCAL,
    ).model_copy(update={"subscriber_url": url})
    await table.put_route(plane.redis, route)
    await wait_until(lambda: plane.has_group(route), 10, f"group of {name} created")
    return route


async def dead_letters(plane: Plane, route: Route, count: int) -> list[deadletter.DeadLetter]:
    async def enough() -> bool:
        found = await deadletter.read(plane.redis, route.namespace, route.source, route.name)
        return len(found) >= count

    await wait_until(enough, 15, f"{count} dead letters")
    return await deadletter.read(plane.redis, route.namespace, route.source, route.name)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def test_a_name_resolving_to_a_forbidden_address_is_refused_before_any_connection(
    plane: Plane, canary: Canary
) -> None:
    """DNS rebinding: the name passed review, and now resolves to loopback (the
    dispatcher's own pod, forbidden in a cluster). Nothing connects; the attempt
    is a failure with the reason — dead letter, metric, status — not a drop."""
    resolver = MapResolver({"hooks.partner.test": "127.0.0.1"})
    _, guard, registry = await guarded_dispatcher(plane, CLUSTER, resolver)
    await plane.add_source()
    route = await add_route(plane, "rebound", f"http://hooks.partner.test:{canary.port}/hook")
    await plane.publish(1)

    [letter] = await dead_letters(plane, route, 1)
    assert letter.error.startswith("DestinationNotAllowed: ")
    assert "127.0.0.1" in letter.error and "(rule loopback)" in letter.error
    assert letter.attempts == 1  # not retried: the policy would refuse it again
    assert canary.connections == 0
    assert resolver.lookups == ["hooks.partner.test"]
    assert guard.escaped == []
    assert (
        sample(registry, "tidings_delivery_refused_total", trigger=route.id, rule="loopback") == 1.0
    )
    assert (
        sample(registry, "tidings_deliveries_total", trigger=route.id, outcome="dead_lettered")
        == 1.0
    )
    reading = await health.read(plane.redis, route.namespace, route.source, route.name)
    assert reading is not None and reading.failure_message is not None
    assert reading.failure_message.startswith("DestinationNotAllowed: ")  # status.lastFailure


@pytest.mark.parametrize(
    ("address", "rule"),
    [("169.254.169.254", "link-local"), ("fd00:ec2::254", "metadata"), ("0.0.0.0", "unspecified")],
)
async def test_names_of_metadata_and_other_always_refused_addresses_never_connect(
    plane: Plane, address: str, rule: str
) -> None:
    resolver = MapResolver({"innocent.test": address})
    _, guard, registry = await guarded_dispatcher(plane, LOCAL, resolver)
    await plane.add_source()
    route = await add_route(plane, "meta", "http://innocent.test/latest/meta-data/")
    await plane.publish(1)
    [letter] = await dead_letters(plane, route, 1)
    assert f"(rule {rule})" in letter.error, letter.error
    assert guard.escaped == []
    assert sample(registry, "tidings_delivery_refused_total", trigger=route.id, rule=rule) == 1.0


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[::ffff:169.254.169.254]/", "link-local"),
        ("http://metadata.google.internal/computeMetadata/v1/", "metadata"),
        ("http://127.0.0.1:9/", "loopback"),
    ],
)
async def test_a_route_naming_a_forbidden_address_is_refused_without_a_lookup(
    plane: Plane, url: str, rule: str
) -> None:
    resolver = MapResolver({})
    _, guard, _ = await guarded_dispatcher(plane, CLUSTER, resolver)
    await plane.add_source()
    route = await add_route(plane, "literal", url)
    await plane.publish(1)
    [letter] = await dead_letters(plane, route, 1)
    assert f"(rule {rule})" in letter.error, letter.error
    assert resolver.lookups == [] and guard.escaped == []


async def test_allowed_destinations_are_delivered_and_deny_entries_refused(
    plane: Plane, subscriber: Subscriber
) -> None:
    policy = DestinationPolicy.build(allow_loopback=True, deny=["blocked.test"])
    resolver = MapResolver({"mailer.test": "127.0.0.1", "x.blocked.test": "127.0.0.1"})
    _, guard, _ = await guarded_dispatcher(plane, policy, resolver)
    await plane.add_source()
    good = await add_route(plane, "good", f"http://mailer.test:{subscriber.port}/hook")
    bad = await add_route(plane, "bad", f"http://x.blocked.test:{subscriber.port}/hook")
    await plane.publish(3)
    await wait_until(lambda: len(subscriber.received) >= 3, 15, "3 delivered")
    letters = await dead_letters(plane, bad, 3)
    assert all("deny-list entry 'blocked.test'" in letter.error for letter in letters)
    assert sorted(subscriber.ids()) == ["e-0", "e-1", "e-2"]  # only the good route's
    assert "x.blocked.test" not in resolver.lookups  # refused by name, before resolving
    assert good.id != bad.id and guard.escaped == []


async def test_redirects_are_not_followed(plane: Plane) -> None:
    """A subscriber cannot bounce the dispatcher to an address the policy would refuse."""
    resolver = MapResolver({"bouncer.test": "127.0.0.1"})
    app = web.Application()
    hits: list[str] = []

    async def bounce(request: web.Request) -> web.Response:
        hits.append(request.path)
        raise web.HTTPFound("http://metadata.google.internal/computeMetadata/v1/")

    app.router.add_post("/{tail:.*}", bounce)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        _, guard, _ = await guarded_dispatcher(plane, LOCAL, resolver)
        await plane.add_source()
        route = await add_route(plane, "bounced", f"http://bouncer.test:{port}/hook")
        await plane.publish(1)
        [letter] = await dead_letters(plane, route, 1)
        assert "302" in letter.error
        assert hits == ["/hook"]
        assert resolver.lookups == ["bouncer.test"] and guard.escaped == []
    finally:
        await runner.cleanup()


def test_the_socket_factory_refuses_what_an_address_alone_decides() -> None:
    """The last line, should a path ever bypass the resolver: no socket is made."""
    guard = Guard(DestinationPolicy.build(allow=["partner.test"]))
    for sockaddr, rule in (
        (("169.254.169.254", 80), "link-local"),
        (("127.0.0.1", 80), "loopback"),
        (("fe80::1%1", 80, 0, 1), "link-local"),
    ):
        family = socket.AF_INET6 if ":" in sockaddr[0] else socket.AF_INET
        with pytest.raises(DestinationRefused) as caught:
            guard.socket_factory((family, socket.SOCK_STREAM, 6, "", sockaddr))
        assert caught.value.refusal.rule == rule
    # A name allowed by its suffix resolved here: its address alone is no reason to refuse.
    sock = guard.socket_factory((socket.AF_INET, socket.SOCK_STREAM, 6, "", ("203.0.113.9", 80)))
    sock.close()
