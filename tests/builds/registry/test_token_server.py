"""GET /v2/token (builds/registry/token_server.py): the farm as its registry's token
server. Tokens are checked as distribution checks them: ES256 against the
certificate's key, the header's `kid` the key's libtrust ID."""

from __future__ import annotations

import base64
import hashlib
import time

import jwt
import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from django.test import Client

from audit.models import AuditEvent
from builds.models import BuildJob
from builds.worker.docker_config import build_password
from lib.login_throttle import KEY_PREFIX
from lib.registry_keys import ensure_key, libtrust_kid
from teams import tokens as team_tokens
from teams.models import Namespace

SERVICE = "generator-registry"


@pytest.fixture(autouse=True)
def token_server(settings, tmp_path):
    settings.GENERATOR_REGISTRY_TOKEN_HOST = "localhost:5000"
    settings.GENERATOR_REGISTRY_TOKEN_KEY = tmp_path / "token.key"
    settings.GENERATOR_REGISTRY_TOKEN_CERT = tmp_path / "token.crt"
    ensure_key(settings.GENERATOR_REGISTRY_TOKEN_KEY, settings.GENERATOR_REGISTRY_TOKEN_CERT)
    client = redis.Redis.from_url(settings.REDIS_URL)
    for key in client.scan_iter(KEY_PREFIX + "*"):
        client.delete(key)
    return settings


