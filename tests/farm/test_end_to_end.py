"""Submit over HTTP, build on a pool daemon, push to the registry, follow the live log."""

from __future__ import annotations

import json
import re
import time

import pytest
from websockets.exceptions import InvalidStatus

from builds.models import BuildJob, BuildLogLine
from tests.farm.conftest import engine, follow, http_get, printed, registry_digest, submit

pytestmark = pytest.mark.farm

EXAMPLE = """FROM busybox
RUN echo "hello from the farm" > /hello.txt
ENV GREETING=hi
EXPOSE 80
CMD ["cat", "/hello.txt"]
"""


def stored_lines(job_id: str) -> list[tuple[int, str]]:
    return list(BuildLogLine.objects.filter(job_id=job_id).order_by("seq").values_list("seq", "text"))


def assert_whole_log(followed, job_id: str) -> None:
    """Every stored line, once each, in order, from the first."""
    stored = stored_lines(job_id)
    assert [seq for seq, _ in stored] == list(range(1, len(stored) + 1))
    assert followed.lines == stored
    assert followed.end["lines"] == len(stored)
    assert followed.close_code == 1000


def test_the_seed_example_is_built_pushed_and_runs(farm, token):
    image = f"{farm.registry}/cts/example"
    job_id = submit(farm, token, image, EXAMPLE)
    assert len(job_id) == 32

    followed = follow(farm, job_id, token)

    job = BuildJob.objects.get(pk=job_id)
    assert followed.end["status"] == job.status == "succeeded", job.error
    assert_whole_log(followed, job_id)
    texts = [text for _, text in followed.lines]
    step = r'#\d+ \[2/2\] RUN echo "hello from the farm" > /hello.txt'  # BuildKit counts FROM and RUN
    assert any(re.fullmatch(step, t) for t in texts), texts
    # Built before pushed: the push's first line comes after the build's last (BuildKit writes the
    # step's time before "done" when it took a while: "... 0.0s done").
    named = max(
        (
            i
            for i, t in enumerate(texts)
            if re.fullmatch(rf"#\d+ naming to {re.escape(image)}:latest( [\d.]+s)? done", t)
        ),
        default=None,
    )
    assert named is not None, [t for t in texts if "naming" in t or "writing" in t]
    assert named < texts.index(f"The push refers to repository [{image}]")
    assert job.digest == registry_digest(farm, "cts/example", "latest")
    assert job.image_id.startswith("sha256:") and job.started_at and job.finished_at

    # Signed, with its provenance (issue 28): busybox was never pulled (make up imports it), so
    # BuildKit named it with no digest and the daemon's image id stands for it.
    statement = json.loads(http_get(f"http://{farm.web}/api/v1/builds/{job_id}/attestations/provenance/", token)[1])
    [base] = statement["predicate"]["buildDefinition"]["resolvedDependencies"][1:]
    busybox = engine(dict(farm.daemons)[job.daemon.name]).images.get("busybox:latest").id
    assert base["name"] == "docker.io/library/busybox" and base["annotations"] == {"resolvedBy": "daemon-image-id"}
    assert "sha256:" + base["digest"]["sha256"] == busybox
    assert statement["subject"][0]["digest"]["sha256"] == job.digest.split(":")[1]

    # Pull it on the other daemon and run it: it is the image that was built.
    other_url = next(url for name, url in farm.daemons if name != job.daemon.name)
    client = engine(other_url)
    pulled = client.images.pull(image, tag="latest", auth_config=farm.pull_auth(image))
    assert pulled.id == job.image_id
    output = client.containers.run(f"{image}:latest", remove=True, network_mode="none")
    assert output == b"hello from the farm\n"


def test_a_late_client_gets_the_whole_log_and_can_resume(farm, token):
    job_id = submit(farm, token, f"{farm.registry}/cts/late", EXAMPLE, seed_mode=True)
    follow(farm, job_id, token)  # wait for the end

    late = follow(farm, job_id, token)
    assert late.end["status"] == "succeeded"
    assert_whole_log(late, job_id)

    resumed = follow(farm, job_id, token, after=10)
    assert resumed.lines == stored_lines(job_id)[10:]


def test_a_client_that_joins_mid_build_misses_nothing(farm, token):
    chatty = "FROM busybox\nRUN for i in $(seq 1 60); do echo chatty line $i; sleep 0.05; done\n"
    job_id = submit(farm, token, f"{farm.registry}/cts/chatty", chatty)
    deadline = time.monotonic() + 60
    while BuildJob.objects.get(pk=job_id).log_line_count < 5:
        assert time.monotonic() < deadline, "the build never started logging"
        time.sleep(0.05)

    followed = follow(farm, job_id, token)

    assert followed.end["status"] == "succeeded"
    assert_whole_log(followed, job_id)
    texts = [text for _, text in followed.lines]
    assert [t for t in printed(texts) if t.startswith("chatty line")] == [f"chatty line {i}" for i in range(1, 61)]


