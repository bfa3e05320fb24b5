"""Where a webhook may go. A client-chosen URL must never reach the service's own network:
loopback, private, link-local, unique-local, multicast, reserved and other non-global
addresses are refused, in every spelling (IPv4-mapped IPv6, 6to4, decimal, octal, hex and
short IPv4 forms), at submit time and again, on the resolved and connected address, at
delivery time (DNS can change in between). An operator's allowlist lets trusted receivers in.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import re
import socket
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[Address]]

# RFC 6761: these names are loopback whatever a resolver says.
LOOPBACK_NAMES = re.compile(r"^(localhost|.*\.localhost)\.?$")
HOSTNAME = re.compile(r"^[a-z0-9_]([a-z0-9_.-]{0,251}[a-z0-9_])?\.?$", re.IGNORECASE)
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
SUBMIT_DNS_SECONDS = 2.0


class UnsafeDestination(ValueError):
    """The URL's destination is not allowed. The message says why, but never shows what a
    name resolved to (that would map internal DNS for whoever submits URLs); `address` keeps
    it for the operator's records."""

    def __init__(self, message: str, address: Address | None = None):
        super().__init__(message)
        self.address = address


def literal_ip(host: str) -> Address | None:
    """The address a URL host spells, in any form the C resolver would accept: 127.0.0.1,
    ::1, ::ffff:127.0.0.1, and the legacy IPv4 forms 2130706433, 0177.0.0.1, 0x7f.0.0.1,
    127.1. None for a name."""
    host = host.strip("[]").lower()
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if host and host[0].isdigit() and set(host) <= set("0123456789abcdefx."):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, Teredo client, NAT64,
    IPv4-compatible): routers and stacks may deliver to that IPv4 address."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in NAT64 or (ip in IPV4_COMPATIBLE and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def blocked_reason(ip: Address) -> str | None:
    """Why a delivery must not go to this address, or None for a public one."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_ipv4(ip)
        if inner is not None:
            reason = blocked_reason(inner)
            return f"{reason} (IPv4 {inner} inside IPv6)" if reason else None
    checks = (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("reserved", ip.is_reserved),
        ("private", ip.is_private),
        ("site-local", isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local),
        ("not globally routable", not ip.is_global),
    )
    return next((f"a {name} address" for name, hit in checks if hit), None)


@dataclass(frozen=True)
class Allowlist:
    """Trusted receivers (DAIKON_WEBHOOK_ALLOW_HOSTS): host names, IP addresses and CIDRs."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> Allowlist:
        hosts: set[str] = set()
        networks: list[Network] = []
        for raw in entries:
            entry = raw.strip().strip("[]").lower()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                if not HOSTNAME.match(entry):
                    raise ValueError(f"not a host name, IP address or CIDR: {raw!r}") from None
                hosts.add(entry.rstrip("."))
        return cls(frozenset(hosts), tuple(networks))

    def for_tenant(self, name: str, trusted: Collection[str]) -> Allowlist:
        """The list as it applies to one tenant's webhooks (DAIKON_WEBHOOK_ALLOW_TENANTS):
        all of it when `trusted` is empty or names the tenant, else nothing."""
        return self if not trusted or name in trusted else Allowlist()

    def allows_host(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.hosts

    def allows_ip(self, ip: Address) -> bool:
        candidates: list[Address] = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)
        return any(
            c in net for c in candidates for net in self.networks if c.version == net.version
        )


def system_resolver(host: str, port: int) -> list[Address]:
    """Every TCP address the system resolver gives for host (what a connect would try)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    seen: dict[str, Address] = {}
    for _family, _type, _proto, _name, sockaddr in infos:
        text = str(sockaddr[0]).split("%", 1)[0]
        seen.setdefault(text, ipaddress.ip_address(text))
    return list(seen.values())


def refusal(ip: Address, allow: Allowlist) -> str | None:
    """Why a connection to ip is refused, or None if it may go ahead."""
    return None if allow.allows_ip(ip) else blocked_reason(ip)


@dataclass(frozen=True)
class Destination:
    scheme: str
    host: str  # as in the URL, lower case, without brackets
    port: int
    target: str  # path and query, what goes on the request line
    allowed_host: bool  # on the allowlist by name: its addresses are trusted


def parse(url: str, allow: Allowlist) -> Destination:
    """The parts of a webhook URL a delivery needs; UnsafeDestination if it is not one."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeDestination("must be an absolute http or https URL")
    if parts.username is not None or parts.password is not None:
        raise UnsafeDestination("must not contain credentials")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as e:
        raise UnsafeDestination("has an invalid port") from e
    host = parts.hostname
    allowed = allow.allows_host(host)
    if not allowed and literal_ip(host) is None and LOOPBACK_NAMES.match(host):
        raise UnsafeDestination(f"{host} is a loopback name")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Destination(parts.scheme, host, port, target, allowed)


def resolve(dest: Destination, allow: Allowlist, resolver: Resolver) -> list[Address]:
    """The addresses to connect to, every one checked; raises UnsafeDestination if any is
    refused (a name that mixes public and internal answers is not trusted) and socket.gaierror
    if the name does not resolve."""
    literal = literal_ip(dest.host)
    addresses = [literal] if literal is not None else resolver(dest.host, dest.port)
    if not dest.allowed_host:
        for ip in addresses:
            reason = refusal(ip, allow)
            if reason:
                if literal is None:
                    what = f"{dest.host} resolves to {reason}"
                else:  # the client's own spelling, and what it means
                    shown = dest.host if dest.host == str(ip) else f"{dest.host} ({ip})"
                    what = f"{shown} is {reason}"
                raise UnsafeDestination(f"{what}; webhooks go to public addresses", ip)
    return addresses


_submit_dns = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="dns")


def check_url(url: str, allow: Allowlist, resolver: Resolver = system_resolver) -> None:
    """The submit-time check. A name that does not resolve (yet), or not within a couple of
    seconds, is accepted: every delivery resolves and checks again before it connects."""
    dest = parse(url, allow)
    if dest.allowed_host:
        return
    if literal_ip(dest.host) is not None:
        resolve(dest, allow, resolver)
        return
    future = _submit_dns.submit(resolver, dest.host, dest.port)
    try:
        addresses = future.result(timeout=SUBMIT_DNS_SECONDS)
    except (OSError, UnicodeError, concurrent.futures.TimeoutError):
        return
    resolve(dest, allow, lambda _h, _p: addresses)
