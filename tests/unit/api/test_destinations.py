"""The destination policy's rules (pure: no lookups, no packets)."""

from __future__ import annotations

import ipaddress

import pytest

from tidings.api.destinations import CLUSTER, LOCAL, DestinationPolicy, Entry, literal_address
from tidings.api.settings import DestinationSettings, SettingsError, load


def rule(policy: DestinationPolicy, host: str, address: str | None = None) -> str | None:
    refusal = policy.check(host, ipaddress.ip_address(address) if address else None)
    return refusal.rule if refusal else None


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("169.254.169.254", "link-local"),
        ("169.254.0.1", "link-local"),
        ("fe80::1", "link-local"),
        ("[fe80::1%25eth0]", "link-local"),
        ("fd00:ec2::254", "metadata"),
        ("100.100.100.200", "metadata"),
        ("metadata.google.internal", "metadata"),
        ("METADATA.google.internal.", "metadata"),  # case and the trailing dot
        ("metadata", "metadata"),
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("255.255.255.255", "broadcast"),
        # IPv6 forms carrying a forbidden IPv4 address, and legacy numeric forms
        ("::ffff:169.254.169.254", "link-local"),
        ("64:ff9b::a9fe:a9fe", "link-local"),
        ("2002:a9fe:a9fe::1", "link-local"),
        ("2852039166", "link-local"),
        ("0xa9fea9fe", "link-local"),
        ("169.254.43518", "link-local"),
    ],
)
def test_always_refused_whatever_the_flags_say(host: str, expected: str) -> None:
    everything = DestinationPolicy.build(
        allow_loopback=True, allow_node_addresses=True, allow=["0.0.0.0/0", "::/0", "internal"]
    )
    assert rule(everything, host) == expected
    assert rule(CLUSTER, host) == expected


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1", "localhost", "a.localhost"]
)
def test_loopback_is_refused_in_a_cluster_and_allowed_by_the_flag(host: str) -> None:
    assert rule(CLUSTER, host) == "loopback"
    assert rule(LOCAL, host) is None


def test_a_name_is_judged_again_by_the_address_it_resolves_to() -> None:
    assert rule(CLUSTER, "hooks.example.com") is None  # at compile time: nothing known yet
    assert rule(CLUSTER, "hooks.example.com", "169.254.169.254") == "link-local"
    assert rule(CLUSTER, "hooks.example.com", "127.0.0.1") == "loopback"
    assert rule(CLUSTER, "hooks.example.com", "203.0.113.9") is None


def test_node_addresses_are_refused_unless_allowed() -> None:
    nodes = DestinationPolicy.build(node_addresses=["10.0.0.5", "192.168.50.0/24"])
    assert rule(nodes, "10.0.0.5") == "node-address"
    assert rule(nodes, "mailer.shop.svc", "192.168.50.7") == "node-address"
    assert rule(nodes, "10.0.0.6") is None
    allowed = DestinationPolicy.build(node_addresses=["10.0.0.5"], allow_node_addresses=True)
    assert rule(allowed, "10.0.0.5") is None


def test_the_deny_list_takes_cidrs_and_host_suffixes() -> None:
    policy = DestinationPolicy.build(deny=["10.0.0.0/8", "internal.example.com"])
    assert rule(policy, "10.1.2.3") == "deny-list"
    assert rule(policy, "hooks.example.com", "10.1.2.3") == "deny-list"
    assert rule(policy, "internal.example.com") == "deny-list"
    assert rule(policy, "a.b.internal.example.com.") == "deny-list"
    assert rule(policy, "notinternal.example.com") is None
    refusal = policy.check("10.1.2.3")
    assert refusal is not None and "'10.0.0.0/8'" in refusal.message


def test_the_allow_list_admits_only_its_cidrs_and_suffixes() -> None:
    policy = DestinationPolicy.build(allow=["svc.cluster.local", "203.0.113.0/24"])
    assert rule(policy, "mailer.shop.svc.cluster.local") is None
    assert rule(policy, "mailer.shop.svc.cluster.local", "10.96.0.10") is None  # by name
    assert rule(policy, "203.0.113.7") is None
    assert rule(policy, "hooks.example.com") is None  # may resolve into the CIDR ...
    assert rule(policy, "hooks.example.com", "203.0.113.8") is None
    assert rule(policy, "hooks.example.com", "198.51.100.1") == "allow-list"  # ... or not
    assert rule(policy, "198.51.100.1") == "allow-list"
    names_only = DestinationPolicy.build(allow=["example.com"])
    assert rule(names_only, "other.org") == "allow-list"  # decided by name at once
    # The allow-list never opens what is always refused, nor what the deny-list says.
    both = DestinationPolicy.build(allow=["0.0.0.0/0"], deny=["203.0.113.0/24"])
    assert rule(both, "203.0.113.1") == "deny-list"
    assert rule(both, "169.254.169.254") == "link-local"


def test_check_url_reads_the_host_of_a_url() -> None:
    refusal = CLUSTER.check_url("http://169.254.169.254/latest/meta-data/")
    assert refusal is not None and refusal.rule == "link-local"
    assert "169.254.0.0/16" in refusal.message
    assert CLUSTER.check_url("https://hooks.example.com:8443/x") is None
    assert LOCAL.check_url("http://127.0.0.1:9000/hook") is None


@pytest.mark.parametrize(("text", "kind"), [("10.0.0.0/8", "network"), ("*.example.com", "suffix")])
def test_list_entries_are_cidrs_or_suffixes(text: str, kind: str) -> None:
    entry = Entry.parse(text)
    assert (entry.network is not None) == (kind == "network")


@pytest.mark.parametrize("bad", ["", "http://x", "a b", "10.0.0.0/33", "-bad-.com"])
def test_a_bad_entry_names_itself_and_the_fix(bad: str) -> None:
    with pytest.raises(ValueError, match="neither a CIDR nor a host suffix"):
        Entry.parse(bad)


def test_settings_build_the_policy_and_name_the_bad_flag() -> None:
    settings = load(
        DestinationSettings,
        environ={
            "TIDINGS_DESTINATIONS_LOOPBACK": "allow",
            "TIDINGS_DESTINATIONS_DENY": "10.0.0.0/8, internal.example.com",
            "TIDINGS_NODE_ADDRESSES": "192.168.1.10",
        },
    )
    policy = settings.destination_policy()
    assert policy.allow_loopback and not policy.allow_node_addresses
    assert [e.text for e in policy.deny] == ["10.0.0.0/8", "internal.example.com"]
    assert rule(policy, "192.168.1.10") == "node-address"
    bad = load(DestinationSettings, environ={"TIDINGS_DESTINATIONS_ALLOW": "exa mple.com"})
    with pytest.raises(
        SettingsError, match=r"--destinations-allow \(or TIDINGS_DESTINATIONS_ALLOW"
    ):
        bad.destination_policy()
    with pytest.raises(SettingsError, match="TIDINGS_DESTINATIONS_LOOPBACK"):
        load(DestinationSettings, environ={"TIDINGS_DESTINATIONS_LOOPBACK": "yes"})


def test_legacy_numeric_hosts_are_the_addresses_they_name() -> None:
    assert literal_address("2130706433") == ipaddress.ip_address("127.0.0.1")
    assert literal_address("127.1") == ipaddress.ip_address("127.0.0.1")
    assert literal_address("example.com") is None
