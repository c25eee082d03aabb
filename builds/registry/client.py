"""The registry's own HTTP API (distribution v2), for what no daemon does: read
a pushed manifest, write an image index naming several, write and read the
signatures and attestations stored beside an image (builds/worker/attestations.py,
builds/provenance/verification.py).

Like builds/engine/docker.py this knows no Django models: a host, optional
credentials, bytes in and out. Loopback registries are spoken to over plain
HTTP (as Docker does), every other over HTTPS; a registry that answers 401 gets
Basic credentials, or a Bearer token from the realm it names, or, for the farm's
own registry, one the farm signs itself (`token_source`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import requests
import urllib3

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
SINGLE = (DOCKER_MANIFEST, OCI_MANIFEST)
ANY = (*SINGLE, DOCKER_LIST, OCI_INDEX)

SMALL_BLOB = 256 * 1024
_LOOPBACK = re.compile(r"^(localhost|127\.\d+\.\d+\.\d+|\[::1\])(:\d+)?$")


def plain_http(host: str) -> bool:
    """Whether the farm speaks to `host` over plain HTTP: loopback, as Docker
    does, and the hosts the operator lists in GENERATOR_PLAIN_HTTP_REGISTRIES
    (comma-separated HOST:PORT, the daemons' --insecure-registry list: a
    registry on a private network). Read from the environment: no Django here."""
    listed = {h.strip() for h in os.environ.get("GENERATOR_PLAIN_HTTP_REGISTRIES", "").split(",") if h.strip()}
    return bool(_LOOPBACK.match(host)) or host in listed


class RegistryError(Exception):
    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class Manifest:
    media_type: str
    digest: str
    size: int


@dataclass(frozen=True)
class IndexEntry:
    manifest: Manifest
    platform: str  # os/arch[/variant]

    def as_json(self) -> dict:
        os_name, arch, *variant = self.platform.split("/")
        platform = {"architecture": arch, "os": os_name, **({"variant": variant[0]} if variant else {})}
        return {
            "mediaType": self.manifest.media_type,
            "digest": self.manifest.digest,
            "size": self.manifest.size,
            "platform": platform,
        }


def index_body(entries: list[IndexEntry]) -> tuple[str, bytes]:
    """A Docker manifest list (the children Docker pushes are Docker v2 manifests;
    an OCI index for OCI children), as the media type and the exact bytes whose
    sha256 is the index's digest."""
    oci = all(e.manifest.media_type == OCI_MANIFEST for e in entries)
    media_type = OCI_INDEX if oci else DOCKER_LIST
    document = {"schemaVersion": 2, "mediaType": media_type, "manifests": [e.as_json() for e in entries]}
    return media_type, json.dumps(document, indent=3).encode()


