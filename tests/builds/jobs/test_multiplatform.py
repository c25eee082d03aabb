"""Multi-platform builds without a daemon: platforms of the pool, the submit, the
dispatch to a daemon of each child's platform, and how the parent follows its
children (the registry side is in tests/farm/test_multiplatform.py)."""

from __future__ import annotations

import json
from contextlib import contextmanager

import pytest
from django.test import override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from builds import tasks
from builds.jobs import multiplatform, transitions
from builds.jobs.dispatch import dispatch
from builds.jobs.multiplatform import child_tag, fail_unbuildable, mirror_into_parent, settle
from builds.jobs.services import BuildRequest, SubmissionError, cancel_build, retry_build, submit, submit_push_build
from builds.logs.writer import LogWriter, append_shared
from builds.models import BuildJob, BuildLogLine, Repository
from builds.registry.client import DOCKER_MANIFEST, Manifest, RegistryError
from builds.worker import attestations
from pool.models import DockerDaemon
from pool.platforms import detect_emulation, from_engine
from pool.scheduler import platform_daemons
from pool.seed_pool import read_pool_file

pytestmark = pytest.mark.django_db(transaction=True)

BOTH = ["linux/amd64", "linux/arm64"]


def amd64_daemon(name: str, **fields) -> DockerDaemon:
    fields.setdefault("detected_emulation", "linux/arm64")
    return DockerDaemon.objects.create(
        name=name, url="tcp://127.0.0.1:9", capacity=1, native_platform="linux/amd64", **fields
    )


def test_the_engine_report_names_the_native_platform():
    assert from_engine("linux", "x86_64") == "linux/amd64"
    assert from_engine("linux", "amd64") == "linux/amd64"
    assert from_engine("linux", "aarch64") == "linux/arm64"
    assert from_engine("", "") == ""


def test_enabled_qemu_handlers_are_the_emulated_platforms(tmp_path):
    (tmp_path / "qemu-aarch64").write_text("enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\n")
    (tmp_path / "qemu-riscv64").write_text("disabled\n")
    assert detect_emulation(tmp_path) == ["linux/arm64"]
    assert detect_emulation(tmp_path / "missing") == []


def test_an_operator_sets_or_turns_off_emulation(db):
    daemon = amd64_daemon("d", detected_emulation="linux/arm64")
    assert daemon.builds_platforms == BOTH
    daemon.emulated_platforms = "linux/riscv64"
    assert daemon.builds_platforms == ["linux/amd64", "linux/riscv64"]
    daemon.emulated_platforms = "none"
    assert daemon.builds_platforms == ["linux/amd64"]
    daemon.emulated_platforms = "linux/arm64, bogus"
    with pytest.raises(Exception, match="not a platform"):
        daemon.full_clean()


def test_the_pool_file_sets_emulated_platforms(tmp_path):
    path = tmp_path / "pool.json"
    path.write_text(json.dumps({"docker": [{"url": "10.0.0.1", "port": 2376, "emulated_platforms": ["linux/arm64"]},
                                           {"url": "10.0.0.2", "port": 2376}]}))  # fmt: skip
    first, second = read_pool_file(path)
    assert first.emulated_platforms == "linux/arm64" and second.emulated_platforms is None


def test_a_native_daemon_is_preferred_while_it_has_room(db):
    emulating = amd64_daemon("emulating")
    native = DockerDaemon.objects.create(name="arm", url="tcp://127.0.0.1:9", capacity=1, native_platform="linux/arm64")
    daemons = [emulating, native]
    assert platform_daemons(daemons, "linux/arm64", {}) == [native]
    # Full: the emulating daemons may take it.
    assert set(platform_daemons(daemons, "linux/arm64", {native.pk: 1})) == {emulating, native}
    assert platform_daemons(daemons, "linux/riscv64", {}) == []
    assert platform_daemons(daemons, "", {}) == daemons


def test_a_multi_platform_submit_makes_a_parent_and_a_child_per_platform(operator):
    amd64_daemon("one")
    parent = submit(
        BuildRequest(image="localhost:5000/team/app:1", dockerfile="FROM busybox\n", extra_tags=["x"], platforms=BOTH),
        submitted_by=operator,
    )
    assert parent.platforms == BOTH and parent.builder == "buildkit" and parent.is_parent
    children = list(parent.children.order_by("platform"))
    assert [c.platform for c in children] == BOTH
    assert [c.image for c in children] == [
        "localhost:5000/team/app:generator-platform-linux-amd64",
        "localhost:5000/team/app:generator-platform-linux-arm64",
    ]
    for child in children:
        assert child.extra_tags == [] and child.builder == "buildkit" and child.dockerfile == "FROM busybox\n"
    assert parent.queue_position() is None


