"""REST API v1: each endpoint and auth case, through DRF's HTTP handling in process.
(The builds these create are queued in the test Redis; tests/farm/test_api_builds.py
runs one for real.)"""

from __future__ import annotations

import io
import tarfile

import pytest
from rest_framework.test import APIClient

from builds.models import BuildContext, BuildJob, BuildLogLine, Repository
from pool.models import DockerDaemon

DOCKERFILE = "FROM busybox\nRUN echo hi\n"


@pytest.fixture
def api():
    return APIClient()


def as_user(api, user):
    api.credentials(HTTP_AUTHORIZATION=f"Token {user.api_token}")
    return api


def context_tar(dockerfile: str = DOCKERFILE) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        data = dockerfile.encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


# --- builds -------------------------------------------------------------------------


def test_create_from_dockerfile_text(api, operator, daemon):
    response = as_user(api, operator).post(
        "/api/v1/builds/",
        {
            "image": "localhost:5000/a/b:1.0",
            "dockerfile": DOCKERFILE,
            "extra_tags": ["latest"],
            "build_args": {"V": "1"},
            "labels": {"team": "x"},
            "no_cache": True,
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert (body["status"], body["image"], body["tags"]) == ("queued", "localhost:5000/a/b:1.0", ["1.0", "latest"])
    assert body["links"]["websocket"].endswith(f"/b1/build/log/ws/{body['id']}")
    job = BuildJob.objects.get(pk=body["id"])
    assert (job.build_args, job.labels, job.no_cache, job.submitted_by) == ({"V": "1"}, {"team": "x"}, True, operator)


def test_create_from_an_uploaded_context_multipart(api, operator, daemon):
    upload = io.BytesIO(context_tar())
    upload.name = "context.tar"
    response = as_user(api, operator).post(
        "/api/v1/builds/", {"image": "localhost:5000/a/b", "context": upload}, format="multipart"
    )
    assert response.status_code == 201, response.json()
    assert BuildContext.objects.filter(job_id=response.json()["id"]).exists()


def test_create_from_a_raw_tar_body(api, operator, daemon):
    response = as_user(api, operator).generic(
        "POST", "/api/v1/builds/?image=localhost:5000/a/raw", context_tar(), content_type="application/x-tar"
    )
    assert response.status_code == 201, response.json()
    assert BuildJob.objects.get(pk=response.json()["id"]).image == "localhost:5000/a/raw:latest"


def test_a_hostile_upload_is_400_with_the_reason(api, operator, daemon):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in ("Dockerfile", "../../etc/cron.d/x"):
            info = tarfile.TarInfo(name)
            tar.addfile(info, io.BytesIO(b""))
    response = as_user(api, operator).generic(
        "POST", "/api/v1/builds/?image=a/b", buffer.getvalue(), content_type="application/x-tar"
    )
    assert response.status_code == 400
    assert "outside it: '../../etc/cron.d/x'" in response.json()["detail"]
    assert not BuildJob.objects.exists()


def test_an_upload_over_the_limit_is_413(api, operator, daemon, settings):
    settings.GENERATOR_MAX_UPLOAD_BYTES = 1000
    response = as_user(api, operator).generic(
        "POST", "/api/v1/builds/?image=a/b", context_tar() * 3, content_type="application/x-tar"
    )
    assert response.status_code == 413


@pytest.fixture
def repository(db):
    return Repository.objects.create(
        full_name="Codertocat/Hello-World",
        clone_url="https://x.invalid/h.git",
        webhook_secret="s",
        image="localhost:5000/c/h",
    )


def test_create_from_a_repository_and_ref(api, operator, daemon, repository):
    response = as_user(api, operator).post(
        "/api/v1/builds/",
        {"image": "localhost:5000/c/h:dev", "repository": "Codertocat/Hello-World", "ref": "main"},
        format="json",
    )
    assert response.status_code == 201, response.json()
    job = BuildJob.objects.get(pk=response.json()["id"])
    assert (job.repository, job.ref, job.commit_sha) == (repository, "main", "")


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"image": "a/b"}, "exactly one source"),
        (
            {"image": "a/b", "dockerfile": DOCKERFILE, "repository": "Codertocat/Hello-World", "ref": "x"},
            "exactly one source",
        ),
        ({"image": "Bad/Image", "dockerfile": DOCKERFILE}, "must be lowercase"),
        ({"image": "a/b", "dockerfile": DOCKERFILE, "extra_tags": ["bad tag"]}, "not a valid tag"),
        (
            {"image": "a/b", "repository": "Codertocat/Hello-World", "ref": "--upload-pack=evil"},
            "not a branch, tag or commit",
        ),
    ],
)
def test_bad_requests_are_400_with_a_reason(api, operator, daemon, repository, payload, reason):
    response = as_user(api, operator).post("/api/v1/builds/", payload, format="json")
    assert response.status_code == 400
    assert reason in response.json()["detail"]
    assert not BuildJob.objects.exists()


