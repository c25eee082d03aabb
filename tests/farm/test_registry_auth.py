"""The farm's registry under token auth (issue 23), with the real registry, the
real docker CLI (Debian's /usr/bin/docker) and the farm as the token server:
people log in with an API token and reach their team's images and public ones
only; a build reads what its team may read, and is told so when it may not."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import bcrypt
import pytest
from django.contrib.auth.models import Permission

from builds.models import BuildJob
from lib import registry_keys
from scripts import localfarm as lf
from teams.models import Membership, Namespace, RegistryCredential, Team
from tests.conftest import _user
from tests.farm.conftest import BUSYBOX_ROOTFS, api_build, engine, follow, http_get

pytestmark = pytest.mark.farm

DOCKER = "/usr/bin/docker"


@pytest.fixture(scope="module")
def user_daemon(farm):
    """A daemon as on a person's machine: outside the farm's sandboxes, so it
    reaches the token server itself (the farm's daemons never need to)."""
    root, sup = farm.services_dir, farm.supervisor
    socket_path = root / "user-docker" / "docker.sock"
    url = lf.start_dockerd(sup, "dockerd-user", root / "user-data", root / "user-exec", socket_path)
    lf.wait_for_dockerd(sup, "dockerd-user", url)
    lf.ensure_busybox_image(url, BUSYBOX_ROOTFS())
    yield url
    sup.stop("dockerd-user")
    lf.unmount_below(root / "user-data")


@pytest.fixture
def two_teams(farm_pool, farm):
    """Team A owns REGISTRY/team-a/ and the public REGISTRY/shared/; team B REGISTRY/team-b/."""
    a = Team.objects.get_or_create(slug="reg-a", defaults={"name": "Registry A"})[0]
    b = Team.objects.get_or_create(slug="reg-b", defaults={"name": "Registry B"})[0]
    for team, prefix, public in [(a, "reg-a/", False), (b, "reg-b/", False), (a, "shared/", True)]:
        prefix = f"{farm.registry}/{prefix}"
        Namespace.objects.update_or_create(prefix=prefix, defaults={"team": team, "public": public})
    people = []
    for name, team in [("reg-alice", a), ("reg-bob", b)]:
        person = _user(name)
        Membership.objects.get_or_create(team=team, user=person)
        person.user_permissions.add(Permission.objects.get(codename="add_buildjob"))
        people.append(person)
    return people


def docker(url: str, config, *args: str, check: bool = False) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "DOCKER_HOST": url, "DOCKER_CONFIG": str(config)}
    return subprocess.run([DOCKER, *args], env=env, capture_output=True, text=True, timeout=120, check=check)


def login(url: str, config, registry: str, person) -> subprocess.CompletedProcess:
    return docker(url, config, "login", registry, "-u", person.username, "-p", person.api_token)


def build(farm, person, image: str, dockerfile: str) -> BuildJob:
    job_id = api_build(farm, person.api_token, {"image": image, "dockerfile": dockerfile})
    follow(farm, job_id, person.api_token)
    return BuildJob.objects.get(pk=job_id)


def test_docker_login_then_push_and_pull_within_the_team_and_refused_outside(farm, user_daemon, two_teams, tmp_path):
    alice, bob = two_teams
    registry, tag = farm.registry, uuid.uuid4().hex[:8]
    as_alice, as_bob, anonymous = tmp_path / "alice", tmp_path / "bob", tmp_path / "anonymous"
    wrong = docker(user_daemon, anonymous, "login", registry, "-u", alice.username, "-p", "not-a-token")
    assert wrong.returncode != 0, wrong.stdout
    assert login(user_daemon, as_alice, registry, alice).returncode == 0
    assert login(user_daemon, as_bob, registry, bob).returncode == 0

    for name in (f"reg-a/app:{tag}", f"shared/base:{tag}", f"reg-b/app:{tag}"):
        docker(user_daemon, as_alice, "tag", "busybox:latest", f"{registry}/{name}", check=True)
    assert docker(user_daemon, as_alice, "push", f"{registry}/reg-a/app:{tag}").returncode == 0
    assert docker(user_daemon, as_alice, "push", f"{registry}/shared/base:{tag}").returncode == 0
    refused = docker(user_daemon, as_alice, "push", f"{registry}/reg-b/app:{tag}")
    assert refused.returncode != 0 and "denied" in refused.stderr.lower(), refused.stderr

    docker(user_daemon, as_alice, "rmi", f"{registry}/reg-a/app:{tag}", f"{registry}/shared/base:{tag}", check=True)
    assert docker(user_daemon, as_alice, "pull", f"{registry}/reg-a/app:{tag}").returncode == 0
    bob_pull = docker(user_daemon, as_bob, "pull", f"{registry}/reg-a/app:{tag}")
    assert bob_pull.returncode != 0 and "denied" in bob_pull.stderr.lower(), bob_pull.stderr
    # A public namespace: every team, and anyone without logging in, pulls it.
    assert docker(user_daemon, as_bob, "pull", f"{registry}/shared/base:{tag}").returncode == 0
    docker(user_daemon, as_bob, "rmi", f"{registry}/shared/base:{tag}", check=True)
    assert docker(user_daemon, anonymous, "pull", f"{registry}/shared/base:{tag}").returncode == 0
    assert docker(user_daemon, anonymous, "pull", f"{registry}/reg-a/app:{tag}").returncode != 0


