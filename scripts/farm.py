"""`make up`, `make down`, `make status`: the whole farm on this machine.

    python scripts/farm.py up | down | status

Everything lives under var/ (pid files and logs in var/run/). Running `up` twice
is harmless: what runs is left running.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from builds.engine.buildkit import NoBuildKitClient, find_client  # noqa: E402
from builds.engine.cgroups import daemon_cgroup  # noqa: E402
from lib import registry_keys  # noqa: E402
from pool.seed_pool import local_socket  # noqa: E402
from scripts import localfarm as lf  # noqa: E402
from scripts import sandbox  # noqa: E402

ROOT = lf.ROOT
VAR = Path(os.environ.get("GENERATOR_VAR_DIR", ROOT / "var"))
RUN = VAR / "run"
POOL_FILE = Path(os.environ.get("GENERATOR_POOL_FILE", ROOT / "conf" / "pool.json"))
WEB_PORT = int(os.environ.get("GENERATOR_WEB_PORT", "8080"))
REGISTRY_PORT = int(os.environ.get("GENERATOR_REGISTRY_PORT", "5000"))
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
# Each daemon's data root is a filesystem of its own of this size (a sparse file
# under var/docker/PORT/, loop-mounted), unless its pool.json entry says
# `data_disk_gb`; 0: on the host's filesystem, as before.
DEFAULT_DATA_DISK_GB = float(os.environ.get("GENERATOR_DAEMON_DISK_GB", "20"))
REGISTRY = f"localhost:{REGISTRY_PORT}"
# The registry's token signer (lib/registry_keys.py): settings' default paths under var/.
TOKEN_KEY, TOKEN_CERT = VAR / "registry-token.key", VAR / "registry-token.crt"


def pool_entries():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "generator_site.settings")
    from pool.seed_pool import read_pool_file

    return read_pool_file(POOL_FILE)


def child_env() -> dict[str, str]:
    """Settings every farm process shares: the secret key is made once and kept in var/."""
    key_file = VAR / "secret_key"
    if not key_file.exists():
        VAR.mkdir(parents=True, exist_ok=True)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_urlsafe(50))
    return {
        "GENERATOR_SECRET_KEY": key_file.read_text().strip(),
        "GENERATOR_VAR_DIR": str(VAR),
        "GENERATOR_REGISTRY_TOKEN_HOST": REGISTRY,  # the farm is its registry's token server
    }


def manage(*args: str, env: dict[str, str]) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise lf.StartError(f"manage.py {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def redis_url(env: dict[str, str]) -> str:
    return subprocess.run(
        [sys.executable, "-c", "from django.conf import settings; print(settings.REDIS_URL)"],
        env={**os.environ, **env, "DJANGO_SETTINGS_MODULE": "generator_site.settings"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def up() -> None:
    try:  # refused at once, before anything starts: builds would fail one by one otherwise
        step(f"BuildKit client: {find_client(os.environ.get('GENERATOR_DOCKER_CLI', '')).describe()}")
    except NoBuildKitClient as exc:
        raise lf.StartError(str(exc)) from None
    sup = lf.Supervisor(RUN)
    env = child_env()

    url = urlparse(redis_url(env))
    if url.hostname in LOCAL_HOSTS and not lf.redis_answers(url.port or 6379):
        step(f"starting Redis on port {url.port or 6379}")
        lf.start_redis(sup, url.port or 6379, VAR / "redis")
    else:
        step(f"Redis answers at {url.hostname}:{url.port or 6379}")

    if registry_keys.ensure_key(TOKEN_KEY, TOKEN_CERT):
        step(f"made the registry's token signing key {TOKEN_KEY} (0600) and its certificate {TOKEN_CERT}")
    registry_open = lf.http_status(f"http://127.0.0.1:{REGISTRY_PORT}/v2/") == 200
    if registry_open and sup.pid("registry") is not None:  # started by an earlier make up, without auth
        step("the registry answers anyone: restarting it with token authentication")
        sup.stop("registry")
    elif registry_open:
        raise lf.StartError(f"a registry without authentication answers on {REGISTRY}: stop it first")
    step(f"the registry on {REGISTRY}, tokens from http://127.0.0.1:{WEB_PORT}/v2/token")
    lf.start_registry(sup, REGISTRY_PORT, VAR / "registry", token=registry_token_auth())

    entries = pool_entries()
    # Daemons it can start: the loopback ones, each in a sandbox of its own
    # (scripts/sandbox.py). One with TLS material is run by its operator.
    local = [e for e in entries if e.host in LOCAL_HOSTS and e.tls is None]
    policy = egress_policy()
    sandbox.apply_rules(policy)
    for index, entry in enumerate(local):
        data, run = VAR / "docker" / str(entry.port), run_dir(entry.port)
        lf.start_sandboxed_dockerd(
            sup, policy, index, dockerd_name(entry), data, run / "exec", run / "docker.sock",
            cgroup_parent=daemon_cgroup(entry.name), disk_bytes=data_disk_bytes(entry),
        )  # fmt: skip
    if disks := [f"{dockerd_name(e)} {data_disk_bytes(e) / 2**30:g} GiB" for e in local if data_disk_bytes(e)]:
        step(f"each daemon's data root on a filesystem of its own (var/docker/PORT/data.img): {', '.join(disks)}")
    rootfs = lf.busybox_rootfs()

    def ready(entry) -> None:
        lf.wait_for_dockerd(sup, dockerd_name(entry), entry.url)
        lf.ensure_busybox_image(entry.url, rootfs)

    with ThreadPoolExecutor() as pool:
        list(pool.map(ready, local))
    step(f"Docker daemons ready with busybox:latest: {', '.join(e.url for e in local) or 'none local'}")
    digest = lf.publish_busybox_index(REGISTRY, token_source=farm_signer().farm_token)
    step(f"localhost:{REGISTRY_PORT}/library/busybox: linux/amd64 and linux/arm64 ({digest[:19]})")
    allowed = ", ".join(str(d) for d in policy.allow)
    step(f"builds reach the public internet and {allowed}; nothing else of this host or network")

    manage("migrate", "--noinput", env=env)
    manage("collectstatic", "--noinput", env=env)
    step("database migrated")
    print(indent(manage("loadpool", str(POOL_FILE), env=env)))
    admin = manage("ensureadmin", "--password-file", str(VAR / "admin-password"), env=env)
    print(indent(admin))
    print(indent(manage("allowregistry", f"localhost:{REGISTRY_PORT}", env=env)))
    # One team owns the whole local registry, so the README's first build pushes as
    # before; its library/ (the shared bases) every team pulls.
    team = (
        "ensureteam", "default", "--name", "Default", "--namespace", f"{REGISTRY}/",
        "--public-namespace", f"{REGISTRY}/library/", "--admin", "admin",
    )  # fmt: skip
    print(indent(manage(*team, env=env)))
    manage("signingkey", env=env)  # made once, encrypted in the database: it signs every pushed image
    step("the farm's signing key: GET /api/v1/signing-key/ (docs/provenance.md)")

    lf.start_web(sup, WEB_PORT, env)
    step(f"daphne serves http://localhost:{WEB_PORT}")
    for entry in entries:
        lf.start_worker(sup, worker_name(entry), entry.name, f"build.{entry.name}", entry.capacity, env)
    step(f"a Celery worker per daemon: {', '.join(worker_name(e) for e in entries)}")
    lf.start_control(sup, env)
    step("the control worker runs beat: dispatch, health checks, lost-worker reaper")
    lf.start_notify(sup, env)
    step(f"the notify worker sends notifications, {lf.NOTIFY_CONCURRENCY} at once")

    token = admin.rsplit(":", 1)[-1].strip()
    print(
        f"""