def test_an_unknown_repository_is_a_field_error(api, operator, daemon):
    response = as_user(api, operator).post(
        "/api/v1/builds/", {"image": "a/b", "repository": "no/such", "ref": "main"}, format="json"
    )
    assert response.status_code == 400 and "repository" in response.json()


def test_list_filters_and_paginates(api, reader, daemon, team):
    BuildJob.objects.create(
        image="localhost:5000/a/b:1", dockerfile=DOCKERFILE, status="succeeded", daemon=daemon, team=team
    )
    BuildJob.objects.create(image="localhost:5000/x/y:1", dockerfile=DOCKERFILE, status="failed", team=team)
    as_user(api, reader)
    assert api.get("/api/v1/builds/").json()["count"] == 2
    assert [b["image"] for b in api.get("/api/v1/builds/?status=failed").json()["results"]] == ["localhost:5000/x/y:1"]
    assert api.get("/api/v1/builds/?image=localhost:5000/a/").json()["count"] == 1
    assert api.get(f"/api/v1/builds/?daemon={daemon.name}").json()["count"] == 1


def test_detail_and_log_with_an_offset(api, reader, daemon, team):
    job = BuildJob.objects.create(
        image="a/b:latest", dockerfile=DOCKERFILE, status="building", log_line_count=3, team=team
    )
    BuildLogLine.objects.bulk_create(BuildLogLine(job=job, seq=i, text=f"line {i}") for i in (1, 2, 3))
    as_user(api, reader)
    assert api.get(f"/api/v1/builds/{job.id}/").json()["log_line_count"] == 3
    response = api.get(f"/api/v1/builds/{job.id}/log/?offset=1")
    assert response.content == b"line 2\nline 3\n"
    assert (response["X-Log-Next-Offset"], response["X-Build-Status"]) == ("3", "building")
    assert api.get(f"/api/v1/builds/{job.id}/log/?offset=x").status_code == 400
    assert api.get(f"/api/v1/builds/{'0' * 32}/").status_code == 404


def test_cancel_and_retry(api, operator, daemon):
    as_user(api, operator)
    build = {"image": "localhost:5000/a/b", "dockerfile": DOCKERFILE}
    job_id = api.post("/api/v1/builds/", build, format="json").json()["id"]
    assert api.post(f"/api/v1/builds/{job_id}/retry/").status_code == 409  # still queued
    response = api.post(f"/api/v1/builds/{job_id}/cancel/")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert api.post(f"/api/v1/builds/{job_id}/cancel/").status_code == 409
    retried = api.post(f"/api/v1/builds/{job_id}/retry/")
    assert retried.status_code == 201 and retried.json()["retry_of"] == job_id
    assert BuildJob.objects.get(pk=retried.json()["id"]).dockerfile == DOCKERFILE


def test_a_reader_may_not_build_or_cancel(api, reader, operator, daemon, team):
    job = BuildJob.objects.create(image="a/b:latest", dockerfile=DOCKERFILE, submitted_by=operator, team=team)
    as_user(api, reader)
    assert api.post("/api/v1/builds/", {"image": "a/b", "dockerfile": DOCKERFILE}, format="json").status_code == 403
    assert api.post(f"/api/v1/builds/{job.id}/cancel/").status_code == 403


def test_anonymous_requests_are_401(api, daemon):
    assert api.get("/api/v1/builds/").status_code == 401
    api.credentials(HTTP_AUTHORIZATION="Token " + "0" * 40)
    assert api.get("/api/v1/builds/").status_code == 401


