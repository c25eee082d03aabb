"""docker-compose.yml describes the farm: validated by Debian's docker-compose."""

from __future__ import annotations

import os
import subprocess

import pytest
import yaml
from django.core.management import call_command

from pool.models import DockerDaemon
from scripts import localfarm as lf
from tests.conftest import ROOT


def compose_config(**env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in {"POSTGRES_PASSWORD", "GENERATOR_SECRET_KEY"}}
    return subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config"],
        env={**clean, **env},
        capture_output=True,
        text=True,
        cwd=ROOT,
    )


def test_compose_describes_every_service_of_the_farm():
    result = compose_config(POSTGRES_PASSWORD="pw", GENERATOR_SECRET_KEY="key")
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert set(services) == {
        *("web", "beat", "notify", "redis", "postgres", "registry"),
        *("dind-0", "worker-0", "dind-1", "worker-1"),
    }
    assert services["web"]["environment"]["DATABASE_URL"].startswith("postgres://generator:pw@postgres")
    # A worker shares only its own daemon's socket volume and, read-only, data
    # volume (and the context store, no daemon's), and no daemon publishes a port.
    # Its daemon's socket gives it the daemon anyway: reading its disk adds nothing.
    for index in (0, 1):
        volumes = [
            f"dind-{index}-socket:/run/dind:rw",
            "contexts:/var/lib/generator/contexts:rw",
            f"dind-{index}-data:/var/lib/docker:ro",
            "registry-token:/var/lib/generator/registry-token:ro",  # to sign its pushes to the farm's registry
        ]
        assert services[f"worker-{index}"]["volumes"] == volumes
        assert "ports" not in services[f"dind-{index}"]
        # A daemon's builds share a network with the registry only (issue 12).
        assert list(services[f"dind-{index}"]["networks"]) == [f"builds-{index}"]
        assert "--userns-remap=default" in services[f"dind-{index}"]["command"]
        on_it = {name for name, service in services.items() if f"builds-{index}" in service.get("networks", {})}
        assert on_it == {f"dind-{index}", "registry"}


def test_compose_refuses_to_run_without_its_secrets():
    result = compose_config()
    assert result.returncode != 0
    assert "set POSTGRES_PASSWORD" in result.stderr or "set GENERATOR_SECRET_KEY" in result.stderr


def test_each_compose_worker_serves_its_daemons_queue(db):
    call_command("loadpool", str(ROOT / "conf" / "pool.compose.json"))
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for daemon in DockerDaemon.objects.all():
        worker = services[daemon.name.replace("dind", "worker")]
        assert f"--queues {daemon.queue} " in worker["command"]
        assert daemon.url == "unix:///run/dind/docker.sock"


@pytest.mark.parametrize("pool_file", ["pool.json", "pool.compose.json"])
def test_the_shipped_pool_files_load(db, pool_file):
    call_command("loadpool", str(ROOT / "conf" / pool_file))
    assert DockerDaemon.objects.count() == 2


def test_compose_web_and_beat_share_the_log_store_and_nothing_else_mounts_it():
    """Beat archives old logs (and prunes them), web reads them back: one volume
    at GENERATOR_LOG_ARCHIVE_DIR's default under the image's GENERATOR_VAR_DIR."""
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    on_it = {name for name, service in services.items() if "logs:/var/lib/generator/logs" in service.get("volumes", [])}
    assert on_it == {"web", "beat"}
    assert "GENERATOR_VAR_DIR=/var/lib/generator" in (ROOT / "Dockerfile").read_text()
    assert "/var/lib/generator/logs" in (ROOT / "Dockerfile").read_text()  # made, and owned by the app's user


def test_compose_runs_the_notify_worker_as_make_up_does():
    """The same command line as scripts/localfarm.py's: the "notify" queue
    (notify.* tasks' default route), threads, several sends at once."""
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert services["notify"]["command"] == " ".join(["celery", *lf.notify_argv()[1:]])
    assert "--queues notify " in services["notify"]["command"]


def test_make_status_expects_the_notify_worker():
    """`make up` starts it (scripts/farm.py), so `make status` reports it missing
    when it is not running."""
    from scripts import farm

    assert {"control", "notify", "web"} <= set(farm.expected_names())


def test_compose_gives_each_daemon_a_data_volume_of_its_own_its_worker_reads():
    """Each daemon's data root is its own volume, bound to a host folder meant to be
    a filesystem of its own (docs/deploy.md); its worker alone mounts it, read-only,
    at the path the daemon names, to measure it (pool/disks.py)."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services, volumes = compose["services"], compose["volumes"]
    daemons = [name for name in services if name.startswith("dind-")]
    assert daemons
    for daemon in daemons:
        volume = f"{daemon}-data"
        assert f"{volume}:/var/lib/docker" in services[daemon]["volumes"]
        assert volumes[volume]["driver_opts"]["o"] == "bind"
        on_it = {
            name
            for name, service in services.items()
            if any(v.startswith(f"{volume}:") for v in service.get("volumes", []))
        }
        assert on_it == {daemon, daemon.replace("dind", "worker")}
        assert f"{volume}:/var/lib/docker:ro" in services[daemon.replace("dind", "worker")]["volumes"]


def test_compose_registry_takes_only_the_farms_tokens():
    """The registry under auth.token, trusting the certificate web makes in the shared volume."""
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    registry = services["registry"]["environment"]
    assert registry["REGISTRY_AUTH"] == "token" and registry["REGISTRY_AUTH_TOKEN_REALM"].endswith("/v2/token}")
    assert "registry-token:/certs:ro" in services["registry"]["volumes"]
    assert "manage.py registrykey" in services["web"]["command"]
    app = services["web"]["environment"]
    assert (
        registry["REGISTRY_AUTH_TOKEN_ROOTCERTBUNDLE"].rsplit("/", 1)[1]
        == app["GENERATOR_REGISTRY_TOKEN_CERT"].rsplit("/", 1)[1]
    )
