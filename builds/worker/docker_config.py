"""Each BuildKit build's own DOCKER_CONFIG: the registry credentials its pulls
(`FROM`, `COPY --from`, `RUN --mount=...,from=`, `--cache-from`) go out with.

- The farm's registry (GENERATOR_REGISTRY_TOKEN_HOST): a build credential, good
  only while this attempt of this build runs. The docker CLI trades it at the
  token server (builds/registry/token_server.py) for tokens that pull what the build's
  team may read and push only the build's own image repository.
- Any other registry the team has an account for (teams.RegistryCredential):
  that account, so `FROM private.registry.example/team/base` builds.

The folder is 0700, its config.json 0600, and both are gone when the build
ends, whatever happened. The farm's own account for a registry (builds.Registry)
is for pushes, and reaches a build's pulls only where an operator said so for
that registry (`builds_pull_with_farm_account`: a shared mirror or base-image
registry) and the team has no account of its own there; never a fork's.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings
from django.core import signing

from builds.models import BuildJob, Registry
from builds.registry.accounts import farm_signer
from builds.registry.client import repository_path
from lib import crypto
from lib.references import DOCKER_HUB, InvalidReference, parse_reference
from teams.models import RegistryCredential
from teams.registry_access import PULL, Account, Scope, granted

PREFIX = "gbc_"  # no API token starts so: the token server tells a build's credential by it
_SALT = "generator.builds.docker_config"
# A build credential outlives no build: it is refused once its attempt is over;
# this is a ceiling for a signature that leaked from a build that never ended.
MAX_AGE_SECONDS = 24 * 3600
DOCKER_HUB_KEY = "https://index.docker.io/v1/"
TOKEN_SECONDS = 3600  # a classic build's pull token: its FROM pulls may come late in a long build


def is_build_password(password: str) -> bool:
    return password.startswith(PREFIX)


def build_password(job: BuildJob) -> str:
    return PREFIX + signing.dumps({"job": job.id, "attempt": job.attempt}, salt=_SALT)


def account_for_build_password(password: str) -> tuple[Account | None, str]:
    """The registry account of the running build the credential was made for."""
    try:
        claim = signing.loads(password.removeprefix(PREFIX), salt=_SALT, max_age=MAX_AGE_SECONDS)
        job_id, attempt = str(claim["job"]), int(claim["attempt"])
    except (signing.BadSignature, KeyError, TypeError, ValueError):
        return None, "invalid build credential"
    job = BuildJob.objects.filter(pk=job_id).only("id", "attempt", "status", "team_id", "image", "fork").first()
    if job is None or job.attempt != attempt or job.status not in (BuildJob.Status.BUILDING, BuildJob.Status.PUSHING):
        return None, "this build credential's build is over"
    return build_account(job), ""


def build_account(job: BuildJob) -> Account:
    """Pull what the build's team may read; push its own image repository alone.
    A fork's pull request: public pulls only, no push (it is never pushed)."""
    host = settings.GENERATOR_REGISTRY_TOKEN_HOST
    if job.fork:
        return Account(subject=f"build {job.id} (a fork's)")
    return Account(
        subject=f"build {job.id}",
        team_ids=frozenset([job.team_id] if job.team_id else []),
        push_repository=repository_path(job.image_repository, host),
    )


def pull_accounts(job: BuildJob) -> dict[str, tuple[str, str]]:
    """Registry host (config.json's spelling) -> (username, password) for the
    build's pulls outside the farm's own registry: the farm's account where the
    operator lets builds pull with it, its team's own over it. A fork's pull
    request gets none."""
    if job.fork:
        return {}
    found = {}
    for registry in Registry.objects.filter(builds_pull_with_farm_account=True).exclude(username=""):
        found[_config_key(registry.host)] = (registry.username, crypto.decrypt(registry.password))
    if job.team_id is not None:
        for account in RegistryCredential.objects.filter(team_id=job.team_id):
            found[_config_key(account.host)] = (account.username, crypto.decrypt(account.password))
    return found


def _config_key(host: str) -> str:
    return DOCKER_HUB_KEY if host == DOCKER_HUB else host


def auths(job: BuildJob) -> dict[str, dict[str, str]]:
    """config.json's `auths` for the build: the farm's registry, then the accounts elsewhere (pull_accounts)."""
    entries = {key: _entry(username, password) for key, (username, password) in pull_accounts(job).items()}
    if host := settings.GENERATOR_REGISTRY_TOKEN_HOST:
        entries[host] = _entry(f"build-{job.id}", build_password(job))
    return entries


def classic_registry_config(job: BuildJob, images: list[str]) -> dict[str, dict[str, str]]:
    """The classic builder's accounts for its pulls (Docker's X-Registry-Config):
    the daemon pulls itself, and its sandbox does not reach the token server, so
    for the farm's registry a token the farm signs for the Dockerfile's images
    there that the team may read (`registrytoken`: the daemon sends it as it is);
    the accounts elsewhere (pull_accounts)."""
    config = {key: {"username": user, "password": password} for key, (user, password) in pull_accounts(job).items()}
    host = settings.GENERATOR_REGISTRY_TOKEN_HOST
    names = []
    for image in images:
        try:
            reference = parse_reference(image)
        except InvalidReference:
            continue
        if host and reference.registry == host:
            names.append(repository_path(reference.repository, host))
    access = granted(build_account(job), [Scope("repository", name, (PULL,)) for name in names], host)
    if access:
        config[host] = {"registrytoken": farm_signer().sign(f"build {job.id}", access, TOKEN_SECONDS)["token"]}
    return config


def _entry(username: str, password: str) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{username}:{password}".encode()).decode()}


@contextmanager
def docker_config(job: BuildJob) -> Iterator[str]:
    """A DOCKER_CONFIG folder holding the build's credentials, removed on leaving."""
    folder = tempfile.mkdtemp(prefix=f"docker-config-{job.id}-")  # 0700
    try:
        fd = os.open(os.path.join(folder, "config.json"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            json.dump({"auths": auths(job)}, file)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
