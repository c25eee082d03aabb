"""A Dockerfile plays the attacker (issue 12, docs/security.md): it tries to reach
the daemons' APIs, the farm's services, the host, the cloud metadata address,
other builds and private networks, from `ADD` (which dockerd fetches itself)
and from RUN steps, and makes a push follow a registry's redirect. Each try
must fail below the build, with a reason, while destinations the operator
allowed still work and the daemons stay healthy.

Every target is on this machine: loopback, the sandboxes' own addresses, and a
namespace of the test's own (tests/netns.py `outside_host`) that holds a
private address and stands in for 169.254.169.254.
"""

from __future__ import annotations

import re
import socket
import subprocess
import threading
import time
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from builds.models import BuildJob, BuildLogLine, Registry
from pool.models import DockerDaemon
from tests.farm.conftest import api_build, follow, submit

pytestmark = pytest.mark.farm


def _reachable_from_here(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status == 200


def _sandbox_gateways(farm) -> list[str]:
    """The host's end of each daemon's veth: the host, as a build's network sees it."""
    out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    return re.findall(rf"{farm.policy.prefix}\d+\s+inet (\S+)/30", out)


def _build(farm, token, dockerfile: str) -> tuple[BuildJob, str]:
    job_id = submit(farm, token, f"{farm.registry}/containment/probe", dockerfile)
    followed = follow(farm, job_id, token)
    return BuildJob.objects.get(pk=job_id), "\n".join(text for _, text in followed.lines)


def _targets(farm) -> dict[str, str]:
    gateway = _sandbox_gateways(farm)[0]
    return {
        "web": f"http://127.0.0.1:{farm.web_port}/healthz",
        "redis": f"http://127.0.0.1:{farm.redis_port}/",
        "postgresql": "http://127.0.0.1:5432/",
        "the host from its sandbox": f"http://{gateway}:{farm.web_port}/healthz",
        "the host's registry port": f"http://{gateway}:{farm.registry_port}/v2/",
        "metadata": farm.outside.urls["metadata"],
        "private": farm.outside.urls["private"],
    }


def test_no_daemon_of_the_farm_listens_on_tcp(farm, farm_pool):
    assert all(row.url.startswith("unix://") for row in farm_pool)
    for netns in _netns_of(farm):
        listening = subprocess.run(
            ["nsenter", f"--net=/run/netns/{netns}", "--", "ss", "-Hltnp"], capture_output=True, text=True
        ).stdout
        # Only the relays of allowed loopback destinations (socat) listen in a sandbox.
        assert "dockerd" not in listening and "containerd" not in listening, listening
        ports = {int(m) for m in re.findall(r"127\.0\.0\.1:(\d+)", listening)}
        assert ports == {d.port for d in farm.policy.loopback_allowed}, listening
    on_host = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True).stdout
    assert "dockerd" not in on_host, on_host


def _netns_of(farm) -> list[str]:
    from scripts import sandbox

    namespaces = sandbox.namespaces(prefix=f"{farm.policy.table}-")
    assert len(namespaces) == len(farm.daemons)
    return namespaces


@pytest.mark.parametrize(
    "target",
    ["web", "redis", "postgresql", "the host from its sandbox", "the host's registry port", "metadata", "private"],
)
def test_add_cannot_fetch_from_the_farm_or_private_addresses(farm, token, target):
    url = _targets(farm)[target]
    if target == "metadata":  # only ever to the test's own namespace, never the machine's real network
        assert farm.outside.routes_metadata_here(), "another test session took the 169.254.169.254 route"
    if target in ("web", "metadata", "private"):
        assert _reachable_from_here(url), f"the test's own {target} listener must answer the test"
    job, log = _build(farm, token, f"FROM busybox\nADD {url} /stolen\nRUN cat /stolen\n")
    assert job.status == "failed", log
    address = re.match(r"http://([^:/]+)", url)[1]
    assert address in job.error, job.error
    assert "egress policy" in job.error, job.error
    assert "reached" not in log
    assert all(d.healthy for d in DockerDaemon.objects.filter(name__in=[n for n, _ in farm.daemons]))


def test_run_steps_reach_only_what_the_policy_allows(farm, token):
    targets = dict(_targets(farm))
    targets["allowed mirror"] = farm.outside.urls["mirror"]
    steps = []
    for name, url in targets.items():
        host, port = re.match(r"http://([^:/]+):?(\d*)", url).groups()
        path = url.split(port, 1)[1] if port else "/"
        request = f"GET {path} HTTP/1.0\\r\\n\\r\\n"
        steps.append(f'RUN echo "try {name}: $(printf "{request}" | nc -w 3 {host} {port or 80} 2>&1 | tail -1)"')
    job, log = _build(farm, token, "FROM busybox\n" + "\n".join(steps) + "\n")
    assert job.status == "succeeded", job.error
    tries = dict(re.findall(r"^(?:#\d+ [\d.]+ )?try ([^:]+): (.*)$", log, re.MULTILINE))
    assert tries["allowed mirror"] == "reached mirror", log
    for name in targets.keys() - {"allowed mirror"}:
        assert "reached" not in tries[name] and "HTTP/" not in tries[name], (name, tries[name])