def test_a_platform_no_daemon_builds_is_refused_naming_it(operator):
    amd64_daemon("one", detected_emulation="")
    with pytest.raises(SubmissionError, match="linux/arm64"):
        submit(BuildRequest(image="localhost:5000/team/app:1", dockerfile="FROM busybox\n", platforms=BOTH),
               submitted_by=operator)  # fmt: skip
    with pytest.raises(SubmissionError, match="not a platform"):
        submit(BuildRequest(image="localhost:5000/team/app:1", dockerfile="FROM busybox\n", platforms=["amd64"]),
               submitted_by=operator)  # fmt: skip
    with pytest.raises(SubmissionError, match="BuildKit"):
        submit(BuildRequest(image="localhost:5000/team/app:1", dockerfile="FROM busybox\n",
                            platforms=["linux/amd64"], builder="classic"), submitted_by=operator)  # fmt: skip
    assert not BuildJob.objects.exists()


def test_the_rest_api_takes_platforms_and_answers_400_naming_the_missing_one(operator):
    amd64_daemon("one", detected_emulation="")
    api = APIClient()
    api.force_authenticate(operator)
    body = {"image": "localhost:5000/team/app:1", "dockerfile": "FROM busybox\n", "platforms": BOTH}
    refused = api.post("/api/v1/builds/", body, format="json")
    assert refused.status_code == 400 and "linux/arm64" in json.dumps(refused.json())
    DockerDaemon.objects.update(emulated_platforms="linux/arm64")
    created = api.post("/api/v1/builds/", body, format="json")
    assert created.status_code == 201, created.json()
    shown = api.get(f"/api/v1/builds/{created.json()['id']}/").json()
    assert shown["platforms"] == BOTH
    assert sorted(c["platform"] for c in shown["children"]) == BOTH


def test_children_are_dispatched_to_daemons_of_their_platform_and_the_parent_never(operator):
    amd64_daemon("native-only", detected_emulation="", emulated_platforms="none")  # older: first choice of amd64
    amd64_daemon("emulates", detected_emulation="linux/arm64")
    parent = submit(BuildRequest(image="localhost:5000/team/app:1", dockerfile="FROM busybox\n", platforms=BOTH),
                    submitted_by=operator)  # fmt: skip
    dispatch()
    parent.refresh_from_db()
    assert parent.daemon is None and parent.status == "queued"
    arm = parent.children.get(platform="linux/arm64")
    assert arm.daemon.name == "emulates"
    assert parent.children.get(platform="linux/amd64").daemon.name == "native-only"


@contextmanager
def pool_paused():
    """Builds submitted inside wait together (the daemons are unhealthy), as on a busy pool; dispatched after."""
    DockerDaemon.objects.update(healthy=False)
    yield
    DockerDaemon.objects.update(healthy=True)


def test_an_amd64_child_leaves_the_only_arm64_daemon_to_the_waiting_arm64_child(operator):
    # The emulating daemon is older and warm for the repository: the first
    # choice of the amd64 child, were it not for the arm64 child behind it.
    emulating = amd64_daemon("emulates", detected_emulation="linux/arm64")
    plain = amd64_daemon("native-only", detected_emulation="", emulated_platforms="none")
    BuildJob.objects.create(image="localhost:5000/team/app:0", dockerfile="FROM busybox\n", status="succeeded",
                            daemon=emulating, started_at=timezone.now())  # fmt: skip
    with pool_paused():
        parent = submit(BuildRequest(image="localhost:5000/team/app:1", dockerfile="FROM busybox\n", platforms=BOTH),
                        submitted_by=operator)  # fmt: skip
    assert dispatch() == 2
    assert parent.children.get(platform="linux/amd64").daemon == plain
    assert parent.children.get(platform="linux/arm64").daemon == emulating


