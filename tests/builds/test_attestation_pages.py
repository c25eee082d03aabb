"""A signed build's documents where its readers look: the job's API answer,
`/api/v1/builds/ID/attestations/KIND/` and links on its page; another team
gets 404 as for any of its builds."""

from __future__ import annotations

import base64
import json

from builds.models import Attestation, BuildJob
from builds.provenance import cosign_layout, dsse, signing
from teams.models import Team
from tests.builds.test_pages import make_job

DIGEST = "sha256:" + "c" * 64


def signed_job(daemon) -> BuildJob:
    job = make_job(daemon, status="succeeded", digest=DIGEST)
    key = signing.active_key()
    for kind, predicate_type in cosign_layout.KINDS.items():
        statement = {"_type": "https://in-toto.io/Statement/v1", "predicateType": predicate_type, "kind": kind}
        envelope = dsse.sign(json.dumps(statement).encode(), signing.private_key(key))
        Attestation.objects.create(job=job, digest=DIGEST, predicate_type=predicate_type,
                                   envelope=json.dumps(envelope), key_id=key.key_id)  # fmt: skip
    return job


def test_the_job_answers_where_its_signature_is_and_serves_both_documents(client, reader, daemon):
    job = signed_job(daemon)
    client.force_login(reader)
    answer = client.get(f"/api/v1/builds/{job.id}/").json()["signatures"]
    assert answer["signature"] == f"localhost:5000/a/b:sha256-{'c' * 64}.sig"
    assert answer["attestations"] == f"localhost:5000/a/b:sha256-{'c' * 64}.att"
    assert answer["public_key"] == signing.active_key().public_key
    assert client.get(f"/api/v1/builds/{job.id}/attestations/provenance/").json()["kind"] == "provenance"
    envelope = client.get(f"/api/v1/builds/{job.id}/attestations/sbom/?envelope=1").json()
    key = dsse.load_public_key(answer["public_key"])
    assert json.loads(dsse.verify(envelope, key))["kind"] == "sbom"
    assert json.loads(base64.b64decode(envelope["payload"]))["predicateType"] == cosign_layout.CYCLONEDX

    page = client.get(f"/builds/{job.id}/").content.decode()
    assert f'href="/api/v1/builds/{job.id}/attestations/provenance/"' in page
    assert f'href="/api/v1/builds/{job.id}/attestations/sbom/?envelope=1"' in page
    assert f"generator verify localhost:5000/a/b@{DIGEST}" in page


def test_an_unsigned_build_says_so_and_another_teams_is_404(client, reader, daemon, teams):
    unsigned = make_job(daemon, status="failed")
    client.force_login(reader)
    assert client.get(f"/api/v1/builds/{unsigned.id}/").json()["signatures"] is None
    assert client.get(f"/api/v1/builds/{unsigned.id}/attestations/provenance/").status_code == 404
    assert "attestations/provenance" not in client.get(f"/builds/{unsigned.id}/").content.decode()
    theirs = signed_job(daemon)
    BuildJob.objects.filter(pk=theirs.pk).update(team=Team.objects.get(pk=teams[1].pk))
    assert client.get(f"/api/v1/builds/{theirs.id}/attestations/provenance/").status_code == 404
