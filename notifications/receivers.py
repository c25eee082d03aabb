"""Where notifications may be sent: a receiver URL held to the farm's outbound rules.

A receiver URL is typed by any member of a repository's team, and the control
worker that posts to it is inside the farm's network: `http://169.254.169.254/`
or the farm's own Redis would let a team read cloud metadata or talk to the
farm's services. So, at save time and again at each send (DNS may have changed):

- the URL is http(s) with a host, and what its text shows is checked as clone
  URLs are (lib/outbound.py: IP literals in any spelling, localhost);
- its host is resolved, and every address is held to the egress rules
  (lib/egress.py: loopback, link-local, private ranges refused);
- the send connects to an address checked here, never resolving again;
- the farm's own Redis and database (host and port) are refused even when
  GENERATOR_ALLOW_LOCAL_REPOSITORIES allows local addresses (tests, one machine).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings

from lib.egress import refusal_reason
from lib.outbound import RefusedURL, check_url

Resolver = Callable[[str, int], list[str]]


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


@dataclass(frozen=True)
class Receiver:
    """A checked URL and the address to connect to."""

    scheme: str
    host: str
    port: int
    target: str  # path and query
    address: str


def check(url: str, *, resolver: Resolver = system_resolver) -> Receiver:
    """The receiver `url` names, resolved and checked; RefusedURL says why not."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RefusedURL(f"the receiver URL {url!r} is not an http(s) URL with a host")
    if parts.username or parts.password:
        raise RefusedURL("the receiver URL carries a user or password: put a secret in the endpoint's secret instead")
    allow_local = settings.GENERATOR_ALLOW_LOCAL_REPOSITORIES
    check_url(url, allow_local=allow_local, what="the receiver URL")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise RefusedURL(f"the receiver URL {url!r} has a bad port") from None
    host = parts.hostname.rstrip(".")
    try:
        addresses = resolver(host, port)
    except OSError as exc:
        raise RefusedURL(f"cannot resolve {host}, the receiver's host: {exc}") from None
    if not addresses:
        raise RefusedURL(f"{host}, the receiver's host, resolves to no address")
    own = farm_services()
    for address in addresses:
        if (address, port) in own:
            raise RefusedURL(f"the receiver URL leads to {address}:{port}, {own[(address, port)]}")
        if not allow_local and (why := refusal_reason(address)):
            raise RefusedURL(f"the receiver URL leads to {address}, {why} (the farm's egress rules, docs/security.md)")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Receiver(parts.scheme, host, port, target, addresses[0])


def farm_services() -> dict[tuple[str, int], str]:
    """(address, port) of the farm's own Redis and database -> what it is."""
    found: dict[tuple[str, int], str] = {}
    services = [
        (settings.REDIS_URL, 6379, "the farm's own Redis"),
        (settings.CELERY_BROKER_URL, 6379, "the farm's own Redis"),
    ]
    database = settings.DATABASES["default"]
    if database.get("HOST"):
        default_port = 5432 if "postgresql" in database["ENGINE"] else 3306
        services.append(
            (f"db://{database['HOST']}:{database.get('PORT') or default_port}", default_port, "the farm's database")
        )
    for url, default_port, what in services:
        parts = urlsplit(url)
        if not parts.hostname:
            continue
        try:
            port = parts.port or default_port
            addresses = system_resolver(parts.hostname, port)
        except (OSError, ValueError):
            continue
        for address in addresses:
            found[(address, port)] = what
    return found
