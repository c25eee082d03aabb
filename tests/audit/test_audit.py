"""The audit log (audit/): who submitted, cancelled, retried, changed a
repository, a secret, a deploy key, a token, a team or the pool, and from where;
never a secret's value; read-only in admin; pruned after its retention.

Team A owns localhost:5000/team-a/; alice is in it, carol is its admin, bob is
in team B (tests/conftest.py).
"""

from __future__ import annotations

import base64
import io
from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.core import serializers
from django.core.management import call_command
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from audit.log import prune
from audit.models import AuditEvent
from builds.jobs.services import submit_push_build
from builds.models import BuildJob, Repository
from pool.models import DockerDaemon
from tests.builds.sources.test_deploy_keys import REPOSITORY, admin_form, key_body
from tests.ssh_server import keygen

DOCKERFILE = "FROM busybox\nRUN echo hi\n"
SECRET = "s3cr3t-value-that-must-not-be-kept"


@pytest.fixture
def deploy_key(tmp_path) -> str:
    return keygen(tmp_path / "deploy")[0]


def api_as(user) -> APIClient:
    api = APIClient(REMOTE_ADDR="203.0.113.7")
    api.credentials(HTTP_AUTHORIZATION=f"Token {user.api_token}")
    return api


def events(**filters) -> list[AuditEvent]:
    """The events asked for; without a kind, all but tokens (each user fixture makes one)."""
    rows = AuditEvent.objects.filter(**filters)
    if "kind" not in filters:
        rows = rows.exclude(kind="token")
    return list(rows.order_by("id"))


def everything_kept() -> str:
    """Every audit row, every field, as text: where a secret must not be."""
    return serializers.serialize("json", AuditEvent.objects.all())


def test_a_build_submitted_cancelled_and_retried_is_recorded_with_who_and_where(alice, daemon, teams):
    api = api_as(alice)
    made = api.post(
        "/api/v1/builds/", {"image": "localhost:5000/team-a/app:1", "dockerfile": DOCKERFILE}, format="json"
    )
    job_id = made.json()["id"]
    assert api.post(f"/api/v1/builds/{job_id}/cancel/").status_code == 200
    retried = api.post(f"/api/v1/builds/{job_id}/retry/").json()["id"]
    submit, cancel, retry = events(kind="build")
    assert (submit.action, submit.object_id, submit.actor, submit.team) == ("submit", job_id, alice, "team-a")
    assert submit.remote_address == "203.0.113.7" and submit.details == {"image": "localhost:5000/team-a/app:1"}
    assert (cancel.action, cancel.details) == ("cancel", {"outcome": "cancelled"})
    assert (retry.action, retry.object_id, retry.details["retry_of"]) == ("retry", retried, job_id)


def test_a_b1_submit_names_its_token_user(client, alice, daemon, teams):
    encoded = base64.b64encode(DOCKERFILE.encode()).decode()
    response = client.get(
        "/b1/build",
        {"imagename": "localhost:5000/team-a/app:b1", "dockerfile": encoded},
        headers={"Authorization": f"Token {alice.api_token}"},
    )
    [event] = events(kind="build")
    assert (event.object_id, event.actor_name, event.remote_address) == (
        response.content.decode(),
        "alice",
        "127.0.0.1",
    )


def test_an_outsider_refused_leaves_no_event_but_a_build_of_a_push_does(bob, alice, daemon, teams):
    # bob may not cancel team A's build (404): nothing happened, nothing is recorded.
    job = BuildJob.objects.create(image="localhost:5000/team-a/app:1", dockerfile=DOCKERFILE, team=teams[0])
    assert api_as(bob).post(f"/api/v1/builds/{job.id}/cancel/").status_code == 404
    assert not events(kind="build")
    repository = Repository.objects.create(
        full_name="team-a/app", clone_url="https://github.com/team-a/app.git", webhook_secret="hook",
        image="localhost:5000/team-a/app", team=teams[0],
    )  # fmt: skip
    pushed = submit_push_build(repository=repository, ref="refs/heads/main", sha="a" * 40, tags=["main"])
    [event] = events(kind="build")
    assert (event.object_id, event.actor, event.team, event.remote_address) == (pushed.id, None, "team-a", "")


