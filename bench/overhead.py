"""The farm's cost on top of plain `docker build` + `docker push`, on the same daemon.

Needs `make up` running. For each run, a small build no cache has seen
(`FROM busybox` + a `RUN` + a `COPY`) is built and pushed twice: once by hand
through the docker SDK against the daemon (the baseline), once submitted to the
farm through the REST API and followed until pushed. Also prints the dispatch
latency: submit request to the first log line, on an idle pool.

    .venv/bin/python bench/overhead.py [--runs 10] [--sleep S] [--builder buildkit]

With `--sleep S` the build's RUN step waits S seconds: a build with some work
in it, where the farm's fixed cost per build weighs less. With `--builder
buildkit` both sides use BuildKit: the baseline is the same docker CLI the farm
drives (builds/engine/buildkit.py) building on the same daemon, then the same push; the
farm needs GENERATOR_BUILDERS to include buildkit (`GENERATOR_BUILDERS=classic,buildkit make up`).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "generator_site.settings")

import django  # noqa: E402

django.setup()

import docker  # noqa: E402
from rest_framework.authtoken.models import Token  # noqa: E402
from rig import small_build_context  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

from builds.engine.buildkit import find_client  # noqa: E402
from builds.models import BuildJob  # noqa: E402
from pool.models import DockerDaemon  # noqa: E402

WEB = os.environ.get("GENERATOR_BENCH_WEB", "http://localhost:8080")


@dataclass
class Plain:
    build: float
    push: float

    @property
    def total(self) -> float:
        return self.build + self.push


@dataclass
class Farm:
    """Seconds: `total` as the client sees it (submit to the end frame); the
    parts from the job's own timestamps: the submit's answer, created to the
    worker's claim (dispatch), claimed to the push's start (the worker's setup
    and the build), the push (until the job is recorded as pushed)."""

    total: float
    first_line: float
    answer: float
    to_start: float
    build: float
    push: float


REGISTRY = os.environ.get("GENERATOR_BENCH_REGISTRY", "localhost:5000")


def plain(api: docker.APIClient, image: str, data: bytes, builder: str = "classic", engine_url: str = "") -> Plain:
    started = time.perf_counter()
    if builder == "buildkit":
        cli = find_client()
        argv = [cli.path, "--host", engine_url]
        argv += ["build", "--progress=plain", "--tag", image, "-"]
        result = subprocess.run(argv, input=data, capture_output=True, env={**os.environ, "DOCKER_BUILDKIT": "1"})
        if result.returncode != 0:
            raise SystemExit(result.stdout.decode()[-2000:])
    else:
        for chunk in api.build(fileobj=io.BytesIO(data), custom_context=True, tag=image, rm=True, decode=True):
            if "error" in chunk:
                raise SystemExit(chunk["error"])
    built = time.perf_counter()
    repository, tag = image.rsplit(":", 1)
    for chunk in api.push(repository, tag=tag, stream=True, decode=True):
        if "error" in chunk:
            raise SystemExit(chunk["error"])
    return Plain(build=built - started, push=time.perf_counter() - built)


def farm(token: str, image: str, data: bytes, builder: str = "classic") -> Farm:
    """Seconds from submit to pushed, to the first log line, and where the time went."""
    started = time.perf_counter()
    request = urllib.request.Request(
        f"{WEB}/api/v1/builds/?image={image}&builder={builder}",
        data=data,
        method="POST",
        headers={"Authorization": f"Token {token}", "Content-Type": "application/x-tar"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        job = json.loads(response.read())
    answered = time.perf_counter() - started
    first_line = None
    ws = WEB.replace("http://", "ws://")
    with connect(f"{ws}/b1/build/log/ws/{job['id']}", additional_headers={"Authorization": f"Token {token}"}) as socket:
        for message in socket:
            frame = json.loads(message)
            if frame["type"] == "log" and first_line is None:
                first_line = time.perf_counter() - started
            if frame["type"] == "end":
                if frame["status"] != "succeeded":
                    raise SystemExit(f"job {job['id']} {frame['status']}: {frame['error']}")
                break
    total = time.perf_counter() - started
    row = BuildJob.objects.get(pk=job["id"])
    return Farm(
        total=total,
        first_line=first_line,
        answer=answered,
        to_start=(row.started_at - row.created_at).total_seconds(),
        build=(row.push_started_at - row.started_at).total_seconds(),
        push=(row.finished_at - row.push_started_at).total_seconds(),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--sleep", type=float, default=0, help="seconds the build's RUN step waits")
    parser.add_argument("--builder", choices=["classic", "buildkit"], default="classic")
    args = parser.parse_args()
    token = Token.objects.get(user__username="admin").key
    daemons = list(DockerDaemon.objects.filter(enabled=True).order_by("name"))
    # One daemon for both sides: the others are disabled for the run.
    target, others = daemons[0], [d.pk for d in daemons[1:]]
    DockerDaemon.objects.filter(pk__in=others).update(enabled=False)
    api = docker.APIClient(base_url=target.url, version="1.41")
    plains: list[Plain] = []
    farms: list[Farm] = []
    try:
        for run in range(args.runs):
            nonce = uuid.uuid4().hex
            plains.append(
                plain(
                    api,
                    f"{REGISTRY}/bench/plain:{nonce[:12]}",
                    small_build_context(nonce + "p", args.sleep),
                    args.builder,
                    target.url,
                )
            )
            farms.append(
                farm(
                    token,
                    f"{REGISTRY}/bench/farm:{nonce[:12]}",
                    small_build_context(nonce + "f", args.sleep),
                    args.builder,
                )
            )
            print(
                f"run {run + 1}: plain {plains[-1].total:.3f} s, farm {farms[-1].total:.3f} s, "
                f"first line {farms[-1].first_line * 1000:.0f} ms"
            )
    finally:
        DockerDaemon.objects.filter(pk__in=others).update(enabled=True)

    def ms(values) -> str:
        return f"{statistics.median(values) * 1000:.0f} ms"

    plain_median = statistics.median(p.total for p in plains)
    farm_median = statistics.median(f.total for f in farms)
    print()
    print(f"{args.runs} runs on {target.name}, {args.builder} builder on both sides; medians")
    print("| measure | value |")
    print("| --- | --- |")
    print(f"| plain {args.builder} build + push | {plain_median:.3f} s |")
    print(f"| farm: submit to pushed | {farm_median:.3f} s |")
    print(f"| farm / plain | {farm_median / plain_median:.2f} |")
    print(f"| dispatch latency: submit to first log line (p50) | {ms(f.first_line for f in farms)} |")
    print(f"| plain: build / push | {ms(p.build for p in plains)} / {ms(p.push for p in plains)} |")
    print(f"| farm: submit answered | {ms(f.answer for f in farms)} |")
    print(f"| farm: created to claimed by the worker | {ms(f.to_start for f in farms)} |")
    print(f"| farm: claimed to push started (setup + build) | {ms(f.build for f in farms)} |")
    print(f"| farm: push, until recorded | {ms(f.push for f in farms)} |")


if __name__ == "__main__":
    main()
