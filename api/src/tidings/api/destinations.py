"""Where Tidings may deliver: the destination policy that keeps the dispatcher
from being a confused deputy (SSRF).

A Trigger names any URL; the dispatcher POSTs from inside the cluster. Without
a policy, `uri: http://169.254.169.254/latest/meta-data/` reads the cloud's
metadata service and any internal address is one Trigger away. The rules, in
the order they are checked (the first that matches refuses):

1. always refused, nothing overrides them: unspecified (0.0.0.0/8, ::; a
   connect to 0.0.0.0 reaches the host itself on Linux), link-local
   (169.254.0.0/16, fe80::/10: the metadata services live there), metadata
   addresses and names (fd00:ec2::254, 100.100.100.200, 192.0.0.192,
   metadata.google.internal …), multicast and broadcast;
2. the deny-list: CIDRs and host suffixes;
3. loopback (127.0.0.0/8, ::1, localhost) unless allowed — refused by default
   in a cluster, allowed by default in `tidings dev`;
4. the node's own addresses (`--node-address`; the chart passes the pod's
   host IPs) unless allowed;
5. the allow-list, when it has entries: only destinations whose host matches
   a suffix or whose address is in a CIDR of it.

IPv6 addresses that carry an IPv4 one (::ffff:a.b.c.d, NAT64 64:ff9b::/96,
6to4 2002::/16, the old ::a.b.c.d) are checked as that IPv4 address too, and
legacy numeric host forms (`2852039166`, `0xa9fea9fe`, `169.254.43518`) are
read as the addresses they are.

The policy is checked when a Trigger is compiled (the URL's host, by name or
literal address: `DestinationNotAllowed`) and again by the dispatcher's HTTP
client at connect time on every resolved address (tidings.dispatcher.guard),
so a name that resolves to a forbidden address later is refused before any
packet is sent. Pure functions: no lookups here.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

REASON = "DestinationNotAllowed"
# Every rule a Refusal can name (metrics label them).
RULES = (
    "unspecified",
    "metadata",
    "link-local",
    "multicast",
    "broadcast",
    "deny-list",
    "loopback",
    "node-address",
    "allow-list",
    "invalid",
)


def _nets(*cidrs: str) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


# (rule, networks, why): never a destination, whatever the flags say.
ALWAYS_REFUSED: tuple[tuple[str, tuple[Network, ...], str], ...] = (
    (
        "unspecified",
        _nets("0.0.0.0/8", "::/128"),
        "the unspecified address reaches the host itself",
    ),
    (
        "metadata",
        _nets("fd00:ec2::254/128", "100.100.100.200/32", "192.0.0.192/32"),
        "a cloud metadata service answers there",
    ),
    (
        "link-local",
        _nets("169.254.0.0/16", "fe80::/10"),
        "link-local, where cloud metadata services answer",
    ),
    ("multicast", _nets("224.0.0.0/4", "ff00::/8"), "multicast"),
    ("broadcast", _nets("255.255.255.255/32"), "broadcast"),
)
# Names of metadata services (GCP, AWS, Tencent, the bare `metadata` GKE resolves).
METADATA_HOSTS = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.tencentyun.com",
    }
)
LOOPBACK_HOSTS = frozenset({"localhost", "ip6-localhost", "ip6-loopback"})
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_V4_COMPATIBLE = ipaddress.ip_network("::/96")
# What socket.inet_aton reads as an IPv4 address besides dotted quads: digits,
# hex and octal parts, one to four of them.
_LEGACY_V4 = re.compile(r"^(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+)){0,3}$")
_HOST_SUFFIX = re.compile(
    r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$"
)


@dataclass(frozen=True)
class Refusal:
    """Why a destination is not allowed: `rule` is short and stable (what
    metrics label and scripts match), `message` says it for a person."""

    rule: str
    message: str


def normal_host(host: str) -> str:
    """Lower case, no brackets, no trailing dots (`METADATA.google.internal.`
    is the same host as `metadata.google.internal`)."""
    return host.strip().strip("[]").rstrip(".").lower()


def literal_address(host: str) -> Address | None:
    """The address a host names literally, legacy numeric forms included."""
    host = normal_host(host)
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])  # no IPv6 zone
    except ValueError:
        pass
    if _LEGACY_V4.match(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def embedded_v4(address: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, NAT64, 6to4, compatible)."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or (address in _V4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


@dataclass(frozen=True)
class Entry:
    """One allow- or deny-list entry: a CIDR, or a host suffix (`example.com`
    matches example.com and every name under it)."""

    text: str
    network: Network | None = None
    suffix: str | None = None

    @classmethod
    def parse(cls, text: str) -> Entry:
        raw = text.strip()
        try:
            return cls(raw, network=ipaddress.ip_network(raw, strict=False))
        except ValueError:
            pass
        suffix = normal_host(raw).removeprefix("*.").lstrip(".")
        if not suffix or not _HOST_SUFFIX.match(suffix) or literal_address(suffix) is not None:
            raise ValueError(
                f"{text!r} is neither a CIDR nor a host suffix; "
                "write e.g. 10.0.0.0/8, 2001:db8::/32 or example.com"
            )
        return cls(raw, suffix=suffix)

    def matches_name(self, host: str) -> bool:
        return self.suffix is not None and (host == self.suffix or host.endswith("." + self.suffix))

    def matches_address(self, address: Address) -> bool:
        if self.network is None:
            return False
        v4 = embedded_v4(address)
        return address in self.network or (v4 is not None and v4 in self.network)


def _in(address: Address, networks: Iterable[Network]) -> Network | None:
    candidates = [address]
    v4 = embedded_v4(address)
    if v4 is not None:
        candidates.append(v4)
    for network in networks:
        for candidate in candidates:
            if candidate.version == network.version and candidate in network:
                return network
    return None


@dataclass(frozen=True)
class DestinationPolicy:
    """The rules (module docstring). The default refuses loopback and node
    addresses: the policy of a dispatcher in a cluster."""

    allow_loopback: bool = False
    allow_node_addresses: bool = False
    node_addresses: tuple[Network, ...] = ()
    allow: tuple[Entry, ...] = ()
    deny: tuple[Entry, ...] = ()

    @classmethod
    def build(
        cls,
        *,
        allow_loopback: bool = False,
        allow_node_addresses: bool = False,
        node_addresses: Iterable[str] = (),
        allow: Iterable[str] = (),
        deny: Iterable[str] = (),
    ) -> DestinationPolicy:
        """From settings' text; ValueError names the bad entry and the fix."""
        nodes = []
        for text in node_addresses:
            try:
                nodes.append(ipaddress.ip_network(text.strip(), strict=False))
            except ValueError:
                raise ValueError(
                    f"node address {text!r} is not an IP address or CIDR; e.g. 10.0.0.5 or "
                    "10.0.0.0/24"
                ) from None
        return cls(
            allow_loopback=allow_loopback,
            allow_node_addresses=allow_node_addresses,
            node_addresses=tuple(nodes),
            allow=tuple(Entry.parse(t) for t in allow),
            deny=tuple(Entry.parse(t) for t in deny),
        )

    def check(self, host: str, address: Address | None = None) -> Refusal | None:
        """Whether `host` (a URL's host: a name or a literal address) may be
        reached at `address` (what it resolved to; None: not resolved yet, as
        at compile time). None means allowed — so far as is known: a name is
        checked again on each address it resolves to."""
        name = normal_host(host)
        literal = literal_address(name)
        if literal is not None:
            address, name = literal, ""
        where = f"{host} ({address})" if name and address is not None else host
        if name in METADATA_HOSTS:
            return Refusal("metadata", f"{host} is a cloud metadata service: never a destination")
        if address is not None:
            for rule, networks, why in ALWAYS_REFUSED:
                network = _in(address, networks)
                if network is not None:
                    return Refusal(rule, f"{where} is in {network}: {why}; never a destination")
        for entry in self.deny:
            if (name and entry.matches_name(name)) or (
                address is not None and entry.matches_address(address)
            ):
                return Refusal("deny-list", f"{where} matches the deny-list entry {entry.text!r}")
        if not self.allow_loopback and (
            _is_loopback_name(name) or (address is not None and _is_loopback(address))
        ):
            return Refusal(
                "loopback",
                f"{where} is loopback (the dispatcher's own pod); allowed only with "
                "--destinations-loopback=allow (chart: destinations.allowLoopback)",
            )
        if not self.allow_node_addresses and address is not None:
            network = _in(address, self.node_addresses)
            if network is not None:
                return Refusal(
                    "node-address",
                    f"{where} is a node's address ({network}); allowed only with "
                    "--destinations-node=allow (chart: destinations.allowNodeAddresses)",
                )
        if self.allow:
            if name and any(entry.matches_name(name) for entry in self.allow):
                return None
            if address is not None and any(entry.matches_address(address) for entry in self.allow):
                return None
            if address is None and any(entry.network is not None for entry in self.allow):
                return None  # decided on the address it resolves to
            listed = ", ".join(entry.text for entry in self.allow)
            return Refusal("allow-list", f"{where} is not in the allow-list ({listed})")
        return None

    def check_url(self, url: str) -> Refusal | None:
        """A URL's host, before any lookup (compile time)."""
        host = urlsplit(url).hostname
        if not host:
            return Refusal("invalid", f"{url} has no host")
        return self.check(host)


def _is_loopback_name(name: str) -> bool:
    return name in LOOPBACK_HOSTS or name.endswith(".localhost")  # RFC 6761


def _is_loopback(address: Address) -> bool:
    v4 = embedded_v4(address)
    return address.is_loopback or (v4 is not None and v4.is_loopback)


# In a cluster: loopback and node addresses refused, no lists.
CLUSTER = DestinationPolicy()
# `tidings dev`'s default, and what tests delivering to loopback listeners use.
LOCAL = DestinationPolicy(allow_loopback=True)
