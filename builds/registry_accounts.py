"""Which account a build pushes with: its team's for that registry
(teams.RegistryCredential), else the farm's (the Registry row's), else none.

The runner's push (builds/runner.py) and the multi-platform index's writes
(builds/multiplatform.py) both ask here. Passwords are stored encrypted
(builds/secrets.py) and are decrypted only here, for the push at hand.
"""

from __future__ import annotations

from typing import NamedTuple

from teams.models import RegistryCredential

from . import secrets
from .models import Registry
from .references import DOCKER_HUB, DOCKER_HUB_SPELLINGS


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
            return Account(own.username, secrets.decrypt(own.password))
    farm = Registry.objects.allowing(host).exclude(username="").order_by("pk").first()
    return Account(farm.username, secrets.decrypt(farm.password)) if farm else None
