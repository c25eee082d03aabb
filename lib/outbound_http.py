"""HTTP from the farm itself to hosts a team names (the registries of a
Dockerfile's base images, builds/triggers/base_images.py), held to the farm's outbound
rules: a transport for a `requests` session that checks every request before it
connects, redirects and token realms included.

- A host an operator named (the farm's registry, the registry allow-list) is
  trusted: asked as it is.
- Any other: refused when written as an address the egress rules refuse
  (lib/outbound.py, in any spelling) or named `localhost`; else resolved,
  refused if any of its addresses is loopback, link-local or private
  (lib/egress.py), and the connection is made to the address checked, so a
  name that resolves elsewhere the second time (DNS rebinding) changes nothing.
  TLS still verifies the host name, and the Host header names it.
- GENERATOR_ALLOW_LOCAL_REPOSITORIES lifts the refusals, not the pinning.
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import requests
from django.conf import settings
from requests.adapters import HTTPAdapter
from requests.utils import select_proxy

from lib.egress import refusal_reason
from lib.outbound import host_refusal, literal_address


class Refused(requests.ConnectionError):
    """The outbound rules refuse the request; str() says why."""


def resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


def checked_address(url: str, trusted: set[str]) -> str | None:
    """The address to connect to for `url`, checked; None for a trusted host
    (connected as it is). Refused where the rules refuse it."""
    parts = urlsplit(url)
    host = (parts.hostname or "").rstrip(".")
    if parts.netloc.rpartition("@")[2] in trusted:
        return None
    allow_local = settings.GENERATOR_ALLOW_LOCAL_REPOSITORIES
    if not allow_local and (why := host_refusal(host)):
        raise Refused(f"{host} is {why} (the farm's outbound rules, docs/security.md)")
    if (literal := literal_address(host)) is not None:
        addresses = [str(literal)]
    else:
        try:
            addresses = resolve(host, parts.port or (443 if parts.scheme == "https" else 80))
        except OSError as exc:
            raise Refused(f"cannot resolve {host}: {exc}") from None
    if not addresses:
        raise Refused(f"{host} resolves to no address")
    for address in addresses if not allow_local else ():
        if why := refusal_reason(address):
            raise Refused(f"{host} leads to {address}, {why} (the farm's outbound rules, docs/security.md)")
    return addresses[0]


class OutboundAdapter(HTTPAdapter):
    """Mounted on a session for http:// and https://. One session, one thread."""

    def __init__(self, *, trusted: set[str]) -> None:
        super().__init__(max_retries=0)
        self.trusted = trusted
        self._address: str | None = None  # the checked address of the request being sent

    def send(self, request, **kwargs):
        address = checked_address(request.url, self.trusted)
        if address is None:
            return super().send(request, **kwargs)
        request.headers["Host"] = urlsplit(request.url).netloc
        self._address = address
        try:
            return super().send(request, **kwargs)
        finally:
            self._address = None

    def get_connection_with_tls_context(self, request, verify, proxies=None, cert=None):
        if self._address is None or select_proxy(request.url, proxies):  # a proxy connects for it
            return super().get_connection_with_tls_context(request, verify, proxies, cert)
        host_params, pool_kwargs = self.build_connection_pool_key_attributes(request, verify, cert)
        if host_params["scheme"] == "https":  # the certificate is the name's, not the address's
            name = host_params["host"]
            pool_kwargs = {**pool_kwargs, "server_hostname": name, "assert_hostname": name}
        return self.poolmanager.connection_from_host(
            host=self._address, port=host_params["port"], scheme=host_params["scheme"], pool_kwargs=pool_kwargs
        )