# --- daemons and repositories ---------------------------------------------------------


def test_daemons_are_read_by_users_and_changed_by_staff(api, reader, operator, daemon):
    as_user(api, reader)
    assert [d["name"] for d in api.get("/api/v1/daemons/").json()["results"]] == ["unit-daemon"]
    assert api.post(f"/api/v1/daemons/{daemon.pk}/drain/").status_code == 403
    as_user(api, operator)
    assert api.post(f"/api/v1/daemons/{daemon.pk}/drain/").json()["draining"] is True
    assert api.post(f"/api/v1/daemons/{daemon.pk}/enable/").json()["draining"] is False
    new = {"name": "new", "url": "unix:///run/generator/new/docker.sock", "capacity": 3}
    created = api.post("/api/v1/daemons/", new, format="json")
    assert created.status_code == 201 and DockerDaemon.objects.get(name="new").capacity == 3
    bad = api.post("/api/v1/daemons/", {"name": "bad", "url": "http://x", "capacity": 0}, format="json").json()
    assert set(bad) == {"url", "capacity"}


def test_repositories_never_show_their_secrets(api, operator, reader, db):
    as_user(api, operator)
    response = api.post(
        "/api/v1/repositories/",
        {
            "full_name": "a/b",
            "clone_url": "https://x.invalid/a/b.git",
            "webhook_secret": "hush",
            "access_token": "tok",
            "image": "localhost:5000/a/b",
            "rules": [{"source": "branch", "pattern": "main", "tags": "latest"}],
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    assert "webhook_secret" not in response.json() and "access_token" not in response.json()
    repository = Repository.objects.get(full_name="a/b")
    assert (repository.webhook_secret, repository.rules.get().tags) == ("hush", "latest")
    as_user(api, reader)
    listed = api.get("/api/v1/repositories/").content.decode()
    assert "hush" not in listed and "tok" not in listed
    assert api.post("/api/v1/repositories/", {}, format="json").status_code == 403


def test_a_bad_rule_or_clone_url_is_refused(api, operator, db):
    as_user(api, operator)
    response = api.post(
        "/api/v1/repositories/",
        {
            "full_name": "a/b",
            "clone_url": "file:///etc",
            "webhook_secret": "s",
            "image": "a/b",
            "rules": [{"source": "tag", "pattern": "/(/", "tags": "x"}],
        },
        format="json",
    )
    assert response.status_code == 400
    assert set(response.json()) == {"clone_url", "rules"}


# --- schema and docs ---------------------------------------------------------------


def test_the_schema_and_docs_are_served_without_a_cdn(api, db):
    schema = api.get("/api/schema/?format=json").json()
    assert schema["openapi"].startswith("3.") and "/api/v1/builds/{id}/cancel/" in schema["paths"]
    docs = api.get("/api/docs/").content.decode()
    assert "swagger-ui" in docs and "cdn" not in docs.lower() and "/static/drf_spectacular_sidecar/" in docs


def test_registries_are_staff_only_and_passwords_write_only(api, operator, reader, db):
    from builds.models import Registry
    from lib.crypto import decrypt

    as_user(api, reader)
    assert api.get("/api/v1/registries/").status_code == 403
    as_user(api, operator)
    created = api.post(
        "/api/v1/registries/", {"host": "registry.example.invalid", "username": "u", "password": "p4ss"}, format="json"
    )
    assert created.status_code == 201 and "password" not in created.json()
    assert "p4ss" not in api.get("/api/v1/registries/").content.decode()
    stored = Registry.objects.get(host="registry.example.invalid").password
    assert "p4ss" not in stored and decrypt(stored) == "p4ss"  # encrypted at rest
    registry_id = created.json()["id"]
    assert api.patch(f"/api/v1/registries/{registry_id}/", {"username": "v"}, format="json").status_code == 200
    assert Registry.objects.get(pk=registry_id).password == stored  # untouched when not given


def test_a_filter_with_a_nul_character_is_a_400_on_every_database(client, operator):
    # Found by the API fuzz test on PostgreSQL, whose text cannot hold NUL: it was a 500.
    client.force_login(operator)
    response = client.get("/api/v1/builds/", {"repository": "a\x00b"})
    assert response.status_code == 400 and "must not contain NUL" in str(response.json())