class RegistryAPI:
    def __init__(
        self,
        host: str,
        *,
        username: str = "",
        password: str = "",
        token_source: Callable[[str], str] | None = None,
        timeout: float = 30,
    ) -> None:
        self.host = "registry-1.docker.io" if host in ("docker.io", "index.docker.io") else host
        scheme = "http" if plain_http(self.host) else "https"
        self.base = f"{scheme}://{self.host}/v2"
        self.credentials = (username, password) if username else None
        self.timeout = timeout
        self.token_source = token_source  # scope -> a Bearer token, asked instead of the realm
        self.http = requests.Session()
        self._token = ""

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> RegistryAPI:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def manifest(self, name: str, reference: str) -> Manifest:
        """The single-platform manifest `name:reference` (a tag or digest) points to."""
        response = self._request("GET", name, f"manifests/{reference}", headers={"Accept": ", ".join(SINGLE)})
        if response.status_code == 404:
            raise RegistryError(f"{self.host}/{name}:{reference} is not in the registry")
        self._check(response, f"read the manifest of {name}:{reference}")
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        if media_type not in SINGLE:
            raise RegistryError(f"{name}:{reference} is a {media_type or 'manifest of no type'}, not one image")
        digest = "sha256:" + hashlib.sha256(response.content).hexdigest()
        return Manifest(media_type, digest, len(response.content))

    def has(self, name: str, reference: str) -> bool:
        """Whether `name:reference` names any manifest: one HEAD."""
        response = self._request("HEAD", name, f"manifests/{reference}", headers={"Accept": ", ".join(ANY)})
        if response.status_code == 404:
            return False
        self._check(response, f"look up {name}:{reference}")
        return True

    def catalog(self, page: int = 1000) -> list[str]:
        """Every repository the registry holds, page by page (its `Link` header);
        with `token_source`, which must grant `registry:catalog:*`."""
        names: list[str] = []
        url = f"{self.base}/_catalog?n={page}"
        headers = {"Authorization": f"Bearer {self.token_source('registry:catalog:*')}"} if self.token_source else {}
        while url:
            try:
                response = self.http.get(url, headers=headers, auth=self.credentials, timeout=self.timeout)
            except requests.RequestException as exc:
                raise RegistryError(f"cannot reach the registry {self.host}: {exc}", transient=True) from None
            self._check(response, "list the repositories")
            names += response.json().get("repositories") or []
            link = response.links.get("next", {}).get("url", "")
            url = f"{self.base.removesuffix('/v2')}{link}" if link.startswith("/") else link
        return names

    def tags(self, name: str, page: int = 1000, *, limit: int = 100_000) -> list[str]:
        """The repository's tags, page by page (its `Link` header); at most `limit`."""
        tags: list[str] = []
        path = f"tags/list?n={page}"
        while path and len(tags) < limit:
            response = self._request("GET", name, path)
            if response.status_code == 404:
                return tags
            self._check(response, f"list the tags of {name}")
            tags += response.json().get("tags") or []
            link = response.links.get("next", {}).get("url", "")
            path = link.split(f"/{name}/", 1)[1] if f"/{name}/" in link else ""
        return tags[:limit]

    def blob_size(self, name: str, digest: str) -> int | None:
        """The size of a blob as the registry stores it (one HEAD); None if it has none."""
        response = self._request("HEAD", name, f"blobs/{digest}")
        if response.status_code == 404:
            return None
        self._check(response, f"look up the blob {digest} of {name}")
        return int(response.headers.get("Content-Length", "0"))

    def head_manifest(self, name: str, reference: str, accept: str) -> requests.Response:
        return self._request("HEAD", name, f"manifests/{reference}", headers={"Accept": accept})

    def stored(self, name: str, tag: str) -> tuple[str, bytes] | None:
        """What `name:tag` names now, as the registry keeps it (media type and
        body, any kind of manifest); None if there is no such tag."""
        response = self._request("GET", name, f"manifests/{tag}", headers={"Accept": ", ".join(ANY)})
        if response.status_code == 404:
            return None
        self._check(response, f"read the manifest of {name}:{tag}")
        return response.headers.get("Content-Type", "").split(";")[0].strip(), response.content

    def blob(self, name: str, digest: str, *, max_bytes: int = 64 << 20) -> bytes:
        """A blob's bytes, checked against its digest (a registry, or a path to it, may not change them)."""
        response = self._request("GET", name, f"blobs/{digest}", stream=True)
        if response.status_code == 404:
            raise RegistryError(f"{self.host}/{name} has no blob {digest}")
        self._check(response, f"read the blob {digest} of {name}")
        data = response.raw.read(max_bytes + 1, decode_content=True)
        if len(data) > max_bytes:
            raise RegistryError(f"the blob {digest} of {name} is larger than {max_bytes} bytes")
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise RegistryError(f"the blob {digest} of {name} does not have that digest: it was changed")
        return data

    @contextmanager
    def blob_stream(self, name: str, digest: str) -> Iterator[DigestChecked]:
        """A blob's bytes as a stream, hashed as they are read: nothing read
        from it is to be trusted before its `verify` after the last byte."""
        checked = DigestChecked(digest)  # refuses a digest it cannot check before any request
        response = self._request("GET", name, f"blobs/{digest}", stream=True)
        with response:
            if response.status_code == 404:
                raise RegistryError(f"{self.host}/{name} has no blob {digest}")
            self._check(response, f"read the blob {digest} of {name}")
            response.raw.decode_content = True
            yield checked.reading(response.raw)

    def delete_tag(self, name: str, tag: str) -> bool:
        """Removes `tag` where the registry deletes by tag; False where it cannot
        (distribution 2.x deletes only by digest, and that is never asked here:
        it would take the manifest from every tag and index that names it)."""
        response = self._request("DELETE", name, f"manifests/{tag}")
        return response.status_code in (200, 202)

    def put_index(self, name: str, tag: str, entries: list[IndexEntry]) -> str:
        """Writes the index under `tag`; answers its digest."""
        media_type, body = index_body(entries)
        response = self._request(
            "PUT", name, f"manifests/{tag}", data=body, headers={"Content-Type": media_type}
        )  # fmt: skip
        self._check(response, f"write the image index {name}:{tag}")
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        said = response.headers.get("Docker-Content-Digest", digest)
        if said != digest:
            raise RegistryError(f"the registry stored the index of {name}:{tag} as {said}, not {digest}")
        return digest

    def push_blob(self, name: str, data: bytes) -> str:
        """Uploads a blob (monolithic: one POST, one PUT); answers its digest.
        A large one is looked for first; a small one (a signature, an
        attestation, a config: new every time) is just sent, the look-up
        costing as much as the upload."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if len(data) > SMALL_BLOB and self._request("HEAD", name, f"blobs/{digest}").status_code == 200:
            return digest
        started = self._request("POST", name, "blobs/uploads/")
        self._check(started, f"start a blob upload to {name}")
        location = started.headers["Location"]
        url = location if location.startswith("http") else f"{self.base.removesuffix('/v2')}{location}"
        separator = "&" if "?" in url else "?"
        response = self.http.put(
            f"{url}{separator}digest={digest}",
            data=data,
            headers={"Content-Type": "application/octet-stream", **self._bearer()},
            auth=self.credentials if not self._token else None,
            timeout=self.timeout,
        )
        self._check(response, f"upload a blob to {name}")
        return digest

    def put_manifest(self, name: str, tag: str, media_type: str, body: bytes) -> Manifest:
        response = self._request("PUT", name, f"manifests/{tag}", data=body, headers={"Content-Type": media_type})
        self._check(response, f"write the manifest {name}:{tag}")
        return Manifest(media_type, "sha256:" + hashlib.sha256(body).hexdigest(), len(body))

    def _bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    def _request(self, method: str, name: str, path: str, **kwargs) -> requests.Response:
        url = f"{self.base}/{name}/{path}"
        headers = kwargs.pop("headers", {})
        if not self._token and self.token_source is not None:
            # The farm signs its own tokens: ask for one now rather than after a 401, a round trip saved.
            self._token = self.token_source(f"repository:{name}:pull,push,delete")
        for _ in range(2):
            auth_headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
            try:
                response = self.http.request(
                    method,
                    url,
                    headers={**headers, **auth_headers},
                    auth=self.credentials if not self._token else None,
                    timeout=self.timeout,
                    **kwargs,
                )
            except requests.RequestException as exc:
                raise RegistryError(f"cannot reach the registry {self.host}: {exc}", transient=True) from None
            if response.status_code != 401 or not self._authenticate(response, name):
                return response
        return response

    def _authenticate(self, challenge: requests.Response, name: str) -> bool:
        """A Bearer token from the challenge's realm; False if there is nothing new to try."""
        header = challenge.headers.get("WWW-Authenticate", "")
        if not header.lower().startswith("bearer ") or self._token:
            return False
        fields = dict(re.findall(r'(\w+)="([^"]*)"', header))
        params = {"service": fields.get("service", ""), "scope": f"repository:{name}:pull,push,delete"}
        if self.token_source is not None:
            self._token = self.token_source(params["scope"])
            return bool(self._token)
        try:
            response = self.http.get(fields["realm"], params=params, auth=self.credentials, timeout=self.timeout)
            response.raise_for_status()
            self._token = response.json().get("token") or response.json().get("access_token") or ""
        except (KeyError, ValueError, requests.RequestException) as exc:
            raise RegistryError(f"the registry {self.host} gave no token: {exc}") from None
        return bool(self._token)

    def _check(self, response: requests.Response, doing: str) -> None:
        if response.status_code < 300:
            return
        try:
            errors = "; ".join(e.get("message", "") for e in response.json().get("errors", []))
        except ValueError:
            errors = response.text[:200]
        raise RegistryError(
            f"could not {doing} on {self.host}: HTTP {response.status_code} {errors}".strip(),
            transient=response.status_code >= 500,
        )


