"""Which team a build is for, and who may read, build, retry and cancel what.

- Staff see and do everything.
- A build is for one team: the one its request names (`team`), else its
  repository's, else the team that owns the image's namespace, among the
  submitter's teams. It pushes only into that team's namespaces and builds only
  that team's repositories (403 naming the namespace or repository otherwise).
  A webhook builds for its repository's team. A retry is a new submit by the
  one who retries, for the old build's team, with the same checks.
- Reading a build (its page, log over HTTP or WebSocket, build args, badges) is
  for its team; a build of a public repository is anyone's to read, and
  GENERATOR_PUBLIC_LOGS opens every build. Anyone else gets 404, as for an id
  that does not exist (an anonymous caller is asked to log in instead).
- Cancelling: the submitter, an admin of the build's team, or staff.
- With GENERATOR_ANONYMOUS_BUILDS an anonymous build (only `/b1` takes one)
  pushes where it likes, as the seed's did, for the namespace's team.
"""

from __future__ import annotations

from django.conf import settings
from django.db.models import Exists, OuterRef, Q, QuerySet

from builds.models import BuildJob, Repository
from lib.errors import Forbidden
from teams.models import Membership, Namespace, Team, namespace_refusal, owner_refusal


def is_staff(user) -> bool:
    return bool(user is not None and user.is_authenticated and user.is_staff)


def readable_jobs(user, jobs: QuerySet | None = None) -> QuerySet:
    """The builds `user` may read (anonymous included)."""
    jobs = BuildJob.objects.all() if jobs is None else jobs
    if settings.GENERATOR_PUBLIC_LOGS or is_staff(user):
        return jobs
    public = Q(repository__public=True)
    if user is None or not user.is_authenticated:
        return jobs.filter(public)
    return jobs.filter(public | Q(team__in=Team.objects.of(user).values("pk")))


def readable_repositories(user) -> QuerySet:
    repositories = Repository.objects.all()
    if is_staff(user):
        return repositories
    return repositories.filter(Q(public=True) | Q(team__in=Team.objects.of(user).values("pk")))


def team_repositories(user) -> QuerySet:
    """The repositories `user` may change and build: their teams' (staff: all)."""
    repositories = Repository.objects.all()
    return repositories if is_staff(user) else repositories.filter(team__in=Team.objects.of(user).values("pk"))


def may_cancel(user, job: BuildJob) -> bool:
    if is_staff(user):
        return True
    if user is None or not user.is_authenticated:
        return False
    return job.submitted_by_id == user.pk or (job.team is not None and job.team.has_admin(user))


def team_for_build(user, requested: str, image_repository: str, repository: Repository | None) -> Team | None:
    """The team a build is for, after checking that it may push `image_repository`
    and build `repository`. Raises Forbidden with the reason."""
    if user is None or not user.is_authenticated:
        owner = Namespace.objects.owning(image_repository)
        return owner.team if owner else None  # GENERATOR_ANONYMOUS_BUILDS: the seed's open farm
    staff = is_staff(user)
    # Whether the user is in the owner's team comes with the owner: one query, not two.
    member = Exists(Membership.objects.filter(team=OuterRef("team_id"), user=user))
    owner = Namespace.objects.annotate(submitter_is_member=member).owning(image_repository)
    mine = Team.objects.all() if staff else Team.objects.of(user)
    if requested:
        team = mine.filter(slug=requested).first()
        if team is None:
            raise Forbidden(f"you are not a member of a team named {requested!r}")
    elif repository is not None and (staff or mine.filter(pk=repository.team_id).exists()):
        team = repository.team
    elif owner is not None and (staff or owner.submitter_is_member):
        team = owner.team
    elif staff:
        team = None
    else:
        teams = list(mine[:2])
        if not teams:
            raise Forbidden("you are in no team: a team's admin or an operator adds you to one")
        team = teams[0] if len(teams) == 1 else None
    if staff:
        return team
    if repository is not None and repository.team_id != (team.pk if team else None):
        raise Forbidden(f"repository {repository.full_name} is not your team's: only its own team builds it")
    if refusal := owner_refusal(team, image_repository, owner):
        raise Forbidden(refusal)
    return team


def check_push_build(repository: Repository, image_repository: str) -> None:
    """A webhook builds for its repository's team, into that team's namespaces
    (the namespace may have moved since the repository was saved)."""
    if repository.team_id is not None and (refusal := namespace_refusal(repository.team, image_repository)):
        raise Forbidden(refusal)
