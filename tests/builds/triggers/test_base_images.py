"""Base-image updates (builds/triggers/base_images.py): which digests a build records,
and what a check of a real registry makes of a tag that moved: one build of the
default branch per change, named in its reason, never a second for the same
change, none while one waits; a registry that cannot be asked is noted, not fatal."""

from __future__ import annotations

import contextlib
import socket

import pytest
from django.test import override_settings

from builds.models import BaseImage, BuildJob, BuildRule, Registry
from builds.provenance.cosign_layout import Layer, image_of
from builds.provenance.slsa import FromLines
from builds.registry.client import RegistryAPI, RegistryError
from builds.triggers import base_images
from builds.triggers.base_images import built_digests, current_digest, rebuild_tags, record, watched
from lib import outbound_http
from scripts import localfarm as lf
from tests import tls_certs
from tests.builds.github.test_webhooks import register
from tests.registries import plain_registry

A, B, C = ("sha256:" + c * 64 for c in "abc")


def froms_of(lines: list[str], dockerfile_images: list[str]) -> FromLines:
    froms = FromLines()
    for line in lines:
        froms.feed(line)
    froms.dockerfile_images = dockerfile_images
    return froms


def test_the_dockerfiles_images_are_watched_by_tag_with_the_digests_buildkit_named():
    declared = ["busybox", "localhost:5000/base/img:1", f"alpine@{A}", "docker.io/library/alpine:3.18", "alpine:3.19"]
    references = watched(declared)
    assert references == [
        "docker.io/library/busybox:latest",
        "localhost:5000/base/img:1",  # alpine@sha256 is pinned: it never changes
        "docker.io/library/alpine:3.18",
        "docker.io/library/alpine:3.19",
    ]
    froms = froms_of(
        [
            "#3 [internal] load metadata for docker.io/library/busybox:latest",
            f"#5 [1/2] FROM docker.io/library/busybox@{A}",
            f"#6 [stage-1 1/2] FROM localhost:5000/base/img@{B}",
            f"#7 [stage-2 1/1] FROM docker.io/library/alpine@{C}",  # which of the two tags? not said
            f"#8 0.412 #9 [1/1] FROM localhost:5000/base/img@{C}",  # a step's output, not BuildKit's
        ],
        declared,
    )
    assert built_digests(references, froms) == {
        "docker.io/library/busybox:latest": A,
        "localhost:5000/base/img:1": B,
        "docker.io/library/alpine:3.18": "",
        "docker.io/library/alpine:3.19": "",
    }
    # The classic builder names no digest: learned at the first check.
    classic = froms_of(["Step 1/2 : FROM busybox"], ["busybox"])
    assert built_digests(watched(["busybox"]), classic) == {"docker.io/library/busybox:latest": ""}


@pytest.fixture
def repository(daemon, allowed_registry):
    repository = register("Codertocat/Hello-World")
    repository.default_branch = "master"
    repository.rebuild_on_base_image_change = True
    repository.save()
    return repository


def built(repository, status="succeeded", ref="refs/heads/master", **fields) -> BuildJob:
    return BuildJob.objects.create(
        image=f"{repository.image}:latest", repository=repository, ref=ref, status=status, **fields
    )  # fmt: skip


def test_only_a_successful_build_of_the_default_branch_records_and_replaces_the_rows(repository):
    froms = froms_of([f"#5 [1/2] FROM localhost:5000/base/img@{A}"], ["localhost:5000/base/img", "busybox"])
    assert not record(built(repository, ref="refs/heads/feature"), froms)
    assert not record(built(repository, status="failed"), froms)
    assert not record(built(repository, pull_request=7), froms)
    assert not BaseImage.objects.exists()
    assert record(built(repository), froms)
    rows = dict(BaseImage.objects.values_list("reference", "built_digest"))
    assert rows == {"localhost:5000/base/img:latest": A, "docker.io/library/busybox:latest": ""}
    assert record(built(repository), froms_of([], ["localhost:5000/base/img"]))  # busybox no longer used
    assert dict(BaseImage.objects.values_list("reference", "built_digest")) == {"localhost:5000/base/img:latest": ""}


