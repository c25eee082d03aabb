"""A cgroup per build, that the kernel holds the whole build to.

The classic build API has no process limit, but it takes a cgroup parent
(`cgroupparent`): dockerd (cgroup v1, the cgroupfs driver) creates every RUN
container of the build below it, and the kernel enforces the parent's memory,
CPU and process limits on all of them together. The worker makes that parent
before the build, under each hierarchy's root (`/sys/fs/cgroup/<controller>`),
reads afterwards what it saw, and removes it.

This module knows no models (like engine.py): any engine that can place a
build's containers under a cgroup parent can use it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import secrets
import signal
import threading
import time
from pathlib import Path

from builds.engine.docker import EngineError

logger = logging.getLogger(__name__)

# SIGKILL: what the OOM killer sends, seen as the RUN step's exit code.
KILLED = 137


class CgroupUnavailable(EngineError):
    """The worker cannot make the build's cgroup: the build must not run unlimited."""


def daemon_cgroup(daemon: str) -> str:
    """The daemon's own cgroup: its builds' cgroups sit below it, and its dockerd
    is started with it as `--cgroup-parent` (scripts/localfarm.py)."""
    return f"/generator/{re.sub(r'[^A-Za-z0-9_.-]', '_', daemon)}"


def cgroup_name(daemon: str, job_id: str, attempt: int) -> str:
    """The build's cgroup, as dockerd takes it: one per attempt, grouped by daemon."""
    return f"{daemon_cgroup(daemon)}/{job_id}-{attempt}"


def buildkit_cgroup_name(daemon: str) -> str:
    """Where BuildKit runs the RUN steps of a daemon started with
    `--cgroup-parent=<daemon_cgroup>`: it takes no cgroup per build."""
    return f"{daemon_cgroup(daemon)}/buildkit"


