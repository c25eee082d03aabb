"""The daemon's runc (scripts/buildkit-runc/runc, and the place_step.py it runs
for BuildKit's steps): run as dockerd runs it, in front of a stand-in for the
real runc that records the call and the bundle's config.json as it finds them.
The cgroup tree is a folder of the test's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from builds.engine.cgroups import cgroup_name, step_marker
from scripts.localfarm import BUILDKIT_RUNC_DIR, dockerd_env

SHIM = BUILDKIT_RUNC_DIR / "runc"
JOB = "0123456789abcdef0123456789abcdef"
SHARED_STEP = "/generator/farm-0/buildkit/k3u1step"


@pytest.fixture
def cgroups(tmp_path) -> Path:
    root = tmp_path / "cgroup"
    (root / "pids" / cgroup_name("farm-0", JOB, 2).lstrip("/")).mkdir(parents=True)
    return root


@pytest.fixture
def real_runc(tmp_path) -> Path:
    runc = tmp_path / "real-runc"
    runc.write_text(
        '#!/bin/sh\nprintf "%s\\n" "$@" > "$0.args"\n'
        'for a in "$@"; do [ "$prev" = --bundle ] && cp "$a/config.json" "$0.config"; prev="$a"; done\n'
    )
    runc.chmod(0o755)
    return runc


def bundle(tmp_path, env: list[str], cgroups_path: str = SHARED_STEP) -> Path:
    folder = tmp_path / "buildkit" / "executor" / "k3u1"  # where BuildKit keeps its steps' bundles
    folder.mkdir(parents=True, exist_ok=True)
    spec = {"process": {"args": ["/bin/sh", "-c", "true"], "env": env}, "linux": {"cgroupsPath": cgroups_path}}
    (folder / "config.json").write_text(json.dumps(spec))
    return folder


def call(real_runc: Path, cgroups: Path, *args: str) -> Path:
    """The bundle's config.json as the real runc found it."""
    env = {"PATH": os.environ["PATH"], "GENERATOR_REAL_RUNC": str(real_runc), "GENERATOR_CGROUP_ROOT": str(cgroups)}
    subprocess.run([str(SHIM), *args], env=env, check=True, timeout=30)
    assert Path(f"{real_runc}.args").read_text().split("\n")[:-1] == list(args)  # passed on whole, in order
    return Path(f"{real_runc}.config")


def run(real_runc: Path, cgroups: Path, *args: str) -> dict:
    config = call(real_runc, cgroups, *args)
    return json.loads(config.read_text()) if config.exists() else {}


def placed(real_runc, cgroups, folder) -> str:
    spec = run(real_runc, cgroups, "--log", "x.json", "--log-format", "json", "run", "--bundle", str(folder), "k3u1")
    return spec["linux"]["cgroupsPath"]


def test_a_marked_step_is_born_in_its_builds_own_cgroup(tmp_path, cgroups, real_runc):
    marker = step_marker(JOB, 2)
    folder = bundle(tmp_path, ["PATH=/bin", f"NO_PROXY=corp.example,{marker}", f"no_proxy=corp.example,{marker}"])
    assert placed(real_runc, cgroups, folder) == f"{cgroup_name('farm-0', JOB, 2)}/k3u1step"


def test_a_dockerfiles_own_no_proxy_naming_another_build_does_not_count(tmp_path, cgroups, real_runc):
    """BuildKit adds the worker's NO_PROXY after the Dockerfile's ENV (measured on
    Docker 20.10): the last entry is the worker's, whatever the ENV says."""
    theirs, mine = step_marker(JOB, 2), step_marker("f" * 32, 1)  # the attacker's build has no cgroup here
    folder = bundle(tmp_path, [f"NO_PROXY={theirs}", f"no_proxy={theirs}", f"NO_PROXY={mine}", f"no_proxy={mine}"])
    assert placed(real_runc, cgroups, folder) == SHARED_STEP


@pytest.mark.parametrize(
    "env",
    [
        ["PATH=/bin"],  # a build of a daemon to itself: no marker
        ["NO_PROXY=generator-0123456789abcdef0123456789abcdef-2.invalid"],  # no random part
        ["NO_PROXY=corp.example"],
    ],
    ids=["no-marker", "malformed-marker", "their-own-no-proxy"],
)
def test_a_step_without_a_marker_stays_in_the_shared_cgroup(tmp_path, cgroups, real_runc, env):
    assert placed(real_runc, cgroups, bundle(tmp_path, env)) == SHARED_STEP


def test_a_marker_naming_no_cgroup_is_never_made_one_unlimited(tmp_path, cgroups, real_runc):
    """runc makes a cgroupsPath that is not there, with no limits: the step stays in the backstop."""
    marker = step_marker(JOB, 3)  # the worker made attempt 2's cgroup, not 3's
    assert placed(real_runc, cgroups, bundle(tmp_path, [f"NO_PROXY={marker}"])) == SHARED_STEP


def test_a_classic_builders_container_passes_through(tmp_path, cgroups, real_runc):
    classic = f"{cgroup_name('farm-0', JOB, 2)}/container1"
    folder = bundle(tmp_path, [f"NO_PROXY={step_marker(JOB, 2)}"], cgroups_path=classic)
    spec = run(real_runc, cgroups, "create", "--bundle", str(folder), "container1")
    assert spec["linux"]["cgroupsPath"] == classic


