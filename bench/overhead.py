"""The farm's cost on top of plain `docker build` + `docker push`, on the same daemon.

    .venv/bin/python bench/overhead.py [--runs 10] [--dockerfile six,small] [--builder buildkit] [--sleep S]

Two small builds no cache has seen, each built and pushed twice per run: once
by hand with the docker CLI the farm drives (`DOCKER_BUILDKIT=1 docker build`,
then `docker push`, against the daemon's socket), once through the farm,
followed on the WebSocket to the end frame. Medians of `--runs`; the ratio is
of the two medians taken in the same run, on the same daemon and registry.

- `six`: the six instructions of issue 26 (`FROM busybox`, `MAINTAINER`,
  `ENV`, one `RUN echo`, `EXPOSE`, `CMD`), submitted as its users do with
  `GET /b1/build?imagename=...&dockerfile=BASE64`.
- `small`: `FROM busybox` + a `RUN` + a `COPY` of a nonce file, uploaded as a
  context with `POST /api/v1/builds/` (with `--sleep S` its RUN waits S seconds:
  a build with some work in it, where the farm's fixed cost weighs less).

Per Dockerfile it prints the farm's timeline, each moment's median in ms after
the submit was sent: the answer, the worker's claim, the build (the CLI)
started and done, the push started and done, the attestations, the job
recorded as ended, and the frames' arrival (first line, the builder's first
line, `pushing`, the end). The worker's moments come from its `phases:` record
(builds/worker/phase_times.py) in the private farm's worker log; with `--web` only
the job's own timestamps and the frames are known.

By default a private farm on free ports with one daemon (bench/rig.py).
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import statistics
import tempfile
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import rig
from websockets.sync.client import connect


def six_instructions(nonce: str) -> str:
    return (
        "FROM busybox\n"
        "MAINTAINER Generator bench <bench@example.invalid>\n"
        "ENV BENCH_RUN=1\n"
        f"RUN echo {nonce}\n"
        "EXPOSE 8080\n"
        'CMD ["sh"]\n'
    )


@dataclass
class Farm:
    """A farm build's moments, in seconds after the submit was sent (wall clock:
    the farm's timestamps and this client's come from the same machine)."""

    total: float
    moments: dict[str, float] = field(default_factory=dict)


# The worker's record (builds/worker/phase_times.py): `job ID phases: name=+0.123 ...`.
PHASES = re.compile(r"job ([0-9a-f]{32}) phases: ((?:\w+=\+[\d.]+ ?)+)")
# The timeline's rows, in order: (key, what it is).
TIMELINE = [
    ("answered", "submit answered"),
    ("claimed", "claimed by the worker (started_at)"),
    ("contained", "worker: source and cgroup ready"),
    ("frame_first_line", "frame: the first log line received"),
    ("build_started", "worker: build (CLI) started"),
    ("cli_first_line", "worker: the CLI's first line"),
    ("frame_builder", "frame: the builder's first line received"),
    ("cli_returned", "worker: the CLI returned (exited, image id read)"),
    ("build_done", "worker: build (CLI) done"),
    ("uncontained", "worker: cgroup released"),
    ("push_started", "worker: push started (status pushing)"),
    ("frame_pushing", "frame: status pushing received"),
    ("pushed", "worker: push done"),
    ("attested", "worker: provenance, SBOM, signature written"),
    ("ended", "worker: outcome recorded"),
    ("finished", "job finished_at"),
    ("frame_end", "frame: end received"),
    ("dispatched", "worker: dispatch after the build"),
]


def submit(farm: rig.Farm, kind: str, image: str, data: bytes, builder: str) -> str:
    """The job id, from the front door its users take for this kind of build."""
    if kind == "six" and builder == "default":
        query = urllib.parse.urlencode({"imagename": image, "dockerfile": base64.b64encode(data).decode()})
        status, answer = farm.call("GET", f"/b1/build?{query}")
        if status != 200:
            raise SystemExit(f"/b1/build: {status} {answer}")
        return str(answer).strip()
    chosen = {} if builder == "default" else {"builder": builder}
    if kind == "six":
        return farm.ok("POST", "/api/v1/builds/", {"image": image, "dockerfile": data.decode(), **chosen})["id"]
    query = urllib.parse.urlencode({"image": image, **chosen})
    return farm.ok("POST", f"/api/v1/builds/?{query}", data, "application/x-tar")["id"]


def farm_run(farm: rig.Farm, kind: str, image: str, data: bytes, builder: str) -> tuple[str, Farm]:
    started = time.time()
    job_id = submit(farm, kind, image, data, builder)
    moments = {"answered": time.time() - started}
    headers = {"Authorization": f"Token {farm.token}"}
    with connect(f"{farm.ws}/b1/build/log/ws/{job_id}", additional_headers=headers) as socket:
        for message in socket:
            arrived = time.time() - started
            frame = json.loads(message)
            if frame["type"] == "log":
                moments.setdefault("frame_first_line", arrived)
                if any(not line["text"].startswith("[generator] ") for line in frame["lines"]):
                    moments.setdefault("frame_builder", arrived)
            elif frame["type"] == "status" and frame["status"] == "pushing":
                moments.setdefault("frame_pushing", arrived)
            elif frame["type"] == "end":
                moments["frame_end"] = arrived
                if frame["status"] != "succeeded":
                    raise SystemExit(f"job {job_id} {frame['status']}: {frame['error']}")
                break
            elif frame["type"] == "error":
                raise SystemExit(f"job {job_id}: {frame['message']}")
    job = farm.ok("GET", f"/api/v1/builds/{job_id}/")
    moments["claimed"] = _at(job["started_at"]) - started
    moments["finished"] = _at(job["finished_at"]) - started
    return job_id, Farm(total=moments["frame_end"], moments=moments)


def _at(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def worker_phases(logs: Path | None) -> dict[str, dict[str, float]]:
    """Each job's moments as its worker recorded them, seconds after its claim."""
    found: dict[str, dict[str, float]] = {}
    for path in sorted(logs.glob("worker-*.log")) if logs else []:
        for match in PHASES.finditer(path.read_text(errors="replace")):
            found[match[1]] = {name: float(value) for name, value in re.findall(r"(\w+)=\+([\d.]+)", match[2])}
    return found