class BuildCgroup:
    """The build's cgroup in the memory, cpu and pids hierarchies, for the time of
    a `with` block: made and limited on entry, removed on exit (from every
    hierarchy: dockerd's runc makes the parent in the others too)."""

    # Seconds to keep trying to remove it while the daemon tears the last container down.
    remove_within = 5.0
    # After a limit's figure in explain(): whom else the limit holds.
    sharing = ""

    def __init__(
        self,
        root: Path,
        name: str,
        *,
        memory_bytes: int,
        cpu_period_us: int,
        cpu_quota_us: int,
        pids: int,
    ) -> None:
        self.root, self.name = Path(root), name
        self.memory_bytes, self.pids = memory_bytes, pids
        self.cpu_period_us, self.cpu_quota_us = cpu_period_us, cpu_quota_us

    def __enter__(self) -> BuildCgroup:
        self.create()
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()

    def _dir(self, hierarchy: str | Path) -> Path:
        return self.root / hierarchy / self.name.lstrip("/")

    def create(self) -> None:
        try:
            for controller in ("memory", "cpu", "pids"):
                if not (self.root / controller / "tasks").is_file():  # cgroup v2 has no `tasks`
                    raise CgroupUnavailable(f"{self.root / controller} is not a cgroup v1 hierarchy")
                self._dir(controller).mkdir(parents=True, exist_ok=True)
            # No swap beyond the memory limit; a kernel without swap accounting has no such file.
            # The kernel keeps memory <= memory+swap at every write (EINVAL otherwise): on a cgroup
            # that already exists (a shared one, or one a dead build's steps keep), a higher limit
            # goes to memsw first, a lower one to memory first.
            swap = (self._dir("memory") / "memory.memsw.limit_in_bytes").exists()
            raising = self._number("memory", "memory.limit_in_bytes") < self.memory_bytes
            if swap and raising:
                self._write_swap_limit()
            self._write("memory", "memory.limit_in_bytes", self.memory_bytes)
            if swap and not raising:
                self._write_swap_limit()
            self._write("cpu", "cpu.cfs_period_us", self.cpu_period_us)
            self._write("cpu", "cpu.cfs_quota_us", self.cpu_quota_us)
            self._write("pids", "pids.max", self.pids)
        except (CgroupUnavailable, OSError) as exc:
            self.remove(within=0)
            reason = str(exc) if isinstance(exc, CgroupUnavailable) else f"{exc.filename}: {exc.strerror}"
            raise CgroupUnavailable(
                f"cannot hold the build to its limits: {reason}. The worker makes a cgroup for each build: "
                "it must run as root on its daemon's host, with cgroup v1 "
                "(GENERATOR_BUILD_CGROUPS=false builds with the daemon's memory and CPU limits only)"
            ) from exc

    def _write(self, controller: str, file: str, value: int) -> None:
        (self._dir(controller) / file).write_text(str(value))

    def _write_swap_limit(self) -> None:
        try:
            self._write("memory", "memory.memsw.limit_in_bytes", self.memory_bytes)
        except OSError:
            logger.info("%s: the kernel refused memory.memsw.limit_in_bytes; swap is not limited", self.name)

    def _read(self, controller: str, file: str) -> str:
        try:
            return (self._dir(controller) / file).read_text()
        except OSError:
            return ""

    def _number(self, controller: str, file: str) -> int:
        text = self._read(controller, file).strip()
        return int(text) if text.isdigit() else 0

    def _field(self, controller: str, file: str, key: str) -> int:
        """A number from a `key value` file (pids.events, memory.oom_control)."""
        for line in self._read(controller, file).splitlines():
            name, _, value = line.partition(" ")
            if name == key and value.strip().isdigit():
                return int(value)
        return 0

    def explain(self, exit_code: int | None = None) -> str | None:
        """Why a failed build failed, if one of its limits says so; None otherwise.

        The container that hit a limit has its own cgroup, gone by now; in cgroup v1
        the parent's OOM and pids event counters stay 0. What the parent keeps is
        its high-water marks: memory use that reached the limit, processes that
        reached pids.max. Memory use reaches the limit also when page cache fills
        it (a build writing large files), so only a step killed by SIGKILL is said
        to have run out of memory; otherwise it is said as a possibility.
        """
        reasons = []
        limit = self._number("memory", "memory.limit_in_bytes")
        if limit and (
            self._number("memory", "memory.max_usage_in_bytes") >= limit
            or self._number("memory", "memory.failcnt")
            or self._field("memory", "memory.oom_control", "oom_kill")
        ):
            mib = self.memory_bytes // 2**20
            if exit_code == KILLED:
                reasons.append(
                    f"the build ran out of memory: its limit is {mib} MiB{self.sharing} (RUN steps were killed)"
                )
            else:
                reasons.append(
                    f"the build reached its memory limit of {mib} MiB{self.sharing}, so a process may have been killed"
                )
        if self._number("pids", "pids.peak") >= self.pids or self._field("pids", "pids.events", "max"):
            reasons.append(f"the build reached its limit of {self.pids} processes{self.sharing}")
        return "; ".join(reasons) or None

    def kill_processes(self, within: float = 5.0) -> int:
        """SIGKILLs every process left in the cgroup and below it: what a daemon
        that died mid-build leaves running (its RUN steps outlive it, in
        sessions of their own). Frozen first where the freezer hierarchy has the
        cgroup, so a fork loop cannot outrun it; a frozen process dies on thaw.
        Answers how many were sent the signal."""
        freezer = self.root / "freezer" / self.name.lstrip("/") / "freezer.state"
        frozen = _try_write(freezer, "FROZEN")
        killed = 0
        deadline = time.monotonic() + within
        try:
            while pids := self._processes():
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                        killed += 1
                if frozen:
                    frozen = not _try_write(freezer, "THAWED")
                if time.monotonic() >= deadline:
                    logger.warning("%s: processes left after SIGKILL: %s", self.name, pids)
                    break
                time.sleep(0.05)
        finally:
            if frozen:
                _try_write(freezer, "THAWED")
        return killed

    def _processes(self) -> set[int]:
        here = self._dir("pids")
        return {
            int(pid)
            for procs in (here.rglob("cgroup.procs") if here.is_dir() else ())
            for pid in _read_quietly(procs).split()
            if pid.isdigit()
        }

    def remove(self, within: float | None = None) -> bool:
        """Removes the build's cgroup (and any child left) from every hierarchy.

        A cgroup can only go once its processes have: a build just stopped may
        still have a RUN container being torn down, so this tries again briefly.
        """
        deadline = time.monotonic() + (self.remove_within if within is None else within)
        while True:
            left = [path for path in self._hierarchy_dirs() if not _remove_tree(path)]
            if not left or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        if left:
            logger.warning("could not remove cgroup %s (still in use): %s", self.name, ", ".join(map(str, left)))
        return not left

    def _hierarchy_dirs(self) -> list[Path]:
        """The build's directory in each mounted hierarchy (`cpu` and `cpuacct` may
        both be links to one `cpu,cpuacct` mount: each is visited once)."""
        try:
            hierarchies = {entry.resolve() for entry in self.root.iterdir() if entry.is_dir()}
        except OSError:
            return []
        return [path for hierarchy in sorted(hierarchies) if (path := self._dir(hierarchy)).is_dir()]


