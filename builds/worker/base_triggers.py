"""The ONBUILD triggers of a build's base images, checked like its Dockerfile.

A trigger in an image's config runs at the start of every stage built FROM it,
in that build, with that build's access to the daemon: `ONBUILD COPY
--from=<another team's image>` in a base a team pushed by hand would copy
whatever that daemon holds under the name (BuildKit prefers a local image to a
pull, so the registry's refusal never comes). The gate (builds/worker/builders.py)
reads what the triggers of each image the Dockerfile names read, and refuses the
build as it refuses the Dockerfile's own references.

Where the triggers come from is where BuildKit takes the image from: the
daemon's copy if it holds one, else the farm's own registry. A base in any
other registry is not read here (the worker may not reach it, and a slow
registry would hold every build): docs/security.md says what that leaves.
"""

from __future__ import annotations

import json

from builds.engine.docker import EngineError, EngineSession
from builds.registry.accounts import is_farm_registry, registry_login
from builds.registry.client import DOCKER_LIST, OCI_INDEX, RegistryAPI, RegistryError, repository_path
from lib.references import InvalidReference, parse_reference

LOOKUP_SECONDS = 5
MAX_CONFIG_BYTES = 4 << 20
MAX_INDEX_ENTRIES = 64  # an index is read whole (the build may take any of its platforms): a few, not thousands


class Unreadable(Exception):
    """The base's triggers cannot be read within the bounds: the build may not run them unseen."""


def triggers_of(engine: EngineSession, image: str, team_id: int | None) -> list[str]:
    """The triggers BuildKit would run from `image` for this build; Unreadable
    where the farm's registry holds more than it reads."""
    try:
        held = engine.onbuild(image)
    except EngineError:
        held = None
    if held is not None:
        return held
    try:
        reference = parse_reference(image)
    except InvalidReference:
        return []
    host = reference.domain or ""
    if not is_farm_registry(host):
        return []
    name = repository_path(reference.repository, host)
    try:
        with RegistryAPI(host, **registry_login(host, team_id), timeout=LOOKUP_SECONDS) as api:
            return _stored_triggers(api, name, reference.digest or reference.tag or "latest")
    except (RegistryError, ValueError, KeyError, TypeError):
        return []  # nothing to read: BuildKit's pull fails the same way


def _stored_triggers(api: RegistryAPI, name: str, reference: str, depth: int = 0) -> list[str]:
    stored = api.stored(name, reference)
    if stored is None:
        return []
    media_type, body = stored
    document = json.loads(body)
    if media_type in (DOCKER_LIST, OCI_INDEX) or "manifests" in document:  # every platform's: the build may take any
        if depth:
            return []
        if len(document["manifests"]) > MAX_INDEX_ENTRIES:
            raise Unreadable(f"its index lists more than {MAX_INDEX_ENTRIES} manifests")
        found = [t for entry in document["manifests"] for t in _stored_triggers(api, name, entry["digest"], 1)]
        return list(dict.fromkeys(found))
    config = json.loads(api.blob(name, document["config"]["digest"], max_bytes=MAX_CONFIG_BYTES))
    return list((config.get("config") or {}).get("OnBuild") or [])