Generator is up.
  Admin:      http://localhost:{WEB_PORT}/admin/  (user admin; password in {VAR / "admin-password"})
  Seed API:   http://localhost:{WEB_PORT}/b1/build?imagename=...&dockerfile=...
  Live log:   ws://localhost:{WEB_PORT}/b1/build/log/ws/<job id>
  Registry:   docker login {REGISTRY} -u admin -p $TOKEN  (tokens from http://127.0.0.1:{WEB_PORT}/v2/token)
  API token:  {token}
  Logs:       {RUN}/*.log
Try it (README, "First build"):
  export TOKEN={token}"""
    )


def registry_token_auth() -> lf.TokenAuth:
    return lf.TokenAuth(realm=f"http://127.0.0.1:{WEB_PORT}/v2/token", rootcertbundle=TOKEN_CERT)


def farm_signer() -> registry_keys.Signer:
    auth = registry_token_auth()
    return registry_keys.Signer(TOKEN_KEY, issuer=auth.issuer, service=auth.service)


def down() -> None:
    sup = lf.Supervisor(RUN)
    workers = [n for n in sup.names() if n.startswith("worker-")]
    # Workers first, so none starts a build on a daemon that is going away.
    sup.stop_all(first=["control", *workers, "notify", "web"])
    lf.unmount_below(VAR / "docker")
    lf.remove_sandboxes(egress_policy())
    step("stopped everything make up started")


def status() -> int:
    sup = lf.Supervisor(RUN)
    names = sup.names()
    if not names:
        print("nothing started by make up is running")
        return 1
    for name in names:
        print(f"  {name:28} running, pid {sup.pid(name)}")
    down_names = [n for n in expected_names() if sup.pid(n) is None]
    for name in down_names:
        print(f"  {name:28} NOT running (log: {sup.log_path(name)})")
    return 1 if down_names else 0


def expected_names() -> list[str]:
    entries = pool_entries()
    names = ["web", "registry", "control", "notify"]
    names += [dockerd_name(e) for e in entries if e.host in LOCAL_HOSTS]
    names += [worker_name(e) for e in entries]
    return names


def data_disk_bytes(entry) -> int:
    gib = DEFAULT_DATA_DISK_GB if entry.data_disk_gb is None else entry.data_disk_gb
    return int(gib * 2**30)


def dockerd_name(entry) -> str:
    return f"dockerd-{entry.port}"


def worker_name(entry) -> str:
    return "worker-" + "".join(c if c.isalnum() else "-" for c in entry.name)


def run_dir(port: int) -> Path:
    """The daemon's socket (where loadpool maps the seed entry, pool/seed_pool.py)
    and its exec root, which holds containerd's socket: short paths, well under
    the 108-byte limit of a unix socket, wherever the clone lives."""
    return local_socket(port).parent


def egress_policy() -> sandbox.Policy:
    registry = f"127.0.0.1:{REGISTRY_PORT}"
    return sandbox.farm_policy("generator", "gvgen", registry=registry, relay_dir=Path("/run/generator/relay"))


def step(text: str) -> None:
    print(f"==> {text}", flush=True)


def indent(text: str) -> str:
    return "\n".join("    " + line for line in text.strip().splitlines())


def main(argv: list[str]) -> int:
    commands = {"up": up, "down": down, "status": status}
    if len(argv) != 2 or argv[1] not in commands:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        return commands[argv[1]]() or 0
    except lf.StartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