def test_a_failing_dockerfile_fails_once_with_the_daemons_message(farm, token):
    job_id = submit(farm, token, f"{farm.registry}/cts/broken", "FROM busybox\nRUN echo about to fail && exit 3\n")

    followed = follow(farm, job_id, token)

    job = BuildJob.objects.get(pk=job_id)
    assert followed.end["status"] == job.status == "failed"
    assert job.error.endswith("exit code: 3") and "echo about to fail && exit 3" in job.error, job.error
    assert followed.end["error"] == job.error
    assert job.attempt == 1 and job.finished_at and not job.digest
    assert "about to fail" in printed([text for _, text in followed.lines])
    assert followed.lines[-1][1] == f"[generator] Build failed: {job.error}"
    assert registry_digest(farm, "cts/broken", "latest") is None


def test_a_dockerfile_the_daemon_cannot_parse_fails_with_its_reason(farm, token):
    job_id = submit(farm, token, f"{farm.registry}/cts/unparsable", "FROM busybox\nBOGUS instruction\n")
    followed = follow(farm, job_id, token)
    assert followed.end["status"] == "failed"
    assert "unknown instruction" in followed.end["error"].lower()


def test_a_push_to_an_unreachable_registry_fails_with_a_reason(farm, token):
    job_id = submit(farm, token, "localhost:1/cts/nowhere", EXAMPLE)
    followed = follow(farm, job_id, token)
    job = BuildJob.objects.get(pk=job_id)
    assert followed.end["status"] == job.status == "failed"
    assert "localhost:1/cts/nowhere" in job.error
    assert job.image_id  # built, and kept on the daemon


def test_two_builds_run_at_once_on_different_daemons(farm, token):
    slow = "FROM busybox\nRUN echo {n} && sleep 3\n"
    first = submit(farm, token, f"{farm.registry}/cts/first", slow.format(n=1))
    second = submit(farm, token, f"{farm.registry}/cts/second", slow.format(n=2), seed_mode=True)

    for job_id in (first, second):
        assert follow(farm, job_id, token).end["status"] == "succeeded"

    a, b = BuildJob.objects.get(pk=first), BuildJob.objects.get(pk=second)
    assert a.daemon != b.daemon
    assert a.started_at < b.finished_at and b.started_at < a.finished_at, "the builds did not overlap"


def test_the_log_line_endpoint_serves_the_seed_pollers(farm, token):
    job_id = submit(farm, token, f"{farm.registry}/cts/polled", EXAMPLE)
    follow(farm, job_id, token)
    stored = stored_lines(job_id)
    assert http_get(f"http://{farm.web}/b1/build/log/http/{job_id}?count=0", token) == (200, stored[0][1])
    status, body = http_get(f"http://{farm.web}/b1/build/log/http/{job_id}?count={len(stored)}", token)
    assert status == 404 and f"has {len(stored)} lines" in body


def test_the_websocket_refuses_unknown_jobs_and_strangers(farm, token):
    unknown = follow(farm, "0" * 32, token)
    assert unknown.close_code == 4404 and unknown.end["message"] == f"no build job with id {'0' * 32!r}"

    job_id = submit(farm, token, f"{farm.registry}/cts/private", EXAMPLE)
    anonymous = follow(farm, job_id, None)
    assert anonymous.close_code == 4401 and anonymous.lines == []
    wrong_token = follow(farm, job_id, "f" * 40)
    assert wrong_token.close_code == 4401 and "invalid" in wrong_token.end["message"]

    with pytest.raises(InvalidStatus) as refused:
        follow(farm, job_id, token, headers={"Origin": "https://evil.example"})
    assert refused.value.response.status_code == 403
    follow(farm, job_id, token)  # let the build end inside this test


def test_the_health_check_records_each_daemon(farm, farm_pool):
    from pool.models import DockerDaemon
    from tests.farm.conftest import wait_for

    for daemon in farm_pool:
        seen = wait_for(
            lambda d=daemon: DockerDaemon.objects.filter(pk=d.pk, last_seen_at__isnull=False).first(),
            timeout=20,
            what=f"a health check of {daemon.name}",
        )
        assert seen.healthy and seen.worker_online and seen.consecutive_failures == 0
        assert seen.engine_version.startswith("20.10") and seen.latency_ms > 0
