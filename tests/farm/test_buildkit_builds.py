"""BuildKit on the test farm's sandboxed daemons: builds/engine/buildkit.py directly
(the Dockerfile features teams use today, failures said plainly), and builds
that ask for `builder: buildkit` through the REST API. BuildKit is the farm's
default builder; classic is there on request: see docs/security.md."""

from __future__ import annotations

import io
import json
import random
import tarfile
import urllib.request
import uuid

import pytest

from builds.engine.buildkit import BuildKitRequest, BuildKitSession, DaemonAddress, find_client
from builds.engine.docker import BuildFailed, DaemonUnavailable
from builds.models import BuildJob, BuildLogLine, BuildSecret
from pool.models import DockerDaemon
from tests.farm.conftest import api_build, engine, follow, registry_digest, steps_running, wait_for

pytestmark = pytest.mark.farm


def context(files: dict[str, str]) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer


@pytest.fixture(scope="module")
def session_for(farm):
    client = find_client()
    return lambda: BuildKitSession(client, DaemonAddress(farm.daemons[0][1]))


def build(session_for, files: dict[str, str], request: BuildKitRequest) -> tuple[str, list[str]]:
    lines: list[str] = []
    image_id = session_for().build(context(files), request, on_line=lines.append)
    return image_id, lines


def test_modern_dockerfile_features_build(session_for, tmp_path):
    secret = tmp_path / "token"
    secret.write_text("s3cr3t-value")
    secret.chmod(0o600)
    dockerfile = (
        "FROM busybox AS tools\n"
        "ARG TARGETPLATFORM\n"
        "ARG BUILDPLATFORM\n"
        'RUN echo "for $TARGETPLATFORM on $BUILDPLATFORM" > /platform\n'
        "RUN --mount=type=cache,target=/cache date > /cache/stamp\n"
        "RUN --mount=type=cache,target=/cache ls /cache | tee /seen\n"
        "RUN --mount=type=secret,id=token wc -c < /run/secrets/token > /secret-size\n"
        "FROM busybox AS release\n"
        "COPY --from=tools --chmod=751 /platform /seen /secret-size /out/\n"
        "RUN --mount=type=bind,from=tools,source=/platform,target=/p cat /p\n"
        "COPY app/hello.txt /\n"
        "FROM release AS never\n"
        "RUN false\n"
    )
    files = {"build/Dockerfile": dockerfile, "app/hello.txt": "hello\n", ".dockerignore": "secret-file\n"}
    request = BuildKitRequest(tag="localhost/buildkit/features", dockerfile="build/Dockerfile", target="release")
    request.secrets = {"token": str(secret)}
    request.buildargs = {"UNUSED": "1"}
    request.labels = {"team": "a"}
    image_id, lines = build(session_for, files, request)
    assert image_id.startswith("sha256:")
    text = "\n".join(lines)
    assert "for linux/amd64 on linux/amd64" in text  # the bind mount printed /platform
    assert "s3cr3t-value" not in text
    # The cache mount is shared between steps: the second sees the first's stamp.
    assert any(line.endswith(" stamp") for line in lines), "\n".join(lines)


def test_a_failing_step_fails_with_the_daemons_words(session_for):
    with pytest.raises(BuildFailed, match=r"exit code: 3"):
        build(
            session_for, {"Dockerfile": "FROM busybox\nRUN exit 3\n"}, BuildKitRequest(tag="localhost/buildkit/fails")
        )


def test_an_unreachable_daemon_is_the_daemons_fault_not_the_builds(tmp_path):
    session = BuildKitSession(find_client(), DaemonAddress(f"unix://{tmp_path}/none.sock"))
    with pytest.raises(DaemonUnavailable, match="(?i)cannot connect"):
        session.build(context({"Dockerfile": "FROM busybox\n"}), BuildKitRequest(tag="x/y"), on_line=lambda _: None)


