"""Uploaded contexts on their way to a build: streamed to disk, kept as files in
the context store (never in the database), read by the worker as a stream,
kept for retries, then pruned; a retry after the prune is a 409."""

from __future__ import annotations

import io
import os
import tarfile
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone
from rest_framework.test import APIClient

from builds import tasks
from builds.api import ContextUploadHandler, Refused
from builds.models import BuildContext, BuildJob
from builds.sources.git import SourceError
from builds.uploads import store as context_store
from builds.worker import runner
from tests.builds.uploads.test_contexts import gzip_of_zeros

DOCKERFILE = b"FROM busybox\nCOPY hello.txt /\n"


def gzipped_context(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


CONTEXT = gzipped_context({"Dockerfile": DOCKERFILE, "hello.txt": b"hello\n"})


@pytest.fixture
def folders(settings, tmp_path):
    """A context store and a temporary folder for uploads, of this test's own."""
    store = tmp_path / "store"
    settings.STORAGES = {
        **settings.STORAGES,
        "contexts": {"BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": str(store)}},
    }
    settings.FILE_UPLOAD_TEMP_DIR = str(tmp_path / "uploads")
    (tmp_path / "uploads").mkdir()
    return store, tmp_path / "uploads"


@pytest.fixture
def api(operator):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {operator.api_token}")
    return client


def upload(api, body: bytes, *, multipart: bool = False, image: str = "localhost:5000/team/app"):
    if multipart:
        context = io.BytesIO(body)
        context.name = "context.tar.gz"
        return api.post("/api/v1/builds/", {"image": image, "context": context}, format="multipart")
    return api.generic("POST", f"/api/v1/builds/?image={image}", body, content_type="application/gzip")


