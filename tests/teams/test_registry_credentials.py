"""A team's own registry accounts (teams.RegistryCredential) and the farm's
(builds.Registry): both encrypted at rest, write-only, and a build pushes with
its team's account over the farm's (builds/registry/accounts.py). The farm's
registry has no auth, so the push's credentials are checked here, not there."""

from __future__ import annotations

import importlib
from types import SimpleNamespace

from cryptography.fernet import Fernet
from django.apps import apps
from django.core.management import call_command

from audit.models import AuditEvent
from builds.engine.docker import PushResult
from builds.jobs import multiplatform
from builds.models import BuildJob, Registry
from builds.registry.accounts import Account, push_account
from builds.worker import attestations, runner
from lib import crypto
from lib.references import parse_build_target
from teams.models import RegistryCredential
from tests.teams.test_teams import api_as

PASSWORD = "team-a-registry-password"


def set_credential(user, slug: str = "team-a", **fields):
    body = {"host": "registry.example.com", "username": "team-a-bot", "password": PASSWORD, **fields}
    return api_as(user).post(f"/api/v1/teams/{slug}/registry-credentials/", body, format="json")


def credential(team, host: str, username: str, password: str) -> RegistryCredential:
    return RegistryCredential.objects.create(team=team, host=host, username=username, password=crypto.encrypt(password))


def test_a_team_admin_sets_a_credential_that_is_never_answered_and_stored_encrypted(carol, teams):
    made = set_credential(carol)
    assert made.status_code == 201 and "password" not in made.json() and PASSWORD not in made.content.decode()
    assert made.json()["host"] == "registry.example.com" and made.json()["username"] == "team-a-bot"
    listed = api_as(carol).get("/api/v1/teams/team-a/registry-credentials/")
    assert listed.status_code == 200 and PASSWORD not in listed.content.decode()
    stored = RegistryCredential.objects.get().password
    assert PASSWORD not in stored and crypto.decrypt(stored) == PASSWORD
    replaced = set_credential(carol, username="other", password="new-password")
    assert replaced.status_code == 200 and RegistryCredential.objects.count() == 1
    assert crypto.decrypt(RegistryCredential.objects.get().password) == "new-password"
    events = [(e.action, e.kind, e.team) for e in AuditEvent.objects.filter(kind="registry credential")]
    assert sorted(events) == [("change", "registry credential", "team-a"), ("create", "registry credential", "team-a")]
    assert not any(PASSWORD in f"{e.object_repr} {e.details}" for e in AuditEvent.objects.all())
    removed = api_as(carol).delete(f"/api/v1/teams/team-a/registry-credentials/{made.json()['id']}/")
    assert removed.status_code == 204 and not RegistryCredential.objects.exists()


def test_a_member_may_not_set_credentials_and_an_outsider_gets_404(alice, bob, teams):
    assert set_credential(alice).status_code == 403
    assert set_credential(bob).status_code == 404
    assert api_as(alice).get("/api/v1/teams/team-a/registry-credentials/").status_code == 403
    assert not RegistryCredential.objects.exists()


def test_a_credential_needs_a_password_and_a_real_host(carol, teams):
    assert "password" in set_credential(carol, password="").json()
    assert "host" in set_credential(carol, host="http://nope/").json()


def test_the_teams_account_wins_over_the_farms_for_its_builds_only(teams):
    a, b = teams
    Registry.objects.create(host="registry.example.com", username="farm", password=crypto.encrypt("farm-password"))
    credential(a, "registry.example.com", "a", "a-pw")
    assert push_account("registry.example.com", a.pk) == Account("a", "a-pw")
    assert push_account("registry.example.com", b.pk) == Account("farm", "farm-password")
    assert push_account("registry.example.com", None) == Account("farm", "farm-password")
    assert push_account("other.example.com", a.pk) is None
    credential(b, "docker.io", "b", "b-pw")
    assert push_account("docker.io", b.pk) == Account("b", "b-pw")


class _Log:
    def write(self, line: str) -> None:
        pass

    def pump(self, produce, *, tick, abort=None):
        return produce(lambda line: None)