def ask(*scopes: str, user: str | None = None, password: str | None = None, address: str = "10.0.0.9", **params):
    headers = {"REMOTE_ADDR": address}
    if password is not None:
        headers["HTTP_AUTHORIZATION"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    return Client().get("/v2/token", {"service": SERVICE, "scope": list(scopes), **params}, **headers)


def claims(response, settings) -> dict:
    """The token's claims, verified as the registry verifies them."""
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["token"] == body["access_token"]
    assert body["expires_in"] == settings.GENERATOR_REGISTRY_TOKEN_SECONDS
    cert = x509.load_pem_x509_certificate(settings.GENERATOR_REGISTRY_TOKEN_CERT.read_bytes())
    header = jwt.get_unverified_header(body["token"])
    assert header["alg"] == "ES256" and header["kid"] == libtrust_kid(cert.public_key())
    return jwt.decode(body["token"], cert.public_key(), algorithms=["ES256"], audience=SERVICE, issuer="generator")


def access(response, settings) -> dict[str, list[str]]:
    return {f"{a['type']}:{a['name']}": a["actions"] for a in claims(response, settings)["access"]}


def test_the_kid_is_the_libtrust_id_of_the_certificates_key(token_server):
    """SHA-256 of the DER SubjectPublicKeyInfo, 30 bytes, base32, 12 groups of 4."""
    key = serialization.load_pem_private_key(token_server.GENERATOR_REGISTRY_TOKEN_KEY.read_bytes(), None)
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    kid = libtrust_kid(key.public_key())
    groups = kid.split(":")
    assert len(groups) == 12 and all(len(g) == 4 for g in groups)
    assert base64.b32decode("".join(groups)) == hashlib.sha256(der).digest()[:30]
    assert token_server.GENERATOR_REGISTRY_TOKEN_KEY.stat().st_mode & 0o777 == 0o600


def test_a_member_gets_pull_and_push_on_their_team_and_nothing_on_another(alice, token_server):
    response = ask(
        "repository:team-a/app:pull,push", "repository:team-b/app:pull,push", "repository:elsewhere/x:pull",
        user="alice", password=alice.api_token,
    )  # fmt: skip
    assert access(response, token_server) == {"repository:team-a/app": ["pull", "push"]}
    assert claims(response, token_server)["sub"] == "alice"


def test_a_public_namespace_is_pulled_by_anyone_and_pushed_by_its_team_alone(alice, bob, teams, token_server):
    Namespace.objects.create(team=teams[0], prefix="localhost:5000/library/", public=True)
    for user in (alice, bob):
        response = ask("repository:library/busybox:pull,push", user=user.username, password=user.api_token)
        expected = ["pull", "push"] if user == alice else ["pull"]
        assert access(response, token_server) == {"repository:library/busybox": expected}
    anonymous = ask("repository:library/busybox:pull,push", "repository:team-a/app:pull")
    assert access(anonymous, token_server) == {"repository:library/busybox": ["pull"]}


def test_the_catalog_and_delete_are_never_granted_to_a_member(alice, token_server):
    response = ask("registry:catalog:*", "repository:team-a/app:delete,*", user="alice", password=alice.api_token)
    assert access(response, token_server) == {"repository:team-a/app": ["pull", "push"]}


def test_staff_get_the_catalog(operator, teams, token_server):
    response = ask("registry:catalog:*", "repository:team-b/app:pull", user="operator", password=operator.api_token)
    assert access(response, token_server) == {"registry:catalog": ["*"], "repository:team-b/app": ["pull"]}


def test_a_team_token_pulls_and_pushes_its_teams_namespace(teams, token_server):
    _, key = team_tokens.issue(teams[1], "ci")
    response = ask("repository:team-b/app:pull,push", "repository:team-a/app:pull", user="team-b", password=key)
    assert access(response, token_server) == {"repository:team-b/app": ["pull", "push"]}


def test_a_revoked_team_token_gets_no_token_and_the_refusal_is_audited(teams, token_server):
    token, key = team_tokens.issue(teams[1], "ci")
    team_tokens.revoke(token)
    response = ask("repository:team-b/app:pull", user="team-b", password=key, address="10.1.2.3")
    assert response.status_code == 401
    assert "revoked" in response.json()["details"]
    assert response["WWW-Authenticate"].startswith("Basic ")
    event = AuditEvent.objects.get(action="deny", kind="registry token")
    assert event.remote_address == "10.1.2.3" and event.object_repr == "team-b"
    assert key not in str(event.details) and key not in event.object_repr


def test_a_user_token_must_come_with_its_users_name(alice, token_server):
    assert ask("repository:team-a/app:pull", user="bob", password=alice.api_token).status_code == 401


def test_failures_are_throttled_per_username_and_address(alice, token_server):
    token_server.GENERATOR_LOGIN_FAILURES = 3
    for _ in range(3):
        assert ask("repository:team-a/app:pull", user="alice", password="wrong").status_code == 401
    locked = ask("repository:team-a/app:pull", user="alice", password=alice.api_token)
    assert locked.status_code == 429 and int(locked["Retry-After"]) > 0
    other_address = ask("repository:team-a/app:pull", user="alice", password=alice.api_token, address="10.0.0.10")
    assert other_address.status_code == 200


def test_tokens_live_the_configured_minutes(alice, token_server):
    token_server.GENERATOR_REGISTRY_TOKEN_SECONDS = 120
    before = int(time.time())
    found = claims(ask("repository:team-a/app:pull", user="alice", password=alice.api_token), token_server)
    assert before + 120 <= found["exp"] <= int(time.time()) + 120
    assert isinstance(found["aud"], str)  # distribution 2.8 refuses a list


def test_an_expired_token_is_refused_by_its_signature_check(alice, token_server):
    from builds.registry.token_server import farm_signer

    old = farm_signer().sign("alice", [], 60, now=time.time() - 3600)
    cert = x509.load_pem_x509_certificate(token_server.GENERATOR_REGISTRY_TOKEN_CERT.read_bytes())
    with pytest.raises(jwt.ExpiredSignatureError):
        jwt.decode(old["token"], cert.public_key(), algorithms=["ES256"], audience=SERVICE)


def test_a_build_credential_pulls_its_teams_images_and_pushes_its_own_repository_alone(
    alice, teams, token_server, daemon
):
    Namespace.objects.create(team=teams[1], prefix="localhost:5000/shared/", public=True)
    job = BuildJob.objects.create(
        image="localhost:5000/team-a/app:1", dockerfile="FROM scratch", team=teams[0], submitted_by=alice,
        status=BuildJob.Status.BUILDING, daemon=daemon,
    )  # fmt: skip
    password = build_password(job)
    response = ask(
        "repository:team-a/app:pull,push", "repository:team-a/other:pull,push", "repository:team-b/app:pull",
        "repository:shared/base:pull", user=f"build-{job.id}", password=password,
    )  # fmt: skip
    assert access(response, token_server) == {
        "repository:team-a/app": ["pull", "push"],
        "repository:team-a/other": ["pull"],
        "repository:shared/base": ["pull"],
    }
    BuildJob.objects.filter(pk=job.pk).update(status=BuildJob.Status.SUCCEEDED)
    over = ask("repository:team-a/app:pull", user=f"build-{job.id}", password=password)
    assert over.status_code == 401 and "over" in over.json()["details"]
    forged = password[:-3] + ("AAA" if not password.endswith("AAA") else "BBB")
    assert ask("repository:team-a/app:pull", user="x", password=forged).status_code == 401


def test_bad_requests_are_400_naming_the_problem(token_server):
    assert "not a scope" in ask("repository-without-actions").json()["details"]
    assert "unknown service" in ask(service="someone-else").json()["details"]
    assert Client().post("/v2/token").status_code == 405  # BuildKit's OAuth POST falls back to GET


def test_no_token_host_no_tokens(token_server):
    token_server.GENERATOR_REGISTRY_TOKEN_HOST = ""
    assert ask("repository:library/busybox:pull").status_code == 404


def test_staff_make_a_namespace_public_and_a_team_admin_may_not(carol, operator, teams, token_server):
    from tests.teams.test_teams import api_as

    namespace = Namespace.objects.get(prefix="localhost:5000/team-a/")
    refused = api_as(carol).patch(f"/api/v1/namespaces/{namespace.pk}/", {"public": True}, format="json")
    assert refused.status_code == 403
    done = api_as(operator).patch(f"/api/v1/namespaces/{namespace.pk}/", {"public": True}, format="json")
    assert done.status_code == 200 and done.json()["public"] is True
    assert access(ask("repository:team-a/app:pull"), token_server) == {"repository:team-a/app": ["pull"]}


def test_ensureteam_makes_a_public_namespace(operator, capsys):
    from django.core.management import call_command

    call_command(
        "ensureteam", "default", "--namespace", "localhost:5000/", "--public-namespace", "localhost:5000/library"
    )
    assert Namespace.objects.get(prefix="localhost:5000/library/").public
    assert not Namespace.objects.get(prefix="localhost:5000/").public
    assert "public" in capsys.readouterr().out


def test_registrykey_makes_the_key_once_and_prints_its_kid(token_server, tmp_path, capsys):
    from django.core.management import call_command

    token_server.GENERATOR_REGISTRY_TOKEN_KEY = tmp_path / "new" / "k.key"
    token_server.GENERATOR_REGISTRY_TOKEN_CERT = tmp_path / "new" / "k.crt"
    call_command("registrykey")
    first = capsys.readouterr().out
    call_command("registrykey")
    again = capsys.readouterr().out
    assert first.startswith("made") and again.startswith("kept") and first.split("kid ")[1] == again.split("kid ")[1]
    assert (tmp_path / "new" / "k.key").stat().st_mode & 0o777 == 0o600


def test_the_farms_token_header_works_too(alice, token_server):
    response = Client().get(
        "/v2/token", {"scope": "repository:team-a/app:pull"}, HTTP_AUTHORIZATION=f"Token {alice.api_token}"
    )
    assert access(response, token_server) == {"repository:team-a/app": ["pull"]}
    wrong = Client().get("/v2/token", {"scope": "repository:team-a/app:pull"}, HTTP_AUTHORIZATION="Token nope")
    assert wrong.status_code == 401