def _try_write(path: Path, text: str) -> bool:
    try:
        path.write_text(text)
    except OSError:
        return False
    return True


def _read_quietly(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _remove_tree(path: Path) -> bool:
    """rmdir, deepest first: a cgroup's control files go with its directory."""
    try:
        for directory, _, _ in os.walk(path, topdown=False):
            os.rmdir(directory)
    except FileNotFoundError:
        pass
    except OSError:
        return False
    return True


class SharedBuildKitCgroup(BuildCgroup):
    """The one cgroup a daemon's BuildKit runs every RUN step in, limited for the
    time of a build.

    Docker 20.10's BuildKit ignores a build's cgroup parent and puts each RUN
    step in `<dockerd's --cgroup-parent>/buildkit/<step>`: the kernel can only
    hold all of a daemon's BuildKit builds together. The worker limits that
    directory to the build's figures times the builds the daemon runs at once
    (`share`: its capacity), so with capacity 1 the daemon's limits are the
    build's own.

    The directory is never removed while a build may use it: runc would make it
    again, unlimited, for the next step. A build that finds itself alone (an
    exclusive lock on `lock_file`; each build holds it shared) starts it afresh,
    so the high-water marks that explain() reads are this build's.
    """

    def __init__(self, root: Path, name: str, *, lock_file: Path, share: int, **limits) -> None:
        super().__init__(root, name, **limits)
        self.lock_file, self.share = Path(lock_file), share
        self.sharing = f", shared with the daemon's other BuildKit builds ({share} at most)" if share > 1 else ""
        self._lock = None
        self._alone = True

    def create(self) -> None:
        self.lock_file.parent.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.lock_file, "a")  # noqa: SIM115 (held until remove())
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._alone = True
        except BlockingIOError:
            self._alone = False
        if self._alone:
            super().remove(within=0)  # its counters; children left by a dead build stop it, harmlessly
        else:  # wait while a build alone makes it afresh (it holds the lock exclusively until done)
            fcntl.flock(self._lock, fcntl.LOCK_SH)
        super().create()
        fcntl.flock(self._lock, fcntl.LOCK_SH)

    def _write(self, controller: str, file: str, value: int) -> None:
        """Alone, the build's figures; beside other builds, never lower than
        what holds them (the kernel refuses a memory limit under the usage)."""
        if not self._alone and self._number(controller, file) >= value:
            return
        super()._write(controller, file, value)

    def remove(self, within: float | None = None) -> bool:
        """Leaves the directory (and its limits) in place; lets the next build
        that finds itself alone start it afresh."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        return True


def step_marker(job_id: str, attempt: int) -> str:
    """A build's mark on its BuildKit RUN steps; a host name, harmless in NO_PROXY.

    It names the build's own cgroup (cgroup_name's last part), where the
    daemon's runc (scripts/buildkit-runc/runc) places each step it marks, and
    ends in a random part, so no other build can have its steps counted as this
    one's by the StepClaimer."""
    return f"generator-{job_id}-{attempt}-{secrets.token_hex(12)}.invalid"


