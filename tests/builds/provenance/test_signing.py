"""DSSE envelopes and cosign's layout (builds/provenance/dsse.py, builds/provenance/cosign_layout.py),
checked with an independent implementation: securesystemslib's DSSE
verification; the farm's key (builds/provenance/signing.py) kept encrypted and rotated."""

from __future__ import annotations

import base64
import copy  # securesystemslib's from_dict changes the dict it reads
import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import SSlibKey

from builds.models import SigningKey
from builds.provenance import cosign_layout, dsse, signing

DIGEST = "sha256:" + "ab" * 32


def test_pae_is_the_specs_encoding():
    # The DSSE protocol's own example (dsse/protocol.md).
    assert dsse.pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_securesystemslib_verifies_the_farms_envelope_and_refuses_a_tampered_one():
    key = ec.generate_private_key(ec.SECP256R1())
    envelope = dsse.sign(b'{"_type":"https://in-toto.io/Statement/v1"}', key)
    public = SSlibKey.from_crypto(key.public_key(), keyid=dsse.key_id(key.public_key()))
    assert dsse.key_id(key.public_key()) in Envelope.from_dict(copy.deepcopy(envelope)).verify([public], 1)

    tampered = {**envelope, "payload": base64.b64encode(b'{"_type":"something else"}').decode()}
    with pytest.raises(VerificationError):
        Envelope.from_dict(copy.deepcopy(tampered)).verify([public], 1)
    with pytest.raises(dsse.BadEnvelope):
        dsse.verify(tampered, key.public_key())
    retyped = {**envelope, "payloadType": "text/plain"}
    with pytest.raises(VerificationError):
        Envelope.from_dict(copy.deepcopy(retyped)).verify([public], 1)


def test_an_envelope_signed_by_another_key_does_not_verify():
    ours, theirs = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    envelope = dsse.sign(b"{}", theirs)
    assert dsse.verify(envelope, theirs.public_key()) == b"{}"
    with pytest.raises(dsse.BadEnvelope, match="no signature"):
        dsse.verify(envelope, ours.public_key())
    with pytest.raises(dsse.BadEnvelope, match="not a DSSE envelope"):
        dsse.verify(b"{}", ours.public_key())


def test_cosigns_tags_and_layers():
    assert cosign_layout.signature_tag(DIGEST) == f"sha256-{'ab' * 32}.sig"
    assert cosign_layout.attestation_tag(DIGEST) == f"sha256-{'ab' * 32}.att"
    with pytest.raises(ValueError):
        cosign_layout.signature_tag("sha512:abc")
    payload = cosign_layout.simple_signing_payload("localhost:5000/team/app", DIGEST)
    assert json.loads(payload) == {
        "critical": {
            "identity": {"docker-reference": "localhost:5000/team/app"},
            "image": {"docker-manifest-digest": DIGEST},
            "type": "cosign container image signature",
        },
        "optional": None,
    }
    envelope = {"payloadType": dsse.IN_TOTO, "payload": "e30=", "signatures": []}
    image = cosign_layout.image_of(
        [cosign_layout.signature_layer(payload, b"sig"), cosign_layout.attestation_layer(envelope, "https://x/y")]
    )
    manifest = json.loads(image.manifest)
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["config"]["digest"] == cosign_layout.sha256(image.config)
    signature, attestation = manifest["layers"]
    assert signature["mediaType"] == "application/vnd.dev.cosign.simplesigning.v1+json"
    assert signature["annotations"] == {"dev.cosignproject.cosign/signature": base64.b64encode(b"sig").decode()}
    assert signature["digest"] == cosign_layout.sha256(payload) and signature["size"] == len(payload)
    assert attestation["mediaType"] == "application/vnd.dsse.envelope.v1+json"
    assert attestation["annotations"] == {"dev.cosignproject.cosign/signature": "", "predicateType": "https://x/y"}
    assert json.loads(image.config)["rootfs"]["diff_ids"] == [signature["digest"], attestation["digest"]]


@pytest.mark.django_db
def test_the_farms_key_is_made_once_kept_encrypted_and_rotated():
    first = signing.active_key()
    assert signing.active_key().pk == first.pk
    assert "PRIVATE KEY" not in first.private_key  # Fernet-encrypted, as every stored secret
    private = signing.private_key(first)
    assert dsse.key_id(private.public_key()) == first.key_id
    assert dsse.load_public_key(first.public_key).public_numbers() == private.public_key().public_numbers()

    second = signing.rotate()
    first.refresh_from_db()
    assert first.retired_at is not None and second.retired_at is None and second.key_id != first.key_id
    assert signing.active_key().pk == second.pk
    assert SigningKey.objects.count() == 2  # the old key's public half stays, for what it signed


@pytest.mark.django_db
def test_the_public_key_is_served_to_anyone(client):
    key = signing.active_key()
    answer = client.get("/api/v1/signing-key/")
    assert answer.status_code == 200 and answer["Content-Type"] == "application/x-pem-file"
    assert answer.content.decode() == key.public_key
    old = key.public_key
    new = signing.rotate().public_key
    assert client.get("/api/v1/signing-key/?all=1").content.decode() == new + old


@pytest.mark.django_db
def test_the_command_makes_the_key_once_rotates_it_and_the_audit_log_says_who(capsys):
    from django.core.management import call_command

    from audit.models import AuditEvent

    call_command("signingkey")
    call_command("signingkey")  # a rerun, as `make up` again: the same key, nothing recorded
    first = capsys.readouterr().out.split("-----END PUBLIC KEY-----")
    assert first[0] == first[1].lstrip("\n") and first[0].startswith("-----BEGIN PUBLIC KEY-----")
    call_command("signingkey", "--rotate")
    assert signing.active_key().public_key.split("-----END")[0] != first[0]
    events = list(AuditEvent.objects.filter(kind="signing key").order_by("at").values_list("action", "details"))
    assert events == [("create", {}), ("create", {"replaces_active_key": True})]
