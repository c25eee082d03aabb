"""Push credentials: a registry that asks for a password gets the one stored for it,
through the API that never shows it again."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request

import bcrypt
import pytest

from builds.models import BuildJob, Registry
from scripts import localfarm as lf
from tests.farm.conftest import follow, submit

pytestmark = pytest.mark.farm

USER, PASSWORD = "pusher", "a registry password"


@pytest.fixture(scope="module")
def private_registry(farm, farm_db):
    htpasswd = farm.services_dir / "htpasswd"
    htpasswd.write_text(f"{USER}:{bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt()).decode()}\n")
    port = farm.outside.spare_ports[1]  # a loopback port the farm's egress policy lets daemons reach
    Registry.objects.get_or_create(host=f"localhost:{port}")  # allowed, no credentials yet
    lf.start_registry(farm.supervisor, port, farm.services_dir / "private-registry", "private-registry", htpasswd)
    yield f"localhost:{port}"
    farm.supervisor.stop("private-registry")


def pushed_digest(registry: str, repository: str, tag: str) -> str | None:
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    request = urllib.request.Request(
        f"http://{registry}/v2/{repository}/manifests/{tag}",
        method="HEAD",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json", "Authorization": f"Basic {auth}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.headers["Docker-Content-Digest"]
    except urllib.error.HTTPError:
        return None


def test_without_credentials_the_push_is_refused_once_not_retried(farm, token, private_registry):
    job_id = submit(farm, token, f"{private_registry}/team/app", "FROM busybox\nRUN true\n")
    done = follow(farm, job_id, token)
    job = BuildJob.objects.get(pk=job_id)
    assert done.end["status"] == job.status == "failed"
    assert "no basic auth credentials" in job.error or "unauthorized" in job.error.lower()
    assert job.attempt == 1 and "try 2" not in " ".join(t for _, t in done.lines)


def test_stored_credentials_are_used_and_never_shown(farm, token, private_registry):
    row = Registry.objects.get(host=private_registry)
    request = urllib.request.Request(
        f"http://{farm.web}/api/v1/registries/{row.pk}/",
        data=json.dumps({"username": USER, "password": PASSWORD}).encode(),
        method="PATCH",
        headers={"Authorization": f"Token {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        created = json.loads(response.read())
    assert "password" not in created and created["username"] == USER

    job_id = submit(farm, token, f"{private_registry}/team/app", "FROM busybox\nRUN echo private\n")
    done = follow(farm, job_id, token)
    job = BuildJob.objects.get(pk=job_id)
    assert done.end["status"] == "succeeded", job.error
    assert pushed_digest(private_registry, "team/app", "latest") == job.digest
    assert not [text for _, text in done.lines if PASSWORD in text]
