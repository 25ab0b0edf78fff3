"""The destination policy inside the dispatcher's HTTP client: checked at
connect time, on the addresses a name resolves to, before any packet is sent.

tidings.api.destinations has the rules; the operator checks a Trigger's URL
when it compiles it. That cannot see what a name resolves to later (DNS
rebinding: a name that resolved to a public address at review time and
resolves to 169.254.169.254 now), so the dispatcher checks again, in three
places that together leave no path around them:

- once per route, the URL as written (`Guard.check_url`): literal addresses
  against every rule, names against the name rules;
- in the resolver (`GuardedResolver`, which the HTTP client,
  tidings.dispatcher.http_post, resolves every name with): the name and each
  address it resolves to, every rule — a name with any forbidden address is
  refused whole;
- in the socket factory (`Guard.socket_factory`): every address a socket is
  about to connect to, against the rules an address alone decides (all but
  the allow-list's host suffixes, which need the name): the last line, should
  a path ever bypass the resolver.

A refusal raises `DestinationRefused` (an OSError, a connection error to the
client); `refusal_in` finds it in what the client raised, and delivery
reports the attempt as failed with `DestinationNotAllowed` and the rule.
Redirects are never followed (tidings.dispatcher.delivery), so a subscriber
cannot bounce a request elsewhere.
"""

from __future__ import annotations

import ipaddress
import socket
from collections import OrderedDict
from dataclasses import replace
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from tidings.api.destinations import DestinationPolicy, Refusal

AddrInfo = tuple[int, int, int, str, tuple[Any, ...]]


class DestinationRefused(OSError):
    """The destination policy refused a connection; `refusal` says by which rule."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(f"destination not allowed: {refusal.message}")
        self.refusal = refusal


def refusal_in(error: BaseException) -> Refusal | None:
    """The policy's refusal inside an exception the HTTP client raised (it may
    wrap OSErrors from resolving and connecting), or None."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, DestinationRefused):
            return current.refusal
        pending += [current.__cause__, current.__context__, getattr(current, "os_error", None)]
    return None


class GuardedResolver(AbstractResolver):
    """Resolves with `inner` (aiohttp's default resolver unless given: tests
    give one that maps names to the addresses they choose) and refuses names
    the policy refuses, by name or by any address they resolve to."""

    def __init__(self, policy: DestinationPolicy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self.inner = inner if inner is not None else aiohttp.DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        refusal = self.policy.check(host)
        if refusal is not None:
            raise DestinationRefused(refusal)
        results = await self.inner.resolve(host, port, family)
        for result in results:
            address = ipaddress.ip_address(str(result["host"]).split("%", 1)[0])
            refusal = self.policy.check(host, address)
            if refusal is not None:
                raise DestinationRefused(refusal)
        return results

    async def close(self) -> None:
        await self.inner.close()


class Guard:
    """The policy as the dispatcher applies it: URL checks (cached per URL), and
    the resolver and socket factory of its HTTP client."""

    def __init__(self, policy: DestinationPolicy, resolver: AbstractResolver | None = None) -> None:
        self.policy = policy
        self.resolver = resolver
        # Addresses alone: with host suffixes in the allow-list, a name may have
        # been allowed by its suffix (the resolver checked that), so only the
        # rules an address decides alone apply to sockets.
        suffixes = any(entry.suffix is not None for entry in policy.allow)
        self._address_policy = replace(policy, allow=()) if suffixes else policy
        self._urls: OrderedDict[str, Refusal | None] = OrderedDict()
        self._guarded: GuardedResolver | None = None

    def check_url(self, url: str) -> Refusal | None:
        """The URL as written, before any lookup (remembered: routes repeat)."""
        if url in self._urls:
            self._urls.move_to_end(url)
            return self._urls[url]
        refusal = self._urls[url] = self.policy.check_url(url)
        if len(self._urls) > 10_000:
            self._urls.popitem(last=False)
        return refusal

    def check_socket_address(self, sockaddr: tuple[Any, ...]) -> Refusal | None:
        return self._address_policy.check(str(sockaddr[0]).split("%", 1)[0])

    def socket_factory(self, addr_info: AddrInfo) -> socket.socket:
        family, type_, proto, _, sockaddr = addr_info
        refusal = self.check_socket_address(sockaddr)
        if refusal is not None:
            raise DestinationRefused(refusal)
        sock = socket.socket(family=family, type=type_, proto=proto)
        sock.setblocking(False)
        return sock

    def guarded_resolver(self) -> GuardedResolver:
        """The resolver that refuses what the policy refuses (one per Guard,
        made on first use: aiohttp's default resolver needs the running loop)."""
        if self._guarded is None:
            self._guarded = GuardedResolver(self.policy, self.resolver)
        return self._guarded