def test_a_rest_build_with_buildkit_builds_its_target_and_pushes(farm, token):
    dockerfile = (
        "FROM busybox AS base\n"
        "RUN --mount=type=cache,target=/cache date > /cache/stamp && ls /cache > /seen\n"
        "FROM busybox AS release\n"
        "COPY --from=base --chmod=700 /seen /seen\n"
        'CMD ["cat", "/seen"]\n'
        "FROM release AS broken\n"
        "RUN false\n"
    )
    body = {"image": f"{farm.registry}/buildkit/app:1", "dockerfile": dockerfile, "builder": "buildkit"}
    job_id = api_build(farm, token, {**body, "target": "release"})
    done = follow(farm, job_id, token)
    job = BuildJob.objects.get(pk=job_id)
    assert done.end["status"] == job.status == "succeeded", job.error
    assert job.builder == "buildkit" and job.digest == registry_digest(farm, "buildkit/app", "1")
    text = "\n".join(line for _, line in done.lines)
    assert "[generator] BuildKit (/usr/bin/docker 20.10" in text and "#1 " in text


def test_the_classic_builder_builds_a_target_too(farm, token):
    dockerfile = "FROM busybox AS ok\nRUN echo fine\nFROM ok AS broken\nRUN false\n"
    job_id = api_build(
        farm,
        token,
        {"image": f"{farm.registry}/classic/target", "dockerfile": dockerfile, "target": "ok", "builder": "classic"},
    )
    follow(farm, job_id, token)
    job = BuildJob.objects.get(pk=job_id)
    assert job.status == "succeeded" and job.builder == "classic", job.error


def test_a_cancelled_buildkit_build_leaves_no_step_running_on_its_daemon(farm, token):
    seconds = random.randrange(3000, 3999)  # names this build's step among the host's processes
    body = {"image": f"{farm.registry}/buildkit/cancelled", "builder": "buildkit"}
    job_id = api_build(farm, token, {**body, "dockerfile": f"FROM busybox\nRUN echo started && sleep {seconds}\n"})
    wait_for(lambda: BuildLogLine.objects.filter(job_id=job_id, text__endswith=" started").exists(), "the step")
    assert steps_running(seconds) == 1
    request = urllib.request.Request(
        f"http://{farm.web}/api/v1/builds/{job_id}/cancel/", method="POST", headers={"Authorization": f"Token {token}"}
    )
    urllib.request.urlopen(request, timeout=30).close()
    assert follow(farm, job_id, token).end["status"] == "cancelled"
    wait_for(lambda: steps_running(seconds) == 0, "the step to stop on the daemon")


def test_cache_mounts_are_shared_within_an_image_and_not_across_images(farm, farm_pool, token):
    stamp = uuid.uuid4().hex
    only, *others = farm_pool  # one daemon: cache mounts belong to a daemon
    DockerDaemon.objects.filter(pk__in=[d.pk for d in others]).update(enabled=False)
    try:
        write = f"FROM busybox\nRUN --mount=type=cache,target=/c touch /c/{stamp} && echo wrote\n"
        look = f"FROM busybox\nRUN --mount=type=cache,target=/c ls /c # {uuid.uuid4().hex}\n"
        mine, other = f"{farm.registry}/buildkit/mine", f"{farm.registry}/buildkit/other"
        logs = {}
        for name, image, dockerfile in [("write", mine, write), ("other", other, look), ("mine", mine, look)]:
            job_id = api_build(farm, token, {"image": image, "dockerfile": dockerfile, "builder": "buildkit"})
            done = follow(farm, job_id, token)
            assert done.end["status"] == "succeeded", BuildJob.objects.get(pk=job_id).error
            logs[name] = "\n".join(text for _, text in done.lines)
    finally:
        DockerDaemon.objects.filter(pk__in=[d.pk for d in others]).update(enabled=True)
    assert stamp in logs["mine"]
    assert stamp not in logs["other"]


