"""Builds push only to registries an operator allowed (Registry rows): every front
door refuses any other at submit, naming the registry, and creates no job."""

from __future__ import annotations

import io

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from builds.models import BuildJob, Registry, Repository, WebhookDelivery
from lib.references import registry_host
from tests.builds.github.test_webhooks import deliver, push_to_existing_branch, register
from tests.builds.test_api import as_user, context_tar
from tests.builds.test_seed_api import b64
from tests.builds.test_seed_api import submit as seed_submit

DOCKERFILE = "FROM busybox\nRUN echo hi\n"
REFUSAL = (
    "registry localhost:5999 is not one the farm pushes to:"
    " an operator adds it under Registries (admin or /api/v1/registries/)"
)


@pytest.fixture
def api(operator):
    return as_user(APIClient(), operator)


# --- which registry an image goes to ------------------------------------------------------


@pytest.mark.parametrize(
    ("repository", "host"),
    [
        ("busybox", "docker.io"),
        ("library/x", "docker.io"),
        ("team/app", "docker.io"),
        ("docker.io/team/app", "docker.io"),
        ("index.docker.io/library/x", "docker.io"),
        ("localhost/app", "localhost"),
        ("localhost:5000/team/app", "localhost:5000"),
        ("127.0.0.1:5000/team/app", "127.0.0.1:5000"),
        ("registry.example.com/a/b/c", "registry.example.com"),
        ("Registry/app", "Registry"),  # capitals: a host, as Docker reads it
    ],
)
def test_the_registry_of_an_image_is_the_one_docker_pushes_to(repository, host):
    assert registry_host(repository) == host


def test_docker_hub_names_need_the_docker_io_row(client, operator, daemon):
    assert seed_submit(client, operator.api_token, imagename="busybox", dockerfile=b64(DOCKERFILE)).status_code == 400
    Registry.objects.create(host="index.docker.io")  # Docker Hub's other spelling counts too
    for image in ("busybox", "library/x", "team/app:1"):
        response = seed_submit(client, operator.api_token, imagename=image, dockerfile=b64(DOCKERFILE))
        assert response.status_code == 200, response.content


def test_hosts_match_exactly(client, operator, daemon):
    response = seed_submit(client, operator.api_token, imagename="127.0.0.1:5000/a/b", dockerfile=b64(DOCKERFILE))
    assert response.status_code == 400 and "registry 127.0.0.1:5000 is not one" in response.content.decode()


# --- every front door ---------------------------------------------------------------------


def test_the_seed_api_refuses_an_unlisted_registry_in_one_line(client, operator, daemon):
    response = seed_submit(client, operator.api_token, imagename="localhost:5999/a/b", dockerfile=b64(DOCKERFILE))
    assert (response.status_code, response["Content-Type"]) == (400, "text/plain")
    assert response.content.decode() == REFUSAL + "\n"
    assert not BuildJob.objects.exists()


def test_the_seed_api_builds_for_a_listed_registry(client, operator, daemon):
    response = seed_submit(client, operator.api_token, imagename="localhost:5000/a/b", dockerfile=b64(DOCKERFILE))
    assert response.status_code == 200
    assert BuildJob.objects.get(pk=response.content.decode()).image == "localhost:5000/a/b:latest"


def test_the_rest_api_refuses_an_unlisted_registry_as_json(api, daemon):
    build = {"image": "localhost:5999/a/b:1", "dockerfile": DOCKERFILE, "extra_tags": ["latest"]}
    response = api.post("/api/v1/builds/", build, format="json")
    assert response.status_code == 400 and response.json() == {"detail": REFUSAL}
    assert not BuildJob.objects.exists()


def test_the_rest_api_refuses_an_upload_for_an_unlisted_registry(api, daemon):
    upload = io.BytesIO(context_tar())
    upload.name = "context.tar"
    response = api.post("/api/v1/builds/", {"image": "localhost:5999/a/b", "context": upload}, format="multipart")
    assert response.status_code == 400 and response.json() == {"detail": REFUSAL}
    raw = api.generic(
        "POST", "/api/v1/builds/?image=localhost:5999/a/b", context_tar(), content_type="application/x-tar"
    )
    assert raw.status_code == 400 and raw.json() == {"detail": REFUSAL}
    assert not BuildJob.objects.exists()


