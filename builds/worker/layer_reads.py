"""The SBOM's contents of an image just pushed, read from the registry's copy,
layer by layer (issue 26): the manifest by its digest (a platform's, if the
digest names an index), then each layer's contribution
(builds/provenance/layers.py), merged as overlay stacks them.

Why from the registry and not the daemon: the daemon that pushed is the one
the push needs; an export of a container there (create, export, rm) slowed
the push and outlasted it. A base image's layers are the same in every build
of it: each layer's contribution is kept per team (builds/worker/layer_cache.py),
so a build reads only the layers it made.

Trust: the manifest's bytes must hash to the digest the push reported, and a
layer's streamed bytes to the digest the manifest names, before what they gave
is used or kept; a mismatch raises RegistryError (the attestation fails,
saying so). Bounds: GENERATOR_SBOM_MAX_BYTES and GENERATOR_SBOM_SECONDS over
the bytes read from the registry (sbom.Budget), the build's heartbeat on every
chunk (a cancel stops the read); a read stopped by them, or a layer of a
media type not read here, gives Contents marked incomplete with the reason.
Credentials: the farm's writes' to that registry (registry_accounts.registry_login),
as for the `.sig` and `.att` it writes there next.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import zlib

from django.conf import settings

from builds.provenance import layers, sbom
from builds.registry.accounts import registry_login
from builds.registry.client import DOCKER_LIST, OCI_INDEX, SINGLE, RegistryAPI, RegistryError, repository_path
from builds.worker import layer_cache
from lib.references import parse_reference

_CHUNK = 1 << 16


class _Incomplete(Exception):
    """The read stopped short of the image's last layer; the message says why."""


def read_contents(
    image_repository: str,
    digest: str,
    platform: str,
    team_id: int | None,
    tick=None,
    cache: layer_cache.LayerCache = layer_cache.layers,
) -> sbom.Contents:
    """The packages of `image_repository@digest` (for `platform` if it is an index)."""
    reference = parse_reference(image_repository)
    host = reference.registry
    name = repository_path(reference.repository, host)
    budget = sbom.Budget(None, settings.GENERATOR_SBOM_MAX_BYTES, settings.GENERATOR_SBOM_SECONDS, tick)
    contributions: list[layers.Contribution] = []
    with RegistryAPI(host, **registry_login(host, team_id)) as api:
        try:
            for layer in _layers(api, name, digest, platform):
                found = cache.get(team_id, layer["digest"])
                if found is None:
                    found = _read(api, name, layer, budget)
                    cache.put(team_id, layer["digest"], found)
                contributions.append(found)
        except _Incomplete as exc:
            contents = sbom.contents_of(layers.merge(contributions))
            contents.complete, contents.why_incomplete = False, str(exc)
            return contents
    return sbom.contents_of(layers.merge(contributions))


def _layers(api: RegistryAPI, name: str, digest: str, platform: str) -> list[dict]:
    media_type, manifest = _manifest(api, name, digest)
    if media_type in (DOCKER_LIST, OCI_INDEX):
        entry = _entry_for(manifest, platform)
        media_type, manifest = _manifest(api, name, entry["digest"])
    if media_type not in SINGLE:
        raise _Incomplete(f"the image's manifest is a {media_type or 'manifest of no type'}: its layers are unknown")
    return manifest.get("layers") or []


def _manifest(api: RegistryAPI, name: str, digest: str) -> tuple[str, dict]:
    stored = api.stored(name, digest)
    if stored is None:
        raise RegistryError(f"{api.host}/{name}@{digest} is not in the registry")
    media_type, body = stored
    if "sha256:" + hashlib.sha256(body).hexdigest() != digest:
        raise RegistryError(f"the manifest {name}@{digest} does not have that digest: it was changed")
    return media_type, json.loads(body)


def _entry_for(index: dict, platform: str) -> dict:
    for entry in index.get("manifests") or []:
        named = entry.get("platform") or {}
        os_arch = f"{named.get('os')}/{named.get('architecture')}"
        if platform in (os_arch, f"{os_arch}/{named.get('variant')}"):
            return entry
    raise _Incomplete(f"the image is an index with no manifest for the platform {platform or '(none given)'}")


def _read(api: RegistryAPI, name: str, layer: dict, budget: sbom.Budget) -> layers.Contribution:
    """One layer's contribution, read to the blob's last byte and checked against its digest."""
    media_type, digest = layer.get("mediaType", ""), layer["digest"]
    mode = layers.TAR_MODES.get(media_type)
    if mode is None:
        raise _Incomplete(f"the layer {digest} is a {media_type or 'blob of no type'}, which the SBOM cannot read")
    with api.blob_stream(name, digest) as blob:
        stream, failure = budget.over(blob), None
        try:
            contribution = layers.read_layer(stream, mode)
        except (tarfile.TarError, EOFError, zlib.error) as exc:
            failure = exc
        while stream.read(_CHUNK):  # to the end: the digest covers every byte, the tar's padding too
            pass
        if budget.exceeded:
            raise _Incomplete(budget.exceeded)
        blob.verify()
    if failure is not None:
        raise _Incomplete(f"the layer {digest} could not be read: {failure}")
    return contribution