@pytest.fixture
def team_a_image(farm, two_teams) -> str:
    """An image of team A's, built by the farm: `/secret` in it is team A's."""
    alice = two_teams[0]
    image = f"{farm.registry}/reg-a/private:{uuid.uuid4().hex[:8]}"
    job = build(farm, alice, image, "FROM busybox\nRUN echo team-a-only > /secret\n")
    assert job.status == "succeeded", job.error
    return image


@pytest.mark.parametrize(
    "dockerfile",
    [
        "FROM {image}\nRUN cat /secret\n",
        "FROM busybox\nCOPY --from={image} /secret /stolen\n",
        "FROM busybox\nRUN --mount=type=bind,from={image},target=/a cat /a/secret\n",
    ],
    ids=["FROM", "COPY --from", "RUN --mount from"],
)
def test_a_build_of_team_b_may_not_read_team_as_image(farm, two_teams, team_a_image, dockerfile):
    alice, bob = two_teams
    job = build(farm, bob, f"{farm.registry}/reg-b/thief", dockerfile.format(image=team_a_image))
    assert job.status == "failed"
    assert team_a_image.rsplit(":", 1)[0] in job.error and "team reg-b may not read it" in job.error, job.error
    # The same Dockerfile for team A builds.
    own = build(farm, alice, f"{farm.registry}/reg-a/reader", dockerfile.format(image=team_a_image))
    assert own.status == "succeeded", own.error


def test_a_public_namespace_is_every_teams_base(farm, two_teams):
    alice, bob = two_teams
    base = f"{farm.registry}/shared/base-image:{uuid.uuid4().hex[:8]}"
    assert build(farm, alice, base, "FROM busybox\nRUN echo shared > /shared\n").status == "succeeded"
    job = build(farm, bob, f"{farm.registry}/reg-b/on-shared", f"FROM {base}\nRUN cat /shared\n")
    assert job.status == "succeeded", job.error


USER, PASSWORD = "team-b-robot", "team b's password there"


@pytest.fixture(scope="module")
def private_base(farm, farm_db, user_daemon, tmp_path_factory):
    """A second registry, with htpasswd auth, serving a private base image."""
    htpasswd = farm.services_dir / "base-htpasswd"
    htpasswd.write_text(f"{USER}:{bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt()).decode()}\n")
    port = farm.outside.spare_ports[1]  # a loopback port the farm's egress policy lets daemons reach
    lf.start_registry(farm.supervisor, port, farm.services_dir / "base-registry", "base-registry", htpasswd)
    image, config = f"localhost:{port}/vendor/base:1", tmp_path_factory.mktemp("vendor")
    docker(user_daemon, config, "login", f"localhost:{port}", "-u", USER, "-p", PASSWORD, check=True)
    docker(user_daemon, config, "tag", "busybox:latest", image, check=True)
    docker(user_daemon, config, "push", image, check=True)
    yield image
    farm.supervisor.stop("base-registry")