def test_the_default_branchs_rules_give_the_tags_that_need_no_commit():
    rules = [
        BuildRule(source="branch", pattern="master", tags="latest,sha-{short_sha}"),
        BuildRule(source="branch", pattern="/^(mas)ter$/", tags="{1}-base,{sha}"),
        BuildRule(source="branch", pattern="develop", tags="dev"),
        BuildRule(source="pull_request", pattern="master", tags="pr-{number}"),
    ]
    assert rebuild_tags(rules, "master") == ["latest", "mas-base"]
    assert rebuild_tags(rules, "") == []


def refusal(url: str, trusted: frozenset[str] = frozenset()) -> str:
    with pytest.raises(outbound_http.Refused) as refused:
        outbound_http.checked_address(url, set(trusted))
    return str(refused.value)


@override_settings(GENERATOR_ALLOW_LOCAL_REPOSITORIES=False)
def test_the_checks_requests_keep_to_the_farms_outbound_rules(monkeypatch):
    assert "loopback" in refusal("http://127.0.0.1:5000/v2/x/manifests/latest")
    assert "loopback" in refusal("http://localhost:5000/v2/")
    assert "link-local" in refusal("https://169.254.169.254/v2/")
    assert "private" in refusal("https://10.1.2.3:5000/v2/")
    assert "loopback" in refusal("http://2130706433:5000/v2/")  # 127.0.0.1 spelled otherwise
    assert outbound_http.checked_address("http://localhost:5000/v2/", {"localhost:5000"}) is None  # the allow-list's
    # A name is resolved and every address checked: one on a private network is refused.
    monkeypatch.setattr(outbound_http, "resolve", lambda host, port: ["93.184.215.14", "192.168.1.9"])
    assert "registry.example.com leads to 192.168.1.9" in refusal("https://registry.example.com/v2/")
    with override_settings(GENERATOR_ALLOW_LOCAL_REPOSITORIES=True):
        assert outbound_http.checked_address("http://127.0.0.1:5000/v2/", set()) == "127.0.0.1"


@override_settings(GENERATOR_ALLOW_LOCAL_REPOSITORIES=True)
def test_the_check_connects_to_the_address_it_checked_naming_the_host(monkeypatch, registry, db):
    """A name that resolved to a checked address is not resolved again when the
    connection is made (DNS rebinding): `base.invalid` resolves nowhere but here."""
    port = registry.rsplit(":", 1)[1]
    pushed = push(registry, "base/pinned", "latest", "pinned")
    asked = []
    monkeypatch.setattr(outbound_http, "resolve", lambda host, p: asked.append((host, p)) or ["127.0.0.1"])
    monkeypatch.setenv("GENERATOR_PLAIN_HTTP_REGISTRIES", f"base.invalid:{port}")
    assert current_digest(f"base.invalid:{port}/base/pinned:latest", None) == pushed
    assert asked == [("base.invalid", int(port))]


@pytest.fixture(scope="module")
def registry(supervisor, services_dir) -> str:
    with plain_registry(supervisor, services_dir, "base-image-registry") as (host, _):
        yield host


def push(registry: str, name: str, tag: str, content: str) -> str:
    """A one-layer image under `name:tag`; answers its digest."""
    image = image_of([Layer("application/vnd.oci.image.layer.v1.tar", content.encode())])
    with RegistryAPI(registry) as api:
        for blob in image.blobs:
            api.push_blob(name, blob)
        return api.put_manifest(name, tag, "application/vnd.oci.image.manifest.v1+json", image.manifest).digest