def test_the_runner_pushes_with_the_builds_teams_account(teams):
    a, b = teams
    credential(a, "registry.example.com", "a", "a-pw")
    sent = []

    def push(repository, tag, *, on_line, credentials):
        sent.append(credentials)
        return PushResult("sha256:" + "0" * 64, 1)

    session = SimpleNamespace(push=push, abort=lambda: None)
    target = parse_build_target("registry.example.com/team-a/app:1")
    for team_id in (a.pk, b.pk):
        runner._push(session, target, _Log(), SimpleNamespace(tick=lambda: None), "d1", team_id)
    assert sent == [{"username": "a", "password": "a-pw"}, None]


def test_the_multiplatform_index_is_written_with_the_teams_account(teams, monkeypatch):
    a, _ = teams
    credential(a, "registry.example.com", "a", "a-pw")
    opened, ended = [], []

    class API:
        def __init__(self, host, *, username, password):
            opened.append((host, username, password))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def manifest(self, name, digest):
            return digest

        def stored(self, name, tag):
            return None

        def put_index(self, name, tag, entries):
            return "sha256:" + "2" * 64

        def push_blob(self, name, data):
            pass

        def put_manifest(self, name, tag, media_type, body):
            opened.append(("put_manifest", tag))

    monkeypatch.setattr(multiplatform, "RegistryAPI", API)
    monkeypatch.setattr(attestations, "RegistryAPI", API)  # the index's signature, written as the team too
    monkeypatch.setattr(multiplatform, "_end", lambda parent_id, status, line, **fields: ended.append(status))
    parent = BuildJob.objects.create(
        image="registry.example.com/team-a/app:1", dockerfile="FROM scratch\n", team=a, platforms=["linux/amd64"]
    )
    child = SimpleNamespace(id="c" * 32, digest="sha256:" + "1" * 64, platform="linux/amd64")
    multiplatform._publish_index(parent, [child])
    assert ended == ["succeeded"]
    signature, attestation = f"sha256-{'2' * 64}.sig", f"sha256-{'2' * 64}.att"
    account = ("registry.example.com", "a", "a-pw")
    # The index's session, then its signature's (one or more at once, builds/registry/parallel.py): all as the team.
    sessions = [entry for entry in opened if entry[0] != "put_manifest"]
    assert len(sessions) >= 2 and set(sessions) == {account}
    assert sorted(entry for entry in opened if entry[0] == "put_manifest") == [
        ("put_manifest", attestation),
        ("put_manifest", signature),
    ]


def test_existing_registry_passwords_are_encrypted_by_the_migration(db):
    row = Registry.objects.create(host="old.example.com", username="u", password="in-clear")
    Registry.objects.create(host="open.example.com")
    migration = importlib.import_module("builds.migrations.0022_registry_passwords_encrypted")
    migration.encrypt_passwords(apps, None)
    row.refresh_from_db()
    assert row.password != "in-clear" and crypto.decrypt(row.password) == "in-clear"
    assert Registry.objects.get(host="open.example.com").password == ""
    migration.decrypt_passwords(apps, None)
    row.refresh_from_db()
    assert row.password == "in-clear"


def test_rotatesecrets_re_encrypts_registry_passwords(teams, settings):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.GENERATOR_SECRETS_KEYS = [old]
    Registry.objects.create(host="registry.example.com", username="farm", password=crypto.encrypt("farm-pw"))
    credential(teams[0], "r.example", "a", "a-pw")
    settings.GENERATOR_SECRETS_KEYS = [new, old]
    call_command("rotatesecrets")
    settings.GENERATOR_SECRETS_KEYS = [new]
    assert push_account("registry.example.com", None) == Account("farm", "farm-pw")
    assert push_account("r.example", teams[0].pk) == Account("a", "a-pw")


def test_admin_takes_a_teams_password_write_only_and_encrypted(client, operator, teams):
    client.force_login(operator)
    form = {"team": teams[0].pk, "host": "registry.example.com", "username": "a", "password": PASSWORD}
    assert client.post("/admin/teams/registrycredential/add/", form).status_code == 302
    credential = RegistryCredential.objects.get()
    assert crypto.decrypt(credential.password) == PASSWORD
    page = client.get(f"/admin/teams/registrycredential/{credential.pk}/change/").content.decode()
    assert PASSWORD not in page and credential.password not in page
    kept = client.post(f"/admin/teams/registrycredential/{credential.pk}/change/", {**form, "password": ""})
    assert kept.status_code == 302
    assert crypto.decrypt(RegistryCredential.objects.get().password) == PASSWORD
