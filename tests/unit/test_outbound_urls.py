"""The SSRF table (security/outbound_urls.py): each refused range, an allowed host, the allowlist,
operator-opened ranges, and names whose resolved addresses are all checked. The resolver here is
a fixed table: what a name resolves to is the input of this pure rule."""

from __future__ import annotations

import pytest

from agent_fabric.security.outbound_urls import OutboundGuard, UrlRefused
from agent_fabric.settings import OutboundSettings

DNS = {
    "a0.example.com": ["93.184.215.14"],
    "internal.example.com": ["10.0.0.5"],
    "mixed.example.com": ["93.184.215.14", "127.0.0.1"],
    "rebind.example.com": ["169.254.169.254"],
    "a0.svc.cluster.local": ["10.96.0.12"],
}


async def table(host: str, port: int) -> list[str]:
    if host not in DNS:
        raise OSError(f"[Errno -2] Name or service not known: {host}")
    return DNS[host]


def guard(**cfg: str) -> OutboundGuard:
    return OutboundGuard(OutboundSettings(**cfg), resolve=table)


@pytest.mark.parametrize(
    "url, rule",
    [
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://[fd00:ec2::254]/", "cloud metadata"),
        ("http://100.100.100.200/", "cloud metadata"),
        ("http://127.0.0.1:8080/", "loopback"),
        ("http://127.8.9.10/", "loopback"),
        ("http://[::1]/", "loopback"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),  # IPv4-mapped: judged as the IPv4 address
        ("http://[64:ff9b::a9fe:a9fe]/", "cloud metadata"),  # NAT64 of 169.254.169.254
        ("http://0.0.0.0/", "unspecified"),
        ("http://169.254.1.1/", "link-local"),
        ("http://[fe80::1]/", "link-local"),
        ("http://10.1.2.3/", "private"),
        ("http://172.16.0.1/", "private"),
        ("http://192.168.1.1/", "private"),
        ("http://[fd12:3456::1]/", "private"),
        ("http://100.64.0.1/", "shared (carrier-grade NAT)"),
        ("http://224.0.0.1/", "multicast"),
        ("http://240.0.0.1/", "reserved"),
        ("http://internal.example.com/", "private"),
        ("http://mixed.example.com/", "loopback"),  # one bad address refuses the name
        ("http://rebind.example.com/", "cloud metadata"),
        ("http://nowhere.example.com/", "unresolvable"),
        ("ftp://a0.example.com/", "scheme"),
        ("file:///etc/passwd", "scheme"),
    ],
)
async def test_refused_by_default(url: str, rule: str) -> None:
    with pytest.raises(UrlRefused) as refused:
        await guard().check(url)
    assert refused.value.extra["rule"] == rule and refused.value.code == "url_refused"
    assert rule in refused.value.message or rule in ("unresolvable", "scheme")


@pytest.mark.parametrize("url", ["https://a0.example.com/", "http://93.184.215.14:50001", "https://[2606:4700::1]/"])
async def test_public_hosts_are_allowed_by_default(url: str) -> None:
    await guard().check(url)


async def test_operator_opens_a_range_and_metadata_stays_closed() -> None:
    cluster = guard(allowed_ranges="10.0.0.0/8")
    await cluster.check("http://a0.svc.cluster.local/")
    await cluster.check("http://10.1.2.3:50001")
    with pytest.raises(UrlRefused, match="cloud metadata"):
        await cluster.check("http://169.254.169.254/")
    with pytest.raises(UrlRefused, match="AGENT_FABRIC_OUTBOUND_ALLOWED_RANGES"):
        await cluster.check("http://192.168.1.1/")


async def test_allowlist_limits_hosts_by_name_or_cidr() -> None:
    only = guard(allowlist="*.svc.cluster.local,203.0.113.0/24", allowed_ranges="10.96.0.0/12")
    await only.check("http://a0.svc.cluster.local/")
    await only.check("http://203.0.113.7/")
    with pytest.raises(UrlRefused) as refused:
        await only.check("https://a0.example.com/")
    assert refused.value.extra["rule"] == "allowlist" and "AGENT_FABRIC_OUTBOUND_ALLOWLIST" in refused.value.message
    # A name on the allowlist still may not resolve into a closed range.
    with pytest.raises(UrlRefused, match="private"):
        await guard(allowlist="internal.example.com").check("http://internal.example.com/")
    # A CIDR on the allowlist opens it.
    await guard(allowlist="10.0.0.0/24").check("http://internal.example.com/")
