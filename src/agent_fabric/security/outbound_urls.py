"""No SSRF through URLs a tenant gives the fabric: where such a URL may point.

A tenant can make the fabric call a URL it chose (an Agent Zero instance registered through
/api/v2/agent/instances). Left open, that reaches the cloud metadata service, the cluster's
private services or the fabric's own loopback. So before such a URL is stored, and again before
every request to it (a name may resolve elsewhere later), it must pass these rules, in order:

1. http or https only;
2. AGENT_FABRIC_OUTBOUND_ALLOWLIST, when set: the host matches a listed name (`*.example.com`
   covers subdomains) or every address it resolves to lies in a listed CIDR;
3. every address the host resolves to (all of them: one bad answer refuses the URL) lies outside
   the refused ranges below, unless it is inside a CIDR the operator opened
   (AGENT_FABRIC_OUTBOUND_ALLOWED_RANGES, or a CIDR on the allowlist).

IPv4-mapped and NAT64 IPv6 addresses are judged as the IPv4 address they carry. Redirects are
never followed by the fabric's HTTP clients (httpx's default), so a redirect cannot lead to
another host. The refusal names the rule, the address and how an operator opens it.

The clients of such a URL connect through `transport()`: every new connection resolves the name
once, checks every address, and dials one of those very addresses. A name that answers a public
address to the check and a private one to the connect (DNS rebinding) has no second answer to
give. TLS still verifies the certificate against the name.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import urlsplit

import httpcore
import httpx

from agent_fabric.errors import InvalidRequest
from agent_fabric.settings import OutboundSettings

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolve = Callable[[str, int], Awaitable[list[str]]]
SocketOption = tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]  # as httpcore's

# Most specific first: the metadata address is link-local too, and should be named for what it is.
REFUSED_RANGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("cloud metadata", ("169.254.169.254/32", "169.254.170.2/32", "100.100.100.200/32", "fd00:ec2::254/128")),
    ("loopback", ("127.0.0.0/8", "::1/128")),
    ("unspecified", ("0.0.0.0/8", "::/128")),
    ("link-local", ("169.254.0.0/16", "fe80::/10")),
    ("private", ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")),
    ("shared (carrier-grade NAT)", ("100.64.0.0/10",)),
    ("multicast", ("224.0.0.0/4", "ff00::/8")),
    ("reserved", ("240.0.0.0/4", "192.0.0.0/24", "198.18.0.0/15")),
)
_REFUSED = tuple((rule, tuple(ipaddress.ip_network(n) for n in nets)) for rule, nets in REFUSED_RANGES)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class UrlRefused(InvalidRequest):
    """A URL the fabric will not call; `rule` says which rule refused it."""

    def __init__(self, message: str, *, rule: str) -> None:
        super().__init__(message, code="url_refused")
        self.extra = {"rule": rule}


async def resolve_host(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


class OutboundGuard:
    def __init__(self, cfg: OutboundSettings, resolve: Resolve = resolve_host) -> None:
        self._resolve = resolve
        self._names: list[str] = []
        self._cidrs: list[IpNetwork] = []
        for item in cfg.allowlist_items:
            try:
                self._cidrs.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                self._names.append(item.rstrip("."))
        self._open = [ipaddress.ip_network(c, strict=False) for c in cfg.allowed_range_items] + self._cidrs

    async def check(self, url: str) -> None:
        """Return if the fabric may call `url`, else raise UrlRefused naming the rule."""
        try:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise UrlRefused("url is not a valid URL", rule="scheme") from None
        host = parts.hostname or ""
        if parts.scheme not in ("http", "https") or not host:
            raise UrlRefused("url must be an http:// or https:// URL with a host", rule="scheme")
        await self.addresses_to_dial(host, port)

    async def addresses_to_dial(self, host: str, port: int) -> list[IpAddress]:
        """Every address `host` resolves to now, if all of them pass the rules; else UrlRefused."""
        host = host.strip("[]").rstrip(".").lower()
        addresses = await self._addresses(host, port)
        if (self._names or self._cidrs) and not self._allowlisted(host, addresses):
            raise UrlRefused(
                f"host {host!r} is not on the outbound allowlist (AGENT_FABRIC_OUTBOUND_ALLOWLIST)", rule="allowlist"
            )
        for address in addresses:
            self._check_address(host, address)
        return addresses

    def transport(self) -> httpx.AsyncHTTPTransport:
        """An httpx transport whose every connection goes only to an address these rules pass."""
        transport = httpx.AsyncHTTPTransport()
        # httpx takes no network backend; its connection pool does (httpcore's documented hook).
        transport._pool._network_backend = _CheckedDialer(self)
        return transport

    async def _addresses(self, host: str, port: int) -> list[IpAddress]:
        try:
            return [ipaddress.ip_address(host)]
        except ValueError:
            pass
        try:
            found = await self._resolve(host, port)
        except (OSError, UnicodeError) as exc:
            raise UrlRefused(f"host {host!r} does not resolve: {exc}", rule="unresolvable") from None
        if not found:
            raise UrlRefused(f"host {host!r} does not resolve", rule="unresolvable")
        return [ipaddress.ip_address(a.split("%", 1)[0]) for a in found]

    def _allowlisted(self, host: str, addresses: list[IpAddress]) -> bool:
        for name in self._names:
            if host == name or (name.startswith("*.") and host.endswith(name[1:])):
                return True
        return bool(self._cidrs) and all(_within(_carried(a), self._cidrs) for a in addresses)

    def _check_address(self, host: str, address: IpAddress) -> None:
        judged = _carried(address)
        if _within(judged, self._open):
            return
        for rule, networks in _REFUSED:
            for network in networks:
                if _within(judged, [network]):
                    via = "" if str(address) == host else f" (from {host!r})"
                    raise UrlRefused(
                        f"address {judged}{via} is in a {rule} range ({network}); an operator may open it with "
                        f"AGENT_FABRIC_OUTBOUND_ALLOWED_RANGES",
                        rule=rule,
                    )


def _within(address: IpAddress, networks: list[IpNetwork] | tuple[IpNetwork, ...]) -> bool:
    return any(address.version == n.version and address in n for n in networks)


def _carried(address: IpAddress) -> IpAddress:
    """The IPv4 address inside an IPv4-mapped or NAT64 IPv6 address, else the address itself."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


class _CheckedDialer(httpcore.AsyncNetworkBackend):
    """Resolves a connection's host through the guard and dials only the addresses it passed."""

    def __init__(self, guard: OutboundGuard) -> None:
        self._guard = guard
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's backend interface
        local_address: str | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        failure: Exception | None = None
        for address in await self._guard.addresses_to_dial(host, port):
            try:
                return await self._inner.connect_tcp(
                    str(address), port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None  # addresses_to_dial returns at least one address or raises
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's backend interface
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("a tenant-registered URL is never a unix socket")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)
