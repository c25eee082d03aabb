"""A private network for the scale-out test: build-host network namespaces joined
to the root namespace (the web tier's "host") by veth pairs on a bridge, with
addresses of a 10.213.N.0/24 that nothing else on the machine uses; and a small
TCP relay for services that listen on loopback only (PostgreSQL)."""

from __future__ import annotations

import contextlib
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class Network:
    tag: str  # in every name made, so runs (and a crashed run's leftovers) never collide
    prefix: str  # "10.213.N"
    bridge: str
    namespaces: dict[str, str] = field(default_factory=dict)  # build host -> namespace
    veths: dict[str, str] = field(default_factory=dict)  # build host -> its veth's root end

    @property
    def gateway(self) -> str:
        """The web tier's address, on the bridge in the root namespace."""
        return f"{self.prefix}.1"

    def address(self, host: str) -> str:
        return f"{self.prefix}.{2 + list(self.namespaces).index(host)}"

    def cut(self, host: str) -> None:
        """Unplugs the build host: its veth's root end goes down."""
        _ip("link", "set", self.veths[host], "down")

    def plug(self, host: str) -> None:
        """Plugs a cut build host back in."""
        _ip("link", "set", self.veths[host], "up")


@contextlib.contextmanager
def private_network(hosts: list[str]) -> Iterator[Network]:
    """One namespace per build host, each with a veth whose other end is on a
    bridge holding the gateway address. Everything made is removed on exit."""
    tag = f"{os.getpid() % 10000:04d}{random.randrange(256):02x}"
    net = Network(tag=tag, prefix=_free_prefix(), bridge=f"gbr{tag}")
    try:
        _ip("link", "add", net.bridge, "type", "bridge")
        _ip("addr", "add", f"{net.gateway}/24", "dev", net.bridge)
        _ip("link", "set", net.bridge, "up")
        for index, host in enumerate(hosts):
            namespace, veth, peer = f"gen-{tag}-{host}", f"gv{tag}{index}", f"gp{tag}{index}"
            _ip("netns", "add", namespace)
            net.namespaces[host] = namespace
            _ip("link", "add", veth, "type", "veth", "peer", "name", peer, "netns", namespace)
            net.veths[host] = veth
            _ip("link", "set", veth, "master", net.bridge, "up")
            _ip("-n", namespace, "addr", "add", f"{net.address(host)}/24", "dev", peer)
            _ip("-n", namespace, "link", "set", peer, "up")
            _ip("-n", namespace, "link", "set", "lo", "up")
        yield net
    finally:
        # Deleting a veth end deletes the pair (a namespace may outlive its name
        # while orphaned TCP sockets of a killed process still retry in it).
        for link in [*net.veths.values(), net.bridge]:
            subprocess.run(["ip", "link", "del", link], capture_output=True)
        for namespace in net.namespaces.values():
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


def _free_prefix() -> str:
    """A 10.213.N that no address or route of this machine is in."""
    taken = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    taken += subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
    used = {int(n) for n in re.findall(r"\b10\.213\.(\d+)\.", taken)}
    return f"10.213.{random.choice([n for n in range(256) if n not in used])}"


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")


class TcpRelay:
    """Listens on (host, port; 0 for any free one) and pipes each connection to `target`: lets the
    build hosts reach a PostgreSQL that listens on the root namespace's loopback."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.target = target
        self._server = socket.create_server(listen)
        self.address: tuple[str, int] = self._server.getsockname()[:2]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pipe, args=(source, sink), daemon=True).start()

    def close(self) -> None:
        self._closed = True
        self._server.close()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    for sock in (source, sink):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


@dataclass
class Outside:
    """A stand-in for the world outside the farm: a namespace of the test's own,
    routed from the root namespace, with HTTP listeners that answer `reached NAME`.
    `urls` maps each listener's name to its URL; `allowed` are the destinations
    the test farm's egress policy lets builds reach (one routed, one on loopback)."""

    urls: dict[str, str]
    allowed: list[str]
    spare_ports: list[int]  # allowed on loopback, nobody listens: tests bind their own servers there
    veth: str = ""

    def routes_metadata_here(self) -> bool:
        """Whether 169.254.169.254 still leads to this namespace (another test session
        on the machine may have taken the host route): never probe it otherwise."""
        out = subprocess.run(["ip", "route", "get", "169.254.169.254"], capture_output=True, text=True).stdout
        return f"dev {self.veth} " in out


@contextlib.contextmanager
def outside_host(tag: str) -> Iterator[Outside]:
    """Listeners: `mirror` (allowed, routed, 10.216.N.2:8081), `private` (the same
    address, port 8082, not allowed), `metadata` (169.254.169.254:80, the cloud
    metadata address, on this namespace only) and `loopback-mirror` (allowed,
    127.0.0.1 of the root namespace, relayed into each daemon's sandbox)."""
    prefix = _free_prefix().replace("10.213.", "10.216.")
    namespace, veth = f"gout-{tag}", f"go{tag}"[:15]
    processes: list[subprocess.Popen] = []
    root = tempfile.mkdtemp(prefix="outside-")
    try:
        _ip("netns", "add", namespace)
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        _ip("addr", "add", f"{prefix}.1/24", "dev", veth)
        _ip("link", "set", veth, "up")
        _ip("-n", namespace, "addr", "add", f"{prefix}.2/24", "dev", "eth0")
        _ip("-n", namespace, "addr", "add", "169.254.169.254/32", "dev", "eth0")
        _ip("-n", namespace, "link", "set", "eth0", "up")
        _ip("-n", namespace, "link", "set", "lo", "up")
        _ip("-n", namespace, "route", "add", "default", "via", f"{prefix}.1")
        # Only this host route makes the metadata address local to the test.
        _ip("route", "replace", "169.254.169.254/32", "via", f"{prefix}.2", "dev", veth)
        loopback_port = _free_port()
        listeners = {
            "mirror": (namespace, f"{prefix}.2", 8081),
            "private": (namespace, f"{prefix}.2", 8082),
            "metadata": (namespace, "169.254.169.254", 80),
            "loopback-mirror": ("", "127.0.0.1", loopback_port),
        }
        for name, (netns, address, port) in listeners.items():
            folder = os.path.join(root, name)
            os.makedirs(folder)
            with open(os.path.join(folder, "probe.txt"), "w") as file:
                file.write(f"reached {name}\n")
            argv = [sys.executable, "-m", "http.server", "--bind", address, "--directory", folder, str(port)]
            if netns:
                argv = ["nsenter", f"--net=/run/netns/{netns}", "--", *argv]
            processes.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        urls = {name: f"http://{address}:{port}/probe.txt" for name, (_, address, port) in listeners.items()}
        spare = [_free_port(), _free_port()]
        allowed = [f"{prefix}.2:8081", f"127.0.0.1:{loopback_port}", *(f"127.0.0.1:{port}" for port in spare)]
        outside = Outside(urls=urls, allowed=allowed, spare_ports=spare, veth=veth)
        if not outside.routes_metadata_here():
            raise RuntimeError(
                "169.254.169.254 does not lead to the test's namespace: is another test session running?"
            )
        _wait_for(urls.values())
        yield outside
    finally:
        for process in processes:
            process.kill()
            process.wait()
        subprocess.run(["ip", "route", "del", "169.254.169.254/32", "via", f"{prefix}.2"], capture_output=True)
        subprocess.run(["ip", "link", "del", veth], capture_output=True)
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(urls, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    for url in urls:
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the outside listener {url} did not answer")
            time.sleep(0.1)
