"""Base-image updates on the real farm: a repository built FROM an image in the
farm's registry is built again, once, by the control worker's beat when a new
image is pushed under the same tag; the build pulls it, its reason names both
digests, and later checks with nothing new start nothing. With BuildKit the
digests come from its log; with the classic builder from the daemon's
RepoDigests, which hold the new image only if the rebuild pulled it."""

from __future__ import annotations

import gzip
import hashlib
import json
import time
import uuid

import pytest

from builds.models import BaseImage, BuildJob
from builds.registry.client import DOCKER_MANIFEST, RegistryAPI
from tests.farm.conftest import BUSYBOX_ROOTFS, engine, follow, http_get, wait_for
from tests.farm.test_github_builds import _token, post_webhook, push_payload
from tests.farm.test_triggers import repository  # noqa: F401  (a fixture: the farm's repository with a git source)

pytestmark = pytest.mark.farm


def push_base_image(farm, name: str, generation: str) -> str:
    """busybox under NAME:latest, its config labelled with `generation` (so a new
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
                       "digest": api.push_blob(name, config)},
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": len(layer),
                        "digest": api.push_blob(name, layer)}],
        }).encode()  # fmt: skip
        return api.put_manifest(name, "latest", DOCKER_MANIFEST, manifest).digest


def checked(of, on: bool) -> None:
    """The repository's setting: while it is off, no check touches its rows, so
    what they hold came from its builds alone."""
    of.rebuild_on_base_image_change = on
    of.save(update_fields=["rebuild_on_base_image_change"])


def rebuilds(of, reference: str):
    return BuildJob.objects.filter(repository=of, reason__startswith=f"base image {reference} ")


@pytest.mark.parametrize("builder", ["buildkit", "classic"])
def test_a_new_base_image_under_the_same_tag_rebuilds_the_default_branch_once(farm, repository, builder):  # noqa: F811
    source, repository = repository
    token = _token(farm)
    run = uuid.uuid4().hex
    base = f"codertocat/base-{run[:12]}"  # a base of its own: a daemon holds no older image of it
    first = push_base_image(farm, base, f"{run}-1")
    repository.rules.create(source="branch", pattern="main", tags="latest")
    repository.builder = builder
    repository.save()
    checked(repository, False)

    before = source.commit({"Dockerfile": f"FROM {farm.registry}/{base}\nRUN echo built # {run}\n"})
    after = source.commit({"README": "pushed\n"})
    payload = push_payload(repository.full_name, "refs/heads/main", before, after)
    payload["repository"]["default_branch"] = "main"
    status, answer = post_webhook(farm, payload, delivery=f"base-{after}")
    assert status == 202, answer
    [built_id] = answer["jobs"]
    done = follow(farm, built_id, token)
    assert done.end["status"] == "succeeded", [text for _, text in done.lines]
    if builder == "buildkit":  # the digest BuildKit's log names
        assert f"FROM {farm.registry}/{base}@{first}" in [text.split(" ", 2)[-1] for _, text in done.lines]
    reference = f"{farm.registry}/{base}:latest"
    row = wait_for(
        lambda: BaseImage.objects.filter(repository=repository, reference=reference, built_digest=first).first(),
        timeout=10,
        what="the first build's base image, recorded",
    )
    checked(repository, True)
    time.sleep(3)  # beat checks every second here: nothing has changed, nothing builds
    assert not rebuilds(repository, reference).exists()

    # Every daemon holds the first image under the tag: a rebuild that did not pull would build from it.
    image = f"{farm.registry}/{base}"
    for _, url in farm.daemons:
        engine(url).api.pull(image, tag="latest", auth_config=farm.pull_auth(image))
    second = push_base_image(farm, base, f"{run}-2")
    job = wait_for(lambda: rebuilds(repository, reference).first(), timeout=30, what="the base-image build")
    checked(repository, False)
    assert job.reason == f"base image {reference} changed from {first} to {second}"
    assert (job.ref, job.pull, job.image) == ("refs/heads/main", True, f"{repository.image}:latest")
    followed = follow(farm, job.id, token)
    text = "\n".join(line for _, line in followed.lines)
    assert followed.end["status"] == "succeeded", text
    assert "Pulling the base images afresh" in text
    status, body = http_get(f"http://{farm.web}/api/v1/builds/{job.id}/", token)
    assert status == 200 and json.loads(body)["reason"] == job.reason

    wait_for(
        lambda: BaseImage.objects.filter(pk=row.pk, built_digest=second).exists(),
        timeout=10,
        what="the rebuild's base image, recorded",  # the new image, so the build pulled it
    )
    checked(repository, True)
    time.sleep(3)  # three more checks, no change: no second build
    assert rebuilds(repository, reference).count() == 1