@override_settings(GENERATOR_ALLOW_LOCAL_REPOSITORIES=False)
def test_a_new_digest_starts_one_build_per_change_and_none_while_one_waits(repository, registry):
    Registry.objects.get_or_create(host=registry)  # on the allow-list: the outbound rules let the check ask it
    first = push(registry, "base/img", "latest", "one")
    record(built(repository), froms_of([f"#5 [1/2] FROM {registry}/base/img@{first}"], [f"{registry}/base/img"]))
    assert base_images.check_due() == 0  # as built

    second = push(registry, "base/img", "latest", "two")
    assert base_images.check_due() == 1
    job = BuildJob.objects.get(reason__startswith="base image")
    assert job.reason == f"base image {registry}/base/img:latest changed from {first} to {second}"
    assert (job.ref, job.commit_sha, job.pull, job.tags) == ("refs/heads/master", "", True, ["latest"])
    assert base_images.check_due() == 0  # the same change: its build is started

    BuildJob.objects.filter(pk=job.pk).update(status="failed")
    assert base_images.check_due() == 0  # not twice for the same change, even when its build failed

    third = push(registry, "base/img", "latest", "three")
    assert base_images.check_due() == 1
    waiting = BuildJob.objects.filter(status="queued", reason__startswith="base image").get()
    assert waiting.reason.endswith(f"changed from {first} to {third}")  # the last build built from the first
    push(registry, "base/img", "latest", "four")
    assert base_images.check_due() == 0  # that build still waits; it pulls the newest anyway
    row = BaseImage.objects.get()
    assert (row.built_digest, row.rebuild_digest, row.rebuild_id, row.check_error) == (first, third, waiting.id, "")


@override_settings(GENERATOR_ALLOW_LOCAL_REPOSITORIES=False)
def test_a_registry_that_cannot_be_asked_is_noted_and_the_others_are_checked(repository, registry):
    Registry.objects.get_or_create(host=registry)
    first = push(registry, "base/other", "latest", "one")
    refs = ["10.1.2.3:5000/base/img", f"{registry}/base/gone:1", f"{registry}/base/other"]
    record(built(repository), froms_of([f"#5 [1/2] FROM {registry}/base/other@{first}"], refs))
    push(registry, "base/other", "latest", "two")
    assert base_images.check_due() == 1
    errors = dict(BaseImage.objects.values_list("reference", "check_error"))
    assert "10.1.2.3 is a private address" in errors["10.1.2.3:5000/base/img:latest"]
    assert "is not in its registry (HTTP 404)" in errors[f"{registry}/base/gone:1"]
    assert errors[f"{registry}/base/other:latest"] == ""


@override_settings(GENERATOR_ALLOW_LOCAL_REPOSITORIES=False)
def test_a_change_no_rule_can_tag_is_noted_and_builds_nothing(repository, registry):
    Registry.objects.get_or_create(host=registry)
    first = push(registry, "base/img", "latest", "one")
    record(built(repository), froms_of([f"#5 [1/2] FROM {registry}/base/img@{first}"], [f"{registry}/base/img"]))
    repository.rules.filter(source="branch").update(tags="sha-{short_sha}")
    push(registry, "base/img", "latest", "two")
    assert base_images.check_due() == 0
    row = BaseImage.objects.get()
    assert "no branch rule for the default branch (master) gives a tag" in row.check_error
    assert row.rebuild_digest == ""  # claimed nothing: the next check tries again


@override_settings(GENERATOR_BASE_IMAGE_HEADS=1)
def test_a_check_asks_at_most_its_bound_least_recently_checked_first(repository, registry):
    Registry.objects.get_or_create(host=registry)
    refs = [f"{registry}/base/a", f"{registry}/base/b"]
    record(built(repository), froms_of([], refs))
    base_images.check_due()
    checked = BaseImage.objects.exclude(checked_at=None)
    assert checked.count() == 1
    base_images.check_due()
    assert BaseImage.objects.exclude(checked_at=None).count() == 2


@override_settings(GENERATOR_BASE_IMAGE_TICK_SECONDS=0)
def test_a_check_out_of_time_asks_nothing_more(repository, registry):
    Registry.objects.get_or_create(host=registry)
    record(built(repository), froms_of([], [f"{registry}/base/a"]))
    assert base_images.check_due() == 0
    assert BaseImage.objects.get().checked_at is None


def test_the_job_page_and_the_api_say_why_the_farm_started_the_build(client, reader, daemon):
    from tests.builds.test_pages import make_job

    reason = f"base image localhost:5000/base/img:latest changed from {A} to {B}"
    job = make_job(daemon, reason=reason, pull=True)
    client.force_login(reader)
    page = client.get(f"/builds/{job.id}/").content.decode()
    assert f'<dt>Started by the farm</dt><dd id="reason">{reason}</dd>' in page
    answer = client.get(f"/api/v1/builds/{job.id}/").json()
    assert (answer["reason"], answer["pull"]) == (reason, True)


