"""A real `dockerd --tlsverify`: the farm's client certificate builds and pushes
through it; no certificate, or one from another CA, is refused, and the health
check records the daemon unhealthy saying why. (tests/farm/test_netns_farm.py
runs whole farm builds on TLS daemons in other network namespaces.)"""

from __future__ import annotations

import docker
import pytest
import requests
from django.conf import settings

from builds.engine.docker import EngineSession, dockerfile_context
from pool import health
from pool.models import DockerDaemon
from pool.tls import ClientTLS, client_settings
from scripts import localfarm as lf
from tests.farm.conftest import BUSYBOX_ROOTFS
from tests.tls_certs import tls_set

pytestmark = pytest.mark.farm


@pytest.fixture(scope="module")
def tls_daemon(supervisor, services_dir, tmp_path_factory):
    certs = tls_set(tmp_path_factory.mktemp("tls-daemon"), ["127.0.0.1"])
    port, registry_port = lf.free_port(), lf.free_port()
    dirs = services_dir / "tls-d", services_dir / "tls-x", services_dir / "tls-s" / "docker.sock"
    url = lf.start_dockerd(supervisor, "dockerd-tls", *dirs, tcp=f"127.0.0.1:{port}", tls=certs.server)
    lf.start_registry(supervisor, registry_port, services_dir / "tls-registry", "registry-tls")
    lf.wait_for_dockerd(supervisor, "dockerd-tls", url, tls=certs.client_config())
    lf.ensure_busybox_image(url, BUSYBOX_ROOTFS(), tls=certs.client_config())
    yield url, certs, f"localhost:{registry_port}"
    supervisor.stop("dockerd-tls")
    supervisor.stop("registry-tls")


@pytest.fixture
def rows(django_db_setup, django_db_blocker, settings, tmp_path):
    """Rows in autocommit, disabled so that a running farm's health check leaves them alone."""
    settings.VAR_DIR = tmp_path
    settings.GENERATOR_UNHEALTHY_AFTER = 1
    settings.GENERATOR_HEALTH_TIMEOUT = 5
    with django_db_blocker.unblock():
        yield lambda name, url, **tls: DockerDaemon.objects.create(name=name, url=url, enabled=False, **tls)
        DockerDaemon.objects.filter(name__startswith="tls-").delete()


def test_the_farms_certificate_builds_and_pushes_through_a_tls_daemon(tls_daemon, rows):
    url, certs, registry = tls_daemon
    daemon = rows("tls-good", url, **certs.client)
    result = health.check_now(daemon)
    assert result.ok and result.version, result.error
    session = EngineSession(**client_settings(daemon), api_version=settings.GENERATOR_DOCKER_API_VERSION, timeout=60)
    lines = []
    with session:
        image_id = session.build(
            dockerfile_context("FROM busybox\nRUN echo tls > /tls\n"), tag=f"{registry}/tls/check", on_line=lines.append
        )
        pushed = session.push(f"{registry}/tls/check", "latest", on_line=lines.append)
    assert image_id.startswith("sha256:") and pushed.digest.startswith("sha256:")


def test_a_certificate_from_another_ca_is_refused_and_the_daemon_marked_unhealthy(tls_daemon, rows, tmp_path):
    url, certs, _ = tls_daemon
    other = tls_set(tmp_path / "other", ["127.0.0.1"], name="other-ca")
    # The other CA's client certificate, with the daemon's real CA to check the server by.
    daemon = rows("tls-other-ca", url, **{**other.client, "tls_ca": certs.client["tls_ca"]})
    result = health.check_now(daemon)
    daemon.refresh_from_db()
    assert not result.ok and not daemon.healthy
    assert daemon.last_error.startswith("TLS handshake failed: ")
    assert daemon.last_error.endswith(" (check the pool entry's CA, certificate and key)")
    assert "HTTPSConnectionPool" not in daemon.last_error  # the reason, not requests' wrapping


def test_a_client_with_no_certificate_or_plain_http_is_refused(tls_daemon, rows):
    url, certs, _ = tls_daemon
    with pytest.raises(requests.exceptions.SSLError):
        lf.docker_ping(url, ClientTLS(ca_cert=str(certs.client_files.ca), verify=True))
    with pytest.raises(docker.errors.APIError, match="HTTPS"):  # the daemon: no plain HTTP
        lf.docker_ping(url)
    plain = rows("tls-plain", url)  # a row older than the rule: the farm never tries plain TCP
    assert not health.check_now(plain).ok
    plain.refresh_from_db()
    assert not plain.healthy and "refusing plain TCP" in plain.last_error
