"""Checks an image's signature and attestations as cosign stores them
(builds/provenance/cosign_layout.py) with a public key: what `generator verify` runs.
No Django: it reads only the registry (builds/registry/client.py) and needs
`cryptography`.

An image verifies when
- a `.sig` layer's payload (a blob, checked against its digest) carries an
  ECDSA signature that verifies with the key, and that payload names this
  image's digest;
- an `.att` layer holds a DSSE envelope that verifies with the key, whose
  in-toto statement names this digest as its subject and whose predicate is
  SLSA provenance. The SBOM's statement is checked the same way when present.
A changed manifest has another digest, so the signature tags of the old one
do not name it; a changed payload or envelope fails its digest or signature.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from builds.provenance import cosign_layout, dsse
from builds.provenance.cosign_layout import SLSA_PROVENANCE
from builds.registry.client import RegistryAPI


class VerificationFailed(Exception):
    pass


@dataclass
class Verified:
    digest: str
    signed_reference: str
    statements: dict[str, dict] = field(default_factory=dict)  # predicate type -> statement

    @property
    def provenance(self) -> dict:
        return self.statements[SLSA_PROVENANCE]


def resolve(api: RegistryAPI, name: str, reference: str) -> str:
    """The digest of what `reference` (a tag, or a digest) names now."""
    if reference.startswith("sha256:"):
        return reference
    stored = api.stored(name, reference)
    if stored is None:
        raise VerificationFailed(f"{api.host}/{name}:{reference} is not in the registry")
    return "sha256:" + hashlib.sha256(stored[1]).hexdigest()


def verify(api: RegistryAPI, name: str, digest: str, key: ec.EllipticCurvePublicKey) -> Verified:
    signed = _signature(api, name, digest, key)
    verified = Verified(digest, signed)
    for statement in _attestations(api, name, digest, key):
        verified.statements[statement["predicateType"]] = statement
    if SLSA_PROVENANCE not in verified.statements:
        raise VerificationFailed(f"{name}@{digest} has no signed SLSA provenance")
    return verified


def _signature(api: RegistryAPI, name: str, digest: str, key) -> str:
    why = "no signature"
    for layer in _layers(api, name, cosign_layout.signature_tag(digest), "signature"):
        if layer.get("mediaType") != cosign_layout.SIMPLE_SIGNING:
            continue
        payload = api.blob(name, layer["digest"])
        try:
            signature = base64.b64decode(layer["annotations"][cosign_layout.SIGNATURE_ANNOTATION], validate=True)
            key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
            claim = json.loads(payload)["critical"]
        except (KeyError, TypeError, ValueError, binascii.Error, InvalidSignature):
            why = "a signature that does not verify with the key"
            continue
        if claim.get("image", {}).get("docker-manifest-digest") != digest:
            why = "a signature of another digest"
            continue
        return claim.get("identity", {}).get("docker-reference", "")
    raise VerificationFailed(f"{name}@{digest}: {why}")


def _attestations(api: RegistryAPI, name: str, digest: str, key) -> list[dict]:
    statements = []
    for layer in _layers(api, name, cosign_layout.attestation_tag(digest), "attestations"):
        if layer.get("mediaType") != cosign_layout.DSSE_LAYER:
            continue
        envelope = api.blob(name, layer["digest"])
        try:
            statement = json.loads(dsse.verify(envelope, key))
        except (dsse.BadEnvelope, ValueError) as exc:
            raise VerificationFailed(f"an attestation of {name}@{digest} does not verify: {exc}") from None
        subjects = [s.get("digest", {}).get("sha256") for s in statement.get("subject", [])]
        if digest.split(":", 1)[1] not in subjects:
            raise VerificationFailed(f"an attestation in {name}'s {layer['digest']} is about another image")
        statements.append(statement)
    return statements


def _layers(api: RegistryAPI, name: str, tag: str, what: str) -> list[dict]:
    stored = api.stored(name, tag)
    if stored is None:
        raise VerificationFailed(f"{api.host}/{name} has no {what} ({tag})")
    try:
        return cosign_layout.layers_of(stored[1])
    except ValueError as exc:
        raise VerificationFailed(f"{tag}: {exc}") from None