class StepClaimer:
    """Moves a BuildKit build's RUN steps into the build's own cgroup as they start.

    BuildKit 0.8 takes no cgroup parent per build: it starts each RUN step in a
    cgroup of its own below the daemon's shared one (`<daemon>/buildkit/<step>`),
    whoever's build it is. The worker passes its build a marker in NO_PROXY
    (buildkit.BuildKitRequest.step_marker), which BuildKit puts in every RUN step's
    environment and leaves out of its cache keys (a proxy setting: measured,
    2026-12-06, a step built again with another NO_PROXY was CACHED). A thread
    looks at the new step cgroups every `interval` seconds: one whose first
    processes carry the marker is this build's; its processes are frozen (so a
    fork loop cannot outrun the move), written into the build's cgroup in each
    hierarchy, and thawed. What they fork afterwards is born there. Until the
    move, and for a step that rid itself of the marker at once (`exec env -u
    NO_PROXY ...`), the shared cgroup's limits (every build's figures times the
    daemon's capacity) still hold: the backstop.
    """

    HIERARCHIES = ("memory", "cpu", "pids")
    LOOK_AT = 8  # processes of a step whose environment is read: the first ones, the step's own

    def __init__(self, root: Path, shared: str, build: BuildCgroup, marker: str, *, interval: float = 0.05) -> None:
        self.root, self.shared, self.build, self.marker = Path(root), shared.lstrip("/"), build, marker.encode()
        self.interval = interval
        self.mine: set[str] = set()
        self.moved = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> StepClaimer:
        # Memory a step used before its move goes with it.
        _try_write(self.build._dir("memory") / "memory.move_charge_at_immigrate", "3")
        self._thread = threading.Thread(target=self._run, name=f"steps-{self.build.name}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.claim_once()
            except Exception:  # the backstop holds meanwhile; the next pass tries again
                logger.warning("%s: could not move BuildKit steps", self.build.name, exc_info=True)

    def claim_once(self) -> int:
        """One look: moves the processes of this build's steps. Answers how many moved."""
        steps = self.root / "pids" / self.shared
        moved = 0
        for step in sorted(steps.iterdir()) if steps.is_dir() else ():
            if not step.is_dir():
                continue
            if step.name not in self.mine and self._carries_marker(step):
                self.mine.add(step.name)
            if step.name in self.mine:
                moved += self._move(step.name)
        self.moved += moved
        return moved

    def _carries_marker(self, step: Path) -> bool:
        pids = sorted(int(pid) for pid in _read_quietly(step / "cgroup.procs").split() if pid.isdigit())
        return any(self.marker in _environ(pid) for pid in pids[: self.LOOK_AT])

    def _move(self, step: str) -> int:
        freezer = self.root / "freezer" / self.shared / step / "freezer.state"
        frozen = _try_write(freezer, "FROZEN")
        moved = 0
        try:
            for hierarchy in self.HIERARCHIES:
                source = self.root / hierarchy / self.shared / step / "cgroup.procs"
                target = self.build._dir(hierarchy) / "cgroup.procs"
                for pid in _read_quietly(source).split():
                    try:
                        target.write_text(pid)
                        moved += hierarchy == "pids"
                    except OSError as exc:  # gone meanwhile; or refused: the backstop holds it
                        if exc.errno != errno.ESRCH:
                            logger.info("%s: could not move process %s (%s): %s", self.build.name, pid, hierarchy, exc)
        finally:
            if frozen:
                _try_write(freezer, "THAWED")
        return moved


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""