def test_a_build_fetches_from_allowed_destinations(farm, token):
    mirror, loopback_mirror = farm.outside.urls["mirror"], farm.outside.urls["loopback-mirror"]
    dockerfile = f"FROM busybox\nADD {mirror} /a\nADD {loopback_mirror} /b\nRUN cat /a /b\n"
    job, log = _build(farm, token, dockerfile)
    assert job.status == "succeeded", job.error
    assert "reached mirror" in log and "reached loopback-mirror" in log


def test_root_in_a_run_step_is_not_root_on_the_host(farm, token):
    job, log = _build(farm, token, "FROM busybox\nRUN echo uid_map $(cat /proc/self/uid_map)\n")
    assert job.status == "succeeded", job.error
    inside, outside, _count = re.search(r"uid_map (\d+) (\d+) (\d+)", log).groups()
    assert inside == "0" and outside != "0", log


class _Canary:
    """A TCP listener on every address of the host that counts who connects."""

    def __init__(self) -> None:
        self.server = socket.create_server(("0.0.0.0", 0))
        self.port = self.server.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            client.close()


def _redirecting_registry(port: int, location: str) -> ThreadingHTTPServer:
    """A registry of the attacker's: it takes the push's first steps, then answers
    the blob upload with a redirect to `location`."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def _answer(self) -> None:
            if self.path == "/v2/":
                self.send_response(200)
            elif self.command == "POST" and "/blobs/uploads/" in self.path:
                self.send_response(307)
                self.send_header("Location", location)
            else:
                self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = _answer

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize("where", ["loopback", "the host from its sandbox"])
def test_a_push_redirect_cannot_reach_the_host(farm, token, where):
    canary = _Canary()
    host = "127.0.0.1" if where == "loopback" else _sandbox_gateways(farm)[0]
    registry = _redirecting_registry(farm.outside.spare_ports[0], f"http://{host}:{canary.port}/v1.41/containers/json")
    Registry.objects.get_or_create(host=f"127.0.0.1:{farm.outside.spare_ports[0]}")
    try:
        image = f"127.0.0.1:{farm.outside.spare_ports[0]}/evil/app"
        job_id = submit(farm, token, image, "FROM busybox\nRUN echo pushed somewhere > /x\n")
        followed = follow(farm, job_id, token)
    finally:
        registry.shutdown()
        registry.server_close()
        canary.server.close()
    job = BuildJob.objects.get(pk=job_id)
    assert job.status == "failed", followed.lines[-3:]
    assert canary.connections == 0
    assert all(d.healthy for d in DockerDaemon.objects.filter(name__in=[n for n, _ in farm.daemons]))


def test_a_build_cannot_see_another_builds_processes_or_build_args(farm, farm_pool, token):
    """Two builds at once on one daemon: the second looks for the first's secret
    build arg in every process it can see."""
    secret = uuid.uuid4().hex
    only, *others = farm_pool
    DockerDaemon.objects.filter(pk__in=[d.pk for d in others]).update(enabled=False)
    try:
        victim = api_build(
            farm,
            token,
            {
                "image": f"{farm.registry}/containment/victim",
                "dockerfile": "FROM busybox\nARG SECRET\nRUN echo started && sleep 8\n",
                "build_args": {"SECRET": secret},
                "no_cache": True,
            },
        )
        _wait_for_line(victim, "started")
        # Every process it can see, with its environment and arguments.
        snoop = "RUN ps -o pid,args; cat /proc/*/environ /proc/*/cmdline 2>/dev/null | tr '\\0' '\\n'"
        job, log = _build(farm, token, f"FROM busybox\n{snoop}\n")
    finally:
        DockerDaemon.objects.filter(pk__in=[d.pk for d in others]).update(enabled=True)
    assert job.status == "succeeded", job.error
    assert job.daemon_id == only.pk == BuildJob.objects.get(pk=victim).daemon_id
    assert BuildJob.objects.get(pk=victim).status in ("building", "pushing", "succeeded")
    assert "sleep 8" not in log and secret not in log, log
    follow(farm, victim, token)


def _wait_for_line(job_id: str, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if BuildLogLine.objects.filter(job_id=job_id, text__contains=text).exists():
            return
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} never printed {text!r}")
