"""A team brings its own signing key (`/api/v1/teams/SLUG/signing-key/`): its
admins set it, it is stored encrypted and never answered, its builds are
signed with it (builds/provenance/signing.py `key_for`), and retiring it gives the
farm's key back."""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from audit.models import AuditEvent
from builds.models import SigningKey
from builds.provenance import dsse, signing
from tests.teams.test_teams import api_as


def pem_of(key) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def test_a_team_admin_brings_a_key_that_signs_its_builds_and_is_never_answered(carol, teams):
    team_a, team_b = teams
    brought = ec.generate_private_key(ec.SECP256R1())
    private = pem_of(brought)
    answer = api_as(carol).put("/api/v1/teams/team-a/signing-key/", {"private_key": private}, format="json")
    assert answer.status_code == 201, answer.content
    assert answer.json()["key_id"] == dsse.key_id(brought.public_key())
    assert "PRIVATE" not in answer.content.decode()
    stored = SigningKey.objects.get(scope=signing.team_scope(team_a.pk))
    assert private not in stored.private_key and signing.private_key(stored).private_numbers() == (
        brought.private_numbers()
    )
    assert signing.key_for(team_a.pk).pk == stored.pk
    assert signing.key_for(team_b.pk).scope == signing.FARM  # another team's builds: the farm's key
    shown = api_as(carol).get("/api/v1/teams/team-a/signing-key/")
    assert shown.status_code == 200 and shown.json()["public_key"] == stored.public_key
    assert "PRIVATE" not in shown.content.decode()
    assert not any(private in f"{e.object_repr} {e.details}" for e in AuditEvent.objects.all())

    assert api_as(carol).delete("/api/v1/teams/team-a/signing-key/").status_code == 204
    assert signing.key_for(team_a.pk).scope == signing.FARM
    assert api_as(carol).get("/api/v1/teams/team-a/signing-key/").status_code == 404
    assert [e.action for e in AuditEvent.objects.filter(kind="signing key").order_by("at")] == ["create", "delete"]


def test_a_wrong_key_is_refused_naming_why(carol, teams):
    p384 = ec.generate_private_key(ec.SECP384R1())
    answer = api_as(carol).put("/api/v1/teams/team-a/signing-key/", {"private_key": pem_of(p384)}, format="json")
    assert answer.status_code == 400 and "ECDSA P-256" in answer.content.decode()
    garbage = api_as(carol).put("/api/v1/teams/team-a/signing-key/", {"private_key": "hello"}, format="json")
    assert garbage.status_code == 400 and "not an unencrypted PEM private key" in garbage.content.decode()
    assert not SigningKey.objects.exclude(scope=signing.FARM).exists()


def test_a_member_may_not_bring_a_key_and_an_outsider_gets_404(alice, bob, teams):
    body = {"private_key": pem_of(ec.generate_private_key(ec.SECP256R1()))}
    assert api_as(alice).put("/api/v1/teams/team-a/signing-key/", body, format="json").status_code == 403
    assert api_as(bob).put("/api/v1/teams/team-a/signing-key/", body, format="json").status_code == 404
    assert not SigningKey.objects.exists()