def test_the_api_turns_the_setting_on_and_shows_the_base_images_read_only(client, operator, repository):
    repository.rebuild_on_base_image_change = False
    repository.save()
    record(built(repository), froms_of([f"#5 [1/2] FROM localhost:5000/base/img@{A}"], ["localhost:5000/base/img"]))
    client.force_login(operator)
    url = f"/api/v1/repositories/{repository.pk}/"
    body = {"rebuild_on_base_image_change": True, "base_images": []}
    answer = client.patch(url, body, content_type="application/json").json()
    assert answer["rebuild_on_base_image_change"] is True
    [shown] = answer["base_images"]  # read-only: the patch's empty list changed nothing
    assert (shown["reference"], shown["built_digest"]) == ("localhost:5000/base/img:latest", A)
    assert shown["checked_at"] is None
    repository.refresh_from_db()
    assert repository.rebuild_on_base_image_change


def test_admin_shows_the_setting_and_the_base_images_read_only(admin_client, repository):
    record(built(repository), froms_of([f"#5 [1/2] FROM localhost:5000/base/img@{A}"], ["localhost:5000/base/img"]))
    form = admin_client.get(f"/admin/builds/repository/{repository.pk}/change/").content.decode()
    assert 'name="rebuild_on_base_image_change"' in form
    listed = admin_client.get("/admin/builds/baseimage/").content.decode()
    assert "localhost:5000/base/img:latest" in listed and A in listed
    row = BaseImage.objects.get()
    assert admin_client.post(f"/admin/builds/baseimage/{row.pk}/change/", {"built_digest": B}).status_code == 403


@pytest.fixture(scope="module")
def tls_registry(supervisor, services_dir):
    """A registry over HTTPS with a certificate for `registry.test` (a name no resolver knows), and its CA."""
    folder = services_dir / "base-image-tls"
    ca = tls_certs.authority(folder, "base-image-ca")
    cert, key = ca.issue(folder, "registry", "subjectAltName=DNS:registry.test\nextendedKeyUsage=serverAuth")
    port = lf.free_port()
    env = {
        "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": str(folder / "storage"),
        "REGISTRY_HTTP_ADDR": f"127.0.0.1:{port}",
        "REGISTRY_HTTP_TLS_CERTIFICATE": str(cert),
        "REGISTRY_HTTP_TLS_KEY": str(key),
    }
    supervisor.start(
        "base-image-tls-registry", ["docker-registry", "serve", str(lf.ROOT / "conf/registry.yml")], env=env
    )
    lf.wait_until(
        lambda: _accepts(port), timeout=20, what="the TLS registry", log=supervisor.log_path("base-image-tls-registry")
    )
    yield port, ca.cert
    supervisor.stop("base-image-tls-registry")


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


@override_settings(GENERATOR_ALLOW_LOCAL_REPOSITORIES=True)
def test_over_tls_the_pinned_connection_verifies_the_certificate_for_the_name(monkeypatch, tls_registry, db):
    port, ca = tls_registry
    monkeypatch.setattr(outbound_http, "resolve", lambda host, p: ["127.0.0.1"])
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca))
    image = image_of([Layer("application/vnd.oci.image.layer.v1.tar", b"over tls")])
    with RegistryAPI(f"registry.test:{port}") as api:
        api.http.mount("https://", outbound_http.OutboundAdapter(trusted=set()))
        for blob in image.blobs:
            api.push_blob("base/tls", blob)
        pushed = api.put_manifest("base/tls", "latest", "application/vnd.oci.image.manifest.v1+json", image.manifest)
    assert current_digest(f"registry.test:{port}/base/tls:latest", None) == pushed.digest
    # The same address under a name the certificate does not name: refused by TLS, not asked.
    with pytest.raises(RegistryError, match="hostname 'other.test' doesn't match 'registry.test'"):
        current_digest(f"other.test:{port}/base/tls:latest", None)