def test_a_child_leaves_daemons_that_are_no_more_than_the_children_waiting_for_them(operator):
    first = amd64_daemon("emulates-1")
    second = amd64_daemon("emulates-2")
    plain = amd64_daemon("native-only", detected_emulation="", emulated_platforms="none")
    with pool_paused():
        amd = submit(BuildRequest(image="localhost:5000/team/amd:1", dockerfile="FROM busybox\n",
                                  platforms=["linux/amd64"]), submitted_by=operator)  # fmt: skip
        arm = [
            submit(
                BuildRequest(
                    image=f"localhost:5000/team/arm{n}:1", dockerfile="FROM busybox\n", platforms=["linux/arm64"]
                ),
                submitted_by=operator,
            )  # fmt: skip
            for n in range(2)
        ]
    assert dispatch() == 3
    assert amd.children.get().daemon == plain
    assert {parent.children.get().daemon for parent in arm} == {first, second}


def test_with_nothing_stranded_a_child_takes_the_daemon_that_builds_fewer_waited_for_platforms(operator):
    amd64_daemon("emulates-1")  # older: the first choice, were nothing waiting
    amd64_daemon("emulates-2")
    plain = amd64_daemon("native-only", detected_emulation="", emulated_platforms="none")
    with pool_paused():
        parent = submit(BuildRequest(image="localhost:5000/team/app:1", dockerfile="FROM busybox\n", platforms=BOTH),
                        submitted_by=operator)  # fmt: skip
    assert dispatch() == 2
    assert parent.children.get(platform="linux/amd64").daemon == plain


def test_stranding_a_platform_weighs_more_than_building_many_that_others_build_too(operator):
    # x builds two waited-for platforms that other daemons build too, y the only s390x:
    # the amd64 child takes x, and every child gets a daemon.
    x = amd64_daemon("x", detected_emulation="linux/arm64,linux/riscv64")
    y = amd64_daemon("y", detected_emulation="linux/s390x")
    for name in ("arm-1", "arm-2"):
        DockerDaemon.objects.create(name=name, url="tcp://127.0.0.1:9", capacity=1, native_platform="linux/arm64",
                                    detected_emulation="linux/riscv64")  # fmt: skip
    platforms = ["linux/amd64", "linux/arm64", "linux/riscv64", "linux/s390x"]
    with pool_paused():
        parent = submit(BuildRequest(image="localhost:5000/team/app:1", dockerfile="FROM busybox\n",
                                     platforms=platforms), submitted_by=operator)  # fmt: skip
    assert dispatch() == 4
    assert parent.children.get(platform="linux/amd64").daemon == x
    assert parent.children.get(platform="linux/s390x").daemon == y


def test_without_a_child_waiting_for_a_platform_the_warm_daemon_still_wins(operator):
    amd64_daemon("native-only", detected_emulation="", emulated_platforms="none")  # older: the first choice if cold
    warm = amd64_daemon("emulates")
    BuildJob.objects.create(image="localhost:5000/team/app:0", dockerfile="FROM busybox\n", status="succeeded",
                            daemon=warm, started_at=timezone.now())  # fmt: skip
    parent = submit(BuildRequest(image="localhost:5000/team/app:1", dockerfile="FROM busybox\n",
                                 platforms=["linux/amd64"]), submitted_by=operator)  # fmt: skip
    assert parent.children.get().daemon == warm


@override_settings(GENERATOR_BUILDKIT_SHARED_DAEMONS=True, GENERATOR_MAX_BUILDS_PER_IMAGE=0)
def test_on_shared_daemons_two_children_of_one_helper_tag_never_build_on_one_daemon(operator):
    # They push repository:generator-platform-linux-amd64 from the daemon's image store.
    only = amd64_daemon("shared", detected_emulation="")
    DockerDaemon.objects.filter(pk=only.pk).update(capacity=2)
    amd64 = {"dockerfile": "FROM busybox\n", "platforms": ["linux/amd64"]}
    with pool_paused():
        first = submit(BuildRequest(image="localhost:5000/team/app:1", **amd64), submitted_by=operator)
        second = submit(BuildRequest(image="localhost:5000/team/app:2", **amd64), submitted_by=operator)
        other = submit(BuildRequest(image="localhost:5000/team/other:1", dockerfile="FROM busybox\n"),
                       submitted_by=operator)  # fmt: skip
    assert dispatch() == 2  # the waiting child holds back no other build of the daemon's group
    assert first.children.get().daemon == only and BuildJob.objects.get(pk=other.pk).daemon == only
    assert second.children.get().daemon is None
    done = first.children.get()
    _running(done)
    transitions.fail(done.id, 1, "exit code: 1")
    assert dispatch() == 1
    assert second.children.get().daemon == only


