"""What one build may use (builds/jobs/limits.py): the daemon's defaults, a repository's
overrides up to the operator's caps, how they reach the daemon, and where they are
shown and set. (tests/farm/test_build_limits.py has the kernel enforce them.)"""

from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import pytest
from rest_framework.test import APIClient

from bench.fake_engine import EngineHandler
from builds.engine.cgroups import BuildCgroup
from builds.engine.docker import BuildFailed, EngineSession
from builds.jobs.limits import BuildLimits, limits_for
from builds.models import Repository
from builds.worker.containment import contained
from pool.models import DockerDaemon

DAEMON = SimpleNamespace(build_memory_mb=2048, build_cpus=1.0, build_pids=1024)
MiB = 2**20


def repository(**overrides) -> SimpleNamespace:
    return SimpleNamespace(**{"build_memory_mb": None, "build_cpus": None, "build_pids": None, **overrides})


# --- the arithmetic ------------------------------------------------------------------


def test_a_build_without_a_repository_gets_its_daemons_defaults():
    assert limits_for(DAEMON) == limits_for(DAEMON, repository()) == BuildLimits(2048, 1.0, 1024)


def test_a_repository_may_ask_for_less_or_more_than_the_default(settings):
    asked = repository(build_memory_mb=512, build_cpus=2.5, build_pids=4000)
    assert limits_for(DAEMON, asked) == BuildLimits(512, 2.5, 4000)


def test_an_override_above_a_cap_lowered_since_is_held_to_the_cap(settings):
    settings.GENERATOR_BUILD_MEMORY_MAX_MB, settings.GENERATOR_BUILD_CPUS_MAX = 4096, 2.0
    settings.GENERATOR_BUILD_PIDS_MAX = 2048
    asked = repository(build_memory_mb=16384, build_cpus=8.0, build_pids=100_000)
    assert limits_for(DAEMON, asked) == BuildLimits(4096, 2.0, 2048)


def test_cpus_become_a_cfs_quota_of_at_least_a_millisecond():
    assert BuildLimits(64, 1.5, 64).cpu_quota_us == 150_000
    assert BuildLimits(64, 0.001, 64).cpu_quota_us == 1_000  # the kernel refuses less


def test_the_log_line_names_memory_cpus_and_processes():
    assert BuildLimits(2048, 1.0, 1024).describe() == "2048 MiB memory, 1 CPU, 1024 processes"
    assert BuildLimits(512, 2.5, 64).describe(processes=False) == "512 MiB memory, 2.5 CPUs"


# --- to the daemon -------------------------------------------------------------------


class RecordingEngine(EngineHandler):
    """bench/fake_engine.py's daemon, keeping each build's query; a build fails as a
    RUN step killed by SIGKILL does."""

    builds: list[dict] = []

    def do_POST(self):  # noqa: N802
        if self._path() != "/build":
            return super().do_POST()
        self._read_body()
        self.builds.append({k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()})
        message = "The command '/bin/sh -c hog' returned a non-zero code: 137"
        self._stream([{"stream": "Step 1/2 : RUN hog\n"}, {"errorDetail": {"code": 137, "message": message}}])


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # the client hangs up after a failed build: as docker-py does


@pytest.fixture
def engine():
    server = QuietServer(("127.0.0.1", 0), RecordingEngine)
    RecordingEngine.builds = []
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    with EngineSession(f"tcp://127.0.0.1:{server.server_port}", api_version="1.41", timeout=10) as session:
        yield session
    server.shutdown()
    server.server_close()


@pytest.fixture
def cgroup_root(tmp_path, settings, monkeypatch) -> Path:
    """A fake cgroup v1 tree (tests/builds/engine/test_cgroups.py has it in detail)."""
    for hierarchy in ("memory", "cpu", "pids"):
        (tmp_path / hierarchy).mkdir()
        (tmp_path / hierarchy / "tasks").write_text("")
    settings.GENERATOR_CGROUP_ROOT, settings.GENERATOR_BUILD_CGROUPS = tmp_path, True
    monkeypatch.setattr(BuildCgroup, "remove_within", 0)  # its plain files would keep it
    return tmp_path


def test_the_daemon_gets_the_cgroup_parent_limits_and_no_network(engine, cgroup_root):
    with contained("unit:daemon", "job1", 2, BuildLimits(64, 0.5, 40), network="none") as containment:
        assert containment.summary == "Limits: 64 MiB memory, 0.5 CPU, 40 processes; no network"
        parent = cgroup_root / "memory" / "generator" / "unit_daemon" / "job1-2"
        (parent / "memory.max_usage_in_bytes").write_text(str(64 * MiB))  # the kernel's high-water mark
        with pytest.raises(BuildFailed) as failed:
            engine.build(b"", tag="localhost:5000/a/b:latest", on_line=lambda line: None, **containment.engine_options)
        assert failed.value.exit_code == 137
        assert (cgroup_root / "pids" / "generator" / "unit_daemon" / "job1-2" / "pids.max").read_text() == "40"
    query = RecordingEngine.builds[0]
    assert query["cgroupparent"] == "/generator/unit_daemon/job1-2"
    assert (query["memory"], query["memswap"]) == (str(64 * MiB), str(64 * MiB))  # no swap beyond it
    assert (query["cpuperiod"], query["cpuquota"], query["networkmode"]) == ("100000", "50000", "none")


