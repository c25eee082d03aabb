"""A two-platform build against its two platforms built one after the other.

    .venv/bin/python bench/multiplatform.py [--runs 3] [--work 20000]

On a private farm of two amd64 daemons (bench/rig.py) with arm64 under the
host's QEMU and the two-platform busybox base in its registry
(scripts/localfarm.py `publish_busybox_index`), each run builds one Dockerfile
no daemon has seen (a nonce, then a shell loop of `--work` iterations, which
QEMU makes several times slower on arm64):

- parallel: one build with platforms linux/amd64 and linux/arm64 (its children
  run at once, one per daemon), submit to the index pushed;
- serial: the same Dockerfile (another nonce) as a linux/amd64 build, then as a
  linux/arm64 build, the second submitted when the first ended.

Times are the jobs' own, created_at to finished_at, from the REST API. The
parallel build should take about as long as its slower child (arm64), not the
sum of both.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from datetime import datetime

import rig

from scripts import localfarm as lf

BOTH = ["linux/amd64", "linux/arm64"]


def dockerfile(base: str, nonce: str, work: int) -> str:
    loop = f"i=0; while [ $i -lt {work} ]; do i=$((i+1)); done"
    return f"FROM {base}\nRUN echo {nonce} > /nonce\nRUN {loop}; echo counted to $i on $(uname -m)\n"


def seconds(job: dict) -> float:
    return (datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job["created_at"])).total_seconds()


def build(farm: rig.Farm, image: str, text: str, platforms: list[str]) -> dict:
    job = farm.ok("POST", "/api/v1/builds/", {"image": image, "dockerfile": text, "platforms": platforms})
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        job = farm.ok("GET", f"/api/v1/builds/{job['id']}/")
        if job["status"] in ("succeeded", "failed", "cancelled"):
            if job["status"] != "succeeded":
                raise SystemExit(f"build {job['id']} {job['status']}: {job['error']}")
            return job
        time.sleep(0.2)
    raise SystemExit(f"build {job['id']} did not end within 900 s")


def wait_for_platforms(farm: rig.Farm) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if all(set(BOTH) <= set(d["builds_platforms"]) for d in farm.daemons()):
            return
        time.sleep(0.5)
    raise SystemExit(f"the daemons do not build {BOTH}: {[d['builds_platforms'] for d in farm.daemons()]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work", type=int, default=20000, help="shell loop iterations of the build's step")
    rig.add_arguments(parser, daemons=2)
    args = parser.parse_args()
    with rig.farm_from(args) as farm:
        base = f"{farm.registry}/library/busybox"
        lf.publish_busybox_index(farm.registry, token_source=farm.token_source)
        if farm.registry not in {row["host"] for row in farm.ok("GET", "/api/v1/registries/")["results"]}:
            farm.ok("POST", "/api/v1/registries/", {"host": farm.registry})  # builds push only to allowed ones
        wait_for_platforms(farm)
        build(farm, f"{farm.registry}/bench/warmup:1", dockerfile(base, "warmup", 10), BOTH)  # base pulled on both
        parallel, serial, slower = [], [], []
        for run in range(args.runs):
            image = f"{farm.registry}/bench/multi"
            job = build(farm, f"{image}:{run}", dockerfile(base, uuid.uuid4().hex, args.work), BOTH)
            children = {c["platform"]: c for c in job["children"]}
            parallel.append(seconds(job))
            text = dockerfile(base, uuid.uuid4().hex, args.work)
            ones = [build(farm, f"{image}-{p.split('/')[1]}:{run}", text, [p]) for p in BOTH]
            serial.append(sum(seconds(j) for j in ones))
            slower.append(max(seconds(j) for j in ones))
            daemons = ", ".join(f"{p} on {c['daemon']}" for p, c in children.items())
            amd64, arm64 = (seconds(j) for j in ones)
            rig.say(
                f"run {run + 1}: two-platform {parallel[-1]:.2f} s ({daemons}); "
                f"one after the other {serial[-1]:.2f} s (amd64 {amd64:.2f} s, arm64 {arm64:.2f} s)"
            )
        print(f"\n{args.runs} runs, {args.work} loop iterations, medians:")
        print(f"  two-platform build:                 {statistics.median(parallel):7.2f} s")
        print(f"  the two platforms one after other:  {statistics.median(serial):7.2f} s")
        print(f"  the slower platform alone:          {statistics.median(slower):7.2f} s")
        print(f"  speed-up: {statistics.median(serial) / statistics.median(parallel):.2f}x")


if __name__ == "__main__":
    main()
