"""What each of the farm's ingredients adds to a BuildKit CLI build (issue 26).

    .venv/bin/python bench/cli_ingredients.py [--runs 10] [--variants plain,farm,...]

A private farm with one daemon (bench/rig.py); against its socket, the six
instructions of bench/overhead.py built by hand with the docker CLI the farm
drives, once per variant per round, the variants in turn (a fresh nonce each
build, so no step is cached). Each variant adds one of the farm's ingredients
to the plain `DOCKER_BUILDKIT=1 docker build -` (bench/rig.py's PlainCLI);
`farm` is the farm's whole argv and environment (builds/engine/buildkit.py),
with the build's own cgroup made and its RUN steps placed there as the worker
does (builds/worker/containment.py). Prints each variant's median and its
difference to `plain`.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path

import rig
from overhead import six_instructions

from builds.engine.buildkit import BuildKitRequest, BuildKitSession, DaemonAddress, find_client
from builds.engine.cgroups import BuildCgroup, SharedBuildKitCgroup, StepClaimer, cgroup_name, step_marker
from builds.worker import cache_scope

TEAM_ARG = cache_scope.arg_name(1, "bench")
LABELS = {"org.generator.built-by": "generator"}
CGROUP_ROOT = Path("/sys/fs/cgroup")
LIMITS = {"memory_bytes": 2048 * 2**20, "cpu_period_us": 100_000, "cpu_quota_us": 100_000, "pids": 1024}

# Each variant: the request's fields, the env (plain: the user's; farm: _env's), and whether the build's
# cgroups are made (the marker then names a cgroup, and the wrapper moves the steps there).
VARIANTS = {
    "plain": {},
    "iidfile": {"iidfile": True},
    "team_arg": {"iidfile": True, "team": True},
    "labels": {"iidfile": True, "labels": True},
    "inline_cache": {"iidfile": True, "inline_cache": True},
    "marker": {"iidfile": True, "marker": True},
    "cache_ns": {"iidfile": True, "cache_ns": True},
    "env": {"iidfile": True, "farm_env": True},
    "cgroups": {"iidfile": True, "marker": True, "cgroups": True},
    "farm": {"iidfile": True, "team": True, "labels": True, "inline_cache": True, "marker": True,
             "cache_ns": True, "farm_env": True, "cgroups": True},
    # The farm's all, run as the worker runs it: BuildKitSession.build (Popen with a death signal, lines
    # read in Python), the StepClaimer's thread looking at the shared cgroup meanwhile.
    "session": {"iidfile": True, "team": True, "labels": True, "inline_cache": True, "marker": True,
                "cache_ns": True, "farm_env": True, "cgroups": True, "session": True},
    "farm_no_inline": {"iidfile": True, "team": True, "labels": True, "marker": True,
                       "cache_ns": True, "farm_env": True, "cgroups": True},
}  # fmt: skip


def argv_and_env(cli, host: str, tag: str, folder: Path, parts: dict, marker: str) -> tuple[list[str], dict]:
    if not parts:
        env = {**os.environ, "DOCKER_CONFIG": str(folder), "DOCKER_BUILDKIT": "1"}
        return [cli.path, "--host", host, "build", "--progress=plain", "--tag", tag, "-"], env
    request = BuildKitRequest(
        tag=tag,
        dockerfile="",
        buildargs={TEAM_ARG: "1"} if parts.get("team") else {},
        labels=LABELS if parts.get("labels") else {},
        inline_cache=bool(parts.get("inline_cache")),
        step_marker=marker if parts.get("marker") else "",
        cache_namespace="0123456789abcdef01234567" if parts.get("cache_ns") else "",
    )
    session = BuildKitSession(cli, DaemonAddress(host))
    argv = session._argv(request, folder / "iid")
    if parts.get("farm_env"):
        env = session._env(str(folder))
    else:
        env = {**os.environ, "DOCKER_CONFIG": str(folder), "DOCKER_BUILDKIT": "1"}
    return argv, env


@contextmanager
def build_cgroups(daemon: str, job_id: str, folder: Path, claimer: str = ""):
    """The worker's two cgroups for a BuildKit build on a daemon of capacity 2; with
    `claimer` (the marker), its StepClaimer too."""
    shared = SharedBuildKitCgroup(
        CGROUP_ROOT, f"/generator/{daemon}/buildkit", lock_file=folder / "shared.lock", share=2,
        **{name: value * 2 if name != "cpu_period_us" else value for name, value in LIMITS.items()},
    )  # fmt: skip
    own = BuildCgroup(CGROUP_ROOT, cgroup_name(daemon, job_id, 1), **LIMITS)
    with shared, own, StepClaimer(CGROUP_ROOT, shared.name, own, claimer) if claimer else nullcontext():
        yield


def one_build(cli, host: str, daemon: str, variant: str, folder: Path) -> float:
    parts = VARIANTS[variant]
    nonce = uuid.uuid4().hex
    job_id = uuid.uuid4().hex
    marker = step_marker(job_id, 1)
    tag = f"bench/ingredients-{variant.replace('_', '-')}:{nonce[:12]}"
    argv, env = argv_and_env(cli, host, tag, folder, parts, marker)
    dockerfile = six_instructions(nonce)
    if parts.get("team"):
        dockerfile = cache_scope.scoped_dockerfile(dockerfile, TEAM_ARG)
    with (
        build_cgroups(daemon, job_id, folder, claimer=marker if parts.get("session") else "")
        if parts.get("cgroups")
        else nullcontext()
    ):
        started = time.perf_counter()
        if parts.get("session"):
            session_build(cli, host, tag, dockerfile, marker, folder)
            return time.perf_counter() - started
        result = subprocess.run(argv, input=dockerfile.encode(), capture_output=True, env=env)
        took = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{variant}: {result.stdout.decode()[-1500:]}")
    return took


def session_build(cli, host: str, tag: str, dockerfile: str, marker: str, folder: Path) -> None:
    request = BuildKitRequest(
        tag=tag, dockerfile="", buildargs={TEAM_ARG: "1"}, labels=LABELS, step_marker=marker,
        cache_namespace="0123456789abcdef01234567", docker_config=str(folder),
    )  # fmt: skip
    BuildKitSession(cli, DaemonAddress(host)).build(io.BytesIO(dockerfile.encode()), request, on_line=lambda _: None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--host", default="", help="a daemon's socket (unix://...) rather than a private farm's")
    parser.add_argument("--daemon", default="bench-0", help="with --host: the daemon's name in the farm")
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    cli = find_client()
    times: dict[str, list[float]] = {v: [] for v in variants}
    with ExitStack() as stack, tempfile.TemporaryDirectory() as folder:
        if args.host:
            host, daemon = args.host, args.daemon
        else:
            farm = stack.enter_context(rig.private_farm(1, 2))
            target = farm.daemons()[0]
            host, daemon = target["url"], target["name"]
        print(rig.machine_note(), flush=True)
        for variant in variants:  # one warm-up each: busybox's first use, the CLI's page cache
            one_build(cli, host, daemon, variant, Path(folder))
        for run in range(args.runs):
            order = variants if run % 2 == 0 else variants[::-1]
            for variant in order:
                times[variant].append(one_build(cli, host, daemon, variant, Path(folder)))
            rig.say(f"round {run + 1}: " + " ".join(f"{v}={times[v][-1] * 1000:.0f}" for v in variants))
    base = statistics.median(times["plain"]) if "plain" in times else 0
    print(f"\n{args.runs} rounds; median ms (difference to plain); load {os.getloadavg()[0]:.2f}")
    print("| variant | median | difference of medians | median of the rounds' differences |")
    print("| --- | --- | --- | --- |")
    for variant in variants:
        median = statistics.median(times[variant]) * 1000
        paired = statistics.median(
            t - p for t, p in zip(times[variant], times.get("plain", times[variant]), strict=True)
        )
        print(f"| {variant} | {median:.0f} | {median - base * 1000:+.0f} | {paired * 1000:+.0f} |")


if __name__ == "__main__":
    sys.exit(main())