def test_a_teams_account_at_another_registry_pulls_its_private_base(farm, two_teams, private_base):
    bob = two_teams[1]
    dockerfile = f"FROM {private_base}\nRUN echo on-a-private-base\n"
    refused = build(farm, bob, f"{farm.registry}/reg-b/on-private", dockerfile)
    assert refused.status == "failed"
    # BuildKit's own error line, read back to the image and who may not read it.
    assert refused.error.startswith(f"{private_base}: team reg-b may not read it"), refused.error

    host = private_base.split("/")[0]
    body = {"host": host, "username": USER, "password": PASSWORD}
    request = urllib.request.Request(
        f"http://{farm.web}/api/v1/teams/reg-b/registry-credentials/", data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Token {farm_admin_token()}", "Content-Type": "application/json"},
    )  # fmt: skip
    urllib.request.urlopen(request, timeout=30).close()
    try:
        pulled = build(farm, bob, f"{farm.registry}/reg-b/on-private", dockerfile)
        assert pulled.status == "succeeded", pulled.error
    finally:
        RegistryCredential.objects.filter(team__slug="reg-b", host=host).delete()


def farm_admin_token() -> str:
    return _user("operator", is_staff=True, is_superuser=True).api_token


def test_the_catalog_is_staff_only_and_the_farm_lists_what_each_may_read(farm, two_teams, team_a_image):
    alice, bob = two_teams
    private = team_a_image.removeprefix(f"{farm.registry}/").split(":")[0]
    public = f"shared/listed-{uuid.uuid4().hex[:6]}"
    assert build(farm, alice, f"{farm.registry}/{public}", "FROM busybox\n").status == "succeeded"

    def listed(person) -> set[str]:
        status, body = http_get(f"http://{farm.web}/api/v1/registry/repositories/", person.api_token)
        assert status == 200, body
        return set(json.loads(body)["repositories"])

    assert {private, public} <= listed(alice)
    assert public in listed(bob) and private not in listed(bob)
    # Without a token: 401, and the challenge names the farm's token server.
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        urllib.request.urlopen(f"http://{farm.registry}/v2/{private}/manifests/latest", timeout=10)
    assert anonymous.value.code == 401
    challenge = anonymous.value.headers["WWW-Authenticate"]
    assert challenge.startswith(f'Bearer realm="http://{farm.web}/v2/token"')
    assert f"repository:{private}:pull" in challenge
    # The registry's own catalog: bob's token does not carry it.
    auth = base64.b64encode(f"{bob.username}:{bob.api_token}".encode()).decode()
    request = urllib.request.Request(
        f"http://{farm.web}/v2/token?service=generator-registry&scope=registry:catalog:*",
        headers={"Authorization": f"Basic {auth}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        token = json.loads(response.read())["token"]
    bearer = {"Authorization": f"Bearer {token}"}
    catalog = urllib.request.Request(f"http://{farm.registry}/v2/_catalog", headers=bearer)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(catalog, timeout=10)
    assert refused.value.code == 401


def test_a_classic_build_pulls_a_public_base_with_a_token_the_farm_signed(farm, user_daemon, two_teams, tmp_path):
    """The classic builder's daemon pulls itself: no daemon of the farm holds this
    base (pushed from a person's machine), and none reaches the token server."""
    alice, bob = two_teams
    base = f"{farm.registry}/shared/classic-base:{uuid.uuid4().hex[:8]}"
    assert login(user_daemon, tmp_path, farm.registry, alice).returncode == 0
    docker(user_daemon, tmp_path, "tag", "busybox:latest", base, check=True)
    docker(user_daemon, tmp_path, "push", base, check=True)
    job_id = api_build(
        farm, bob.api_token,
        {"image": f"{farm.registry}/reg-b/classic", "dockerfile": f"FROM {base}\nRUN true\n", "builder": "classic"},
    )  # fmt: skip
    follow(farm, job_id, bob.api_token)
    job = BuildJob.objects.get(pk=job_id)
    assert job.status == "succeeded", job.error


def test_the_cli_pulls_into_a_farm_daemon_with_a_token_it_asked_for(farm, farm_pool, two_teams, team_a_image):
    """README's first build: a farm daemon cannot reach the token server, so the
    CLI asks for the token and hands it over; another team's image stays refused."""
    alice, bob = two_teams
    url = farm.daemons[0][1]
    if engine(url).images.list(name=team_a_image):  # built there: pulled only if it is not
        engine(url).images.remove(team_a_image, force=True)
    cli = [sys.executable, "-m", "builds.cli", "--server", f"http://{farm.web}"]
    pulled = subprocess.run(
        [*cli, "--token", alice.api_token, "pull", team_a_image, "--docker-host", url],
        capture_output=True, text=True, timeout=120, cwd=lf.ROOT,
    )  # fmt: skip
    assert pulled.returncode == 0, pulled.stderr
    assert engine(url).images.get(team_a_image).id
    engine(url).images.remove(team_a_image, force=True)
    refused = subprocess.run(
        [*cli, "--token", bob.api_token, "pull", team_a_image, "--docker-host", url],
        capture_output=True, text=True, timeout=120, cwd=lf.ROOT,
    )  # fmt: skip
    assert refused.returncode == 1 and "error:" in refused.stderr


def test_the_registry_refuses_an_expired_token_and_one_of_another_key(farm, team_a_image, tmp_path):
    path = team_a_image.removeprefix(f"{farm.registry}/").split(":")[0]
    access = [{"type": "repository", "name": path, "actions": ["pull"]}]
    other_key = tmp_path / "other.key"
    registry_keys.ensure_key(other_key, tmp_path / "other.crt")
    other = registry_keys.Signer(other_key, issuer=farm.signer.issuer, service=farm.signer.service)
    tokens = {
        "fresh": farm.signer.sign("test", access, 60)["token"],
        "expired": farm.signer.sign("test", access, 60, now=time.time() - 3600)["token"],
        "another key": other.sign("test", access, 60)["token"],
    }
    answers = {}
    for name, token in tokens.items():
        request = urllib.request.Request(
            f"http://{farm.registry}/v2/{path}/tags/list", headers={"Authorization": f"Bearer {token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                answers[name] = response.status
        except urllib.error.HTTPError as exc:
            answers[name] = exc.code
    assert answers == {"fresh": 200, "expired": 401, "another key": 401}


def test_an_onbuild_trigger_may_not_read_another_teams_image(farm, user_daemon, two_teams, team_a_image, tmp_path):
    """A base's ONBUILD runs in the build FROM it, with that build's access to the
    daemon, where team A's image may be held: team B's trigger naming it is refused,
    whether its Dockerfile holds the line or its base was pushed by hand."""
    alice, bob = two_teams
    trigger = f"ONBUILD COPY --from={team_a_image} /secret /stolen\n"
    in_dockerfile = build(farm, bob, f"{farm.registry}/reg-b/base", f"FROM busybox\n{trigger}")
    assert in_dockerfile.status == "failed" and "team reg-b may not read it" in in_dockerfile.error, in_dockerfile.error

    # By hand, outside the farm: a base whose config holds the trigger, pushed to team B's namespace.
    base, as_bob = f"{farm.registry}/reg-b/base:{uuid.uuid4().hex[:8]}", tmp_path / "bob"
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(f"FROM busybox\n{trigger}")
    assert docker(user_daemon, as_bob, "build", "-t", base, str(context)).returncode == 0
    assert login(user_daemon, as_bob, farm.registry, bob).returncode == 0
    assert docker(user_daemon, as_bob, "push", base).returncode == 0
    for builder in ("buildkit", "classic"):
        job_id = api_build(
            farm, bob.api_token,
            {"image": f"{farm.registry}/reg-b/thief", "dockerfile": f"FROM {base}\nRUN cat /stolen\n",
             "builder": builder},
        )  # fmt: skip
        follow(farm, job_id, bob.api_token)
        job = BuildJob.objects.get(pk=job_id)
        assert job.status == "failed", (builder, job.error)
        assert f"{base} has an ONBUILD trigger that reads {team_a_image}" in job.error, (builder, job.error)
        assert "team reg-b may not read it" in job.error, (builder, job.error)

    # A base only the daemons hold (no such tag in the registry): its triggers are read from their copy.
    held = f"{farm.registry}/reg-b/held:{uuid.uuid4().hex[:8]}"
    for _, url in farm.daemons:
        engine(url).images.build(path=str(context), tag=held)
    job = build(farm, bob, f"{farm.registry}/reg-b/thief", f"FROM {held}\nRUN cat /stolen\n")
    assert job.status == "failed" and f"{held} has an ONBUILD trigger that reads {team_a_image}" in job.error, job.error