def test_a_build_may_not_take_a_helper_tag_as_its_own(operator):
    amd64_daemon("one")
    for image, extra in (("localhost:5000/team/app:generator-platform-linux-amd64", []),
                         ("localhost:5000/team/app:1", ["generator-platform-linux-arm64"])):  # fmt: skip
        with pytest.raises(SubmissionError, match="are the farm's"):
            submit(BuildRequest(image=image, extra_tags=extra, dockerfile="FROM busybox\n"), submitted_by=operator)
    assert not BuildJob.objects.exists()


def test_a_platform_s_helper_tag_is_one_per_repository_whatever_the_build():
    assert child_tag("linux/arm64") == "generator-platform-linux-arm64"
    assert child_tag("linux/arm/v7") == "generator-platform-linux-arm-v7"


class FakeRegistry:
    """The registry's HTTP API as builds/jobs/multiplatform.py uses it: what it was asked, in order."""

    calls: list[tuple] = []

    def __init__(self, host, **credentials):
        self.calls.append(("open", host))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def manifest(self, name, reference):
        self.calls.append(("manifest", name, reference))
        return Manifest(DOCKER_MANIFEST, reference, 500)

    def stored(self, name, tag):
        self.calls.append(("stored", name, tag))
        return None

    def put_index(self, name, tag, entries):
        self.calls.append(("put_index", name, tag, [(e.platform, e.manifest.digest) for e in entries]))
        return "sha256:" + "f" * 64

    def push_blob(self, name, data):  # the signature's and attestation's (builds/worker/attestations.py)
        self.calls.append(("push_blob", name))

    def put_manifest(self, name, tag, media_type, body):
        self.calls.append(("put_manifest", name, tag, media_type))

    def __getattr__(self, name):  # anything else (deleting a tag, a manifest) is a call the farm must not make
        raise AssertionError(f"the farm called {name} on the registry")


def _pushed(child: BuildJob, digest: str) -> None:
    _running(child)
    transitions.start_push(child.id, child.attempt, "sha256:" + "1" * 64)
    transitions.succeed(child.id, child.attempt, digest)


def test_concurrent_builds_of_one_repository_share_helper_tags_and_index_their_own_pushes(operator, monkeypatch):
    monkeypatch.setattr(multiplatform, "RegistryAPI", FakeRegistry)
    monkeypatch.setattr(attestations, "RegistryAPI", FakeRegistry)
    FakeRegistry.calls = []
    amd64_daemon("one")
    amd64_daemon("two")
    request = {"dockerfile": "FROM busybox\n", "platforms": BOTH}
    first = submit(BuildRequest(image="localhost:5000/team/app:1", **request), submitted_by=operator)
    second = submit(BuildRequest(image="localhost:5000/team/app:2", extra_tags=["x"], **request), submitted_by=operator)
    images = {c.image for c in BuildJob.objects.filter(parent__in=[first, second])}
    assert images == {"localhost:5000/team/app:generator-platform-linux-amd64",
                      "localhost:5000/team/app:generator-platform-linux-arm64"}  # fmt: skip
    # The second build's children push under the same tags after the first's, before the first's index.
    digests = {}
    for parent, mark in ((first, "a"), (second, "b")):
        for child in parent.children.all():
            BuildJob.objects.filter(pk=child.pk).update(daemon=DockerDaemon.objects.first())
            digests[(parent.id, child.platform)] = f"sha256:{mark}{child.platform[-1]}" + "0" * 62
    for parent in (second, first):  # the later build's index is written first
        for child in parent.children.order_by("platform"):
            _pushed(child, digests[(parent.id, child.platform)])
    indexes = [call for call in FakeRegistry.calls if call[0] == "put_index"]
    assert indexes == [
        ("put_index", "team/app", tag, [(p, digests[(parent.id, p)]) for p in BOTH])
        for parent, tags in ((second, ["2", "x"]), (first, ["1"]))
        for tag in tags
    ]
    # Each index signed next to it, as cosign stores signatures (the children sign theirs in their workers).
    signatures = [call[2] for call in FakeRegistry.calls if call[0] == "put_manifest"]
    assert sorted(signatures) == [f"sha256-{'f' * 64}.att"] * 2 + [f"sha256-{'f' * 64}.sig"] * 2  # written at once
    assert all(call[0] in ("open", "stored", "manifest", "put_index", "push_blob", "put_manifest")
               for call in FakeRegistry.calls)  # fmt: skip
    assert BuildJob.objects.get(pk=first.pk).status == BuildJob.objects.get(pk=second.pk).status == "succeeded"


