"""What a warm daemon buys: a rebuild on the daemon that built the image last
(its layer cache holds every step), on a cold daemon that never saw it, and on
a daemon the farm warmed after the push (builds/worker/prepull.py), with what
the warm cost.

By default a private farm of two daemons (bench/rig.py); `--web URL --token T`
uses one that runs (make up's), whose pool it changes and puts back:

    .venv/bin/python bench/warm_rebuild.py [--runs 3] [--steps 5]

Each run builds two Dockerfiles no daemon has seen (`FROM busybox`, a unique
`RUN echo`, then `--steps` `RUN sleep 1 && ...`), through `GET /b1/build`; times
are the job's own, submit (created_at) to pushed (finished_at).

- Cold: the first build with the other daemon disabled (so nothing warms it),
  the same Dockerfile again where the dispatcher sends it (the warm daemon),
  then with that daemon disabled, so that the cold one rebuilds it: every step
  CACHED from the registry (`--cache-from`, inline cache), each layer fetched.
- Pre-pulled: the first build with both daemons taking builds; the farm warms
  the other one after the push. Once the other daemon holds the image, the
  warm rebuild, then with the first daemon disabled the rebuild on the other,
  and a second one there (by then warm by its own build). The warm's pull
  (bytes fetched, seconds) comes from the farm's own counters
  (`generator_worker_prepull_*` on /metrics); whether the rebuild there made
  the warm rebuild's image (the same digest: its push sent nothing new).
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import statistics
import time
import urllib.parse
import urllib.request
import uuid
from datetime import datetime

import docker
import rig


def dockerfile(nonce: str, steps: int) -> str:
    lines = ["FROM busybox", f"RUN echo {nonce} > /nonce"]
    lines += [f"RUN sleep 1 && echo step {i} >> /steps" for i in range(steps)]
    return "\n".join(lines) + "\n"


def build(farm: rig.Farm, image: str, text: str) -> dict:
    query = urllib.parse.urlencode({"imagename": image, "dockerfile": base64.b64encode(text.encode()).decode()})
    job_id = farm.ok("GET", f"/b1/build?{query}")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        job = farm.ok("GET", f"/api/v1/builds/{job_id}/")
        if job["status"] in ("succeeded", "failed", "cancelled"):
            if job["status"] != "succeeded":
                raise SystemExit(f"job {job_id} {job['status']}: {job['error']}")
            return job
        time.sleep(0.05)
    raise SystemExit(f"job {job_id} did not finish within 10 minutes")


def seconds(job: dict) -> float:
    return (datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job["created_at"])).total_seconds()


def phases(job: dict) -> tuple[float, float, float]:
    """The job's own phases, in seconds: submit to start, the build step, the push (and signing)."""
    at = {k: datetime.fromisoformat(job[k]) for k in ("created_at", "started_at", "push_started_at", "finished_at")}
    return (
        (at["started_at"] - at["created_at"]).total_seconds(),
        (at["push_started_at"] - at["started_at"]).total_seconds(),
        (at["finished_at"] - at["push_started_at"]).total_seconds(),
    )


def cached_steps(farm: rig.Farm, job: dict) -> int:
    return farm.ok("GET", f"/api/v1/builds/{job['id']}/log/").count(" CACHED")


def only(farm: rig.Farm, daemons: list[dict], names: set[str]) -> None:
    for daemon in daemons:
        farm.set_daemon(daemon, enabled=daemon["name"] in names, draining=False)


def prepull_counters(farm: rig.Farm, daemon: str) -> tuple[int, int, int]:
    """(pulls, bytes, milliseconds) of the daemon's warms so far, from /metrics."""
    with urllib.request.urlopen(f"{farm.web}/metrics", timeout=30) as response:
        text = response.read().decode()

    def value(name: str) -> int:
        found = re.search(rf'^{name}{{daemon="{re.escape(daemon)}"}} ([0-9.e+]+)$', text, re.MULTILINE)
        return int(float(found.group(1))) if found else 0

    return tuple(value(f"generator_worker_prepull{kind}_total") for kind in ("s", "_bytes", "_milliseconds"))


