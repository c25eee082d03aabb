"""DSSE envelopes (github.com/secure-systems-lab/dsse, protocol v1.0.2), signed
and checked with an ECDSA P-256 key: the signature is DER, over SHA-256 of the
Pre-Authentication Encoding, as sigstore's ECDSA verifier (cosign) expects.

No Django, no I/O: the farm's key is builds/provenance/signing.py's to keep.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

IN_TOTO = "application/vnd.in-toto+json"
ENVELOPE_MEDIA_TYPE = "application/vnd.dsse.envelope.v1+json"


class BadEnvelope(ValueError):
    """The envelope is malformed, or no signature of it verifies with the key."""


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's Pre-Authentication Encoding: what is signed, so that the type is signed with the bytes."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """SHA-256 of the DER SubjectPublicKeyInfo, in hex: go-securesystemslib's
    SHA256KeyID, which cosign's DSSE verifier compares a signature's keyid to."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def load_public_key(pem: bytes | str) -> ec.EllipticCurvePublicKey:
    """An ECDSA P-256 public key from PEM (the first, where several are given); ValueError otherwise."""
    text = pem.decode() if isinstance(pem, bytes) else pem
    first = text.split("-----END PUBLIC KEY-----", 1)[0] + "-----END PUBLIC KEY-----\n"
    loaded = serialization.load_pem_public_key(first.encode())
    if not isinstance(loaded, ec.EllipticCurvePublicKey) or loaded.curve.name != "secp256r1":
        raise ValueError("not an ECDSA P-256 public key")
    return loaded


def sign(payload: bytes, private_key: ec.EllipticCurvePrivateKey, payload_type: str = IN_TOTO) -> dict:
    signature = private_key.sign(pae(payload_type, payload), ec.ECDSA(hashes.SHA256()))
    return {
        "payloadType": payload_type,
        "payload": base64.b64encode(payload).decode(),
        "signatures": [{"keyid": key_id(private_key.public_key()), "sig": base64.b64encode(signature).decode()}],
    }


def verify(envelope: dict | bytes, public_key: ec.EllipticCurvePublicKey, payload_type: str = IN_TOTO) -> bytes:
    """The payload, once a signature of the envelope verifies with `public_key`; BadEnvelope otherwise."""
    try:
        if isinstance(envelope, bytes):
            envelope = json.loads(envelope)
        if envelope["payloadType"] != payload_type:
            raise BadEnvelope(f"the envelope holds {envelope['payloadType']!r}, not {payload_type}")
        payload = base64.b64decode(envelope["payload"], validate=True)
        signatures = [base64.b64decode(s["sig"], validate=True) for s in envelope["signatures"]]
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        if isinstance(exc, BadEnvelope):
            raise
        raise BadEnvelope(f"not a DSSE envelope: {exc}") from None
    signed = pae(payload_type, payload)
    for signature in signatures:
        try:
            public_key.verify(signature, signed, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            continue
        return payload
    raise BadEnvelope("no signature of the envelope verifies with the key")
