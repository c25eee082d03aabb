"""Base-image updates on the real farm: a repository built FROM an image in the
farm's registry is built again, once, by the control worker's beat when a new
image is pushed under the same tag; the build pulls it, its reason names both
digests, and later checks with nothing new start nothing."""

from __future__ import annotations

import gzip
import hashlib
import json
import time
import uuid

import pytest

from builds.models import BaseImage, BuildJob
from builds.registry_api import DOCKER_MANIFEST, RegistryAPI

from .conftest import BUSYBOX_ROOTFS, follow, http_get, wait_for
from .test_github_builds import _token, post_webhook, push_payload
from .test_triggers import repository  # noqa: F401  (a fixture: the farm's repository with a git source)

pytestmark = pytest.mark.farm

BASE = "codertocat/base"


def push_base_image(farm, generation: str) -> str:
    """busybox under BASE:latest, its config labelled with `generation` (so a new
    digest each time), written into the farm's registry; answers its digest."""
    rootfs = BUSYBOX_ROOTFS()
    layer = gzip.compress(rootfs, mtime=0)
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["sh"], "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "Labels": {"generation": generation}},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(rootfs).hexdigest()]},
    }).encode()  # fmt: skip
    with RegistryAPI(farm.registry, token_source=farm.signer.farm_token) as api:
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": len(config),
                       "digest": api.push_blob(BASE, config)},
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": len(layer),
                        "digest": api.push_blob(BASE, layer)}],
        }).encode()  # fmt: skip
        return api.put_manifest(BASE, "latest", DOCKER_MANIFEST, manifest).digest


def rebuilds(of):
    return BuildJob.objects.filter(repository=of, reason__startswith="base image")


def test_a_new_base_image_under_the_same_tag_rebuilds_the_default_branch_once(farm, repository):  # noqa: F811
    source, repository = repository
    token = _token(farm)
    run = uuid.uuid4().hex
    first = push_base_image(farm, f"{run}-1")
    repository.rules.create(source="branch", pattern="main", tags="latest")
    repository.rebuild_on_base_image_change = True
    repository.save()

    before = source.commit({"Dockerfile": f"FROM {farm.registry}/{BASE}\nRUN echo built # {run}\n"})
    after = source.commit({"README": "pushed\n"})
    payload = push_payload(repository.full_name, "refs/heads/main", before, after)
    payload["repository"]["default_branch"] = "main"
    status, answer = post_webhook(farm, payload, delivery=f"base-{after}")
    assert status == 202, answer
    [built_id] = answer["jobs"]
    done = follow(farm, built_id, token)
    assert done.end["status"] == "succeeded", [text for _, text in done.lines]
    reference = f"{farm.registry}/{BASE}:latest"
    row = wait_for(
        lambda: BaseImage.objects.filter(repository=repository, reference=reference, built_digest=first).first(),
        timeout=10,
        what="the first build's base image, recorded",
    )
    time.sleep(3)  # beat checks every second here: nothing has changed, nothing builds
    assert not rebuilds(repository).exists()

    second = push_base_image(farm, f"{run}-2")
    job = wait_for(lambda: rebuilds(repository).first(), timeout=30, what="the base-image build")
    assert job.reason == f"base image {reference} changed from {first} to {second}"
    assert (job.ref, job.pull, job.image) == ("refs/heads/main", True, f"{repository.image}:latest")
    followed = follow(farm, job.id, token)
    text = "\n".join(line for _, line in followed.lines)
    assert followed.end["status"] == "succeeded", text
    assert "Pulling the base images afresh" in text and f"FROM {farm.registry}/{BASE}@{second}" in text
    status, body = http_get(f"http://{farm.web}/api/v1/builds/{job.id}/", token)
    assert status == 200 and json.loads(body)["reason"] == job.reason

    wait_for(
        lambda: BaseImage.objects.filter(pk=row.pk, built_digest=second).exists(),
        timeout=10,
        what="the rebuild's base image, recorded",
    )
    time.sleep(3)  # three more checks, no change: no second build
    assert rebuilds(repository).count() == 1
