"""Daemons on other hosts: TLS with client certificates required off loopback,
the material checked, the key write-only (tests/farm/test_tls_daemon.py talks
to a real `dockerd --tlsverify`)."""

from __future__ import annotations

import json
import stat
from io import StringIO
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from pool.models import DockerDaemon
from pool.tls import InsecureEngineAddress, client_settings
from tests.tls_certs import tls_set


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    return tls_set(tmp_path_factory.mktemp("tls"), ["127.0.0.1"])


@pytest.fixture(scope="session")
def other_certs(tmp_path_factory):
    return tls_set(tmp_path_factory.mktemp("tls-other"), ["127.0.0.1"], name="other-ca")


def errors_of(daemon: DockerDaemon) -> dict[str, list[str]]:
    with pytest.raises(ValidationError) as caught:
        daemon.full_clean(validate_unique=False)
    return caught.value.message_dict


def test_a_unix_socket_is_taken_without_tls():
    DockerDaemon(name="local", url="unix:///run/docker.sock").full_clean(validate_unique=False)


# Loopback too: a build's ADD, or a registry's redirect, makes the daemon itself
# call any TCP port on its host's loopback (issue 12, docs/security.md).
@pytest.mark.parametrize("url", ["tcp://127.0.0.1:2375", "tcp://127.8.0.1:2375", "tcp://localhost:2375",
                                 "tcp://[::1]:2375", "tcp://10.1.2.3:2375", "tcp://build-1.example:2375",
                                 "tcp://[2001:db8::1]:2375"])  # fmt: skip
def test_plain_tcp_is_refused_everywhere(url):
    assert "is plain TCP" in errors_of(DockerDaemon(name="remote", url=url))["url"][0]


def test_plain_tcp_on_loopback_is_kept_for_the_simulated_engines_only(settings):
    settings.GENERATOR_INSECURE_LOOPBACK_ENGINES = True
    DockerDaemon(name="fake", url="tcp://127.0.0.1:2375").full_clean(validate_unique=False)
    assert "is plain TCP" in errors_of(DockerDaemon(name="remote", url="tcp://10.1.2.3:2375"))["url"][0]


def test_another_host_with_the_three_pem_parts_is_accepted(certs):
    DockerDaemon(name="remote", url="tcp://10.1.2.3:2376", **certs.client).full_clean(validate_unique=False)


@pytest.mark.parametrize("missing", ["tls_ca", "tls_cert", "tls_key"])
def test_partial_tls_material_is_refused_naming_what_is_missing(certs, missing):
    material = {**certs.client, missing: ""}
    errors = errors_of(DockerDaemon(name="remote", url="tcp://10.1.2.3:2376", **material))
    assert list(errors) == [missing]
    assert errors[missing][0].startswith("TLS needs all three")


def test_pem_that_does_not_parse_is_refused_without_quoting_it(certs):
    material = {"tls_ca": "hello", "tls_cert": certs.client["tls_ca"], "tls_key": "-----BEGIN PRIVATE KEY-----\nx"}
    errors = errors_of(DockerDaemon(name="remote", url="tcp://10.1.2.3:2376", **material))
    assert errors["tls_ca"] == ["The CA certificate is not a PEM certificate (-----BEGIN CERTIFICATE-----)."]
    assert errors["tls_key"][0].startswith("The client key is not an unencrypted PEM private key")
    assert "\nx" not in json.dumps(errors)


def test_a_key_of_another_certificate_is_refused(certs, other_certs):
    material = {**certs.client, "tls_key": other_certs.client["tls_key"]}
    errors = errors_of(DockerDaemon(name="remote", url="tcp://10.1.2.3:2376", **material))
    assert errors == {"tls_key": ["The client key does not belong to the client certificate."]}


def test_tls_on_a_unix_socket_is_refused(certs):
    errors = errors_of(DockerDaemon(name="local", url="unix:///run/docker.sock", **certs.client))
    assert errors["url"] == ["TLS applies to tcp:// addresses; a unix socket takes no certificates."]


def test_client_settings_write_the_material_to_private_files(certs, settings, tmp_path):
    settings.VAR_DIR = tmp_path
    daemon = DockerDaemon(pk=7, name="remote", url="tcp://10.1.2.3:2376", **certs.client)
    tls = client_settings(daemon)["tls"]
    cert, key = map(Path, tls.cert)
    assert key.read_text() == certs.client["tls_key"] and tls.ca_cert.endswith("ca.pem")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    # Rotated material replaces the old files.
    daemon.tls_cert, daemon.tls_key = certs.client["tls_cert"] + "\n", certs.client["tls_key"] + "\n"
    client_settings(daemon)
    assert not key.exists() and len(list((tmp_path / "tls").iterdir())) == 1


def test_client_settings_refuse_plain_tcp_to_another_host_even_for_an_old_row():
    with pytest.raises(InsecureEngineAddress, match="refusing plain TCP to tcp://10.1.2.3:2375"):
        client_settings(DockerDaemon(name="old", url="tcp://10.1.2.3:2375"))


@pytest.mark.django_db(transaction=True)
def test_a_build_given_to_such_a_row_goes_to_another_daemon(redis_url):
    from builds.models import BuildJob
    from builds.worker import runner

    old = DockerDaemon.objects.create(name="old", url="tcp://10.1.2.3:2375")  # saved before the rule
    job = BuildJob.objects.create(image="localhost:5000/a/b:1", dockerfile="FROM busybox\n", daemon=old)
    runner.run_build(job.id, 1, old.pk, worker="w")
    job.refresh_from_db()
    old.refresh_from_db()
    assert (job.status, job.attempt, job.daemon_id) == ("queued", 2, None)
    assert "refusing plain TCP to tcp://10.1.2.3:2375" in job.error
    assert not old.healthy and "refusing plain TCP" in old.last_error


