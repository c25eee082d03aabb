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
drives (builds/buildkit.py) building on the same daemon, then the same push; the
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "generator_site.settings")

import django  # noqa: E402

django.setup()

import docker  # noqa: E402
from rest_framework.authtoken.models import Token  # noqa: E402
from rig import small_build_context  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

from builds.buildkit import find_client  # noqa: E402
from pool.models import DockerDaemon  # noqa: E402

WEB = os.environ.get("GENERATOR_BENCH_WEB", "http://localhost:8080")
REGISTRY = os.environ.get("GENERATOR_BENCH_REGISTRY", "localhost:5000")


def plain(api: docker.APIClient, image: str, data: bytes, builder: str = "classic", engine_url: str = "") -> float:
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
    repository, tag = image.rsplit(":", 1)
    for chunk in api.push(repository, tag=tag, stream=True, decode=True):
        if "error" in chunk:
            raise SystemExit(chunk["error"])
    return time.perf_counter() - started


def farm(token: str, image: str, data: bytes, builder: str = "classic") -> tuple[float, float]:
    """Seconds from submit to pushed, and from submit to the first log line."""
    started = time.perf_counter()
    request = urllib.request.Request(
        f"{WEB}/api/v1/builds/?image={image}&builder={builder}",
        data=data,
        method="POST",
        headers={"Authorization": f"Token {token}", "Content-Type": "application/x-tar"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        job = json.loads(response.read())
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
    return time.perf_counter() - started, first_line


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
    plain_times, farm_times, latencies = [], [], []
    try:
        for run in range(args.runs):
            nonce = uuid.uuid4().hex
            plain_times.append(
                plain(
                    api,
                    f"{REGISTRY}/bench/plain:{nonce[:12]}",
                    small_build_context(nonce + "p", args.sleep),
                    args.builder,
                    target.url,
                )
            )
            total, first = farm(
                token,
                f"{REGISTRY}/bench/farm:{nonce[:12]}",
                small_build_context(nonce + "f", args.sleep),
                args.builder,
            )
            farm_times.append(total)
            latencies.append(first)
            print(f"run {run + 1}: plain {plain_times[-1]:.3f} s, farm {total:.3f} s, first line {first * 1000:.0f} ms")
    finally:
        DockerDaemon.objects.filter(pk__in=others).update(enabled=True)
    plain_median, farm_median = statistics.median(plain_times), statistics.median(farm_times)
    print()
    print(f"{args.runs} runs on {target.name}, {args.builder} builder on both sides; medians")
    print("| measure | value |")
    print("| --- | --- |")
    print(f"| plain {args.builder} build + push | {plain_median:.3f} s |")
    print(f"| farm: submit to pushed | {farm_median:.3f} s |")
    print(f"| farm / plain | {farm_median / plain_median:.2f} |")
    print(f"| dispatch latency: submit to first log line (p50) | {statistics.median(latencies) * 1000:.0f} ms |")


if __name__ == "__main__":
    main()