def wait_until_warm(farm: rig.Farm, daemon: dict, image: str, digest: str, before: tuple, seconds_at_most=120) -> tuple:
    """The daemon's warm counters once the farm's warm has pulled `image` by
    `digest` there, tagged it and counted it."""
    api = docker.APIClient(base_url=daemon["url"], version="1.41")
    started = time.monotonic()
    while time.monotonic() - started < seconds_at_most:
        try:
            tagged = digest in " ".join(api.inspect_image(image)["RepoDigests"])
        except docker.errors.NotFound:
            tagged = False
        if tagged and (after := prepull_counters(farm, daemon["name"]))[0] > before[0]:
            return after
        time.sleep(0.05)
    raise SystemExit(f"{daemon['name']} was not warmed with {image} within {seconds_at_most:.0f} s: is the warm off?")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    rig.add_arguments(parser, daemons=2)
    args = parser.parse_args()
    kinds = ("first", "warm", "cold", "warm2", "prepulled", "again", "pull_s", "bytes", "same")
    rows: dict[str, list] = {k: [] for k in (*kinds, "warm2_phases", "prepulled_phases")}
    loads = []
    with rig.farm_from(args) as farm, farm.pool_restored() as pool:
        enabled = [d for d in pool if d["enabled"]]
        if len(enabled) < 2:
            raise SystemExit("needs two enabled daemons")
        a, b = enabled[:2]
        print(rig.machine_note())
        for run in range(args.runs):
            # Cold: nothing warms b (disabled while a pushes).
            text = dockerfile(uuid.uuid4().hex, args.steps)
            image = f"{farm.registry}/bench/warm-rebuild:cold{run}"
            only(farm, pool, {a["name"]})
            first = build(farm, image, text)
            warm = build(farm, image, text)
            only(farm, pool, {b["name"]})
            cold = build(farm, image, text)
            only(farm, pool, {a["name"], b["name"]})
            assert {first["daemon"], warm["daemon"], cold["daemon"]} == {a["name"], b["name"]}, "not where asked"

            # Pre-pulled: both take builds when the first pushes; the other is warmed.
            text = dockerfile(uuid.uuid4().hex, args.steps)
            image = f"{farm.registry}/bench/warm-rebuild:prepulled{run}"
            first2 = build(farm, image, text)
            source = a if first2["daemon"] == a["name"] else b
            other = b if source is a else a
            before = prepull_counters(farm, other["name"])
            after = wait_until_warm(farm, other, image, first2["digest"], before)
            warm2 = build(farm, image, text)
            assert warm2["daemon"] == source["name"], "the dispatcher did not prefer the warm daemon"
            only(farm, pool, {other["name"]})
            prepulled = build(farm, image, text)
            again = build(farm, image, text)  # the warmed daemon's second: now warm by its own build
            only(farm, pool, {a["name"], b["name"]})
            pulls = after[0] - before[0]
            loads.append(os.getloadavg()[0])
            rows["first"].append(seconds(first))
            rows["warm"].append(seconds(warm))
            rows["cold"].append(seconds(cold))
            rows["warm2"].append(seconds(warm2))
            rows["prepulled"].append(seconds(prepulled))
            rows["pull_s"].append((after[2] - before[2]) / 1000)
            rows["bytes"].append(after[1] - before[1])
            rows["same"].append(prepulled["digest"] == warm2["digest"])
            rows["warm2_phases"].append(phases(warm2))
            rows["prepulled_phases"].append(phases(prepulled))
            rows["again"].append(seconds(again))
            print(
                f"run {run + 1}: first {seconds(first):.2f} s; warm {seconds(warm):.2f} s, cold {seconds(cold):.2f} s"
                f" ({cached_steps(farm, cold)} CACHED); warm {seconds(warm2):.2f} s, pre-pulled"
                f" {seconds(prepulled):.2f} s ({cached_steps(farm, prepulled)} CACHED,"
                f" {'the same image' if rows['same'][-1] else 'a new image'}); the warm: {pulls} pull(s),"
                f" {after[1] - before[1]} bytes in {(after[2] - before[2]) / 1000:.2f} s; load {loads[-1]:.1f}",
                flush=True,
            )

    def median(name: str) -> float:
        return statistics.median(rows[name])

    print()
    print(f"{args.runs} runs; {args.steps} RUN steps that sleep 1 s each when not cached; load average {loads}")
    print("| build | median |")
    print("| --- | --- |")
    print(f"| first build (cold) | {median('first'):.2f} s |")
    print(f"| rebuild on the warm daemon (what the dispatcher chooses) | {median('warm'):.2f} s |")
    print(f"| rebuild on a cold daemon (layers from the registry) | {median('cold'):.2f} s |")
    print(f"| cold / warm | {median('cold') / median('warm'):.2f}x |")
    print(f"| rebuild on the warm daemon (second image) | {median('warm2'):.2f} s |")
    print(f"| rebuild on the other daemon, warmed after the push | {median('prepulled'):.2f} s |")
    print(f"| pre-pulled / warm | **{median('prepulled') / median('warm2'):.2f}x** (target <= 1.2x) |")
    print(f"| the warmed daemon's second rebuild (warm there by its own) | {median('again'):.2f} s |")
    for index, phase in enumerate(("submit to start", "the build step", "the push and signing")):
        warm_s = statistics.median(p[index] for p in rows["warm2_phases"])
        prepulled_s = statistics.median(p[index] for p in rows["prepulled_phases"])
        print(f"| {phase}: warm / pre-pulled | {warm_s:.2f} s / {prepulled_s:.2f} s |")
    print(f"| pre-pulled rebuilds that made the warm one's image (digest) | {sum(rows['same'])} of {args.runs} |")
    print(f"| the warm's pull: bytes fetched | {median('bytes'):.0f} |")
    print(f"| the warm's pull: time | {median('pull_s'):.2f} s |")


if __name__ == "__main__":
    main()