# --- the REST API and admin never give the key back ---------------------------------


@pytest.fixture
def staff_api(operator):
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {operator.api_token}")
    return api


def test_the_api_takes_the_key_and_never_returns_it(staff_api, certs):
    entry = {"name": "remote", "url": "tcp://10.1.2.3:2376", "capacity": 2, **certs.client}
    created = staff_api.post("/api/v1/daemons/", entry, format="json")
    assert created.status_code == 201, created.json()
    assert created.json()["uses_tls"] is True and "tls_key" not in created.json()
    pk = created.json()["id"]
    # An update without the key keeps it.
    assert staff_api.patch(f"/api/v1/daemons/{pk}/", {"capacity": 3}, format="json").status_code == 200
    assert DockerDaemon.objects.get(pk=pk).tls_key == certs.client["tls_key"].strip()
    key_body = certs.client["tls_key"].splitlines()[1]
    for path in ("/api/v1/daemons/", f"/api/v1/daemons/{pk}/"):
        assert key_body not in staff_api.get(path).content.decode()


def test_the_api_refuses_plain_tcp_off_loopback_and_partial_material(staff_api, certs):
    plain = staff_api.post("/api/v1/daemons/", {"name": "r1", "url": "tcp://10.1.2.3:2375"}, format="json")
    assert plain.status_code == 400 and "is plain TCP" in plain.json()["url"][0]
    partial = {"name": "r2", "url": "tcp://10.1.2.3:2376", "tls_ca": certs.client["tls_ca"]}
    refused = staff_api.post("/api/v1/daemons/", partial, format="json")
    assert refused.status_code == 400 and set(refused.json()) == {"tls_cert", "tls_key"}


def test_clearing_the_certificates_drops_the_key_too(staff_api, certs):
    daemon = DockerDaemon.objects.create(name="local-tls", url="tcp://127.0.0.1:2376", **certs.client)
    plain = staff_api.patch(f"/api/v1/daemons/{daemon.pk}/", {"tls_ca": "", "tls_cert": ""}, format="json")
    assert plain.status_code == 400 and "is plain TCP" in plain.json()["url"][0]
    change = {"url": "unix:///run/generator/d/docker.sock", "tls_ca": "", "tls_cert": ""}
    response = staff_api.patch(f"/api/v1/daemons/{daemon.pk}/", change, format="json")
    assert response.status_code == 200 and response.json()["uses_tls"] is False
    assert DockerDaemon.objects.get(pk=daemon.pk).tls_key == ""


def test_admin_never_shows_the_key_and_keeps_it_when_left_empty(client, operator, certs):
    client.force_login(operator)
    daemon = DockerDaemon.objects.create(name="remote", url="tcp://10.1.2.3:2376", **certs.client)
    page = client.get(f"/admin/pool/dockerdaemon/{daemon.pk}/change/").content.decode()
    assert certs.client["tls_key"].splitlines()[1] not in page and "A key is stored" in page
    limits = {"build_memory_mb": 2048, "build_cpus": 1.0, "build_pids": 1024}
    form = {
        "name": "remote",
        "url": daemon.url,
        "capacity": 4,
        "enabled": "on",
        **limits,
        **certs.client,
        "tls_key": "",
    }
    assert client.post(f"/admin/pool/dockerdaemon/{daemon.pk}/change/", form).status_code == 302
    daemon.refresh_from_db()
    assert daemon.capacity == 4 and daemon.tls_key == certs.client["tls_key"]


# --- the seed's pool.json with TLS files ----------------------------------------------


def test_loadpool_reads_tls_files_relative_to_the_pool_file(db, tmp_path, certs):
    for name, pem in certs.client.items():
        (tmp_path / f"{name}.pem").write_text(pem)
    tls = {"ca": "tls_ca.pem", "cert": "tls_cert.pem", "key": "tls_key.pem"}
    pool = {"docker": [{"url": "10.1.2.3", "port": "2376", "tls": tls}, {"url": "127.0.0.1", "port": "19000"}]}
    (tmp_path / "pool.json").write_text(json.dumps(pool))
    out = StringIO()
    call_command("loadpool", str(tmp_path / "pool.json"), stdout=out)
    assert "added 10.1.2.3:2376 (tcp://10.1.2.3:2376, TLS, capacity 2" in out.getvalue()
    assert DockerDaemon.objects.get(name="10.1.2.3:2376").tls_key == certs.client["tls_key"]
    assert not DockerDaemon.objects.get(name="127.0.0.1:19000").uses_tls


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ({"url": "10.1.2.3", "port": "2376"}, "is plain TCP"),
        ({"url": "10.1.2.3", "port": "2376", "tls": {"ca": "x.pem"}}, 'tls must be {"ca": PATH'),
        ({"url": "10.1.2.3", "port": "2376", "tls": {"ca": "a", "cert": "b", "key": "c"}}, "cannot read tls.ca"),
    ],
)
def test_loadpool_refuses_a_remote_entry_without_usable_tls(db, tmp_path, entry, reason):
    (tmp_path / "pool.json").write_text(json.dumps({"docker": [entry]}))
    with pytest.raises(CommandError, match=reason):
        call_command("loadpool", str(tmp_path / "pool.json"))
    assert not DockerDaemon.objects.exists()
