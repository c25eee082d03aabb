"""What the warm-cache preference buys: a rebuild on the daemon that built the
image last (its layer cache holds every step) against the same rebuild on a
daemon that never saw it.

Needs the farm of `make up` running (it reads the admin's token and flips the
pool's daemons through the same database):

    .venv/bin/python bench/warm_rebuild.py [--runs 3] [--steps 5]

Each run uses a Dockerfile no daemon has seen: a first (cold) build, then the
same Dockerfile again twice: once as the dispatcher chooses (it prefers the warm
daemon), once with that daemon disabled so that another, cold one must build it.
Times are the job's own, from submit (created_at) to pushed (finished_at).

Before the cold rebuild, the image is pulled by hand (`docker pull`, the SDK)
on the cold daemon and removed again: the time the engine itself takes to fetch
and unpack those layers, the floor under any rebuild that reuses the pool's
layers on a daemon that does not hold them (Docker 20.10's BuildKit must unpack
every layer into the daemon's image store).
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import sys
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "generator_site.settings")

import django  # noqa: E402

django.setup()

import docker  # noqa: E402
from rest_framework.authtoken.models import Token  # noqa: E402

from builds.models import BuildJob  # noqa: E402
from pool.models import DockerDaemon  # noqa: E402

WEB = os.environ.get("GENERATOR_BENCH_WEB", "http://localhost:8080")
REGISTRY = os.environ.get("GENERATOR_BENCH_REGISTRY", "localhost:5000")


def dockerfile(nonce: str, steps: int) -> str:
    lines = ["FROM busybox", f"RUN echo {nonce} > /nonce"]
    lines += [f"RUN sleep 1 && echo step {i} >> /steps" for i in range(steps)]
    return "\n".join(lines) + "\n"


def build(token: str, image: str, text: str) -> BuildJob:
    query = urllib.parse.urlencode({"imagename": image, "dockerfile": base64.b64encode(text.encode()).decode()})
    request = urllib.request.Request(f"{WEB}/b1/build?{query}", headers={"Authorization": f"Token {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        job_id = response.read().decode()
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        job = BuildJob.objects.select_related("daemon").get(pk=job_id)
        if job.is_terminal:
            if job.status != "succeeded":
                raise SystemExit(f"job {job.id} {job.status}: {job.error}")
            return job
        time.sleep(0.05)
    raise SystemExit(f"job {job_id} did not finish within 10 minutes")


def pull_and_remove(daemon: DockerDaemon, image: str) -> float:
    """Seconds for the daemon to pull `image` by hand; then it is removed, so the
    daemon is as cold as before for the farm's rebuild."""
    api = docker.APIClient(base_url=daemon.url, version="1.41")
    repository, tag = image.rsplit(":", 1)
    started = time.perf_counter()
    for chunk in api.pull(repository, tag=tag, stream=True, decode=True):
        if "error" in chunk:
            raise SystemExit(chunk["error"])
    took = time.perf_counter() - started
    api.remove_image(image)
    return took


def seconds(job: BuildJob) -> float:
    return (job.finished_at - job.created_at).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()

    token = Token.objects.get(user__username="admin").key
    if DockerDaemon.objects.filter(enabled=True).count() < 2:
        raise SystemExit("needs two enabled daemons (make up)")
    first, warm, cold, pulls = [], [], [], []
    for run in range(args.runs):
        text = dockerfile(uuid.uuid4().hex, args.steps)
        image = f"{REGISTRY}/bench/warm-rebuild:run{run}"
        built = build(token, image, text)
        again = build(token, image, text)
        assert again.daemon == built.daemon, "the dispatcher did not prefer the warm daemon"
        DockerDaemon.objects.filter(pk=built.daemon.pk).update(enabled=False)
        try:
            cold_daemon = DockerDaemon.objects.filter(enabled=True).order_by("name").first()
            pulls.append(pull_and_remove(cold_daemon, image))
            elsewhere = build(token, image, text)
        finally:
            DockerDaemon.objects.filter(pk=built.daemon.pk).update(enabled=True)
        assert elsewhere.daemon != built.daemon
        first.append(seconds(built))
        warm.append(seconds(again))
        cold.append(seconds(elsewhere))
        print(
            f"run {run + 1}: first {first[-1]:.2f} s, warm rebuild {warm[-1]:.2f} s, "
            f"cold rebuild {cold[-1]:.2f} s, docker pull there {pulls[-1]:.2f} s"
        )

    def median(values):
        return statistics.median(values)

    print()
    print(f"{args.runs} runs; the Dockerfile has {args.steps} RUN steps that sleep 1 s each when not cached")
    print("| build | median s |")
    print("| --- | --- |")
    print(f"| first build (cold) | {median(first):.2f} |")
    print(f"| rebuild on the warm daemon (what the dispatcher chooses) | {median(warm):.2f} |")
    print(f"| rebuild on a cold daemon | {median(cold):.2f} |")
    print(f"| cold / warm | {median(cold) / median(warm):.1f}x |")
    print(f"| docker pull of the image on the cold daemon (the engine's floor) | {median(pulls):.2f} |")
    print(f"| (cold - pull) / warm | {(median(cold) - median(pulls)) / median(warm):.1f}x |")


if __name__ == "__main__":
    main()