def _running(child: BuildJob) -> None:
    transitions.claim(child.id, child.attempt, child.daemon_id, "w", 60)


def test_a_failing_child_fails_the_parent_with_its_platform_and_stops_the_rest(operator):
    amd64_daemon("one")
    amd64_daemon("two")
    parent = submit(BuildRequest(image="localhost:5000/team/app:1", dockerfile="FROM busybox\n", platforms=BOTH),
                    submitted_by=operator)  # fmt: skip
    dispatch()
    amd, arm = parent.children.get(platform="linux/amd64"), parent.children.get(platform="linux/arm64")
    _running(amd)
    _running(arm)
    assert BuildJob.objects.get(pk=parent.pk).status == "building"
    transitions.fail(arm.id, 1, "exit code: 3")
    parent.refresh_from_db()
    assert parent.status == "failed" and parent.error == "linux/arm64: exit code: 3"
    assert BuildJob.objects.get(pk=amd.pk).cancel_requested_at is not None  # its worker stops at its next beat
    assert not parent.digest


def test_cancelling_the_parent_reaches_every_child(operator):
    amd64_daemon("one")
    amd64_daemon("two")
    parent = submit(BuildRequest(image="localhost:5000/team/app:1", dockerfile="FROM busybox\n", platforms=BOTH),
                    submitted_by=operator)  # fmt: skip
    dispatch()
    amd, arm = parent.children.get(platform="linux/amd64"), parent.children.get(platform="linux/arm64")
    _running(amd)  # arm waits for its worker
    assert cancel_build(BuildJob.objects.get(pk=parent.pk), operator) == "stopping"
    assert BuildJob.objects.get(pk=arm.pk).status == "cancelled"
    assert BuildJob.objects.get(pk=amd.pk).cancel_requested_at is not None
    transitions.finish_cancelled(amd.id, 1)  # what its worker does at its next heartbeat
    assert BuildJob.objects.get(pk=parent.pk).status == "cancelled"


def test_a_lost_worker_requeues_only_its_child(operator):
    amd64_daemon("one")
    amd64_daemon("two")
    parent = submit(BuildRequest(image="localhost:5000/team/app:1", dockerfile="FROM busybox\n", platforms=BOTH),
                    submitted_by=operator)  # fmt: skip
    dispatch()
    amd, arm = parent.children.get(platform="linux/amd64"), parent.children.get(platform="linux/arm64")
    _running(amd)
    _running(arm)
    transitions.requeue(arm.id, 1, "worker lost")
    settle(parent.id)
    assert BuildJob.objects.get(pk=arm.pk).attempt == 2
    assert BuildJob.objects.get(pk=amd.pk).status == "building"
    assert BuildJob.objects.get(pk=parent.pk).status == "building"


def test_children_write_into_the_parents_log_each_line_with_its_platform(operator):
    amd64_daemon("one")
    parent = submit(BuildRequest(image="localhost:5000/team/app:1", dockerfile="FROM busybox\n", platforms=BOTH),
                    submitted_by=operator)  # fmt: skip
    writers = []
    for child in parent.children.order_by("platform"):
        writer = LogWriter(child.id, last_seq=0, batch_lines=2, flush_seconds=60)
        writer.mirror = mirror_into_parent(child)
        writers.append(writer)
    for number in range(3):  # interleaved, as two workers write at once
        for writer in writers:
            writer.write(f"line {number}")
    for writer in writers:
        writer.flush()
    append_shared(parent.id, ["[generator] done"])
    lines = list(BuildLogLine.objects.filter(job=parent).values_list("seq", "text"))
    assert [seq for seq, _ in lines] == list(range(1, 8))
    texts = [text for _, text in lines]
    assert sorted(texts[:-1]) == sorted(f"[{p}] line {n}" for p in BOTH for n in range(3))
    assert texts[-1] == "[generator] done"
    assert BuildJob.objects.get(pk=parent.pk).log_line_count == 7
    # Each child's own log is its own, unprefixed.
    child = parent.children.get(platform="linux/arm64")
    assert list(BuildLogLine.objects.filter(job=child).values_list("text", flat=True)) == [
        f"line {n}" for n in range(3)
    ]


