"""Which account a build pushes with: its team's for that registry
(teams.RegistryCredential), else the farm's (the Registry row's), else none.
The farm's own registry (GENERATOR_REGISTRY_TOKEN_HOST, whose token server the
farm is) takes no password: the farm signs a token for exactly the write at
hand (one repository, an hour at most), never handed to a build.

The runner's push (builds/worker/runner.py) and the multi-platform index's writes
(builds/jobs/multiplatform.py) both ask here. Passwords are stored encrypted
(lib/crypto.py) and are decrypted only here, for the push at hand.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

from django.conf import settings

from builds.models import Registry
from lib import crypto
from lib.references import DOCKER_HUB, DOCKER_HUB_SPELLINGS
from lib.registry_keys import Signer, repository_access
from teams import registry_quota
from teams.models import RegistryCredential

# The farm's own writes: one repository, long enough for a big push's last request.
FARM_TOKEN_SECONDS = 3600


class Account(NamedTuple):
    username: str
    password: str

    def auth_config(self) -> dict[str, str]:
        """As docker's push API takes it."""
        return {"username": self.username, "password": self.password}


def _hosts(host: str) -> list[str]:
    return list(DOCKER_HUB_SPELLINGS) if host == DOCKER_HUB else [host]


def push_account(host: str, team_id: int | None) -> Account | None:
    """The account for pushing to `host` (as `ImageReference.registry` gives it) for a build of `team_id`."""
    if team_id is not None:
        own = RegistryCredential.objects.filter(team_id=team_id, host__in=_hosts(host)).order_by("pk").first()
        if own is not None:
            return Account(own.username, crypto.decrypt(own.password))
    farm = Registry.objects.allowing(host).exclude(username="").order_by("pk").first()
    return Account(farm.username, crypto.decrypt(farm.password)) if farm else None


@functools.cache
def _signer(key_path: str, issuer: str, service: str) -> Signer:
    return Signer(key_path, issuer=issuer, service=service)


def farm_signer() -> Signer:
    """The token server's signer, as settings name it (its key read once per process)."""
    return _signer(
        str(settings.GENERATOR_REGISTRY_TOKEN_KEY),
        settings.GENERATOR_REGISTRY_TOKEN_ISSUER,
        settings.GENERATOR_REGISTRY_TOKEN_SERVICE,
    )


def is_farm_registry(host: str) -> bool:
    return bool(settings.GENERATOR_REGISTRY_TOKEN_HOST) and host == settings.GENERATOR_REGISTRY_TOKEN_HOST


def push_auth(host: str, team_id: int | None, repository: str) -> dict[str, str] | None:
    """Docker's auth config for pushing `repository` (its path in the registry):
    in the farm's registry a token for that repository alone, which the daemon
    sends as it is (`registrytoken`: it never asks the realm, which its sandbox
    does not reach), without push for a team over its quota; elsewhere the account push_account chooses."""
    if is_farm_registry(host):
        # A team at or over its registry quota: no push, so the registry itself refuses the daemon's.
        over = team_id is not None and bool(registry_quota.over_quota_ids([team_id]))
        access = [repository_access(repository, ["pull"] if over else ["pull", "push"])]
        return {"registrytoken": farm_signer().sign("generator", access, FARM_TOKEN_SECONDS)["token"]}
    account = push_account(host, team_id)
    return account.auth_config() if account else None


def pull_auth(host: str, team_id: int | None, repository: str) -> dict[str, str] | None:
    """Docker's auth config for the farm's own pull of `repository` (its path in
    the registry) onto a daemon (a pre-pull: builds/worker/prepull.py): in the
    farm's registry a token to pull that repository alone, sent as it is, as a
    push's; elsewhere the account the team's image was pushed with."""
    if is_farm_registry(host):
        access = [repository_access(repository, ["pull"])]
        return {"registrytoken": farm_signer().sign("generator", access, FARM_TOKEN_SECONDS)["token"]}
    account = push_account(host, team_id)
    return account.auth_config() if account else None


def registry_login(host: str, team_id: int | None) -> dict:
    """RegistryAPI's credentials for the farm's writes to `host` (an image index,
    signatures and attestations)."""
    if is_farm_registry(host):
        return {"token_source": farm_signer().farm_token}
    account = push_account(host, team_id)
    return {"username": account.username, "password": account.password} if account else {}
