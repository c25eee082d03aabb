"""The build's cgroup (builds/engine/cgroups.py) against a fake cgroup tree in a temporary
directory (files where the kernel has them), and once against this host's own."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import threading
import time
from contextlib import suppress
from pathlib import Path

import pytest

from builds.engine.cgroups import (
    BuildCgroup,
    CgroupUnavailable,
    SharedBuildKitCgroup,
    StepClaimer,
    buildkit_cgroup_name,
    cgroup_name,
    step_marker,
)

NAME = "/generator/farm-0/abc123-1"
MiB = 2**20


@pytest.fixture
def root(tmp_path) -> Path:
    """cgroup v1 as Debian mounts it: one directory per hierarchy (each with a
    `tasks` file), `cpu` and `cpuacct` as links to one `cpu,cpuacct` mount."""
    for hierarchy in ("memory", "cpu,cpuacct", "pids", "cpuset", "unified"):
        (tmp_path / hierarchy).mkdir()
        (tmp_path / hierarchy / "tasks").write_text("")
    (tmp_path / "cpu").symlink_to("cpu,cpuacct")
    (tmp_path / "cpuacct").symlink_to("cpu,cpuacct")
    return tmp_path


@pytest.fixture(autouse=True)
def quick_removal(monkeypatch):
    monkeypatch.setattr(BuildCgroup, "remove_within", 0.3)


def cgroup(root: Path, **figures) -> BuildCgroup:
    figures = {"memory_bytes": 512 * MiB, "cpu_period_us": 100_000, "cpu_quota_us": 150_000, "pids": 256, **figures}
    return BuildCgroup(root, NAME, **figures)


def control(root: Path, hierarchy: str, file: str) -> Path:
    return root / hierarchy / NAME.lstrip("/") / file


def kernel_forgets_files(root: Path) -> None:
    """In cgroupfs a directory's control files go with it; in the fake they are
    plain files, which rmdir would refuse."""
    for path in root.rglob("*"):
        if path.is_file() and "generator" in path.parts:
            path.unlink()


def test_a_daemon_name_becomes_a_safe_path_with_the_job_and_attempt():
    assert cgroup_name("127.0.0.1:19000", "abc123", 2) == "/generator/127.0.0.1_19000/abc123-2"
    assert cgroup_name("build/../x", "j", 1) == "/generator/build_.._x/j-1"


def test_it_writes_each_limit_where_the_kernel_reads_it(root):
    with cgroup(root):
        assert control(root, "memory", "memory.limit_in_bytes").read_text() == str(512 * MiB)
        assert control(root, "cpu", "cpu.cfs_period_us").read_text() == "100000"
        assert control(root, "cpu", "cpu.cfs_quota_us").read_text() == "150000"
        assert control(root, "pids", "pids.max").read_text() == "256"
        # Without swap accounting (no memsw file), swap is left alone.
        assert not control(root, "memory", "memory.memsw.limit_in_bytes").exists()
        kernel_forgets_files(root)


def test_swap_is_held_to_the_memory_limit_where_the_kernel_accounts_it(root):
    control(root, "memory", "").mkdir(parents=True)
    control(root, "memory", "memory.memsw.limit_in_bytes").write_text("9223372036854771712")
    with cgroup(root):
        assert control(root, "memory", "memory.memsw.limit_in_bytes").read_text() == str(512 * MiB)
        kernel_forgets_files(root)


def test_it_removes_the_cgroup_from_every_hierarchy_dockerd_made_it_in(root):
    with cgroup(root):
        # runc makes the parent in every hierarchy, and a directory per container below it.
        (root / "cpuset" / NAME.lstrip("/") / "0123abcd").mkdir(parents=True)
        (root / "unified" / NAME.lstrip("/")).mkdir(parents=True)
        kernel_forgets_files(root)
    assert not list(root.glob("*/generator/farm-0/*"))
    assert (root / "memory" / "generator" / "farm-0").is_dir()  # shared by the daemon's other builds


def test_a_cgroup_still_in_use_is_left_after_trying_and_the_rest_removed(root, caplog):
    with cgroup(root):
        kernel_forgets_files(root)
        (root / "pids" / NAME.lstrip("/") / "cgroup.procs").write_text("4242\n")  # a process still in it
    assert control(root, "pids", "").is_dir()
    assert not control(root, "memory", "").exists() and not control(root, "cpu", "").exists()
    assert "could not remove cgroup" in caplog.text


def test_without_cgroup_v1_the_build_is_refused_saying_what_to_do(tmp_path):
    (tmp_path / "cgroup.controllers").write_text("memory pids")  # a cgroup v2 mount has no per-controller trees
    with pytest.raises(CgroupUnavailable) as refused, cgroup(tmp_path):
        pass
    message = str(refused.value)
    assert f"{tmp_path / 'memory'} is not a cgroup v1 hierarchy" in message
    assert "as root on its daemon's host" in message and "GENERATOR_BUILD_CGROUPS=false" in message
    assert not refused.value.transient
    assert not list(tmp_path.rglob("generator"))


def test_a_worker_not_allowed_to_make_cgroups_is_refused_and_leaves_nothing(root, monkeypatch):
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self.parts[-3:-1] == ("generator", "farm-0") and "pids" in self.parts:
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    with pytest.raises(CgroupUnavailable, match="abc123-1: Permission denied"), cgroup(root):
        pass
    assert not list(root.glob("*/generator/farm-0/*"))


def record(root: Path, hierarchy: str, **files: str) -> None:
    for name, text in files.items():
        control(root, hierarchy, name.replace("_", ".", 1)).write_text(text)


def test_a_step_killed_at_the_memory_limit_ran_out_of_memory(root):
    with cgroup(root) as build:
        # As seen on this machine: the RUN container's own limit is hit first, so the
        # parent's failcnt stays 0 and its high-water mark equals its limit.
        record(root, "memory", memory_max_usage_in_bytes=str(512 * MiB), memory_failcnt="0")
        assert build.explain(137) == "the build ran out of memory: its limit is 512 MiB (RUN steps were killed)"
        kernel_forgets_files(root)


def test_memory_filled_without_a_killed_step_is_only_said_as_a_possibility(root):
    # Page cache fills the limit too (a build writing large files): no claim of an OOM kill.
    with cgroup(root) as build:
        record(root, "memory", memory_max_usage_in_bytes=str(512 * MiB))
        assert build.explain(3) == "the build reached its memory limit of 512 MiB, so a process may have been killed"
        kernel_forgets_files(root)


def test_processes_up_to_pids_max_name_the_process_limit(root):
    with cgroup(root) as build:
        record(root, "pids", pids_peak="256", pids_events="max 0\n")
        record(root, "memory", memory_max_usage_in_bytes=str(8 * MiB))
        assert build.explain(2) == "the build reached its limit of 256 processes"
        kernel_forgets_files(root)


def test_a_kernel_without_pids_peak_is_read_from_pids_events(root):
    with cgroup(root) as build:
        record(root, "pids", pids_events="max 3\n")
        assert build.explain(2) == "the build reached its limit of 256 processes"
        kernel_forgets_files(root)


def test_a_failure_within_every_limit_is_not_explained(root):
    with cgroup(root) as build:
        record(root, "memory", memory_max_usage_in_bytes=str(100 * MiB), memory_failcnt="0")
        record(root, "pids", pids_peak="12", pids_events="max 0\n")
        assert build.explain(1) is None
        kernel_forgets_files(root)


SHARED = buildkit_cgroup_name("farm-0")


def shared(root: Path, **figures) -> SharedBuildKitCgroup:
    figures = {"memory_bytes": 512 * MiB, "cpu_period_us": 100_000, "cpu_quota_us": 100_000, "pids": 256, **figures}
    return SharedBuildKitCgroup(root, SHARED, lock_file=root / "locks" / "farm-0.lock", share=1, **figures)


def shared_control(root: Path, hierarchy: str, file: str) -> Path:
    return root / hierarchy / SHARED.lstrip("/") / file


def test_buildkit_runs_a_daemons_steps_below_the_daemons_own_cgroup():
    assert SHARED == "/generator/farm-0/buildkit"


def test_a_buildkit_build_alone_on_its_daemon_starts_the_shared_cgroup_afresh_and_leaves_it(root):
    old_step = shared_control(root, "pids", "0ld5tep")
    old_step.mkdir(parents=True)  # what an earlier build left: its high-water marks with it
    with shared(root, pids=64) as build:
        assert not old_step.exists()  # made anew, so the kernel's counters are this build's
        assert shared_control(root, "pids", "pids.max").read_text() == "64"
        shared_control(root, "pids", "pids.peak").write_text("64")
        assert build.explain(2) == "the build reached its limit of 64 processes"
    # Left with its limits: runc would make it again, unlimited, for another build's next step.
    assert shared_control(root, "pids", "pids.max").read_text() == "64"


def test_beside_another_buildkit_build_it_keeps_the_cgroup_and_never_lowers_its_limits(root):
    with shared(root, memory_bytes=1024 * MiB, pids=100):
        running_step = shared_control(root, "pids", "st3p")
        running_step.mkdir()
        with shared(root, memory_bytes=256 * MiB, pids=400):
            assert running_step.is_dir()  # not started afresh under the running build
            assert shared_control(root, "memory", "memory.limit_in_bytes").read_text() == str(1024 * MiB)
            assert shared_control(root, "pids", "pids.max").read_text() == "400"
        assert running_step.is_dir()


def test_a_build_beside_one_making_the_cgroup_afresh_waits_until_it_is_made(root):
    # Two BuildKit builds starting at once on a daemon: the one alone removes and makes the cgroup
    # while holding the lock exclusively; the other wrote into folders being removed (seen in CI).
    lock_file = root / "locks" / "farm-0.lock"
    lock_file.parent.mkdir(parents=True)
    making = open(lock_file, "a")  # noqa: SIM115 (the build alone, in the middle of making it)
    fcntl.flock(making, fcntl.LOCK_EX)
    done = threading.Event()
    beside = shared(root)
    thread = threading.Thread(target=lambda: (beside.create(), done.set()))
    thread.start()
    assert not done.wait(0.3)
    assert not shared_control(root, "pids", "pids.max").exists()  # wrote nothing meanwhile
    fcntl.flock(making, fcntl.LOCK_UN)
    making.close()
    assert done.wait(5) and shared_control(root, "pids", "pids.max").read_text() == "256"
    thread.join()
    beside.remove()


def test_a_shared_limit_says_whom_it_holds():
    build = SharedBuildKitCgroup(
        Path("/nonexistent"), SHARED, lock_file=Path("/nonexistent/l"), share=2,
        memory_bytes=1024 * MiB, cpu_period_us=100_000, cpu_quota_us=200_000, pids=128,
    )  # fmt: skip
    assert build.sharing == ", shared with the daemon's other BuildKit builds (2 at most)"


V1 = Path("/sys/fs/cgroup")


# Root and cgroup v1, as the farm's workers need (README): no skip, it fails elsewhere.
def test_this_hosts_kernel_takes_every_limit_and_the_cgroup_goes():
    name = f"/generator/unit-test/{os.getpid()}-1"
    build = BuildCgroup(V1, name, memory_bytes=64 * MiB, cpu_period_us=100_000, cpu_quota_us=50_000, pids=40)
    with build:
        here = {c: V1 / c / name.lstrip("/") for c in ("memory", "cpu", "pids")}
        assert (here["memory"] / "memory.limit_in_bytes").read_text().strip() == str(64 * MiB)
        assert (here["cpu"] / "cpu.cfs_quota_us").read_text().strip() == "50000"
        assert (here["pids"] / "pids.max").read_text().strip() == "40"
        assert build.explain(137) is None  # nothing ran in it
    assert not any(path.exists() for path in here.values())
    for hierarchy in V1.iterdir():  # runc is not involved here: only the three were made
        with suppress(OSError):
            os.rmdir(hierarchy / "generator" / "unit-test")


# Root and cgroup v1, as above.
def test_an_existing_cgroups_memory_limit_is_raised_and_lowered_past_its_swap_limit():
    # A shared BuildKit cgroup, or one a dead build's steps keep, is made again over its old limits:
    # the kernel refuses memory above memory+swap, so the order of the writes matters.
    name = f"/generator/unit-test/{os.getpid()}-again"
    figures = {"cpu_period_us": 100_000, "cpu_quota_us": 50_000, "pids": 40}
    kept = V1 / "memory" / name.lstrip("/")
    try:
        for memory in (64 * MiB, 128 * MiB, 32 * MiB):
            BuildCgroup(V1, name, memory_bytes=memory, **figures).create()
            assert (kept / "memory.limit_in_bytes").read_text().strip() == str(memory)
            if (kept / "memory.memsw.limit_in_bytes").exists():
                assert (kept / "memory.memsw.limit_in_bytes").read_text().strip() == str(memory)
    finally:
        BuildCgroup(V1, name, memory_bytes=MiB, **figures).remove()
        for hierarchy in V1.iterdir():
            with suppress(OSError):
                os.rmdir(hierarchy / "generator" / "unit-test")


# Root and cgroup v1, as above.
def test_what_a_dead_daemon_left_running_in_the_cgroup_is_killed_even_a_fork_loop():
    name = f"/generator/unit-test/{os.getpid()}-kill"
    build = BuildCgroup(V1, name, memory_bytes=64 * MiB, cpu_period_us=100_000, cpu_quota_us=50_000, pids=64)
    with build:
        step = V1 / "pids" / name.lstrip("/") / "step"
        step.mkdir()
        freezer = V1 / "freezer" / name.lstrip("/")
        freezer.mkdir(parents=True, exist_ok=True)
        loop = "while true; do sleep 100 & sleep 0.01; done"
        orphan = subprocess.Popen(["sh", "-c", loop], start_new_session=True)
        for cgroup in (step, freezer):
            (cgroup / "cgroup.procs").write_text(str(orphan.pid))
        time.sleep(0.3)  # it forks a child every 10 ms meanwhile, each in the cgroup
        assert len(build._processes()) > 5
        assert build.kill_processes() > 5
        assert build._processes() == set()
        assert orphan.wait(timeout=5) == -signal.SIGKILL
        os.rmdir(step)
    for hierarchy in V1.iterdir():
        with suppress(OSError):
            os.rmdir(hierarchy / "generator" / "unit-test")


def test_the_claimer_moves_the_steps_that_carry_its_builds_marker_and_no_other(root, tmp_path):
    """A step's processes, as BuildKit starts them below the daemon's shared cgroup:
    real processes here, whose environment is what the claimer reads."""
    shared = buildkit_cgroup_name("farm-0")
    build = cgroup(root)
    build.create()
    marker = step_marker("a" * 32, 1)
    steps = {}
    processes = []
    try:
        for name, env in {
            "mine": {"NO_PROXY": f"corp.example,{marker}"},
            "theirs": {"NO_PROXY": step_marker("b" * 32, 1)},
        }.items():
            process = subprocess.Popen(["sleep", "30"], env=env)
            processes.append(process)
            for hierarchy in StepClaimer.HIERARCHIES:
                step = root / hierarchy / shared.lstrip("/") / name
                step.mkdir(parents=True)
                (step / "cgroup.procs").write_text(f"{process.pid}\n")
            steps[name] = process.pid
        claimer = StepClaimer(root, shared, build, marker)

        assert claimer.claim_once() == 1 and claimer.mine == {"mine"}
        for hierarchy in StepClaimer.HIERARCHIES:  # (the fake tree keeps the last pid written)
            assert (build._dir(hierarchy) / "cgroup.procs").read_text() == str(steps["mine"])
    finally:
        for process in processes:
            process.kill()
            process.wait()
