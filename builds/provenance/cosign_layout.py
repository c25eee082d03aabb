"""Signatures and attestations stored in a registry the way cosign stores them,
so cosign (`cosign verify --key`, `cosign verify-attestation --key`) and other
verifiers of that layout read them. No Django, no I/O.

From cosign's source (github.com/sigstore/cosign, read at d6d86c2):
- the tags: `sha256-<hex>.sig` and `sha256-<hex>.att` in the image's own
  repository (pkg/oci/remote/remote.go `suffixTag`, options.go
  SignatureTagSuffix / AttestationTagSuffix);
- each is an OCI image manifest whose config is an OCI config and whose layers
  are the payloads, uncompressed, digest = diff id (pkg/oci/empty/empty.go,
  pkg/oci/static/signature.go `staticLayer`);
- a signature layer: media type `application/vnd.dev.cosign.simplesigning.v1+json`
  (pkg/types/media.go), its bytes the "simple signing" payload, the base64 DER
  signature of those bytes in the layer annotation
  `dev.cosignproject.cosign/signature` (static.SignatureAnnotationKey);
  verify checks the payload's `critical.image.docker-manifest-digest` against
  the image (pkg/cosign/verifiers.go SimpleClaimVerifier);
- an attestation layer: media type `application/vnd.dsse.envelope.v1+json`
  (pkg/types/payload.go DssePayloadType), its bytes the DSSE envelope of an
  in-toto statement, annotations `predicateType` and an empty signature
  annotation (cmd/cosign/cli/attest/attest.go, static.NewAttestation); one
  layer per attestation, all in one `.att` manifest (pkg/oci/mutate
  AppendSignatures). verify-attestation checks the envelope's payloadType is
  `application/vnd.in-toto+json` and its signature (pkg/cosign/verify.go
  verifyOCIAttestation).
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
DSSE_LAYER = "application/vnd.dsse.envelope.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
PREDICATE_TYPE_ANNOTATION = "predicateType"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
SIGNATURE_TYPE = "cosign container image signature"
# The predicate types the farm attaches, by the names its API and page use.
SLSA_PROVENANCE = "https://slsa.dev/provenance/v1"
CYCLONEDX = "https://cyclonedx.org/bom"  # cosign attest --type cyclonedx
KINDS = {"provenance": SLSA_PROVENANCE, "sbom": CYCLONEDX}


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _tag(digest: str, suffix: str) -> str:
    algorithm, _, hex_digest = digest.partition(":")
    if algorithm != "sha256" or len(hex_digest) != 64:
        raise ValueError(f"{digest!r} is not a sha256 digest")
    return f"sha256-{hex_digest}.{suffix}"


def signature_tag(digest: str) -> str:
    return _tag(digest, "sig")


def attestation_tag(digest: str) -> str:
    return _tag(digest, "att")


def simple_signing_payload(docker_reference: str, digest: str) -> bytes:
    """What cosign signs for an image (sigstore/sigstore pkg/signature/payload SimpleContainerImage)."""
    claim = {
        "critical": {
            "identity": {"docker-reference": docker_reference},
            "image": {"docker-manifest-digest": digest},
            "type": SIGNATURE_TYPE,
        },
        "optional": None,
    }
    return json.dumps(claim, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Layer:
    media_type: str
    data: bytes
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return sha256(self.data)

    def descriptor(self) -> dict:
        return {
            "mediaType": self.media_type,
            "size": len(self.data),
            "digest": self.digest,
            "annotations": self.annotations,
        }


def signature_layer(payload: bytes, signature: bytes) -> Layer:
    return Layer(SIMPLE_SIGNING, payload, {SIGNATURE_ANNOTATION: base64.b64encode(signature).decode()})


def attestation_layer(envelope: dict, predicate_type: str) -> Layer:
    data = json.dumps(envelope, separators=(",", ":")).encode()
    return Layer(DSSE_LAYER, data, {SIGNATURE_ANNOTATION: "", PREDICATE_TYPE_ANNOTATION: predicate_type})


@dataclass(frozen=True)
class Image:
    """An OCI image of payload layers: the blobs to push (config first) and the manifest's bytes."""

    config: bytes
    layers: tuple[Layer, ...]
    manifest: bytes

    @property
    def blobs(self) -> list[bytes]:
        return [self.config, *(layer.data for layer in self.layers)]

    def stored_sizes(self) -> dict[str, int]:
        """{digest: size} of what its tag names once written: the manifest and its blobs."""
        return {sha256(data): len(data) for data in [self.manifest, *self.blobs]}


def image_of(layers: list[Layer]) -> Image:
    """As go-containerregistry's mutate.Append on an empty OCI image makes it:
    a config listing each layer's diff id (uncompressed: its digest)."""
    config = json.dumps(
        {
            "architecture": "",
            "os": "",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [layer.digest for layer in layers]},
        },
        separators=(",", ":"),
    ).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "size": len(config), "digest": sha256(config)},
        "layers": [layer.descriptor() for layer in layers],
    }
    return Image(config, tuple(layers), json.dumps(manifest, separators=(",", ":")).encode())


def layers_of(manifest: bytes) -> list[dict]:
    """The layer descriptors of a stored `.sig` / `.att` manifest."""
    try:
        document = json.loads(manifest)
        layers = document["layers"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"not an image manifest: {exc}") from None
    if not isinstance(layers, list):
        raise ValueError("not an image manifest: its layers are not a list")
    return layers
