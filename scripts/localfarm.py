"""The farm's processes on one machine: Redis, a registry, Docker daemons, daphne
and Celery workers, started in the background with a pid file and a log each.

`make up` (scripts/farm.py) and the end-to-end test fixtures both use this, so
the processes the tests run are the ones a developer runs. No Django here.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import docker

from scripts import sandbox

ROOT = Path(__file__).resolve().parent.parent
DOCKER_API_VERSION = "1.41"


class StartError(RuntimeError):
    pass


class Supervisor:
    """Background processes named by pid files in `run_dir`; each logs to NAME.log."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)

    def log_path(self, name: str) -> Path:
        return self.run_dir / f"{name}.log"

    def pid(self, name: str) -> int | None:
        """The process's pid if it is alive, else None (and a stale pid file goes)."""
        pid_file = self.run_dir / f"{name}.pid"
        try:
            pid = int(pid_file.read_text())
        except (OSError, ValueError):
            return None
        if _alive(pid):
            return pid
        pid_file.unlink(missing_ok=True)
        return None

    def start(self, name: str, argv: list[str], *, env: dict[str, str] | None = None) -> int:
        if (pid := self.pid(name)) is not None:
            return pid
        log_path = self.log_path(name)
        if log_path.exists():  # keep one previous run's log, start this one clean
            log_path.replace(log_path.with_suffix(".log.1"))
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                cwd=ROOT,
                start_new_session=True,  # outlives `make up`; not killed by the terminal's Ctrl-C
            )
        (self.run_dir / f"{name}.pid").write_text(str(process.pid))
        return process.pid

    def stop(self, name: str, timeout: float = 20) -> bool:
        pid = self.pid(name)
        if pid is None:
            return False
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            _signal_group(pid, signal.SIGKILL)
        (self.run_dir / f"{name}.pid").unlink(missing_ok=True)
        return True

    def kill(self, name: str) -> None:
        """SIGKILL, as a crash would: for fault tests."""
        if (pid := self.pid(name)) is not None:
            _signal_group(pid, signal.SIGKILL)

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.run_dir.glob("*.pid"))

    def stop_all(self, first: list[str] | None = None) -> None:
        for name in [*(first or []), *self.names()]:
            self.stop(name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    if state == "Z":
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return False
    return True


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check: Callable[[], bool], *, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.1)
    tail = ""
    if log and log.exists():
        tail = "\n" + "\n".join(log.read_text(errors="replace").splitlines()[-20:])
    raise StartError(f"{what} did not become ready within {timeout:.0f} s{tail}")


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