def add_worker_moments(run: Farm, phases: dict[str, float]) -> None:
    """The worker's moments on the run's clock: its `claimed` is the job's started_at."""
    if "claimed" not in phases:
        return
    for name, seconds in phases.items():
        if name != "claimed":
            run.moments[name] = run.moments["claimed"] + seconds - phases["claimed"]


def context_for(kind: str, nonce: str, sleep: float) -> bytes:
    return six_instructions(nonce).encode() if kind == "six" else rig.small_build_context(nonce, sleep)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--dockerfile", default="six,small", help="six, small or both (six,small)")
    parser.add_argument("--sleep", type=float, default=0, help="seconds the small build's RUN step waits")
    parser.add_argument(
        "--builder", choices=["default", "buildkit", "classic"], default="default",
        help="the farm's builder: default (the farm's default, BuildKit) takes /b1/build for six",
    )  # fmt: skip
    parser.add_argument("--user", default="admin", help="the token's user, for the plain side's registry login")
    rig.add_arguments(parser, daemons=1)
    args = parser.parse_args()
    kinds = [kind.strip() for kind in args.dockerfile.split(",") if kind.strip()]
    if not set(kinds) <= {"six", "small"}:
        raise SystemExit("--dockerfile takes six, small or six,small")
    plain_builder = "classic" if args.builder == "classic" else "buildkit"
    plains: dict[str, list[rig.Plain]] = {kind: [] for kind in kinds}
    farms: dict[str, list[tuple[str, Farm]]] = {kind: [] for kind in kinds}
    with rig.farm_from(args) as farm, farm.pool_restored() as daemons, tempfile.TemporaryDirectory() as folder:
        # One daemon for both sides: the others are disabled for the run.
        target = next(d for d in daemons if d["enabled"])
        for other in daemons:
            if other is not target:
                farm.set_daemon(other, enabled=False, draining=other["draining"])
        plain = rig.PlainCLI(farm, target["url"], args.user, plain_builder, Path(folder))
        machine = rig.machine_note()
        for run in range(args.runs):
            for kind in kinds:
                nonce = uuid.uuid4().hex
                tag = nonce[:12]
                plains[kind].append(
                    plain.run(f"{farm.registry}/bench/plain-{kind}:{tag}", context_for(kind, nonce + "p", args.sleep))
                )
                image = f"{farm.registry}/bench/farm-{kind}:{tag}"
                farms[kind].append(
                    farm_run(farm, kind, image, context_for(kind, nonce + "f", args.sleep), args.builder)
                )
                rig.say(
                    f"run {run + 1} {kind}: plain {plains[kind][-1].total:.3f} s, farm {farms[kind][-1][1].total:.3f} s"
                )
        time.sleep(0.5)  # the worker's last records reach its log
        phases = worker_phases(farm.logs)
    print(f"\n{args.runs} runs on {target['name']}; farm builder {args.builder}, plain {plain_builder}; medians")
    print(machine)
    for kind in kinds:
        report(kind, plains[kind], farms[kind], phases, args.builder)


