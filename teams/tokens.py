"""Team API tokens: made, checked and revoked here.

A key reads `gtt_` and 43 URL-safe characters (256 random bits): the prefix
lets secret scanners and people spot a leaked one. Only its SHA-256 is stored
(a key this random needs no slow hash), with its first characters to tell
tokens apart. The key is shown once, when made.

A team token acts as its team's token user: a user made with the team's first
token, with no password, member (never admin) of that team alone and allowed to
build. So builds/jobs/ownership.py needs no rule of its own for tokens: the token
submits, reads and cancels as a member of its team would, and its builds'
submitter is that user. The API refuses to add the token user to a team or to
change its role (teams/api.py).
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.log import record
from teams.models import Membership, Team, TeamToken

PREFIX = "gtt_"
SHOWN = 8  # characters of the random part kept in clear, after the prefix
LAST_USED_EVERY = timedelta(minutes=1)  # last_used_at is written at most this often


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def is_team_key(key: str) -> bool:
    return key.startswith(PREFIX)


def token_user(team: Team):
    """The user the team's tokens act as, made on first need."""
    if team.token_user_id is not None:
        return team.token_user
    users = get_user_model().objects
    with transaction.atomic():
        team = Team.objects.select_for_update().get(pk=team.pk)
        if team.token_user_id is None:
            name = f"{team.slug} (team token)"  # a space: no sign-up form makes such a name
            if users.filter(username=name).exists():  # a former team's slug
                name = f"{team.slug} (team {team.pk} token)"
            user = users.create(username=name)
            user.set_unusable_password()
            user.save(update_fields=["password"])
            user.user_permissions.add(Permission.objects.get(content_type__app_label="builds", codename="add_buildjob"))
            Membership.objects.create(team=team, user=user, role=Membership.Role.MEMBER)
            team.token_user = user
            team.save(update_fields=["token_user"])
    return team.token_user


def is_token_user(user) -> bool:
    return bool(user and user.is_authenticated) and Team.objects.filter(token_user=user).exists()


def issue(team: Team, name: str, *, created_by=None, expires_at: datetime | None = None) -> tuple[TeamToken, str]:
    """A new token and its key, the only time the key is seen."""
    token_user(team)
    for _ in range(3):
        key = PREFIX + secrets.token_urlsafe(32)
        try:
            with transaction.atomic():
                token = TeamToken.objects.create(
                    team=team,
                    name=name,
                    prefix=key[: len(PREFIX) + SHOWN],
                    key_hash=digest(key),
                    created_by=created_by if created_by is not None and created_by.is_authenticated else None,
                    expires_at=expires_at,
                )
        except IntegrityError:  # the same 256 random bits twice: not in this universe, but not a 500 either
            continue
        record("create", "token", token, actor=created_by, team=team, details={"name": name, "team token": True})
        return token, key
    raise RuntimeError("could not make a unique team token")


def revoke(token: TeamToken, *, actor=None) -> bool:
    """Revokes the token; False if it already was."""
    revoked = TeamToken.objects.filter(pk=token.pk, revoked_at=None).update(revoked_at=timezone.now())
    if revoked:
        token.refresh_from_db(fields=["revoked_at"])
        details = {"name": token.name, "team token": True}
        record("delete", "token", token, actor=actor, team=token.team, details=details)
    return bool(revoked)


def authenticate(key: str):
    """(the token user, None) for a live team key; (None, why) otherwise."""
    token = TeamToken.objects.select_related("team__token_user").filter(key_hash=digest(key)).first()
    now = timezone.now()
    if token is None:
        return None, "invalid API token"
    if token.revoked_at is not None:
        return None, "this team token was revoked"
    if token.expires_at is not None and token.expires_at <= now:
        return None, "this team token has expired"
    user = token.team.token_user
    if user is None or not user.is_active:
        return None, "this team's tokens are disabled (its token user is inactive)"
    if token.last_used_at is None or token.last_used_at <= now - LAST_USED_EVERY:
        TeamToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return user, None
