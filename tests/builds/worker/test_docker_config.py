"""builds/worker/docker_config.py: each build's registry credentials, for BuildKit's
DOCKER_CONFIG and the classic builder's X-Registry-Config."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import jwt
import pytest

from builds.models import BuildJob
from builds.worker.docker_config import classic_registry_config, docker_config
from lib import crypto
from lib.registry_keys import ensure_key
from teams.models import Namespace, RegistryCredential


@pytest.fixture
def job(alice, teams, daemon, settings, tmp_path):
    settings.GENERATOR_REGISTRY_TOKEN_HOST = "localhost:5000"
    settings.GENERATOR_REGISTRY_TOKEN_KEY = tmp_path / "k.key"
    settings.GENERATOR_REGISTRY_TOKEN_CERT = tmp_path / "k.crt"
    ensure_key(settings.GENERATOR_REGISTRY_TOKEN_KEY, settings.GENERATOR_REGISTRY_TOKEN_CERT)
    RegistryCredential.objects.create(
        team=teams[0], host="private.example:5000", username="robot", password=crypto.encrypt("robot's password")
    )
    return BuildJob.objects.create(
        image="localhost:5000/team-a/app:1", dockerfile="FROM scratch", team=teams[0], submitted_by=alice,
        status=BuildJob.Status.BUILDING, daemon=daemon,
    )  # fmt: skip


def test_a_builds_docker_config_is_0600_holds_its_credentials_and_goes_away(job):
    with docker_config(job) as folder:
        config = Path(folder) / "config.json"
        assert Path(folder).stat().st_mode & 0o777 == 0o700 and config.stat().st_mode & 0o777 == 0o600
        auths = json.loads(config.read_text())["auths"]
        farm_user, _, farm_password = base64.b64decode(auths["localhost:5000"]["auth"]).decode().partition(":")
        assert farm_user == f"build-{job.id}" and farm_password.startswith("gbc_")
        assert base64.b64decode(auths["private.example:5000"]["auth"]).decode() == "robot:robot's password"
    assert not Path(folder).exists()


def test_a_classic_build_gets_a_pull_token_for_the_images_its_team_may_read(job, teams):
    Namespace.objects.create(team=teams[1], prefix="localhost:5000/shared/", public=True)
    images = ["localhost:5000/team-a/base:1", "localhost:5000/shared/x", "localhost:5000/team-b/y", "busybox"]
    config = classic_registry_config(job, images)
    assert config["private.example:5000"] == {"username": "robot", "password": "robot's password"}
    access = jwt.decode(config["localhost:5000"]["registrytoken"], options={"verify_signature": False})["access"]
    assert access == [
        {"type": "repository", "name": "team-a/base", "actions": ["pull"]},
        {"type": "repository", "name": "shared/x", "actions": ["pull"]},
    ]


def test_a_forks_pull_request_gets_no_team_account_and_reads_public_images_only(job, teams):
    Namespace.objects.create(team=teams[1], prefix="localhost:5000/shared/", public=True)
    BuildJob.objects.filter(pk=job.pk).update(fork=True)
    job.refresh_from_db()
    config = classic_registry_config(job, ["localhost:5000/team-a/base:1", "localhost:5000/shared/x"])
    assert "private.example:5000" not in config
    access = jwt.decode(config["localhost:5000"]["registrytoken"], options={"verify_signature": False})["access"]
    assert access == [{"type": "repository", "name": "shared/x", "actions": ["pull"]}]
    with docker_config(job) as folder:
        assert list(json.loads((Path(folder) / "config.json").read_text())["auths"]) == ["localhost:5000"]


def test_the_farms_account_reaches_builds_pulls_only_where_the_operator_says_so(job, teams):
    from builds.models import Registry
    from builds.worker.docker_config import pull_accounts

    mirror = Registry.objects.create(host="mirror.example", username="farm", password=crypto.encrypt("farm's"))
    Registry.objects.create(host="private.example:5000", username="farm", password=crypto.encrypt("farm's"))
    assert "mirror.example" not in pull_accounts(job)  # the farm's accounts push; builds never get them by default
    Registry.objects.update(builds_pull_with_farm_account=True)
    accounts = pull_accounts(job)
    assert accounts["mirror.example"] == ("farm", "farm's")
    assert accounts["private.example:5000"] == ("robot", "robot's password")  # the team's own wins
    with docker_config(job) as folder:
        auths = json.loads((Path(folder) / "config.json").read_text())["auths"]
        assert base64.b64decode(auths["mirror.example"]["auth"]).decode() == "farm:farm's"
    assert classic_registry_config(job, [])["mirror.example"] == {"username": "farm", "password": "farm's"}
    BuildJob.objects.filter(pk=job.pk).update(fork=True)
    job.refresh_from_db()
    assert pull_accounts(job) == {}  # never a fork's
    mirror.delete()
