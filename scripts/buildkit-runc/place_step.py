"""Places a BuildKit RUN step of a farm build in the build's own cgroup, before
runc creates it: run by the farm's runc (`runc` beside this file) for
`runc run --bundle` of BuildKit's executor.

Docker 20.10's BuildKit takes no cgroup parent per build: it runs every RUN
step with `runc run --bundle DIR ID`, the bundle's config.json placing the step
in `<dockerd's --cgroup-parent>/buildkit/<ID>`, whoever's build it is. dockerd
finds runc on its PATH, so a daemon started with this folder first on its PATH
(scripts/localfarm.py) runs this file instead, which moves the step's
cgroupsPath below the build's own cgroup before runc creates it: the step's
first process is already held to its build's limits, and what it forks is born
there too. Nothing races a fork loop.

Which build a step is: the worker passes its build a marker in NO_PROXY
(builds/engine/cgroups.py, step_marker), which BuildKit adds to every RUN step's
environment after the Dockerfile's own ENV (so the last NO_PROXY/no_proxy entry
is the worker's; a Dockerfile cannot put one after it) and leaves out of its
cache keys. The marker names the build's cgroup; a step whose marker names no
existing cgroup, or that has none, stays where BuildKit put it: in the daemon's
shared BuildKit cgroup, whose limits are the backstop.

Only Python's standard library: it runs on the daemon's host, as dockerd's
child, once for each BuildKit step. It never fails the step: whatever goes
wrong here leaves the bundle as it was (the shared cgroup then holds the step).
"""

import json
import os
import re
import sys

MARKER = re.compile(r"generator-([0-9a-f]{32}-[0-9]{1,6})-[0-9a-f]{24}\.invalid")
PROXY_NAMES = ("NO_PROXY", "no_proxy")


def bundle_of(args: list[str]) -> str | None:
    """The bundle of `runc [global options] run|create --bundle DIR ID`: only those take one."""
    for index, arg in enumerate(args):
        if arg in ("--bundle", "-b") and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith("--bundle="):
            return arg.split("=", 1)[1]
    return None


def build_cgroup(spec: dict, cgroup_root: str) -> str | None:
    """The cgroupsPath the step should have: below its build's cgroup; None to leave it."""
    path = (spec.get("linux") or {}).get("cgroupsPath") or ""
    parent, buildkit, step = path.rpartition("/buildkit/")
    if not buildkit or not step or "/" in step:  # not a BuildKit step (a classic container, systemd's form)
        return None
    proxies = [
        entry.split("=", 1)[1]
        for entry in (spec.get("process") or {}).get("env") or ()
        if isinstance(entry, str) and entry.split("=", 1)[0] in PROXY_NAMES and "=" in entry
    ]
    marker = MARKER.search(proxies[-1]) if proxies else None
    if marker is None:
        return None
    build = f"{parent}/{marker[1]}"
    # The worker made it before the build; one that is not there is no build's (never made here, unlimited).
    if not os.path.isdir(os.path.join(cgroup_root, "pids", build.lstrip("/"))):
        return None
    return f"{build}/{step}"


def place(bundle: str, cgroup_root: str) -> None:
    config = os.path.join(bundle, "config.json")
    try:
        with open(config, encoding="utf-8") as file:
            spec = json.load(file)
    except (OSError, ValueError):
        return  # runc reports what is wrong with the bundle
    if (placed := build_cgroup(spec, cgroup_root)) is None:
        return
    spec["linux"]["cgroupsPath"] = placed
    written = f"{config}.generator"
    with open(written, "w", encoding="utf-8") as file:
        json.dump(spec, file)
    os.replace(written, config)


def main() -> None:
    try:
        if (bundle := bundle_of(sys.argv[1:])) is not None:
            place(bundle, os.environ.get("GENERATOR_CGROUP_ROOT", "/sys/fs/cgroup"))
    except Exception as exc:  # noqa: BLE001 (the step runs, held by the backstop)
        print(f"generator's runc: step not placed: {exc!r}", file=sys.stderr)


if __name__ == "__main__":
    main()
