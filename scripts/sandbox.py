"""A build daemon's own network namespace, behind the farm's egress policy.

dockerd fetches `ADD` URLs, pulls and pushes itself, from its own network
namespace, and Go never proxies loopback addresses: so a daemon in the host's
namespace hands every build the host's loopback (the farm's Redis, database,
web, the other daemons). Here each daemon gets a namespace of its own:

    host namespace                      | daemon's namespace
    ------------------------------------+--------------------------------------
    veth <prefix><n>  10.215.X.(4k+1)  <-> uplink 10.215.X.(4k+2), default route
    nftables table <table>: input and   | dockerd: unix socket only, its own
      forward from <prefix>* refused     |   docker0 bridge for RUN steps (NAT)
      by lib/egress.py's policy         | 127.0.0.1:<port>: relays to allowed
    socat UNIX-LISTEN -> 127.0.0.1:port <-   loopback destinations (the registry)

The worker reaches the daemon through its unix socket, which no build can
open; nothing in the namespace listens on TCP but the relays of destinations
an operator allowed. Used by `make up` and the end-to-end tests
(scripts/localfarm.py), and on build hosts (docs/deploy.md). Needs root,
iproute2, nftables and socat.
"""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from lib.egress import REFUSED_V4, REFUSED_V6, Destination, Network, parse_destinations, parse_networks

SANDBOX_NETWORK = ipaddress.ip_network("10.215.0.0/16")


class SandboxError(RuntimeError):
    pass


@dataclass(frozen=True)
class Policy:
    """One farm's egress policy on this host: its nftables table, the prefix of
    its veth names (at most 9 characters: a veth name has 15), and the
    operator's allowed and refused destinations."""

    table: str
    prefix: str
    allow: tuple[Destination, ...] = ()
    deny: tuple[Network, ...] = ()
    relay_dir: Path = Path("/run/generator/relay")
    # The build host's own network namespace, when it is not this process's
    # (the scale-out test's build hosts are namespaces themselves).
    host_netns: str = ""

    def on_host(self, *argv: str) -> list[str]:
        """argv run in the build host's network namespace."""
        return ["nsenter", f"--net=/run/netns/{self.host_netns}", "--", *argv] if self.host_netns else list(argv)

    @property
    def loopback_allowed(self) -> tuple[Destination, ...]:
        return tuple(d for d in self.allow if d.is_loopback)


def farm_policy(table: str, prefix: str, *, registry: str, relay_dir: Path) -> Policy:
    """A farm's policy: its own registry (HOST:PORT on loopback) allowed, with
    the operator's GENERATOR_EGRESS_ALLOW and GENERATOR_EGRESS_DENY (comma-separated)."""
    allowed = [registry, *os.environ.get("GENERATOR_EGRESS_ALLOW", "").split(",")]
    denied = os.environ.get("GENERATOR_EGRESS_DENY", "").split(",")
    return Policy(table, prefix, parse_destinations(allowed), parse_networks(denied), relay_dir)


@dataclass(frozen=True)
class Sandbox:
    netns: str
    veth: str  # the host's end
    gateway: str  # the host's end's address: the namespace's default route
    address: str  # the namespace's own address