def test_a_repository_with_platforms_builds_each_push_for_them(allowed_registry):
    amd64_daemon("one")
    repository = Repository.objects.create(
        full_name="team/app", clone_url="https://git.example.invalid/team/app.git", webhook_secret="s",
        image="localhost:5000/team/app", platforms="linux/amd64,linux/arm64",
    )  # fmt: skip
    job = submit_push_build(repository=repository, ref="refs/heads/main", sha="a" * 40, tags=["latest", "sha-aaa"])
    assert job.platforms == BOTH and job.builder == "buildkit"
    children = job.children.order_by("platform")
    assert [(c.platform, c.commit_sha, c.ref) for c in children] == [(p, "a" * 40, "refs/heads/main") for p in BOTH]
    # A platform the pool lost since the repository was saved: the push is refused, naming it.
    DockerDaemon.objects.update(emulated_platforms="none")
    with pytest.raises(SubmissionError, match="linux/arm64"):
        submit_push_build(repository=repository, ref="refs/heads/main", sha="b" * 40, tags=["latest"])
    repository.builder = "classic"
    with pytest.raises(Exception, match="BuildKit"):
        repository.full_clean()


def test_the_pages_show_platforms_and_link_parent_and_children(client, operator):
    amd64_daemon("one")
    parent = submit(BuildRequest(image="localhost:5000/team/app:1", dockerfile="FROM busybox\n", platforms=BOTH),
                    submitted_by=operator)  # fmt: skip
    client.force_login(operator)
    page = client.get(f"/builds/{parent.id}/").content.decode()
    arm = parent.children.get(platform="linux/arm64")
    assert f'<a href="/builds/{arm.id}/">linux/arm64</a> queued' in page
    child_page = client.get(f"/builds/{arm.id}/").content.decode()
    assert f'<a href="/builds/{parent.id}/">{parent.id}</a>' in child_page
    pool = client.get("/pool/").content.decode()
    assert "linux/amd64<br><small>emulated: linux/arm64</small>" in pool
    assert "linux/amd64, linux/arm64 (emulated)" in client.get("/pool/one/").content.decode()


def test_a_platforms_part_is_not_retried_alone_and_a_retry_keeps_the_platforms(operator):
    amd64_daemon("one")
    parent = submit(BuildRequest(image="localhost:5000/team/app:1", dockerfile="FROM busybox\n", platforms=BOTH),
                    submitted_by=operator)  # fmt: skip
    cancel_build(parent, operator)
    child = parent.children.first()
    with pytest.raises(SubmissionError, match="retry that build"):
        retry_build(BuildJob.objects.get(pk=child.pk), operator)
    again = retry_build(BuildJob.objects.get(pk=parent.pk), operator)
    assert again.platforms == BOTH and again.children.count() == 2


def test_a_waiting_platform_the_pool_no_longer_builds_fails_at_once(operator):
    amd64_daemon("one")
    parent = submit(BuildRequest(image="localhost:5000/team/app:1", dockerfile="FROM busybox\n", platforms=BOTH),
                    submitted_by=operator)  # fmt: skip
    assert fail_unbuildable() == 0
    DockerDaemon.objects.update(emulated_platforms="none")
    assert fail_unbuildable() == 1
    parent.refresh_from_db()
    assert parent.status == "failed" and parent.error.startswith("linux/arm64: no enabled daemon builds linux/arm64")
    assert parent.children.get(platform="linux/amd64").status == "cancelled"