def test_a_daemon_that_never_built_the_image_reuses_the_pools_layers(farm, farm_pool, token):
    nonce = uuid.uuid4().hex
    dockerfile = f"FROM busybox\nRUN echo {nonce} > /nonce && sleep 2\nRUN echo second > /second\n"
    body = {"image": f"{farm.registry}/buildkit/shared:{nonce[:8]}", "dockerfile": dockerfile, "builder": "buildkit"}
    first_daemon, second_daemon = farm_pool[0], farm_pool[1]
    runs = []
    for build_on, idle in [(first_daemon, second_daemon), (second_daemon, first_daemon)]:
        DockerDaemon.objects.filter(pk=idle.pk).update(enabled=False)
        try:
            job_id = api_build(farm, token, body)
            done = follow(farm, job_id, token)
        finally:
            DockerDaemon.objects.filter(pk=idle.pk).update(enabled=True)
        job = BuildJob.objects.get(pk=job_id)
        assert job.status == "succeeded" and job.daemon_id == build_on.pk, job.error
        runs.append("\n".join(text for _, text in done.lines))
    # The first build's cache sources did not exist yet: none is passed, and no ERROR line says so.
    assert "importing cache manifest" not in runs[0] and "ERROR" not in runs[0], runs[0]
    assert "[generator] Cache from:" not in runs[0]
    assert f"[generator] Cache from: {body['image']}\n" in runs[1]  # the pushed tag; no :latest was pushed
    assert "importing cache manifest" in runs[1] and "ERROR" not in runs[1], runs[1]
    assert runs[1].count(" CACHED") >= 2, runs[1]  # both RUN steps from the registry's layers


def test_a_builds_secret_is_mounted_masked_in_its_log_and_gone_when_it_ends(farm, token):
    value = f"token-{uuid.uuid4().hex}"
    # A secret is no part of the step's cache key: the nonce makes the step run.
    step = (
        f"RUN --mount=type=secret,id=npm cat /run/secrets/npm && echo && wc -c < /run/secrets/npm # {uuid.uuid4().hex}"
    )
    dockerfile = f"FROM busybox\n{step}\n"
    body = {"image": f"{farm.registry}/buildkit/secret", "dockerfile": dockerfile, "builder": "buildkit"}
    job_id = api_build(farm, token, {**body, "secrets": {"npm": value}})
    done = follow(farm, job_id, token)
    job = BuildJob.objects.get(pk=job_id)
    assert done.end["status"] == "succeeded", job.error
    text = "\n".join(line for _, line in done.lines)
    assert value not in text, [line for line in text.splitlines() if value in line]
    assert "***" in text and f" {len(value)}" in text  # mounted, whole, and masked
    assert not BuildSecret.objects.filter(job_id=job_id).exists()
    daemon_url = dict((name, url) for name, url in farm.daemons)[job.daemon.name]
    history = engine(daemon_url).api.history(job.image_id)
    assert value not in json.dumps(history)


def test_an_uploaded_context_builds_with_buildkit(farm, token):
    files = {"app/Dockerfile": f"FROM busybox\nCOPY hello.txt /\nRUN cat /hello.txt # {uuid.uuid4().hex}\n"}
    files["hello.txt"] = "uploaded for buildkit\n"
    data = context(files).getvalue()
    request = urllib.request.Request(
        f"http://{farm.web}/api/v1/builds/?image={farm.registry}/buildkit/upload&builder=buildkit"
        "&dockerfile_path=app/Dockerfile",
        data=data,
        method="POST",
        headers={"Authorization": f"Token {token}", "Content-Type": "application/x-tar"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        job_id = json.loads(response.read())["id"]
    done = follow(farm, job_id, token)
    assert done.end["status"] == "succeeded", BuildJob.objects.get(pk=job_id).error
    assert any(text.endswith("uploaded for buildkit") for _, text in done.lines)
