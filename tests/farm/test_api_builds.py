"""The REST API on the real farm: an uploaded context and a repository's ref are built
and pushed; a retry builds again."""

from __future__ import annotations

import io
import json
import tarfile
import urllib.request

import pytest

from builds.models import BuildJob, Repository
from tests.farm.conftest import engine, follow, registry_digest
from tests.gitrepos import Repo

pytestmark = pytest.mark.farm


def api(farm, token, method, path, body: bytes | None = None, content_type="application/json"):
    request = urllib.request.Request(
        f"http://{farm.web}{path}",
        data=body,
        method=method,
        headers={"Authorization": f"Token {token}", "Content-Type": content_type},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, json.loads(response.read())


def gzipped_context(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_an_uploaded_context_is_built_and_a_retry_builds_it_again(farm, token):
    context = gzipped_context(
        {
            "build/Dockerfile": 'FROM busybox\nCOPY hello.txt /\nCMD ["cat", "/hello.txt"]\n',
            "hello.txt": "uploaded\n",
        }
    )
    query = f"image={farm.registry}/api/uploaded:v1&dockerfile_path=build/Dockerfile"
    status, job = api(farm, token, "POST", f"/api/v1/builds/?{query}", context, "application/gzip")
    assert status == 201 and job["status"] == "queued"
    assert follow(farm, job["id"], token).end["status"] == "succeeded"
    built = BuildJob.objects.get(pk=job["id"])
    assert registry_digest(farm, "api/uploaded", "v1") == built.digest
    output = engine(dict(farm.daemons)[built.daemon.name]).containers.run(
        f"{farm.registry}/api/uploaded:v1", remove=True, network_mode="none"
    )
    assert output == b"uploaded\n"

    status, retried = api(farm, token, "POST", f"/api/v1/builds/{job['id']}/retry/")
    assert status == 201 and retried["retry_of"] == job["id"]
    assert follow(farm, retried["id"], token).end["status"] == "succeeded"


def test_a_repository_ref_is_resolved_to_its_commit_and_built(farm, token, tmp_path):
    source = Repo(tmp_path, "api-repo")
    sha = source.commit({"Dockerfile": "FROM busybox\nCOPY v.txt /\n", "v.txt": "from main\n"})
    Repository.objects.update_or_create(
        full_name="team/api-repo",
        defaults={"clone_url": source.url, "webhook_secret": "s", "image": f"{farm.registry}/team/api-repo"},
    )
    body = json.dumps(
        {
            "image": f"{farm.registry}/team/api-repo:main",
            "repository": "team/api-repo",
            "ref": "main",
            "build_args": {"UNUSED": "1"},
        }
    ).encode()
    status, job = api(farm, token, "POST", "/api/v1/builds/", body)
    assert status == 201
    assert follow(farm, job["id"], token).end["status"] == "succeeded"
    status, detail = api(farm, token, "GET", f"/api/v1/builds/{job['id']}/")
    assert detail["commit_sha"] == sha and detail["digest"] == registry_digest(farm, "team/api-repo", "main")