def test_a_containerd_bundle_is_not_read_at_all(tmp_path, cgroups, real_runc):
    """containerd's calls (the classic builder's containers) cost only a shell's start:
    a bundle outside BuildKit's executor is never opened, even one that looks like a step."""
    folder = tmp_path / "io.containerd.runtime.v2.task" / "moby" / "c1"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(
        json.dumps({"process": {"env": [f"NO_PROXY={step_marker(JOB, 2)}"]}, "linux": {"cgroupsPath": SHARED_STEP}})
    )
    spec = run(real_runc, cgroups, "--root", "/run/containerd/runc/moby", "create", "--bundle", str(folder), "c1")
    assert spec["linux"]["cgroupsPath"] == SHARED_STEP


def test_a_broken_bundle_still_reaches_runc_which_says_what_is_wrong(tmp_path, cgroups, real_runc):
    folder = bundle(tmp_path, [])
    (folder / "config.json").write_text("{not json")
    assert call(real_runc, cgroups, "run", "--bundle", str(folder), "k3u1").read_text() == "{not json"


def test_other_calls_pass_through_untouched(tmp_path, cgroups, real_runc):
    assert run(real_runc, cgroups, "--root", "/run/runc", "state", "k3u1") == {}


def test_dockerd_finds_it_first_on_its_path_and_it_finds_the_real_runc_after_it():
    path = dockerd_env()["PATH"].split(os.pathsep)
    assert path[0] == str(BUILDKIT_RUNC_DIR)
    answer = subprocess.run(
        [str(SHIM), "--version"], env={"PATH": os.pathsep.join(path)}, capture_output=True, text=True, timeout=30
    )
    assert answer.returncode == 0 and answer.stdout.startswith("runc version"), answer


def test_it_places_steps_with_the_interpreter_it_is_given_not_a_wrapper_on_path(tmp_path, cgroups, real_runc):
    """Every RUN step pays for the interpreter's start: pyenv's `python3` shim
    (a shell script first on PATH here) cost each ~60 ms; dockerd is told the real one."""
    given = tmp_path / "given-python"
    given.write_text(f'#!/bin/sh\ntouch "$0.ran"\nexec {os.path.realpath(sys.executable)} "$@"\n')
    given.chmod(0o755)
    marker = step_marker(JOB, 2)
    folder = bundle(tmp_path, [f"NO_PROXY={marker}"])
    env = {"PATH": os.environ["PATH"], "GENERATOR_REAL_RUNC": str(real_runc), "GENERATOR_CGROUP_ROOT": str(cgroups)}
    subprocess.run(
        [str(SHIM), "run", "--bundle", str(folder), "k3u1"],
        env={**env, "GENERATOR_RUNC_PYTHON": str(given)},
        timeout=30,
    )
    assert Path(f"{given}.ran").exists()
    assert json.loads(Path(f"{real_runc}.config").read_text())["linux"]["cgroupsPath"].startswith(
        cgroup_name("farm-0", JOB, 2)
    )
    interpreter = dockerd_env()["GENERATOR_RUNC_PYTHON"]
    assert Path(interpreter).read_bytes()[:4] == b"\x7fELF"  # a binary, not a shim


def test_a_step_no_build_marked_starts_no_interpreter(tmp_path, cgroups, real_runc):
    """Python's start costs every RUN step ~23 ms (issue 26): a step whose config
    carries no build's marker (a daemon of capacity 1, a build by hand) is passed on
    after a grep, as place_step.py would have left it."""
    given = recording_python(tmp_path)
    folder = bundle(tmp_path, ["NO_PROXY=corp.example,generator-not-a-marker.invalid"])
    spec = run_with(given, real_runc, cgroups, "run", "--bundle", str(folder), "k3u1")
    assert not Path(f"{given}.ran").exists()
    assert spec["linux"]["cgroupsPath"] == SHARED_STEP


@pytest.mark.parametrize("spelling", [["-b", "{}"], ["--bundle={}"]], ids=["-b", "--bundle="])
def test_a_bundle_spelled_otherwise_is_left_to_place_step(tmp_path, cgroups, real_runc, spelling):
    given = recording_python(tmp_path)
    folder = bundle(tmp_path, [f"NO_PROXY={step_marker(JOB, 2)}"])
    args = [part.format(folder) for part in spelling]
    # The shim looks at calls naming ` --bundle ` and BuildKit's executor: a later --bundle makes this one such.
    spec = run_with(given, real_runc, cgroups, "run", *args, "--bundle", str(folder), "k3u1")
    assert Path(f"{given}.ran").exists()
    assert spec["linux"]["cgroupsPath"].startswith(cgroup_name("farm-0", JOB, 2))


def recording_python(tmp_path) -> Path:
    """An interpreter that notes it ran, then runs place_step.py as the real one does."""
    given = tmp_path / "given-python"
    given.write_text(f'#!/bin/sh\ntouch "$0.ran"\nexec {os.path.realpath(sys.executable)} "$@"\n')
    given.chmod(0o755)
    return given


def run_with(python: Path, real_runc: Path, cgroups: Path, *args: str) -> dict:
    env = {"PATH": os.environ["PATH"], "GENERATOR_REAL_RUNC": str(real_runc), "GENERATOR_CGROUP_ROOT": str(cgroups)}
    subprocess.run([str(SHIM), *args], env={**env, "GENERATOR_RUNC_PYTHON": str(python)}, check=True, timeout=30)
    return json.loads(Path(f"{real_runc}.config").read_text())