def test_repository_secret_and_deploy_key_changes_over_rest_name_what_changed_never_a_value(operator, deploy_key):
    api = api_as(operator)
    body = {**REPOSITORY, "access_token": "ghp_" + "x" * 36, "secrets": {"NPM_TOKEN": SECRET}}
    made = api.post("/api/v1/repositories/", {**body, "deploy_key": deploy_key}, format="json")
    assert made.status_code == 201, made.content
    repository_id = str(made.json()["id"])
    api.patch(f"/api/v1/repositories/{repository_id}/", {"secrets": {"NPM_TOKEN": ""}}, format="json")
    api.delete(f"/api/v1/repositories/{repository_id}/")
    kinds = [(e.action, e.kind, e.object_id) for e in events()]
    assert kinds == [
        ("create", "repository", repository_id),
        ("change", "deploy key", repository_id),
        ("change", "secret", repository_id),
        ("change", "repository", repository_id),
        ("change", "secret", repository_id),
        ("delete", "repository", repository_id),
    ]
    assert events(kind="secret")[0].details == {"names": ["NPM_TOKEN"]}
    assert "access_token" in events(kind="repository")[0].details["fields"]
    kept = everything_kept()
    assert SECRET not in kept and "ghp_" not in kept and key_body(deploy_key)[:20] not in kept


def test_admin_changes_to_a_repository_its_secrets_and_deploy_key_are_recorded(client, operator, deploy_key):
    client.force_login(operator)
    form = admin_form(new_deploy_key=deploy_key)
    form.update({"secrets-TOTAL_FORMS": "1", "secrets-0-name": "API_KEY", "secrets-0-value": SECRET})
    assert client.post("/admin/builds/repository/add/", form, REMOTE_ADDR="198.51.100.2").status_code == 302
    got = [(e.action, e.kind, e.actor_name, e.remote_address) for e in events()]
    assert got == [
        ("create", "repository", "operator", "198.51.100.2"),
        ("change", "deploy key", "operator", "198.51.100.2"),
        ("create", "secret", "operator", "198.51.100.2"),
    ]
    assert events(kind="secret")[0].object_repr == "API_KEY"
    assert SECRET not in everything_kept() and key_body(deploy_key)[:20] not in everything_kept()


def test_team_members_and_namespaces_changed_over_rest_are_recorded(operator, carol, dave, teams):
    api_as(carol).post("/api/v1/teams/team-a/members/", {"username": "dave", "role": "admin"}, format="json")
    api_as(carol).delete("/api/v1/teams/team-a/members/dave/")
    api_as(operator).patch("/api/v1/teams/team-a/", {"max_concurrent_builds": 2}, format="json")
    api_as(operator).post("/api/v1/namespaces/", {"team": "team-a", "prefix": "localhost:5000/more"}, format="json")
    got = [(e.action, e.kind, e.actor_name, e.team, e.details) for e in events()]
    assert got == [
        ("change", "membership", "carol", "team-a", {"members": ["dave"], "role": "admin"}),
        ("delete", "membership", "carol", "team-a", {"members": ["dave"]}),
        ("change", "team", "operator", "team-a", {"fields": ["max_concurrent_builds"]}),
        ("create", "namespace", "operator", "team-a", {"fields": ["prefix", "team"]}),
    ]


def test_admin_changes_to_a_team_and_its_members_are_recorded(client, operator, alice):
    client.force_login(operator)
    form = {
        "name": "Team C", "slug": "team-c", "over_limit": "",
        "memberships-TOTAL_FORMS": "1", "memberships-INITIAL_FORMS": "0",
        "memberships-0-user": str(alice.pk), "memberships-0-role": "admin",
        "namespaces-TOTAL_FORMS": "0", "namespaces-INITIAL_FORMS": "0",
    }  # fmt: skip
    assert client.post("/admin/teams/team/add/", form).status_code == 302
    assert [(e.action, e.kind, e.team) for e in events()] == [
        ("create", "team", "team-c"),
        ("create", "membership", "team-c"),
    ]


def test_pool_changes_are_recorded_from_rest_and_admin_actions(client, operator):
    api = api_as(operator)
    made = api.post("/api/v1/daemons/", {"name": "d1", "url": "unix:///run/d1.sock", "capacity": 2}, format="json")
    assert made.status_code == 201, made.content
    api.post(f"/api/v1/daemons/{made.json()['id']}/drain/")
    client.force_login(operator)
    client.post("/admin/pool/dockerdaemon/", {"action": "disable", "_selected_action": [made.json()["id"]]})
    got = [(e.action, e.kind, e.object_repr, e.details) for e in events()]
    assert got[0][:3] == ("create", "daemon", "d1")
    assert got[1:] == [
        ("change", "daemon", "d1", {"fields": ["draining"]}),
        ("change", "daemon", "d1", {"fields": ["enabled"]}),
    ]
    assert not DockerDaemon.objects.get().enabled


