"""Multi-platform builds on the test farm: two amd64 daemons, arm64 under the
host's QEMU, a two-platform busybox base in the farm's registry
(scripts/localfarm.py `publish_busybox_index`, made once here: the farm's own
start does not pay for it)."""

from __future__ import annotations

import json
import random
import urllib.request
import uuid

import pytest

from builds.models import BuildJob, BuildLogLine
from builds.provenance import cosign_layout, signing
from builds.provenance import verification as image_verification
from builds.provenance.dsse import load_public_key
from builds.registry.client import RegistryAPI
from pool.models import DockerDaemon
from scripts import localfarm as lf
from teams.models import RegistryBlob
from tests.farm.conftest import api_build, engine, follow, registry_digest, steps_running, wait_for

pytestmark = pytest.mark.farm

LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
HELPER_TAGS = ("generator-platform-linux-amd64", "generator-platform-linux-arm64")


@pytest.fixture(scope="module")
def base(farm) -> str:
    """`FROM` this: busybox for linux/amd64 and linux/arm64."""
    lf.publish_busybox_index(farm.registry, token_source=farm.signer.farm_token)
    return f"{farm.registry}/library/busybox"


@pytest.fixture
def two_platform_pool(farm, farm_pool, base):
    """The daemons as their health check and workers report them: native amd64,
    arm64 emulated. Workers report emulation at each heartbeat, so rows the test
    made after they started get it within a beat, without a restart."""
    wait_for(
        lambda: all(
            d.builds_platforms == ["linux/amd64", "linux/arm64"]
            for d in DockerDaemon.objects.filter(pk__in=[d.pk for d in farm_pool])
        ),
        "the daemons to report linux/amd64 and linux/arm64",
    )
    return farm_pool


def test_a_two_platform_build_is_one_index_whose_images_run_on_their_platform(farm, token, two_platform_pool, base):
    image = f"{farm.registry}/multi/app"
    dockerfile = f"FROM {base}\nRUN echo built on $(uname -m) > /built && cat /built\n"
    job_id = api_build(
        farm, token, {"image": f"{image}:1", "extra_tags": ["stable"], "dockerfile": dockerfile,
                      "platforms": ["linux/amd64", "linux/arm64"]},
    )  # fmt: skip
    done = follow(farm, job_id, token)
    parent = BuildJob.objects.get(pk=job_id)
    assert done.end["status"] == "succeeded", "\n".join(text for _, text in done.lines)
    children = {c.platform: c for c in parent.children.all()}
    assert set(children) == {"linux/amd64", "linux/arm64"}
    assert all(c.status == "succeeded" and c.digest for c in children.values())

    # The parent's stream carried both platforms' lines, each with its platform.
    texts = [text for _, text in done.lines]
    assert any(t.startswith("[linux/arm64] ") and t.endswith("built on aarch64") for t in texts), texts
    assert any(t.startswith("[linux/amd64] ") and t.endswith("built on x86_64") for t in texts), texts
    assert [seq for seq, _ in done.lines] == list(range(1, len(done.lines) + 1))
    # Each child's line names its platform in the frame too; the farm's own lines of the parent none.
    assert done.platforms == {
        seq: text[1 : text.index("] ")] for seq, text in done.lines if not text.startswith("[generator] ")
    }
    assert set(done.platforms.values()) == {"linux/amd64", "linux/arm64"}

    # Both tags name one index of the two children's manifests; its digest is the job's.
    index = manifest_list(farm, "multi/app", "1")
    assert index["digest"] == parent.digest == manifest_list(farm, "multi/app", "stable")["digest"]
    platforms = {(m["platform"]["os"], m["platform"]["architecture"]): m["digest"] for m in index["body"]["manifests"]}
    assert platforms == {("linux", "amd64"): children["linux/amd64"].digest,
                         ("linux", "arm64"): children["linux/arm64"].digest}  # fmt: skip

    # Each platform's image and the index are signed, each with its provenance (issue 28).
    signed = {children["linux/amd64"].digest, children["linux/arm64"].digest, parent.digest}
    key = load_public_key(signing.active_key().public_key)
    with RegistryAPI(farm.registry, token_source=farm.signer.farm_token) as api:
        for child in children.values():
            verified = image_verification.verify(api, "multi/app", child.digest, key)
            params = verified.provenance["predicate"]["buildDefinition"]["externalParameters"]
            assert params["platforms"] == [child.platform]
            assert verified.provenance["predicate"]["runDetails"]["metadata"]["invocationId"] == child.id
        index = image_verification.verify(api, "multi/app", parent.digest, key).provenance["predicate"]
    assert index["runDetails"]["metadata"]["invocationId"] == parent.id
    platforms = [d for d in index["buildDefinition"]["resolvedDependencies"] if "platform" in d.get("annotations", {})]
    assert {d["annotations"]["platform"]: "sha256:" + d["digest"]["sha256"] for d in platforms} == {
        p: c.digest for p, c in children.items()}  # fmt: skip

    # The repository holds the build's tags, one helper tag per platform, and the signatures'.
    cosign_tags = {f(d) for d in signed for f in (cosign_layout.signature_tag, cosign_layout.attestation_tag)}
    assert tag_list(farm, "multi/app") == {"1", "stable", *HELPER_TAGS, *cosign_tags}
    # The team's registry use counts the index, both platforms' manifests and the signatures (issue 24).
    counted = set(
        RegistryBlob.objects.filter(team_id=parent.team_id, repository="multi/app", tag="1").values_list(
            "digest", flat=True
        )
    )
    assert {parent.digest, *(c.digest for c in children.values())} <= counted
    assert RegistryBlob.objects.filter(
        repository="multi/app", tag=cosign_layout.attestation_tag(parent.digest)
    ).exists()

    # Each platform pulled and run where it belongs: arm64 under QEMU says aarch64.
    client = engine(farm.daemons[1][1])
    try:
        for platform, machine in (("linux/arm64", "aarch64"), ("linux/amd64", "x86_64")):
            pulled = client.images.pull(image, tag="1", platform=platform, auth_config=farm.pull_auth(image))
            output = client.containers.run(pulled.id, "uname -m", network_mode="none", remove=True, platform=platform)
            assert output.decode().strip() == machine
            assert pulled.attrs["Architecture"] == platform.split("/")[1]
    finally:
        client.close()


