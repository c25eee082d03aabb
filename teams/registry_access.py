"""What an account may do in the farm's registry: the token server's policy.

A token request names scopes (`repository:team-a/app:pull,push`,
`registry:catalog:*`); the answer grants their intersection with what the
account may do, and never refuses a scope: what is not granted is left out, and
the registry then answers 401 `insufficient_scope` itself.

- pull: on the namespaces of the account's teams, and on public namespaces
  (anyone, anonymous included);
- push: on the namespaces its teams own (teams/models.py: the longest prefix
  decides), or, for a build, on its own image repository alone;
- staff: pull and push everywhere, and the catalog. The registry cannot filter
  its catalog (`/v2/_catalog` lists every repository or none), so nobody else
  gets it; GET /api/v1/registry/repositories/ lists what the caller may read.
- delete: never, through this server (the farm signs its own tokens, with
  exactly what each of its writes needs: builds/registry/accounts.py).
- no push, for anyone, into a namespace whose team is at or over its registry
  quota (teams/registry_quota.py): the registry itself then refuses the write.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lib.references import InvalidReference, parse_reference
from teams.models import Namespace, Team
from teams.registry_quota import over_quota

PULL, PUSH = "pull", "push"
CATALOG = ("registry", "catalog")
_ACTIONS = re.compile(r"^[a-z*]+(,[a-z*]+)*$")


class BadScope(ValueError):
    pass


@dataclass(frozen=True)
class Scope:
    type: str
    name: str
    actions: tuple[str, ...]


def parse_scopes(values: list[str]) -> list[Scope]:
    """Scope parameters, each one or more space-separated `type:name:actions`
    (a name may hold ':' for a tag-like suffix, so the actions are the last part)."""
    scopes = []
    for value in values:
        for text in value.split():
            kind, _, rest = text.partition(":")
            name, _, actions = rest.rpartition(":")
            if not kind or not name or not _ACTIONS.match(actions):
                raise BadScope(f"{text[:200]!r} is not a scope (type:name:actions, e.g. repository:team-a/app:pull)")
            scopes.append(Scope(kind, name, tuple(dict.fromkeys(actions.split(",")))))
    return scopes


@dataclass(frozen=True)
class Account:
    """Who the token is for. `push_repository` set: a build, which pushes only there."""

    subject: str
    team_ids: frozenset[int] = frozenset()
    staff: bool = False
    push_repository: str | None = None


ANONYMOUS = Account(subject="")


def account_for_user(user) -> Account:
    team_ids = frozenset(Team.objects.of(user).values_list("pk", flat=True))
    return Account(subject=user.get_username(), team_ids=team_ids, staff=bool(user.is_staff))


def granted(account: Account, scopes: list[Scope], host: str) -> list[dict]:
    """The access list for a token: each asked scope cut down to what `account`
    may do in the registry at `host`; scopes left with nothing are left out."""
    access: dict[tuple[str, str], list[str]] = {}
    owners: dict[str, Namespace | None] = {}  # looked up once per request
    for scope in scopes:
        allowed = [a for a in _expanded(scope.actions) if _may(account, scope.type, scope.name, a, host, owners)]
        if PUSH in allowed and _over_quota(scope.name, host, owners):
            allowed.remove(PUSH)
        if scope.type == CATALOG[0] and scope.name == CATALOG[1] and account.staff and "*" in scope.actions:
            allowed = ["*"]
        if allowed:
            known = access.setdefault((scope.type, scope.name), [])
            known += [a for a in allowed if a not in known]
    return [{"type": kind, "name": name, "actions": actions} for (kind, name), actions in access.items()]


def _expanded(actions: tuple[str, ...]) -> list[str]:
    return list(dict.fromkeys(a for action in actions for a in ((PULL, PUSH) if action == "*" else (action,))))


def _may(account: Account, kind: str, name: str, action: str, host: str, owners: dict) -> bool:
    if kind != "repository" or action not in (PULL, PUSH):
        return False
    if account.staff:
        return True
    if account.push_repository is not None and action == PUSH:
        return name == account.push_repository
    if name not in owners:
        owners[name] = Namespace.objects.owning(f"{host}/{name}")
    namespace = owners[name]
    if namespace is None:
        return False
    mine = namespace.team_id in account.team_ids
    if action == PULL:
        return mine or namespace.public
    return mine


def _over_quota(name: str, host: str, owners: dict) -> bool:
    if name not in owners:
        owners[name] = Namespace.objects.owning(f"{host}/{name}")
    namespace = owners[name]
    return namespace is not None and over_quota(namespace.team)


def readable(account: Account, host: str, repositories: list[str]) -> list[str]:
    """Of the registry's `repositories` (paths), those `account` may pull."""
    owners: dict[str, Namespace | None] = {}
    return [name for name in repositories if _may(account, "repository", name, PULL, host, owners)]


# What BuildKit resolves as an image id in the daemon's store (moby builder-next: a
# reference that parses as a digest), with or without its algorithm.
_IMAGE_ID = re.compile(r"(sha256:)?[0-9a-f]{64}")


def read_refusal(team: Team | None, image: str) -> str:
    """Why a build of `team` may not read `image` (a reference its Dockerfile
    names), or '' if it may: in any registry, an image in a namespace that is
    neither the team's nor public is another team's."""
    if _IMAGE_ID.fullmatch(image):  # a daemon finds it among every team's images it holds, by id
        return (
            f"{image} names an image by its id, which reads whatever the daemon holds, any team's: name the "
            "image by its repository"
        )
    try:
        repository = parse_reference(image).repository
    except InvalidReference:
        return ""  # not a reference: the builder says so in its own words
    namespace = Namespace.objects.owning(repository)
    if namespace is None or namespace.public or (team is not None and namespace.team_id == team.pk):
        return ""
    who = f"team {team.slug}" if team else "a build of no team"
    return (
        f"{image} is in namespace {namespace.prefix}, and {who} may not read it: a build reads images of its "
        "own team's namespaces and of public ones"
    )