def test_tokens_made_and_revoked_are_recorded_without_their_key(operator):
    Token.objects.filter(user=operator).delete()
    call_command("createtoken", "operator", stdout=io.StringIO())
    made = list(Token.objects.values_list("key", flat=True))
    Token.objects.filter(user=operator).delete()
    kinds = [(e.action, e.kind, e.object_repr, e.object_id) for e in events(kind="token")]
    assert kinds[-3:] == [
        ("delete", "token", "API token of operator", ""),
        ("create", "token", "API token of operator", ""),
        ("delete", "token", "API token of operator", ""),
    ]
    assert made and all(token not in everything_kept() for token in made)


def test_the_audit_log_is_read_only_in_admin_and_for_staff_only(client, operator, alice, daemon, teams):
    api_as(alice).post(
        "/api/v1/builds/", {"image": "localhost:5000/team-a/app:1", "dockerfile": DOCKERFILE}, format="json"
    )
    event = events(kind="build")[0]
    client.force_login(operator)
    assert "alice" in client.get("/admin/audit/auditevent/").content.decode()
    assert client.get("/admin/audit/auditevent/add/").status_code == 403
    page = client.get(f"/admin/audit/auditevent/{event.pk}/change/").content.decode()
    assert 'name="_save"' not in page  # a view, not a form
    client.post(f"/admin/audit/auditevent/{event.pk}/change/", {"action": "delete", "kind": "x"})
    assert client.get(f"/admin/audit/auditevent/{event.pk}/delete/").status_code == 403
    assert AuditEvent.objects.get(pk=event.pk).action == "submit"
    client.force_login(alice)  # not staff: no admin at all
    assert client.get("/admin/audit/auditevent/").status_code == 302


def test_events_older_than_the_retention_are_pruned_by_beat(db, settings):
    settings.GENERATOR_AUDIT_RETENTION_DAYS = 30
    old = AuditEvent.objects.create(action="submit", kind="build")
    new = AuditEvent.objects.create(action="submit", kind="build")
    AuditEvent.objects.filter(pk=old.pk).update(at=timezone.now() - timedelta(days=31))
    assert prune() == 1
    assert list(AuditEvent.objects.values_list("pk", flat=True)) == [new.pk]
    assert django_settings.CELERY_BEAT_SCHEDULE["prune-audit"]["task"] == "audit.prune"
    from generator_site.celery import app

    app.loader.import_default_modules()
    assert "audit.prune" in app.tasks


def test_the_operators_management_commands_are_recorded_as_who_ran_them(db, tmp_path):
    """make up's commands change the pool, the registries and teams from a shell:
    the events name the command, the OS user and the host; a rerun that changes
    nothing records nothing."""
    pool = tmp_path / "pool.json"
    pool.write_text('{"docker": [{"url": "127.0.0.1", "port": "19000"}]}')
    for _ in range(2):
        call_command("loadpool", str(pool), stdout=io.StringIO())
        call_command("allowregistry", "localhost:5000", stdout=io.StringIO())
        call_command("ensureadmin", "--password-file", str(tmp_path / "pw"), stdout=io.StringIO())
        call_command(
            "ensureteam", "crew", "--namespace", "localhost:5000/crew/", "--admin", "admin", stdout=io.StringIO()
        )
    pool.write_text('{"docker": [{"url": "127.0.0.1", "port": "19000", "capacity": 3}]}')
    call_command("loadpool", str(pool), stdout=io.StringIO())

    events = list(AuditEvent.objects.exclude(kind="token").order_by("id"))
    assert [(e.action, e.kind) for e in events] == [
        ("create", "daemon"),
        ("create", "registry"),
        ("create", "user"),
        ("create", "team"),
        ("create", "namespace"),
        ("create", "membership"),
        ("change", "daemon"),
    ]
    assert all(e.actor_name.startswith("manage.py ") and "@" in e.actor_name for e in events)
    assert events[0].actor_name.startswith("manage.py loadpool (")
    assert events[-1].details == {"fields": ["capacity"]}
    assert events[3].team == events[4].team == events[5].team == "crew"
    assert events[5].details == {"members": ["admin"], "role": "admin"}