def test_one_platform_failing_fails_the_build_and_tags_nothing(farm, token, two_platform_pool, base):
    tag = uuid.uuid4().hex[:12]
    dockerfile = f"FROM {base}\nRUN if [ $(uname -m) = aarch64 ]; then echo no arm here; exit 3; fi\n"
    job_id = api_build(
        farm, token, {"image": f"{farm.registry}/multi/failing:{tag}", "dockerfile": dockerfile,
                      "platforms": ["linux/amd64", "linux/arm64"]},
    )  # fmt: skip
    done = follow(farm, job_id, token)
    parent = BuildJob.objects.get(pk=job_id)
    assert done.end["status"] == "failed"
    assert parent.error.startswith("linux/arm64: "), parent.error
    assert "exit code: 3" in parent.error
    assert registry_digest(farm, "multi/failing", tag) is None
    assert manifest_list(farm, "multi/failing", tag) is None
    assert BuildJob.objects.get(parent=parent, platform="linux/arm64").status == "failed"
    # The other child either finished before the failure (untagged) or was stopped by it; a
    # push under way when the parent failed ends first (to its platform's helper tag only).
    other = BuildJob.objects.filter(parent=parent, platform="linux/amd64")
    wait_for(lambda: other.get().status in BuildJob.TERMINAL, "the other platform's child to end")
    assert other.get().status in ("succeeded", "cancelled")
    assert registry_digest(farm, "multi/failing", tag) is None and manifest_list(farm, "multi/failing", tag) is None
    assert {t for t in tag_list(farm, "multi/failing") if not t.startswith("sha256-")} <= set(HELPER_TAGS)


def test_cancelling_a_two_platform_build_stops_both_children(farm, token, two_platform_pool, base):
    seconds = random.randrange(4000, 4999)  # names this build's steps among the host's processes
    tag = uuid.uuid4().hex[:12]
    dockerfile = f"FROM {base}\nRUN echo started && sleep {seconds}\n"
    job_id = api_build(
        farm, token, {"image": f"{farm.registry}/multi/cancelled:{tag}", "dockerfile": dockerfile,
                      "platforms": ["linux/amd64", "linux/arm64"]},
    )  # fmt: skip
    wait_for(
        lambda: BuildLogLine.objects.filter(job__parent_id=job_id, text__endswith=" started").count() == 2,
        "both platforms' step to start",
    )
    assert steps_running(seconds) == 2
    request = urllib.request.Request(
        f"http://{farm.web}/api/v1/builds/{job_id}/cancel/", method="POST", headers={"Authorization": f"Token {token}"}
    )
    urllib.request.urlopen(request, timeout=30).close()
    assert follow(farm, job_id, token).end["status"] == "cancelled"
    # The parent ends with its first cancelled child (builds/jobs/multiplatform.py settle), and its end
    # frame now goes at once (builds/live/subscriptions.py): the other child stops at its own next heartbeat.
    children = BuildJob.objects.filter(parent_id=job_id)
    wait_for(lambda: {c.status for c in children.all()} == {"cancelled"}, "both children cancelled")
    wait_for(lambda: steps_running(seconds) == 0, "both steps to stop on their daemons")
    assert manifest_list(farm, "multi/cancelled", tag) is None


def test_a_platform_no_daemon_builds_is_refused_at_submit(farm, token, two_platform_pool):
    request = urllib.request.Request(
        f"http://{farm.web}/api/v1/builds/",
        data=json.dumps(
            {
                "image": f"{farm.registry}/multi/riscv:1",
                "dockerfile": "FROM scratch\n",
                "platforms": ["linux/amd64", "linux/riscv64"],
            }
        ).encode(),  # fmt: skip
        method="POST",
        headers={"Authorization": f"Token {token}", "Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 400
    assert "linux/riscv64" in refused.value.read().decode()


def manifest_list(farm, repository: str, tag: str) -> dict | None:
    request = urllib.request.Request(
        f"http://{farm.registry}/v2/{repository}/manifests/{tag}",
        headers={"Accept": LIST, **farm.registry_headers(repository)},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            if not response.headers["Content-Type"].startswith(LIST):
                return None
            return {"digest": response.headers["Docker-Content-Digest"], "body": json.loads(response.read())}
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def tag_list(farm, repository: str) -> set[str]:
    """The repository's tags; none if nothing was ever pushed to it (the registry's 404)."""
    try:
        request = urllib.request.Request(
            f"http://{farm.registry}/v2/{repository}/tags/list", headers=farm.registry_headers(repository)
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return set(json.loads(response.read())["tags"] or [])
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return set()
        raise