def http_ok(url: str, expect: bytes | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            body = response.read()
    except (urllib.error.URLError, OSError):
        return False
    return expect is None or body.strip() == expect


# --- Redis ------------------------------------------------------------------


def redis_answers(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


def start_redis(
    sup: Supervisor, port: int, data_dir: Path, name: str = "redis", *, also_bind: str = "", password: str = ""
) -> None:
    """Redis on loopback; on `also_bind` too when workers on other hosts need it,
    and then only with a `password` (Redis refuses other hosts without one)."""
    if also_bind and not password:
        raise StartError(f"refusing to open Redis on {also_bind} without a password")
    data_dir.mkdir(parents=True, exist_ok=True)
    binds = ["127.0.0.1", *([also_bind] if also_bind else [])]
    argv = ["redis-server", "--port", str(port), "--bind", *binds, "--save", "", "--appendonly", "no"]
    argv += ["--requirepass", password] if password else []
    sup.start(name, [*argv, "--dir", str(data_dir)])
    wait_until(lambda: redis_answers(port), timeout=15, what=f"Redis on port {port}", log=sup.log_path(name))


# --- Registry ---------------------------------------------------------------


@dataclass(frozen=True)
class TokenAuth:
    """distribution's `auth.token`: the registry sends clients to `realm` (the
    farm's GET /v2/token) and trusts tokens signed by a key whose certificate is
    in `rootcertbundle` (lib/registry_keys.py)."""

    realm: str
    rootcertbundle: Path
    service: str = "generator-registry"
    issuer: str = "generator"

    def env(self) -> dict[str, str]:
        return {
            "REGISTRY_AUTH": "token",
            "REGISTRY_AUTH_TOKEN_REALM": self.realm,
            "REGISTRY_AUTH_TOKEN_SERVICE": self.service,
            "REGISTRY_AUTH_TOKEN_ISSUER": self.issuer,
            "REGISTRY_AUTH_TOKEN_ROOTCERTBUNDLE": str(self.rootcertbundle),
        }


def start_registry(
    sup: Supervisor,
    port: int,
    storage: Path,
    name: str = "registry",
    htpasswd: Path | None = None,
    *,
    host: str = "127.0.0.1",
    token: TokenAuth | None = None,
) -> None:
    """A registry on loopback (or `host`); with `htpasswd` (bcrypt entries) it
    asks for basic auth, with `token` for the farm's tokens."""
    storage.mkdir(parents=True, exist_ok=True)
    env = {
        "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": str(storage),
        "REGISTRY_HTTP_ADDR": f"{host}:{port}",
        **(token.env() if token else {}),
    }
    if htpasswd:
        env.update(
            REGISTRY_AUTH="htpasswd",
            REGISTRY_AUTH_HTPASSWD_REALM="generator-tests",
            REGISTRY_AUTH_HTPASSWD_PATH=str(htpasswd),
        )
    sup.start(name, ["docker-registry", "serve", str(ROOT / "conf" / "registry.yml")], env=env)
    wait_until(
        lambda: http_status(f"http://{host}:{port}/v2/") in (200, 401),
        timeout=20,
        what=f"the registry on port {port}",
        log=sup.log_path(name),
    )


# --- Docker daemons -----------------------------------------------------------


@dataclass(frozen=True)
class DaemonTLS:
    """PEM files for `dockerd --tlsverify`: the CA its clients' certificates must
    chain to, and the daemon's own certificate and key."""

    ca: Path
    cert: Path
    key: Path


# BuildKit in dockerd clips a step's log at 1 MiB, and at a rate it sees as too
# fast, unless told otherwise; the farm keeps whole logs under its own limits
# (GENERATOR_MAX_LOG_LINES). Docker 20.10 reads -1 as a limit of -1 bytes: 1 GiB each.
DOCKERD_ENV = {"BUILDKIT_STEP_LOG_MAX_SIZE": str(2**30), "BUILDKIT_STEP_LOG_MAX_SPEED": str(2**30)}
# dockerd runs BuildKit's RUN steps with the first `runc` on its PATH: the farm's
# places each step of a build in the build's own cgroup (scripts/buildkit-runc/runc).
BUILDKIT_RUNC_DIR = ROOT / "scripts" / "buildkit-runc"


def dockerd_env() -> dict[str, str]:
    return {
        **DOCKERD_ENV,
        "PATH": f"{BUILDKIT_RUNC_DIR}{os.pathsep}{os.environ.get('PATH', os.defpath)}",
        # The farm's own interpreter, resolved: never a wrapper such as pyenv's shim, run once for every RUN step.
        "GENERATOR_RUNC_PYTHON": os.path.realpath(sys.executable),
    }


def dockerd_argv(
    data_dir: Path,
    exec_dir: Path,
    socket_path: Path,
    *,
    tcp: str = "",
    tls: DaemonTLS | None = None,
    bridge: bool = False,
    insecure_registries: tuple[str, ...] = (),
    cgroup_parent: str = "",
) -> list[str]:
    """A daemon reached through its unix socket; with `tls`, also on `tcp`
    (HOST:PORT), by clients that show a certificate of tls.ca. Never plain TCP:
    a build that can reach a Docker API owns the host.

    Root in a RUN step is not root on the host (user-namespace remapping).
    `bridge` gives RUN steps a network (the daemon's own docker0, NATed out of
    its namespace: only inside a sandbox, scripts/sandbox.py); without it they
    have none. `cgroup_parent` is where containers and BuildKit's RUN steps go
    that name no cgroup of their own (builds/engine/cgroups.py, daemon_cgroup): the
    worker limits BuildKit's there."""
    if tcp and tls is None:
        raise StartError(f"refusing to open a Docker API on tcp://{tcp} without TLS client authentication")
    argv = [
        "dockerd",
        "--host",
        f"unix://{socket_path}",
        "--data-root",
        str(data_dir / "data"),
        "--exec-root",
        str(exec_dir),
        "--pidfile",
        str(data_dir / "docker.pid"),
        "--userns-remap=default",
        "--log-level=warn",
    ]
    argv += [] if bridge else ["--iptables=false", "--bridge=none"]
    argv += [f"--cgroup-parent={cgroup_parent}"] if cgroup_parent else []
    if tls:
        argv += ["--host", f"tcp://{tcp}", "--tlsverify"]
        argv += [f"--tlscacert={tls.ca}", f"--tlscert={tls.cert}", f"--tlskey={tls.key}"]
    return argv + [f"--insecure-registry={registry}" for registry in insecure_registries]


def start_dockerd(
    sup: Supervisor,
    name: str,
    data_dir: Path,
    exec_dir: Path,
    socket_path: Path,
    *,
    netns: str = "",
    disk_bytes: int = 0,
    **options,
) -> str:
    """Starts a daemon (in network namespace `netns` if given); answers its engine
    URL: the TLS address when it has one, else its socket. With `disk_bytes`, its
    data root is a filesystem of that size of its own (mount_data_disk). `options`
    go to dockerd_argv (tcp, tls, bridge, insecure_registries, cgroup_parent)."""
    for directory in (data_dir, exec_dir, socket_path.parent):
        directory.mkdir(parents=True, exist_ok=True)
    if disk_bytes and sup.pid(name) is None:
        mount_data_disk(data_dir / "data.img", data_dir / "data", disk_bytes)
    allow_traverse(data_dir)
    ensure_remap_user()
    sup.start(name, in_netns(netns, dockerd_argv(data_dir, exec_dir, socket_path, **options)), env=dockerd_env())
    return f"tcp://{options['tcp']}" if options.get("tls") else f"unix://{socket_path}"


REMAP_USER = "dockremap"  # the user --userns-remap=default maps a build's root to
REMAP_FIRST_ID, REMAP_SIZE = 100_000, 65_536  # where and how large, as dockerd makes them


def ensure_remap_user() -> None:
    """Makes the remap user and its /etc/subuid and /etc/subgid ranges, once,
    before a daemon starts. dockerd makes them itself on its first start, but two
    daemons starting at once on a fresh machine race: one reads the files before
    the other has written them, and fails ("no subuid ranges found"). Done as
    dockerd does (moby pkg/idtools, usergroupadd_linux.go): a system user, then
    the first free 65,536 ids from 100,000; under a lock, so farms started at
    once in other processes make them once too."""
    with open("/run/generator-remap.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if subprocess.run(["getent", "passwd", REMAP_USER], capture_output=True).returncode != 0:
            _run_checked(["useradd", "--system", "--user-group", "--shell", "/bin/false", REMAP_USER])
        for name, flag in (("subuid", "--add-subuids"), ("subgid", "--add-subgids")):
            ranges = _id_ranges(Path("/etc") / name)
            if REMAP_USER not in ranges:
                start = _first_free_id(ranges.values())
                _run_checked(["usermod", flag, f"{start}-{start + REMAP_SIZE - 1}", REMAP_USER])


def _id_ranges(path: Path) -> dict[str, tuple[int, int]]:
    """user -> (first id, count) of a subuid/subgid file (the first range of each user)."""
    ranges: dict[str, tuple[int, int]] = {}
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text().splitlines():
            fields = line.strip().split(":")
            if len(fields) == 3 and fields[1].isdigit() and fields[2].isdigit():
                ranges.setdefault(fields[0], (int(fields[1]), int(fields[2])))
    return ranges


def _first_free_id(taken) -> int:
    start = REMAP_FIRST_ID
    for first, count in sorted(taken):
        if first < start + REMAP_SIZE and start < first + count:  # overlaps: look past it
            start = first + count
    return start


def _run_checked(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise StartError(f"{' '.join(argv)} failed: {(result.stderr or result.stdout).strip()}")


def allow_traverse(directory: Path) -> None:
    """Gives others search (x, not read) on `directory` and its parents: the
    remapped root of --userns-remap must reach its data root, and dockerd
    refuses to start otherwise (pytest's temporary folders are 0700)."""
    for folder in [directory.resolve(), *directory.resolve().parents]:
        mode = folder.stat().st_mode
        if not mode & 0o001:
            folder.chmod(mode | 0o001)


def start_sandboxed_dockerd(
    sup: Supervisor,
    policy: sandbox.Policy,
    index: int,
    name: str,
    data_dir: Path,
    exec_dir: Path,
    socket_path: Path,
    *,
    tls_port: int = 0,
    tls: DaemonTLS | None = None,
    insecure_registries: tuple[str, ...] = (),
    cgroup_parent: str = "",
    disk_bytes: int = 0,
) -> str:
    """A daemon in a network namespace of its own behind `policy`
    (scripts/sandbox.py; apply_rules first), with relays to the loopback
    destinations the policy allows (the registry). With `tls`, its API is also
    on `tls_port` of the build host, forwarded to the sandbox (for the farm's
    other hosts). With `disk_bytes`, its data root is a filesystem of its own
    (mount_data_disk). Answers its socket's engine URL."""
    box = sandbox.create(policy, index, f"{policy.table}-{name}")
    for destination in policy.loopback_allowed:
        sup.start(f"relay-{destination.port}", sandbox.relay_out_argv(policy, destination))
        sup.start(f"relay-{destination.port}-{name}", sandbox.relay_in_argv(policy, box, destination))
    options: dict = {
        "insecure_registries": insecure_registries,
        "cgroup_parent": cgroup_parent,
        "disk_bytes": disk_bytes,
    }
    if tls:
        options.update(tcp=f"{box.address}:{tls_port}", tls=tls)
        sandbox.publish(policy, tls_port, box)
    start_dockerd(sup, name, data_dir, exec_dir, socket_path, netns=box.netns, bridge=True, **options)
    return f"unix://{socket_path}"


def remove_sandboxes(policy: sandbox.Policy) -> None:
    """The namespaces, veths and rules of `policy`'s farm (its processes stopped first)."""
    for netns in sandbox.namespaces(prefix=f"{policy.table}-"):
        sandbox.remove(netns)
    sandbox.remove_rules(policy)


def in_netns(netns: str, argv: list[str]) -> list[str]:
    """argv run inside network namespace `netns` (made by `ip netns add`), or as
    it is. nsenter joins the network namespace only: `ip netns exec` would also
    remount /sys, hiding the cgroup mounts under it that dockerd needs."""
    return ["nsenter", f"--net=/run/netns/{netns}", "--", *argv] if netns else argv


def wait_for_dockerd(sup: Supervisor, name: str, engine_url: str, *, tls=None) -> None:
    """Until the daemon answers a ping at `engine_url` (with `tls`, a docker.tls.TLSConfig)."""
    wait_until(
        lambda: docker_ping(engine_url, tls), timeout=60, what=f"dockerd {name} at {engine_url}", log=sup.log_path(name)
    )


def docker_ping(engine_url: str, tls=None) -> bool:
    api = docker.APIClient(base_url=engine_url, version=DOCKER_API_VERSION, timeout=5, tls=tls or False)
    try:
        return api.ping()
    finally:
        api.close()


def mount_data_disk(image: Path, mountpoint: Path, size_bytes: int) -> None:
    """An ext4 filesystem of `size_bytes` in the sparse file `image`, loop-mounted
    at `mountpoint` (a daemon's data root), so what its builds write fills that
    and not the disk of the database, the registry and the logs. The file is
    made once and grown (never shrunk) to a larger size; its blocks are taken
    only as they are written. Nothing is done if something is mounted there
    already. The loop device goes with the mount (autoclear): unmount_below."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    if os.path.ismount(mountpoint):
        return
    if not image.exists():
        image.touch(mode=0o600)
        os.truncate(image, size_bytes)
        # No blocks kept for root: the daemon is the filesystem's only writer.
        _run_checked(["mkfs.ext4", "-q", "-F", "-m", "0", "-L", "generator-data", str(image)])
    elif image.stat().st_size < size_bytes:  # grown while unmounted (resize2fs asks for a check first)
        os.truncate(image, size_bytes)
        _run_checked(["e2fsck", "-f", "-p", str(image)])
        _run_checked(["resize2fs", str(image)])
    _run_checked(["mount", "-o", "loop", str(image), str(mountpoint)])


def unmount_below(root: Path) -> None:
    """Lazily unmounts what a killed dockerd left mounted under `root` (its
    data root is a bind mount; overlay layers too), so the folder can go."""
    prefix = str(Path(root).resolve()) + "/"
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", mount], capture_output=True)


def busybox_rootfs(binary: str | Path | None = None) -> bytes:
    """A root file system of Debian's static busybox and its applet links.

    Docker Hub is out of reach here; `docker load` of busybox_archive(this) gives `FROM busybox`.
    `binary`: another architecture's static busybox (of the same Debian release,
    so the host's lists its applets).
    """
    busybox = shutil.which("busybox")
    if busybox is None:
        raise StartError("busybox is not installed (Debian package busybox-static)")
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for directory, mode in [("bin", 0o755), ("etc", 0o755), ("tmp", 0o1777), ("root", 0o700)]:
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, mode
            tar.addfile(info)
        tar.add(binary or busybox, arcname="bin/busybox")
        for applet in applets:
            if applet == "busybox":
                continue
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, "busybox", 0o777
            tar.addfile(info)
        passwd = b"root:x:0:0:root:/root:/bin/sh\n"
        info = tarfile.TarInfo("etc/passwd")
        info.size, info.mode = len(passwd), 0o644
        tar.addfile(info, io.BytesIO(passwd))
    return buffer.getvalue()


def ensure_busybox_image(engine_url: str, rootfs: bytes | None = None, *, tls=None) -> None:
    """`busybox:latest` on the daemon, the same image (id, config) on every daemon
    as a base pulled from a registry would be: loaded from busybox_archive, not
    `docker import`ed (which dates each daemon's copy, so each daemon built a
    different image FROM it: docs/benchmarks.md, issue 26)."""
    api = docker.APIClient(base_url=engine_url, version=DOCKER_API_VERSION, timeout=60, tls=tls or False)
    try:
        if api.images(name="busybox:latest"):
            return
        for _ in api.load_image(busybox_archive(rootfs or busybox_rootfs())):
            pass  # its progress; an error raises
    finally:
        api.close()


BUSYBOX_CREATED = "2024-01-01T00:00:00Z"  # fixed: the same image wherever and whenever it is loaded


def busybox_archive(rootfs: bytes) -> bytes:
    """`rootfs` as `docker save` writes an image (busybox:latest, one layer, CMD sh),
    for `docker load`: nothing in it depends on when or where it is made."""
    import hashlib
    import json

    diff_id = "sha256:" + hashlib.sha256(rootfs).hexdigest()
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
    config = json.dumps({
        "architecture": arch, "os": "linux", "created": BUSYBOX_CREATED,
        "config": {"Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": BUSYBOX_CREATED, "created_by": "generator: Debian's busybox-static"}],
    }, sort_keys=True).encode()  # fmt: skip
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": ["busybox:latest"], "Layers": ["layer.tar"]}])
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in [(config_name, config), ("layer.tar", rootfs), ("manifest.json", manifest.encode())]:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


# Where scripts/bootstrap.sh puts Debian's busybox-static:arm64 (apt-get download).
FOREIGN_DEBS = Path(os.environ.get("GENERATOR_FOREIGN_DEBS", "/var/cache/generator/debs"))
BASE_PLATFORMS = ("linux/amd64", "linux/arm64")


def foreign_busybox(arch: str, into: Path) -> Path:
    """Debian's static busybox for `arch`, unpacked from the .deb bootstrap.sh downloaded."""
    debs = sorted(FOREIGN_DEBS.glob(f"busybox-static_*_{arch}.deb"))
    if not debs:
        raise StartError(
            f"no busybox-static:{arch} package in {FOREIGN_DEBS}: run scripts/bootstrap.sh "
            f"(dpkg --add-architecture {arch}; apt-get download busybox-static:{arch})"
        )
    subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(into)], check=True)
    return into / "bin" / "busybox"


def publish_busybox_index(registry: str, token_source: Callable[[str], str] | None = None) -> str:
    """`REGISTRY/library/busybox:latest` as a two-platform index (amd64, arm64),
    for `FROM REGISTRY/library/busybox` in multi-platform builds. Each platform's
    image is written straight into the registry (a layer of busybox_rootfs, a
    config naming its platform, a manifest, under its architecture's tag): no
    daemon is involved, so no daemon's user namespace ends up in the layer's
    owners, and `docker import --platform` (which records amd64 whatever it is
    told) is avoided. Does nothing if the registry has it. Answers its digest.
    `token_source`: the farm's own tokens, for a registry under token auth
    (lib/registry_keys.py, Signer.farm_token)."""
    import gzip
    import hashlib
    import json

    from builds.registry.client import DOCKER_LIST, DOCKER_MANIFEST, IndexEntry, RegistryAPI

    name = "library/busybox"
    with RegistryAPI(registry, token_source=token_source) as api:
        head = api.head_manifest(name, "latest", DOCKER_LIST)
        if head.status_code == 200 and head.headers.get("Content-Type", "").startswith(DOCKER_LIST):
            return head.headers["Docker-Content-Digest"]
        entries = []
        with tempfile.TemporaryDirectory(prefix="busybox-") as scratch:
            for platform in BASE_PLATFORMS:
                os_name, arch = platform.split("/")
                binary = None if arch == "amd64" else foreign_busybox(arch, Path(scratch) / arch)
                rootfs = busybox_rootfs(binary)
                layer = gzip.compress(rootfs, mtime=0)
                config = json.dumps({
                    "architecture": arch, "os": os_name,
                    "config": {"Cmd": ["sh"], "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]},
                    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(rootfs).hexdigest()]},
                    "history": [{"created_by": f"generator: Debian's busybox-static:{arch}"}],
                }).encode()  # fmt: skip
                manifest = json.dumps({
                    "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
                    "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                               "size": len(config), "digest": api.push_blob(name, config)},
                    "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                                "size": len(layer), "digest": api.push_blob(name, layer)}],
                }).encode()  # fmt: skip
                entries.append(IndexEntry(api.put_manifest(name, arch, DOCKER_MANIFEST, manifest), platform))
        return api.put_index(name, "latest", entries)


# --- Generator's own processes -------------------------------------------------


def venv_bin(tool: str) -> str:
    candidate = ROOT / ".venv" / "bin" / tool
    return str(candidate) if candidate.exists() else tool


def start_web(sup: Supervisor, port: int, env: dict[str, str], name: str = "web") -> None:
    """daphne, as GENERATOR_WEB_PROCESSES processes (default: one per core) on one socket."""
    argv = [venv_bin("python"), "-m", "generator_site.serve", "--bind", "127.0.0.1", "--port", str(port)]
    sup.start(name, argv, env=env)
    wait_until(
        lambda: http_ok(f"http://127.0.0.1:{port}/admin/login/"),
        timeout=60,
        what=f"daphne on port {port}",
        log=sup.log_path(name),
    )


def celery_worker_argv(queue: str, node: str, concurrency: int, *options: str) -> list[str]:
    """A Celery worker of the farm consuming `queue`, named `node@host`."""
    return [
        venv_bin("celery"), "-A", "generator_site", "worker", *options,
        "--queues", queue, "--hostname", f"{node}@%h", "--concurrency", str(concurrency),
        "--loglevel", "INFO", "--without-gossip", "--without-mingle",
    ]  # fmt: skip


def worker_argv(daemon_name: str, queue: str, concurrency: int) -> list[str]:
    node = "worker-" + "".join(c if c.isalnum() else "-" for c in daemon_name)
    return celery_worker_argv(queue, node, concurrency)


def start_worker(
    sup: Supervisor, name: str, daemon_name: str, queue: str, concurrency: int, env: dict, *, netns: str = ""
) -> None:
    sup.start(name, in_netns(netns, worker_argv(daemon_name, queue, concurrency)), env=env)
    _wait_for_worker(sup, name, f"the Celery worker for {daemon_name}")


# Two processes: a control task that runs to its time limit (a reap waiting on a
# lost host's locks, a long prune) holds one, and dispatch goes on in the other
# (lib/control_tasks.py). Each pass is safe beside another (advisory
# lock, compare-and-swap transitions).
CONTROL_CONCURRENCY = 2


def control_argv(schedule_file: Path) -> list[str]:
    """The farm's bookkeeping (dispatch, reaper, health checks): one worker on
    the "farm" queue with beat inside it. There must be exactly one beat."""
    return celery_worker_argv("farm", "control", CONTROL_CONCURRENCY, "--beat", "--schedule", str(schedule_file))


def start_control(sup: Supervisor, env: dict, name: str = "control") -> None:
    sup.start(name, control_argv(sup.run_dir / "celerybeat-schedule"), env=env)
    _wait_for_worker(sup, name, "the control worker (beat)")


# Sends wait on receivers (HTTP, SMTP), not the CPU: threads, several at once in
# one process. Each try ends by its own timeouts (GENERATOR_NOTIFY_TIMEOUT,
# GENERATOR_EMAIL_TIMEOUT), so the pool needs no time limits (which threads lack).
NOTIFY_CONCURRENCY = 8


def notify_argv(concurrency: int = NOTIFY_CONCURRENCY) -> list[str]:
    """Notifications (notifications/): a worker of their own on the "notify"
    queue, so a slow receiver never holds the control worker."""
    return celery_worker_argv("notify", "notify", concurrency, "--pool", "threads")


def start_notify(sup: Supervisor, env: dict, name: str = "notify", concurrency: int = NOTIFY_CONCURRENCY) -> None:
    sup.start(name, notify_argv(concurrency), env=env)
    _wait_for_worker(sup, name, "the notify worker")


def _wait_for_worker(sup: Supervisor, name: str, what: str) -> None:
    wait_until(
        lambda: "ready." in sup.log_path(name).read_text(errors="replace"),
        timeout=60,
        what=what,
        log=sup.log_path(name),
    )