def report(kind: str, plains: list[rig.Plain], farms: list[tuple[str, Farm]], phases, builder: str) -> None:
    runs = [run for _, run in farms]
    for job_id, run in farms:
        add_worker_moments(run, phases.get(job_id, {}))
    plain_median = statistics.median(p.total for p in plains)
    farm_median = statistics.median(r.total for r in runs)
    door = "GET /b1/build" if kind == "six" and builder == "default" else "POST /api/v1/builds/"
    print(f"\n### {kind} ({door})\n")
    print("| measure | median |")
    print("| --- | --- |")
    print(f"| plain build + push | {plain_median:.3f} s |")
    print(f"| plain: build / push | {ms(p.build for p in plains)} / {ms(p.push for p in plains)} |")
    print(f"| farm: submit to the end frame | {farm_median:.3f} s |")
    print(f"| **farm / plain** | **{farm_median / plain_median:.2f}** |")
    print("\n| farm timeline (ms after the submit was sent) | median | min | max |")
    print("| --- | --- | --- | --- |")
    named = dict(TIMELINE)
    # Moments the worker marked that the list above does not name (a new mark) follow it, in order.
    others = sorted({key for r in runs for key in r.moments} - set(named), key=lambda k: median_of(runs, k))
    for key in [*named, *others]:
        values = [r.moments[key] for r in runs if key in r.moments]
        if values:
            what = named.get(key, f"worker: {key}")
            print(f"| {what} | {ms(values)} | {min(values) * 1000:.0f} | {max(values) * 1000:.0f} |")
    spans = [
        ("build: farm CLI (started to done) / plain build", "build_started", "build_done", [p.build for p in plains]),
        ("push: farm (started to done) / plain push", "push_started", "pushed", [p.push for p in plains]),
    ]
    for what, start, end, plain_values in spans:
        values = [r.moments[end] - r.moments[start] for r in runs if start in r.moments and end in r.moments]
        if values:
            print(f"| {what} | {ms(values)} / {ms(plain_values)} | | |")


def median_of(runs: list[Farm], key: str) -> float:
    return statistics.median(r.moments[key] for r in runs if key in r.moments)


def ms(values) -> str:
    return f"{statistics.median(list(values)) * 1000:.0f} ms"


if __name__ == "__main__":
    main()