def test_beat_fails_a_waiting_child_whose_only_daemon_was_disabled_naming_its_platform(operator):
    amd64_daemon("amd", detected_emulation="")
    arm = DockerDaemon.objects.create(name="arm", url="tcp://127.0.0.1:9", capacity=1, native_platform="linux/arm64")
    with pool_paused():
        parent = submit(BuildRequest(image="localhost:5000/team/app:1", dockerfile="FROM busybox\n", platforms=BOTH),
                        submitted_by=operator)  # fmt: skip
    DockerDaemon.objects.filter(pk=arm.pk).update(enabled=False)
    tasks.dispatch_waiting()  # what beat runs every few seconds
    parent.refresh_from_db()
    assert parent.status == "failed"
    assert (
        parent.error == "linux/arm64: no enabled daemon builds linux/arm64 any more (the pool changed after the submit)"
    )
    last = BuildLogLine.objects.filter(job=parent).order_by("-seq").first().text
    assert last.startswith("[generator] Build failed: linux/arm64: no enabled daemon builds linux/arm64")
    assert parent.children.get(platform="linux/amd64").status == "cancelled"


def test_the_daemons_api_shows_platforms_and_takes_emulated_ones(operator):
    daemon = amd64_daemon("one")
    DockerDaemon.objects.filter(pk=daemon.pk).update(url="unix:///run/generator/one/docker.sock")
    api = APIClient()
    api.force_authenticate(operator)
    shown = api.get(f"/api/v1/daemons/{daemon.pk}/").json()
    assert shown["native_platform"] == "linux/amd64" and shown["builds_platforms"] == BOTH
    changed = api.patch(f"/api/v1/daemons/{daemon.pk}/", {"emulated_platforms": "linux/riscv64"}, format="json")
    assert changed.status_code == 200, changed.json()
    assert changed.json()["builds_platforms"] == ["linux/amd64", "linux/riscv64"]
    refused = api.patch(f"/api/v1/daemons/{daemon.pk}/", {"emulated_platforms": "riscv"}, format="json")
    assert refused.status_code == 400 and "not a platform" in json.dumps(refused.json())
    # What the engine and the worker report is theirs to write.
    api.patch(f"/api/v1/daemons/{daemon.pk}/", {"native_platform": "linux/s390x"}, format="json")
    assert DockerDaemon.objects.get(pk=daemon.pk).native_platform == "linux/amd64"


class RegistryFailingOnTag(FakeRegistry):
    """Tag "1" named an older image, "2" did not exist; writing "3" fails.
    `deletes_tags`: whether this registry can delete a tag alone."""

    deletes_tags = True
    before = {"1": ("application/vnd.oci.image.index.v1+json", b'{"older": "index"}')}

    def stored(self, name, tag):
        self.calls.append(("stored", name, tag))
        return self.before.get(tag)

    def put_index(self, name, tag, entries):
        if tag == "3":
            raise RegistryError(
                "could not write the image index team/app:3 on localhost:5000: HTTP 500", transient=True
            )
        return super().put_index(name, tag, entries)

    def put_manifest(self, name, tag, media_type, body):
        self.calls.append(("put_manifest", name, tag, media_type, body))

    def delete_tag(self, name, tag):
        self.calls.append(("delete_tag", name, tag))
        return self.deletes_tags


@pytest.mark.parametrize("deletes_tags", [True, False], ids=["deletes-tags", "distribution-2"])
def test_an_index_written_under_some_tags_only_is_taken_back_from_them(operator, monkeypatch, deletes_tags):
    monkeypatch.setattr(multiplatform, "RegistryAPI", RegistryFailingOnTag)
    monkeypatch.setattr(RegistryFailingOnTag, "deletes_tags", deletes_tags)
    RegistryFailingOnTag.calls = []
    amd64_daemon("one")
    amd64_daemon("two")
    parent = submit(
        BuildRequest(
            image="localhost:5000/team/app:1", extra_tags=["2", "3"], dockerfile="FROM busybox\n", platforms=BOTH
        ),
        submitted_by=operator,
    )
    parent.children.update(daemon=DockerDaemon.objects.first())
    for child in parent.children.order_by("platform"):
        _pushed(child, "sha256:" + child.platform[-1] * 64)

    undo = [call for call in RegistryFailingOnTag.calls if call[0] in ("put_manifest", "delete_tag")]
    assert undo == [
        ("put_manifest", "team/app", "1", "application/vnd.oci.image.index.v1+json", b'{"older": "index"}'),
        ("delete_tag", "team/app", "2"),
    ]
    parent.refresh_from_db()
    assert parent.status == "failed" and parent.digest == ""
    assert "HTTP 500" in parent.error
    if deletes_tags:
        assert "could not be put back" not in parent.error
    else:
        assert parent.error.endswith("; the index stays under 2: could not be put back")