def create(policy: Policy, index: int, netns: str) -> Sandbox:
    """The namespace `netns` with its veth `<prefix><index>`; kept as it is if it exists."""
    veth = f"{policy.prefix}{index}"
    if len(veth) > 15:
        raise SandboxError(f"veth name {veth} is longer than 15 characters: use a shorter prefix")
    if netns in _namespaces():
        existing = _uplink_address(netns)
        if existing:
            return Sandbox(netns, veth, str(ipaddress.ip_address(existing) - 1), existing)
        _run("ip", "netns", "del", netns)
    subnet = _free_subnet(policy)
    gateway, address = (str(host) for host in subnet.hosts())
    _run(*policy.on_host("ip", "link", "del", veth), check=False)
    _run("ip", "netns", "add", netns)
    _run(*policy.on_host("ip", "link", "add", veth, "type", "veth", "peer", "name", "uplink", "netns", netns))
    _run(*policy.on_host("ip", "addr", "add", f"{gateway}/30", "dev", veth))
    _run(*policy.on_host("ip", "link", "set", veth, "up"))
    _run("ip", "-n", netns, "addr", "add", f"{address}/30", "dev", "uplink")
    _run("ip", "-n", netns, "link", "set", "uplink", "up")
    _run("ip", "-n", netns, "link", "set", "lo", "up")
    _run("ip", "-n", netns, "route", "add", "default", "via", gateway)
    # No IPv6 inside: the policy's rules are written for IPv4 egress only.
    _run("ip", "netns", "exec", netns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
    return Sandbox(netns, veth, gateway, address)


def remove(netns: str) -> None:
    # Deleting one end of the veth deletes the pair (a namespace may outlive its
    # name while a killed process's orphaned sockets still retry in it).
    _run("ip", "-n", netns, "link", "del", "uplink", check=False)
    _run("ip", "netns", "del", netns, check=False)


def namespaces(prefix: str = "") -> list[str]:
    return sorted(name for name in _namespaces() if name.startswith(prefix))


def apply_rules(policy: Policy) -> None:
    """Writes the policy's nftables table (replacing it whole, atomically) and
    lets the host forward the sandboxes' traffic."""
    _run(*policy.on_host("sysctl", "-qw", "net.ipv4.ip_forward=1"))
    script = render_rules(policy, resolvers())
    result = subprocess.run(policy.on_host("nft", "-f", "-"), input=script, capture_output=True, text=True)
    if result.returncode != 0:
        raise SandboxError(f"nft refused the egress rules: {result.stderr.strip()}\n{script}")


def remove_rules(policy: Policy) -> None:
    _run(*policy.on_host("nft", "delete", "table", "inet", policy.table), check=False)
    _run(*policy.on_host("nft", "delete", "table", "ip", f"{policy.table}_publish"), check=False)


def publish(policy: Policy, port: int, sandbox: Sandbox) -> None:
    """Forwards TCP `port` of the build host (arriving, or opened on the host
    itself) to the same port of the sandbox's address: how a daemon's TLS API is
    reached from the farm's other hosts, while nothing else of the host is."""
    rules = f"tcp dport {port} fib daddr type local dnat to {sandbox.address}:{port}"
    table = f"{policy.table}_publish"
    script = "\n".join(
        [
            f"table ip {table}",
            f"delete table ip {table}",
            f"table ip {table} {{",
            f"  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n    {rules}\n  }}",
            f"  chain output {{\n    type nat hook output priority -100; policy accept;\n    {rules}\n  }}",
            "}",
            "",
        ]
    )
    result = subprocess.run(policy.on_host("nft", "-f", "-"), input=script, capture_output=True, text=True)
    if result.returncode != 0:
        raise SandboxError(f"nft refused to publish port {port}: {result.stderr.strip()}")


def render_rules(policy: Policy, dns_servers: tuple[str, ...] = ()) -> str:
    """The nftables table for `policy`, as `nft -f` reads it.

    Traffic from a sandbox to the host itself (any of its addresses) meets the
    input chain; traffic to anywhere else, the forward chain. Both accept
    replies, then the operator's destinations and the DNS servers, then
    refuse the policy's ranges, fast (a TCP reset or an ICMP "administratively
    prohibited"), so a build fails at once rather than waiting on a timeout.
    """
    sandboxes = f'iifname "{policy.prefix}*"'
    accepts = [f"{sandboxes} ct state established,related accept"]
    for destination in policy.allow:
        if destination.is_loopback:
            continue  # relayed into the namespace: never routed
        family = "ip" if destination.network.version == 4 else "ip6"
        port = f" tcp dport {destination.port}" if destination.port else ""
        accepts.append(f"{sandboxes} {family} daddr {destination.network}{port} accept")
    for server in dns_servers:
        family = "ip" if ipaddress.ip_address(server).version == 4 else "ip6"
        accepts.append(f"{sandboxes} {family} daddr {server} meta l4proto {{ tcp, udp }} th dport 53 accept")
    refuse = "reject with icmpx type admin-prohibited"
    input_chain = [*accepts, f"{sandboxes} meta l4proto tcp reject with tcp reset", f"{sandboxes} {refuse}"]
    forward_chain = list(accepts)
    for network in [*REFUSED_V4, *REFUSED_V6, *policy.deny]:
        family = "ip" if network.version == 4 else "ip6"
        forward_chain.append(f"{sandboxes} {family} daddr {network} {refuse}")

    def chain(name: str, hook: str, rules: list[str]) -> str:
        body = "\n".join(f"    {rule}" for rule in rules)
        return f"  chain {name} {{\n    type filter hook {hook} priority filter - 10; policy accept;\n{body}\n  }}"

    return "\n".join(
        [
            f"table inet {policy.table}",
            f"delete table inet {policy.table}",
            f"table inet {policy.table} {{",
            chain("input", "input", input_chain),
            chain("forward", "forward", forward_chain),
            "  chain postrouting {",
            "    type nat hook postrouting priority srcnat; policy accept;",
            f'    {sandboxes} oifname != "{policy.prefix}*" masquerade',
            "  }",
            "}",
            "",
        ]
    )


def resolvers(resolv_conf: Path = Path("/etc/resolv.conf")) -> tuple[str, ...]:
    """The host's DNS servers that a sandbox can reach (loopback ones it cannot)."""
    try:
        text = resolv_conf.read_text()
    except OSError:
        return ()
    servers = re.findall(r"^\s*nameserver\s+(\S+)", text, re.MULTILINE)
    valid = []
    for server in servers:
        try:
            if not ipaddress.ip_address(server.split("%")[0]).is_loopback:
                valid.append(server.split("%")[0])
        except ValueError:
            continue
    return tuple(valid)


def relay_out_argv(policy: Policy, destination: Destination) -> list[str]:
    """The host's end of a relay: a unix socket (which crosses namespaces) piped
    to the allowed loopback destination."""
    policy.relay_dir.mkdir(parents=True, exist_ok=True)
    socket_path = policy.relay_dir / f"{destination.port}.sock"
    return [
        "socat",
        f"UNIX-LISTEN:{socket_path},fork,unlink-early,mode=600",
        f"TCP:{destination.network.network_address}:{destination.port}",
    ]


def relay_in_argv(policy: Policy, sandbox: Sandbox, destination: Destination) -> list[str]:
    """The namespace's end: the same address and port on its own loopback."""
    socket_path = policy.relay_dir / f"{destination.port}.sock"
    return [
        "nsenter",
        f"--net=/run/netns/{sandbox.netns}",
        "--",
        "socat",
        f"TCP-LISTEN:{destination.port},bind={destination.network.network_address},fork,reuseaddr",
        f"UNIX-CONNECT:{socket_path}",
    ]


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _uplink_address(netns: str) -> str | None:
    out = subprocess.run(
        ["ip", "-n", netns, "-4", "-o", "addr", "show", "dev", "uplink"], capture_output=True, text=True
    ).stdout
    match = re.search(r"inet (\S+)/30", out)
    return match[1] if match else None


def _free_subnet(policy: Policy) -> ipaddress.IPv4Network:
    """A /30 of 10.215.0.0/16 that no address or route of the build host (nor of
    this machine: sandboxes of several test hosts share it) is in."""
    out = ""
    for argv in (("ip", "-4", "-o", "addr"), ("ip", "-4", "route")):
        out += subprocess.run(argv, capture_output=True, text=True).stdout
        out += subprocess.run(policy.on_host(*argv), capture_output=True, text=True).stdout
    for netns in _namespaces():  # every sandbox's own address, wherever its host is
        out += subprocess.run(["ip", "-n", netns, "-4", "-o", "addr"], capture_output=True, text=True).stdout
    used = {ipaddress.ip_address(a) for a in re.findall(r"\b(10\.215\.\d+\.\d+)\b", out)}
    for subnet in SANDBOX_NETWORK.subnets(new_prefix=30):
        if not any(address in subnet for address in used):
            return subnet
    raise SandboxError(f"no free /30 left in {SANDBOX_NETWORK}")


def _run(*argv: str, check: bool = True) -> None:
    result = subprocess.run(argv, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise SandboxError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
