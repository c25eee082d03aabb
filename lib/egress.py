"""The farm's egress policy: where a build may connect, as data.

Everything a build makes a daemon fetch or send (ADD URLs, base images, pushes,
the redirects of any of them) and everything its RUN steps open leaves the
daemon's own network namespace through one veth, where the host's nftables
rules (scripts/sandbox.py renders them from this module) refuse:

- loopback and the host itself (every address of the build host);
- link-local (169.254.0.0/16 with the cloud metadata address, fe80::/10);
- private and other non-public ranges (RFC 1918, CGNAT, benchmarking, ...),
  which is where a farm's own services, other builds and a company's network live;
- whatever the operator adds (`GENERATOR_EGRESS_DENY`: the farm's public hosts);

unless the operator allows a destination (`GENERATOR_EGRESS_ALLOW`: the pool's
registry, a package mirror). The kernel checks the address actually connected
to, so DNS answers and redirects cannot route around it.

No Django here: `scripts/` uses it before any settings exist.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Not the public internet: refused to builds unless allowed.
REFUSED_V4 = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",  # "this" network
        "10.0.0.0/8",  # private
        "100.64.0.0/10",  # carrier-grade NAT
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local, with the cloud metadata address 169.254.169.254
        "172.16.0.0/12",  # private
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # documentation
        "192.168.0.0/16",  # private
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation
        "203.0.113.0/24",  # documentation
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, broadcast
    )
)
REFUSED_V6 = tuple(
    ipaddress.ip_network(n)
    for n in (
        "::/127",  # unspecified, loopback
        "::ffff:0:0/96",  # IPv4-mapped: the IPv4 rules decide those
        "64:ff9b::/96",  # NAT64 of any IPv4 address
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "ff00::/8",  # multicast
        "2001:db8::/32",  # documentation
    )
)

_WHY = {
    "loopback": "a loopback address: the farm's services and daemons are not reachable from a build",
    "link_local": "a link-local address (such as the cloud metadata service): not reachable from a build",
    "private": "a private address: the farm's network is not reachable from a build",
}


class EgressConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Destination:
    """An operator-allowed destination: a network, and a TCP port or any (None)."""

    network: Network
    port: int | None = None

    @property
    def is_loopback(self) -> bool:
        return self.network.is_loopback

    def __str__(self) -> str:
        net = str(self.network.network_address) if self.network.num_addresses == 1 else str(self.network)
        if self.port is None:
            return net
        return f"[{net}]:{self.port}" if self.network.version == 6 else f"{net}:{self.port}"


_ENTRY = re.compile(r"^(?:\[(?P<v6>[0-9a-fA-F:./]+)\]|(?P<host>[^:\[\]]+))(?::(?P<port>[0-9]{1,5}))?$")


def parse_destinations(entries: Iterable[str]) -> tuple[Destination, ...]:
    """`10.1.2.3:3128`, `10.9.0.0/16`, `[fd00::5]:443`, `localhost:5000`.

    Host names other than localhost are refused: a name may resolve anywhere,
    and the kernel's rules hold addresses.
    """
    destinations = []
    for raw in entries:
        entry = raw.strip()
        if not entry:
            continue
        match = _ENTRY.match(entry)
        if not match:
            raise EgressConfigError(f"{entry!r} is not ADDRESS[:PORT], NETWORK/BITS[:PORT] or [IPv6][:PORT]")
        host = match["v6"] or match["host"]
        if host.lower() == "localhost":
            host = "127.0.0.1"
        try:
            network = ipaddress.ip_network(host, strict=False)
        except ValueError:
            raise EgressConfigError(f"{entry!r}: give an IP address or network, not a host name") from None
        port = int(match["port"]) if match["port"] else None
        if port is not None and not 0 < port < 65536:
            raise EgressConfigError(f"{entry!r}: the port must be from 1 to 65535")
        if network.is_loopback and (port is None or network.num_addresses != 1):
            raise EgressConfigError(f"{entry!r}: a loopback destination is one address and a port")
        destinations.append(Destination(network, port))
    return tuple(destinations)


def parse_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """Extra networks to refuse (`GENERATOR_EGRESS_DENY`): the farm's public hosts."""
    try:
        return tuple(ipaddress.ip_network(e.strip(), strict=False) for e in entries if e.strip())
    except ValueError as exc:
        raise EgressConfigError(f"GENERATOR_EGRESS_DENY: {exc}") from None


def refusal_reason(address: str) -> str | None:
    """Why the policy refuses `address` (ignoring allowed destinations), or None for
    a public address. Used to explain a failed build, never to enforce."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if ip.is_loopback:
        return _WHY["loopback"]
    if ip.is_link_local:
        return _WHY["link_local"]
    ranges = REFUSED_V4 if ip.version == 4 else REFUSED_V6
    if any(ip in network for network in ranges):
        return _WHY["private"]
    return None


_ADDRESS_IN_MESSAGE = re.compile(r"(?:dial tcp|connect to|https?://)\s*\[?([0-9a-fA-F.:]+?)\]?:[0-9]+")


def explain(message: str) -> str | None:
    """A sentence on the policy for an error that names an address it refuses,
    e.g. dockerd's `dial tcp 127.0.0.1:6379: connect: connection refused`."""
    for address in _ADDRESS_IN_MESSAGE.findall(message):
        if reason := refusal_reason(address):
            return f"{address} is {reason} (the farm's egress policy; docs/security.md)"
    return None