def test_a_retry_is_refused_once_its_registry_is_no_longer_listed(api, daemon, allowed_registry):
    job = BuildJob.objects.create(image="localhost:5000/a/b:latest", dockerfile=DOCKERFILE, status="failed")
    allowed_registry.delete()
    response = api.post(f"/api/v1/builds/{job.id}/retry/")
    assert response.status_code == 400 and "registry localhost:5000 is not one" in response.json()["detail"]
    assert BuildJob.objects.count() == 1


# --- webhook repositories -----------------------------------------------------------------


def repository_for(image: str) -> Repository:
    return Repository(
        full_name="team/app", clone_url="https://git.example.invalid/team/app.git", webhook_secret="s", image=image
    )


def test_a_repository_may_not_name_an_unlisted_registry(allowed_registry):
    with pytest.raises(ValidationError) as refused:
        repository_for("localhost:5999/team/app").full_clean()
    assert refused.value.message_dict == {"image": [REFUSAL]}
    repository_for("localhost:5000/team/app").full_clean()


def test_the_repository_api_refuses_an_unlisted_registry(api):
    fields = {"full_name": "team/app", "clone_url": "https://g.invalid/a.git", "webhook_secret": "s"}
    response = api.post("/api/v1/repositories/", {**fields, "image": "localhost:5999/team/app"}, format="json")
    assert response.status_code == 400 and REFUSAL in str(response.json())
    assert not Repository.objects.exists()


def test_a_webhook_refuses_once_the_registry_row_is_deleted(client, daemon, allowed_registry):
    register("Codertocat/Hello-World")  # image localhost:5000/codertocat/hello-world
    allowed_registry.delete()
    response = deliver(client, push_to_existing_branch())
    assert response.status_code == 400
    assert response.json() == {"result": REFUSAL.replace("5999", "5000"), "jobs": []}
    assert WebhookDelivery.objects.get().result == REFUSAL.replace("5999", "5000")
    assert not BuildJob.objects.exists()


# --- the rows -----------------------------------------------------------------------------


def test_a_registry_row_needs_no_credentials_and_hub_is_spelled_one_way(api):
    created = api.post("/api/v1/registries/", {"host": "index.docker.io"}, format="json")
    assert created.status_code == 201, created.json()
    assert (created.json()["host"], created.json()["username"]) == ("docker.io", "")
    again = api.post("/api/v1/registries/", {"host": "docker.io"}, format="json")
    assert again.status_code == 400 and "host" in again.json()


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"host": "https://registry.example.com"}, "is not a registry host"),
        ({"host": "registry.example.com/team"}, "is not a registry host"),
        ({"host": "myregistry"}, "as an image on Docker Hub"),
        ({"host": "r.example.com", "username": "u"}, "both a username and a password, or neither"),
        ({"host": "r.example.com", "password": "p"}, "both a username and a password, or neither"),
    ],
)
def test_a_bad_registry_row_is_refused_with_the_reason(api, fields, reason):
    response = api.post("/api/v1/registries/", fields, format="json")
    assert response.status_code == 400 and reason in str(response.json())


def test_clearing_the_username_drops_the_stored_password(api):
    row = Registry.objects.create(host="r.example.com", username="u", password="p")
    assert api.patch(f"/api/v1/registries/{row.pk}/", {"username": ""}, format="json").status_code == 200
    row.refresh_from_db()
    assert (row.username, row.password) == ("", "")


def test_admin_adds_a_registry_without_credentials(client, operator):
    client.force_login(operator)
    response = client.post("/admin/builds/registry/add/", {"host": "registry.example.com:5000"})
    assert response.status_code == 302
    assert Registry.objects.filter(host="registry.example.com:5000", username="", password="").exists()


def test_allowregistry_adds_a_row_once_and_keeps_stored_credentials(db, capsys):
    Registry.objects.create(host="r.example.com", username="u", password="p")
    call_command("allowregistry", "localhost:5000", "r.example.com")
    call_command("allowregistry", "localhost:5000")
    assert capsys.readouterr().out.splitlines() == [
        "builds may push to registry localhost:5000 (no credentials)",
        "registry r.example.com is already allowed",
        "registry localhost:5000 is already allowed",
    ]
    assert Registry.objects.get(host="r.example.com").password == "p"
    assert Registry.objects.count() == 2
    with pytest.raises(CommandError, match="is not a registry host"):
        call_command("allowregistry", "http://r.example.com")
