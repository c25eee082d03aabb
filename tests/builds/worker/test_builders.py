"""Which builder a build gets (classic or BuildKit), and what BuildKit is given
to reach the daemon. Building with each is tested on real daemons in
tests/farm/test_buildkit_builds.py."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from builds.jobs.services import BuildRequest, builder_for, retry_build, submit
from builds.models import BuildJob, Repository
from builds.worker.builders import daemon_address
from pool.tls import ClientTLS

DOCKERFILE = "FROM busybox\nRUN true\n"
IMAGE = "localhost:5000/team/app:1"


def post(user, body: dict):
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {user.api_token}")
    return api.post("/api/v1/builds/", {"image": IMAGE, "dockerfile": DOCKERFILE, **body}, format="json")


def test_buildkit_is_refused_until_an_operator_enables_it(operator, daemon, settings):
    settings.GENERATOR_BUILDERS = ["classic"]
    response = post(operator, {"builder": "buildkit"})
    assert response.status_code == 400 and "GENERATOR_BUILDERS" in response.json()["detail"]
    assert not BuildJob.objects.exists()


def test_the_job_records_the_builder_asked_for_else_the_repositorys_else_the_farms(operator, daemon, settings):
    settings.GENERATOR_BUILDERS = ["classic", "buildkit"]
    settings.GENERATOR_DEFAULT_BUILDER = "classic"
    assert post(operator, {}).json()["builder"] == "classic"
    created = post(operator, {"builder": "buildkit", "target": "release"}).json()
    assert (created["builder"], created["target"]) == ("buildkit", "release")
    repository = Repository(full_name="team/app", image="localhost:5000/team/app", builder="buildkit")
    request = BuildRequest(image=IMAGE, repository=repository, ref="main")
    assert builder_for(request) == "buildkit"
    request.builder = "classic"
    assert builder_for(request) == "classic"


def test_a_retry_keeps_the_builder_and_target(operator, daemon, settings):
    settings.GENERATOR_BUILDERS = ["classic", "buildkit"]
    job = submit(BuildRequest(image=IMAGE, dockerfile=DOCKERFILE, builder="buildkit", target="ok"))
    BuildJob.objects.filter(pk=job.pk).update(status="failed")
    job.refresh_from_db()
    again = retry_build(job, operator)
    assert (again.builder, again.target) == ("buildkit", "ok")


@pytest.mark.parametrize("target", ["-x", "a b", "x" * 200, "$(id)"])
def test_a_target_that_names_no_stage_is_refused(operator, daemon, target):
    response = post(operator, {"target": target})
    assert response.status_code == 400 and "stage" in response.json()["detail"]


def test_the_cli_reaches_a_tls_daemon_with_the_farms_own_certificate_files(tmp_path):
    for name in ("ca", "cert", "key"):
        (tmp_path / f"{name}.pem").write_text("pem")
    files = {name: str(tmp_path / f"{name}.pem") for name in ("ca", "cert", "key")}
    tls = ClientTLS(client_cert=(files["cert"], files["key"]), ca_cert=files["ca"], verify=True)
    address = daemon_address({"base_url": "tcp://10.0.0.5:2376", "tls": tls})
    assert address.argv() == [
        "--host",
        "tcp://10.0.0.5:2376",
        "--tlsverify",
        f"--tlscacert={files['ca']}",
        f"--tlscert={files['cert']}",
        f"--tlskey={files['key']}",
    ]
    assert daemon_address({"base_url": "unix:///run/d.sock", "tls": False}).argv() == ["--host", "unix:///run/d.sock"]


def test_a_worker_says_which_buildkit_client_it_found_on_its_daemons_rows(db, settings, tmp_path):
    from builds.worker import builders
    from pool.models import DockerDaemon

    DockerDaemon.objects.create(name="d1", url="unix:///run/d1.sock")
    DockerDaemon.objects.create(name="d2", url="unix:///run/d2.sock")
    builders.buildkit_client.cache_clear()
    assert builders.report_client(["d1"]).startswith("/usr/bin/docker 20.10")
    assert DockerDaemon.objects.get(name="d1").buildkit_client.startswith("/usr/bin/docker 20.10")
    assert DockerDaemon.objects.get(name="d2").buildkit_client == ""
    settings.GENERATOR_DOCKER_CLI = str(tmp_path / "no-docker")
    builders.buildkit_client.cache_clear()
    try:
        assert builders.report_client(["d2"]).startswith("none: no docker CLI")
    finally:
        builders.buildkit_client.cache_clear()
    assert DockerDaemon.objects.get(name="d2").buildkit_client.startswith("none: no docker CLI")


def test_a_dockerfile_given_as_text_goes_to_buildkit_alone_unless_it_copies(operator, daemon, settings):
    from builds.dockerfiles.in_context import FoundDockerfile
    from builds.worker.builders import _context_free_dockerfile

    settings.GENERATOR_BUILDERS = ["classic", "buildkit"]
    job = submit(BuildRequest(image=IMAGE, dockerfile=DOCKERFILE, builder="buildkit"), submitted_by=operator)
    alone = _context_free_dockerfile(job, FoundDockerfile("Dockerfile", DOCKERFILE.encode()))
    # Scoped to the team as the tar's Dockerfile is (builds/worker/cache_scope.py).
    assert alone is not None and alone.startswith(b"FROM busybox\nARG GENERATOR_TEAM_")
    assert alone.endswith(b"RUN true\n")
    copying = b"FROM busybox\nCOPY Dockerfile /\n"
    assert _context_free_dockerfile(job, FoundDockerfile("Dockerfile", copying)) is None  # the tar has what it names
    job.ref = "refs/heads/main"
    assert _context_free_dockerfile(job, FoundDockerfile("Dockerfile", DOCKERFILE.encode())) is None