class DigestChecked:
    """A stream that hashes what it gives (sha256, the registries' digests)."""

    def __init__(self, digest: str) -> None:
        algorithm, _, self.expected = digest.partition(":")
        if algorithm != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", self.expected):
            raise RegistryError(f"cannot check the blob digest {digest!r}: not a sha256 one")
        self.digest, self.hash, self.raw = digest, hashlib.sha256(), None

    def reading(self, raw) -> DigestChecked:
        self.raw = raw
        return self

    def read(self, size: int = -1) -> bytes:
        try:
            data = self.raw.read(size)
        except (urllib3.exceptions.HTTPError, requests.RequestException) as exc:
            raise RegistryError(f"the blob {self.digest} was cut short: {exc}", transient=True) from None
        self.hash.update(data)
        return data

    def verify(self) -> None:
        """Raises unless the bytes read, read to their end, have the digest."""
        if self.hash.hexdigest() != self.expected:
            raise RegistryError(f"the blob {self.digest} does not have that digest: it was changed")


def repository_path(repository: str, host: str) -> str:
    """A repository's name inside its registry: without the host, Docker Hub's official images under library/."""
    name = repository.split("/", 1)[1] if repository.startswith(host + "/") else repository
    if host in ("docker.io", "index.docker.io") and "/" not in name:
        name = f"library/{name}"
    return name
