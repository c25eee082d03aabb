"""The `.sig` and `.att` images of one pushed digest, signed with the build's
key (its team's own if it brought one) and written as their parts are ready
(builds/worker/attestations.py says what goes in them).

A registry write is a round trip of its own (a blob: a POST and a PUT; a
manifest only once its blobs are stored), and the farm's registry answers each
in a few milliseconds of its own CPU. So the parts known before the SBOM
(the signature's two blobs, the provenance's layer) are sent while the SBOM is
read from the registry (builds/worker/layer_reads.py); what waits for the SBOM
is its layer and the `.att` config, sent with the signature's manifest, then
the `.att` manifest: the same two rounds after the SBOM as when everything
waited for it, with fewer requests in each (issue 26).
"""

from __future__ import annotations

import json
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial

from builds.models import Attestation, BuildJob
from builds.provenance import cosign_layout, dsse, signing
from builds.provenance import slsa as provenance
from builds.registry import parallel as registry_parallel
from builds.registry.accounts import registry_login
from builds.registry.client import RegistryAPI, repository_path
from builds.worker import phase_times
from lib.references import parse_reference


@dataclass(frozen=True)
class Attached:
    digest: str
    signature_tag: str
    attestation_tag: str
    packages: int | None  # None: no SBOM (an index)
    written: dict[str, dict[str, int]]  # {tag: {digest: size}}: what the two tags name, for the registry quota


class Writes:
    """Signs and writes as statements are added; `finish` writes the rest and
    keeps the envelopes on the job. Use as a context manager: on leaving, every
    request it started has ended."""

    def __init__(self, job: BuildJob, digest: str) -> None:
        self.job, self.digest = job, digest
        self.key = signing.key_for(job.team_id)
        self.private = signing.private_key(self.key)
        reference = parse_reference(job.image_repository)
        host = reference.registry
        self.name = repository_path(reference.repository, host)
        login = registry_login(host, job.team_id)
        self.registry = registry_parallel.AtOnce(lambda: RegistryAPI(host, **login))
        payload = cosign_layout.simple_signing_payload(reference.repository, digest)
        self.signature_image = cosign_layout.image_of(
            [cosign_layout.signature_layer(payload, self.private.sign(payload, signing.ECDSA_SHA256))]
        )
        self.statements: list[dict] = []
        self.envelopes: list[dict] = []
        self.layers: list[cosign_layout.Layer] = []
        self.sending: list[Future] = []
        self.sent: set[bytes] = set()

    def __enter__(self) -> Writes:
        self.registry.__enter__()
        self._send(self.signature_image.blobs)
        return self

    def __exit__(self, *exc) -> None:
        self.registry.__exit__(*exc)

    def add(self, statement: dict, *, send_now: bool = False) -> None:
        """An attestation of the digest, signed; its layer sent now if `send_now`, else with the rest."""
        envelope = dsse.sign(provenance.payload(statement), self.private)
        layer = cosign_layout.attestation_layer(envelope, statement["predicateType"])
        self.statements.append(statement)
        self.envelopes.append(envelope)
        self.layers.append(layer)
        if send_now:
            self._send([layer.data])

    def finish(self, packages: int | None) -> Attached:
        attestation_image = cosign_layout.image_of(self.layers)
        sig_tag, att_tag = cosign_layout.signature_tag(self.digest), cosign_layout.attestation_tag(self.digest)
        phase_times.mark("signed")
        for sent in self.sending:
            sent.result()  # the signature's blobs stored before its manifest names them (and any error raised)
        rest = [blob for blob in attestation_image.blobs if blob not in self.sent]
        calls = [partial(_put, self.name, sig_tag, self.signature_image.manifest)]
        self.registry.each(calls + [partial(_push_blob, self.name, blob) for blob in dict.fromkeys(rest)])
        phase_times.mark("blobs_written")
        self.registry.each([partial(_put, self.name, att_tag, attestation_image.manifest)])
        phase_times.mark("written")
        self._keep()
        images = {sig_tag: self.signature_image, att_tag: attestation_image}
        return Attached(
            self.digest, sig_tag, att_tag, packages, {tag: image.stored_sizes() for tag, image in images.items()}
        )

    def _send(self, blobs: list[bytes]) -> None:
        fresh = [blob for blob in dict.fromkeys(blobs) if blob not in self.sent]
        self.sent.update(fresh)
        self.sending += self.registry.soon([partial(_push_blob, self.name, blob) for blob in fresh])

    def _keep(self) -> None:
        """The envelopes on the job (the API and the page show them), this digest's only."""
        job, digest, kid = self.job, self.digest, self.key.key_id
        Attestation.objects.filter(job=job, digest=digest).delete()
        Attestation.objects.bulk_create(
            Attestation(job=job, digest=digest, predicate_type=s["predicateType"], envelope=json.dumps(e), key_id=kid)
            for e, s in zip(self.envelopes, self.statements, strict=True)
        )


def _push_blob(name: str, blob: bytes, api: RegistryAPI) -> str:
    return api.push_blob(name, blob)


def _put(name: str, tag: str, manifest: bytes, api: RegistryAPI) -> None:
    api.put_manifest(name, tag, cosign_layout.OCI_MANIFEST, manifest)