def test_a_build_that_hit_its_memory_limit_fails_saying_so_before_the_daemons_message(engine, cgroup_root):
    with pytest.raises(BuildFailed) as failed, contained("d", "job2", 1, BuildLimits(64, 1.0, 40)) as containment:
        (cgroup_root / "memory" / "generator" / "d" / "job2-1" / "memory.max_usage_in_bytes").write_text(str(64 * MiB))
        engine.build(b"", tag="localhost:5000/a/b:latest", on_line=lambda line: None, **containment.engine_options)
    assert str(failed.value) == (
        "the build ran out of memory: its limit is 64 MiB (RUN steps were killed); "
        "The command '/bin/sh -c hog' returned a non-zero code: 137"
    )


def test_a_failure_within_the_limits_keeps_the_daemons_message_alone(engine, cgroup_root):
    with pytest.raises(BuildFailed) as failed, contained("d", "job3", 1, BuildLimits(64, 1.0, 40)) as containment:
        engine.build(b"", tag="localhost:5000/a/b:latest", on_line=lambda line: None, **containment.engine_options)
    assert str(failed.value) == "The command '/bin/sh -c hog' returned a non-zero code: 137"


def test_with_cgroups_off_only_the_daemons_limits_apply_and_the_log_says_so(engine, settings):
    settings.GENERATOR_BUILD_CGROUPS = False
    settings.GENERATOR_CGROUP_ROOT = Path("/nonexistent")  # never looked at
    with contained("d", "job4", 1, BuildLimits(512, 2.0, 64)) as containment:
        assert containment.summary == (
            "Limits: 512 MiB memory, 2 CPUs per RUN step; no process limit (GENERATOR_BUILD_CGROUPS=false)"
        )
        with pytest.raises(BuildFailed):
            engine.build(b"", tag="localhost:5000/a/b:latest", on_line=lambda line: None, **containment.engine_options)
    query = RecordingEngine.builds[0]
    assert "cgroupparent" not in query and "networkmode" not in query
    assert (query["memory"], query["cpuquota"]) == (str(512 * MiB), "200000")


# --- shown and set: the REST API and admin ---------------------------------------------


@pytest.fixture
def api(operator):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {operator.api_token}")
    return client


def test_the_daemon_api_shows_and_sets_the_per_build_limits(api):
    daemon = DockerDaemon.objects.create(name="limits", url="unix:///run/limits/docker.sock")
    shown = api.get(f"/api/v1/daemons/{daemon.pk}/").json()
    assert (shown["build_memory_mb"], shown["build_cpus"], shown["build_pids"]) == (2048, 1.0, 1024)
    changed = api.patch(f"/api/v1/daemons/{daemon.pk}/", {"build_pids": 256}, format="json")
    assert changed.status_code == 200 and changed.json()["build_pids"] == 256, changed.json()
    assert api.patch(f"/api/v1/daemons/{daemon.pk}/", {"build_pids": 3}, format="json").status_code == 400


REPOSITORY = {
    "full_name": "team/app",
    "clone_url": "https://x.invalid/team/app.git",
    "webhook_secret": "s",
    "image": "localhost:5000/team/app",
}


def test_a_repository_override_above_the_cap_is_refused_naming_the_cap(api, settings):
    settings.GENERATOR_BUILD_MEMORY_MAX_MB, settings.GENERATOR_BUILD_PIDS_MAX = 4096, 2048
    refused = api.post("/api/v1/repositories/", {**REPOSITORY, "build_memory_mb": 8192, "build_pids": 4096}).json()
    assert refused == {
        "build_memory_mb": ["at most 4096 MiB: the farm's cap (GENERATOR_BUILD_MEMORY_MAX_MB)"],
        "build_pids": ["at most 2048 processes: the farm's cap (GENERATOR_BUILD_PIDS_MAX)"],
    }
    asked = {**REPOSITORY, "build_memory_mb": 4096, "build_cpus": 0.5, "network": "none"}
    created = api.post("/api/v1/repositories/", asked, format="json")
    assert created.status_code == 201, created.json()
    assert {k: created.json()[k] for k in ("build_memory_mb", "build_cpus", "build_pids", "network")} == {
        "build_memory_mb": 4096,
        "build_cpus": 0.5,
        "build_pids": None,
        "network": "none",
    }


def test_the_repository_admin_names_the_caps_and_refuses_above_them(client, operator, settings):
    settings.GENERATOR_BUILD_CPUS_MAX = 2.0
    client.force_login(operator)
    page = client.get("/admin/builds/repository/add/").content.decode()
    assert "At most 2 CPUs (GENERATOR_BUILD_CPUS_MAX)." in page
    form = {
        **REPOSITORY,
        "dockerfile_path": "Dockerfile",
        "build_args": "{}",
        "network": "filtered",
        "pull_requests": "internal",
    }
    form.update({"build_cpus": "3", "rules-TOTAL_FORMS": "0", "rules-INITIAL_FORMS": "0"})
    response = client.post("/admin/builds/repository/add/", form)
    assert "at most 2 CPUs: the farm&#x27;s cap (GENERATOR_BUILD_CPUS_MAX)" in response.content.decode()
    assert not Repository.objects.filter(full_name="team/app").exists()


def test_the_pool_admin_lists_each_daemons_limits(client, operator, daemon):
    client.force_login(operator)
    assert "2048 MiB, 1 CPU, 1024 processes" in client.get("/admin/pool/dockerdaemon/").content.decode()