def in_folder(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def ended(job_id: str, hours_ago: float) -> None:
    BuildJob.objects.filter(pk=job_id).update(
        status=BuildJob.Status.FAILED, finished_at=timezone.now() - timedelta(hours=hours_ago)
    )


@pytest.mark.parametrize("multipart", [False, True])
def test_an_upload_is_stored_as_a_file_in_the_store_not_in_the_database(api, daemon, folders, multipart):
    store, uploads = folders
    response = upload(api, CONTEXT, multipart=multipart)
    assert response.status_code == 201, response.json()
    context = BuildContext.objects.get(job_id=response.json()["id"])
    assert context.name == f"{context.job_id}.tar" and in_folder(store) == [context.name]
    with tarfile.open(store / context.name) as tar:
        assert tar.extractfile("Dockerfile").read() == DOCKERFILE
    assert (context.size, context.members) == ((store / context.name).stat().st_size, 2)
    assert "data" not in {field.name for field in BuildContext._meta.get_fields()}
    assert in_folder(uploads) == []  # the upload's and the check's temporary files are gone


@pytest.mark.parametrize("multipart", [False, True])
def test_a_gzip_bomb_is_413_with_the_reason_and_leaves_nothing_behind(api, daemon, folders, settings, multipart):
    store, uploads = folders
    settings.GENERATOR_MAX_CONTEXT_BYTES = 8 * 1024 * 1024
    response = upload(api, gzip_of_zeros(64 * 1024 * 1024), multipart=multipart)
    assert response.status_code == 413
    assert response.json() == {"detail": "the build context decompresses to more than the 8388608-byte limit"}
    assert not BuildJob.objects.exists() and not BuildContext.objects.exists()
    assert in_folder(store) == [] and in_folder(uploads) == []


def test_too_many_files_is_413_naming_the_limit(api, daemon, folders, settings):
    settings.GENERATOR_MAX_CONTEXT_FILES = 3
    files = {"Dockerfile": DOCKERFILE, **{f"f{n}": b"x" for n in range(4)}}
    response = upload(api, gzipped_context(files))
    assert response.status_code == 413
    assert "more than 3 files" in response.json()["detail"]
    assert in_folder(folders[0]) == [] and in_folder(folders[1]) == []


def test_an_upload_stops_at_the_byte_limit_as_it_arrives_whatever_it_declared(folders, settings):
    """A chunked body declares no length: the handler counts what arrives."""
    settings.GENERATOR_MAX_UPLOAD_BYTES = 100_000
    handler = ContextUploadHandler()
    handler.new_file("context", "context.tar.gz", "application/gzip", None)
    on_disk = Path(handler.file.temporary_file_path())
    assert on_disk.parent == folders[1]
    handler.receive_data_chunk(b"x" * 65_536, 0)
    with pytest.raises(Refused) as refused:
        handler.receive_data_chunk(b"x" * 65_536, 65_536)
    assert refused.value.status_code == 413 and "100000-byte limit" in str(refused.value.detail)
    assert not on_disk.exists()


def test_the_worker_reads_the_stored_context_as_a_stream(api, daemon, folders):
    job = BuildJob.objects.get(pk=upload(api, CONTEXT).json()["id"])
    with runner._source(job, log=None, watch=None) as (context, dockerfile, _):
        assert dockerfile == "Dockerfile"
        assert context.read() == (folders[0] / f"{job.id}.tar").read_bytes()
    assert context.closed


def test_a_context_is_kept_for_retries_then_pruned(api, daemon, folders, settings):
    store = folders[0]
    settings.GENERATOR_CONTEXT_RETENTION_HOURS = 24
    old, recent, waiting = (upload(api, CONTEXT).json()["id"] for _ in range(3))
    ended(old, hours_ago=25)
    ended(recent, hours_ago=23)
    BuildJob.objects.filter(pk=waiting).update(created_at=timezone.now() - timedelta(hours=48))
    orphans = [store / "gone-job.tar", store / "new-job.tar"]
    for orphan in orphans:
        orphan.write_bytes(b"left behind")
    day_ago = (timezone.now() - timedelta(hours=25)).timestamp()
    os.utime(orphans[0], (day_ago, day_ago))

    tasks.prune_contexts()  # beat's task

    assert in_folder(store) == sorted([f"{recent}.tar", f"{waiting}.tar", "new-job.tar"])
    assert BuildContext.objects.get(job_id=old).pruned_at is not None
    assert BuildContext.objects.get(job_id=recent).pruned_at is None
    assert settings.CELERY_BEAT_SCHEDULE["prune-contexts"]["task"] == "farm.prune_contexts"


def test_a_retry_builds_the_same_context_from_a_copy_of_its_own(api, daemon, folders):
    first = upload(api, CONTEXT).json()["id"]
    ended(first, hours_ago=1)
    response = api.post(f"/api/v1/builds/{first}/retry/")
    assert response.status_code == 201, response.json()
    second = response.json()["id"]
    store = folders[0]
    assert (store / f"{second}.tar").read_bytes() == (store / f"{first}.tar").read_bytes()


def test_a_retry_after_the_prune_is_409_saying_why(api, daemon, folders):
    job_id = upload(api, CONTEXT).json()["id"]
    ended(job_id, hours_ago=25)
    context_store.prune()
    response = api.post(f"/api/v1/builds/{job_id}/retry/")
    assert response.status_code == 409
    detail = response.json()["detail"]
    assert detail.startswith("the build cannot be retried: its build context was deleted at ")
    assert "24 hours after the build ended (GENERATOR_CONTEXT_RETENTION_HOURS): submit the context again" in detail
    assert BuildJob.objects.count() == 1
    job = BuildJob.objects.get(pk=job_id)
    gone = "the build cannot run: its build context was deleted"
    with pytest.raises(SourceError, match=gone), runner._source(job, log=None, watch=None):
        pass


@pytest.mark.django_db(transaction=True)
def test_the_migration_moves_database_blobs_to_files_and_back(folders):
    store = folders[0]
    tar = gzipped_context({"Dockerfile": DOCKERFILE})
    call_command("migrate", "builds", "0006", verbosity=0)
    try:
        old_apps = _apps_at(("builds", "0006_containment"))
        job = old_apps.get_model("builds", "BuildJob").objects.create(id="a" * 32, image="localhost:5000/a/b:1")
        old_apps.get_model("builds", "BuildContext").objects.create(job_id=job.id, data=tar)

        call_command("migrate", "builds", "0007", verbosity=0)
        moved = BuildContext.objects.get(job_id="a" * 32)
        assert (moved.name, moved.size) == ("a" * 32 + ".tar", len(tar))
        assert (store / moved.name).read_bytes() == tar

        call_command("migrate", "builds", "0006", verbosity=0)
        back = _apps_at(("builds", "0006_containment")).get_model("builds", "BuildContext").objects.get()
        assert bytes(back.data) == tar
    finally:
        call_command("migrate", verbosity=0)


def _apps_at(node):
    from django.db import connection

    return MigrationExecutor(connection).loader.project_state(node).apps


def test_every_compose_service_that_runs_the_farm_shares_the_context_store():
    import yaml

    compose = yaml.safe_load((Path(__file__).resolve().parents[3] / "docker-compose.yml").read_text())
    farm = {
        name: service for name, service in compose["services"].items() if service.get("image") == "generator:latest"
    }
    assert {"web", "beat", "worker-0", "worker-1", "notify"} <= set(farm)
    # The notify worker reads job rows and sends; it never opens a context, and has no volume.
    assert "volumes" not in farm.pop("notify")
    for name, service in farm.items():
        assert "contexts:/var/lib/generator/contexts" in service.get("volumes", []), name
