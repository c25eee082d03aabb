"""How the farm reaches a Docker daemon: its unix socket on the same host, TLS
with a client certificate (dockerd --tlsverify) anywhere else. Never plain TCP,
not even on loopback: a build's `ADD http://127.0.0.1:PORT/...` or a registry's
redirect makes the daemon itself call any TCP port it can reach.

A daemon's API is root on its host, so whoever can open it owns the machine.
`check_engine_access` is the rule the pool entry must pass; `client_settings`
is the one place that turns a pool entry into docker-py's client arguments, for
the build workers (builds/worker/runner.py) and the health checks (pool/health.py) alike.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import shutil
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from django.conf import settings
from django.core.exceptions import ValidationError
from docker.tls import TLSConfig


class EngineAccess(Protocol):
    """What this module reads of a daemon (pool/models.py's DockerDaemon), named here
    so that the model imports this module and not the other way round."""

    pk: int | None
    url: str
    tls_ca: str
    tls_cert: str
    tls_key: str


TLS_FIELDS = {"tls_ca": "the CA certificate", "tls_cert": "the client certificate", "tls_key": "the client key"}

_TCP_HOST = re.compile(r"^tcp://(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:/]+)):[0-9]+$")


class ClientTLS(TLSConfig):
    """docker-py's TLSConfig, kept from the environment's CA bundle: requests lets
    REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE replace the CA given to the client
    (psf/requests#3829), and the daemon's certificate is signed by the pool's CA only."""

    def configure_client(self, client) -> None:
        super().configure_client(client)
        client.trust_env = False


class InsecureEngineAddress(ValueError):
    """A pool entry that would talk plain TCP to another host (a row older than the rule)."""


def tcp_host(url: str) -> str | None:
    """The host of a tcp:// engine URL, None for any other kind."""
    match = _TCP_HOST.match(url)
    return (match["v6"] or match["host"]) if match else None


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere, so it is not loopback


PLAIN_TCP_REFUSED = (
    "{url} is plain TCP. A Docker API is root on its host, and a build can make its daemon call any "
    "TCP address it reaches, loopback included: use the daemon's unix:///PATH/docker.sock on this "
    "host, or give the CA certificate, client certificate and client key of a daemon started with --tlsverify."
)


def plain_tcp_allowed(host: str) -> bool:
    """Only for the simulated engines of bench/scale.py, which are no Docker API."""
    return settings.GENERATOR_INSECURE_LOOPBACK_ENGINES and is_loopback(host)


def check_engine_access(url: str, material: dict[str, str]) -> None:
    """Raises a ValidationError, field by field, unless the URL and the TLS
    material (tls_ca, tls_cert, tls_key as PEM text) make a safe pool entry."""
    given = [name for name in TLS_FIELDS if material.get(name, "").strip()]
    if given and len(given) < len(TLS_FIELDS):
        missing = [name for name in TLS_FIELDS if name not in given]
        raise ValidationError(
            {
                name: f"TLS needs all three of the CA certificate, the client certificate and the client key: "
                f"{TLS_FIELDS[name]} is missing."
                for name in missing
            }
        )
    host = tcp_host(url)
    if given and host is None:
        raise ValidationError({"url": "TLS applies to tcp:// addresses; a unix socket takes no certificates."})
    if not given and host is not None and not plain_tcp_allowed(host):
        raise ValidationError({"url": PLAIN_TCP_REFUSED.format(url=url)})
    if given:
        _check_pem(material["tls_ca"], material["tls_cert"], material["tls_key"])


def _check_pem(ca: str, cert: str, key: str) -> None:
    """The messages never quote the material (the key is a secret)."""
    errors = {}
    try:
        x509.load_pem_x509_certificates(ca.encode())
    except ValueError:
        errors["tls_ca"] = "The CA certificate is not a PEM certificate (-----BEGIN CERTIFICATE-----)."
    try:
        certificate = x509.load_pem_x509_certificate(cert.encode())
    except ValueError:
        certificate = None
        errors["tls_cert"] = "The client certificate is not a PEM certificate (-----BEGIN CERTIFICATE-----)."
    try:
        private_key = serialization.load_pem_private_key(key.encode(), password=None)
    except (ValueError, TypeError):
        private_key = None
        errors["tls_key"] = "The client key is not an unencrypted PEM private key (-----BEGIN ... PRIVATE KEY-----)."
    if certificate and private_key and _public_der(certificate.public_key()) != _public_der(private_key.public_key()):
        errors["tls_key"] = "The client key does not belong to the client certificate."
    if errors:
        raise ValidationError(errors)


def _public_der(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def client_settings(daemon: EngineAccess) -> dict[str, Any]:
    """docker-py's `base_url` and `tls` for this daemon, for `docker.APIClient(**...)`.

    docker-py (through requests and ssl) reads certificates from files only, so
    the PEM text is written once per content to 0600 files in a 0700 folder
    under GENERATOR_VAR_DIR/tls; a daemon's older material is removed then.
    """
    url = daemon.url
    if not daemon.tls_key:
        host = tcp_host(url)
        if host is not None and not plain_tcp_allowed(host):
            raise InsecureEngineAddress(f"refusing plain TCP to {url}: use its unix socket, or TLS in its pool entry")
        return {"base_url": url, "tls": False}
    ca, cert, key = _material_files(daemon.pk or 0, daemon.tls_ca, daemon.tls_cert, daemon.tls_key)
    return {"base_url": url, "tls": ClientTLS(client_cert=(str(cert), str(key)), ca_cert=str(ca), verify=True)}


def _material_files(daemon_id: int, ca: str, cert: str, key: str) -> tuple[Path, Path, Path]:
    digest = hashlib.sha256("\0".join((ca, cert, key)).encode()).hexdigest()[:16]
    root = Path(settings.VAR_DIR) / "tls"
    folder = root / f"daemon-{daemon_id}-{digest}"
    files = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    if folder.is_dir():
        return files
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    staging = root / f".{folder.name}.{os.getpid()}.{os.urandom(4).hex()}"
    staging.mkdir(mode=0o700)
    for path, text in zip(files, (ca, cert, key), strict=True):
        descriptor = os.open(staging / path.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
    try:
        staging.rename(folder)  # atomic: a reader never sees half the files
    except OSError:  # another thread or process got there first, with the same content
        shutil.rmtree(staging, ignore_errors=True)
    for old in root.glob(f"daemon-{daemon_id}-*"):
        if old != folder:
            shutil.rmtree(old, ignore_errors=True)  # rotated material does not linger on disk
    return files
