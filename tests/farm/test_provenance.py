"""Every pushed image carries signed provenance and an SBOM (issue 28), on the
real farm: a repository's build names its commit and its base image's digest,
its `.sig` and `.att` tags sit next to it in the registry as cosign stores
them, `generator verify` checks them with the farm's public key, and a
tampered image or attestation fails; no secret value is in either document."""

from __future__ import annotations

import base64
import io
import json
import urllib.request

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from builds import cli
from builds.models import BuildJob, Repository
from builds.provenance import cosign_layout
from builds.provenance import verification as image_verification
from builds.provenance.dsse import load_public_key
from builds.registry.client import OCI_MANIFEST, RegistryAPI
from scripts import localfarm as lf
from teams.models import Team
from tests.farm.conftest import api_build, follow, http_get
from tests.gitrepos import Repo

pytestmark = pytest.mark.farm

SECRET = "pr0venance-s3cret-never-written"
DPKG_STATUS = "Package: libfarm1\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.2-3\n"


def test_a_repository_build_is_signed_with_provenance_and_sbom_that_verify(farm, token, tmp_path):
    lf.publish_busybox_index(farm.registry, token_source=farm.signer.farm_token)
    base = f"{farm.registry}/library/busybox"
    source = Repo(tmp_path, "signed-app")
    commit = source.commit(
        {
            # A RUN writes the dpkg database from a COPY'd file: both kinds of step end up in the SBOM.
            "Dockerfile": f"FROM {base}\nCOPY status /status\nRUN mkdir -p /var/lib/dpkg && cat /status > "
            "/var/lib/dpkg/status\nRUN --mount=type=secret,id=token wc -c /run/secrets/token\n",
            "status": DPKG_STATUS,
        }
    )
    Repository.objects.update_or_create(
        full_name="team/signed-app",
        defaults={
            "clone_url": source.url,
            "webhook_secret": "s",
            "image": f"{farm.registry}/team/signed-app",
            "team": Team.objects.get(slug="default"),  # the team that owns the farm's registry (conftest)
        },
    )
    job_id = api_build(farm, token, {
        "image": f"{farm.registry}/team/signed-app:main", "repository": "team/signed-app", "ref": "main",
        "builder": "buildkit", "build_args": {"FLAVOUR": "plain"}, "secrets": {"token": SECRET},
    })  # fmt: skip
    done = follow(farm, job_id, token)
    assert done.end["status"] == "succeeded", "\n".join(text for _, text in done.lines)
    job = BuildJob.objects.get(pk=job_id)

    # The job's API answer says where the signature is and with which key.
    status, body = http_get(f"http://{farm.web}/api/v1/builds/{job_id}/", token)
    signatures = json.loads(body)["signatures"]
    assert signatures["signature"] == f"{farm.registry}/team/signed-app:{cosign_layout.signature_tag(job.digest)}"
    status, pem = http_get(f"http://{farm.web}/api/v1/signing-key/")
    assert status == 200 and pem == signatures["public_key"]
    key = load_public_key(pem)

    # Verified as any client would, straight from the registry.
    with RegistryAPI(farm.registry, token_source=farm.signer.farm_token) as api:
        verified = image_verification.verify(api, "team/signed-app", job.digest, key)
    provenance = verified.provenance["predicate"]
    resolved = provenance["buildDefinition"]["resolvedDependencies"]
    assert resolved[0]["digest"] == {"gitCommit": commit}
    base_digest = _index_digest(farm, "library/busybox")
    assert {"sha256": base_digest.split(":")[1]} in [d.get("digest") for d in resolved[1:]], resolved
    params = provenance["buildDefinition"]["externalParameters"]
    assert params["buildArgs"] == {"FLAVOUR": "plain"} and params["secrets"] == ["token"]
    assert params["source"]["ref"] == "main" and provenance["runDetails"]["metadata"]["invocationId"] == job_id
    assert provenance["runDetails"]["builder"]["id"] == "http://generator.example.invalid/"
    sbom = verified.statements[cosign_layout.CYCLONEDX]["predicate"]
    assert "libfarm1" in {c["name"] for c in sbom.get("components", [])}, sbom["metadata"]

    # No secret value in either document, as stored by the farm and in the registry.
    for kind in ("provenance", "sbom"):
        status, text = http_get(f"http://{farm.web}/api/v1/builds/{job_id}/attestations/{kind}/", token)
        assert status == 200 and SECRET not in text
        status, envelope = http_get(f"http://{farm.web}/api/v1/builds/{job_id}/attestations/{kind}/?envelope=1", token)
        assert SECRET not in base64.b64decode(json.loads(envelope)["payload"]).decode()

    # `generator verify` prints the provenance and exits 0.
    out = io.StringIO()
    assert (
        cli.main(
            ["--server", f"http://{farm.web}", "--token", token, "verify", f"{farm.registry}/team/signed-app:main"], out
        )
        == 0
    )
    assert json.loads(out.getvalue())["predicate"]["buildDefinition"]["resolvedDependencies"][0]["digest"] == {
        "gitCommit": commit
    }

    # A tampered attestation: its envelope's statement changed, re-stored under the .att tag.
    with RegistryAPI(farm.registry, token_source=farm.signer.farm_token) as api:
        _tamper_attestation(api, "team/signed-app", job.digest)
    with (
        pytest.raises(image_verification.VerificationFailed, match="does not verify"),
        RegistryAPI(farm.registry, token_source=farm.signer.farm_token) as api,
    ):
        image_verification.verify(api, "team/signed-app", job.digest, key)

    # A tampered image: the tag moved to a changed manifest, which nothing signed.
    with RegistryAPI(farm.registry, token_source=farm.signer.farm_token) as api:
        media_type, manifest = api.stored("team/signed-app", "main")
        changed = json.loads(manifest)
        changed["annotations"] = {"tampered": "yes"}
        api.put_manifest("team/signed-app", "main", media_type, json.dumps(changed).encode())
    assert (
        cli.main(
            ["--server", f"http://{farm.web}", "--token", token, "verify", f"{farm.registry}/team/signed-app:main"], out
        )
        == 1
    )


def _index_digest(farm, name: str) -> str:
    request = urllib.request.Request(
        f"http://{farm.registry}/v2/{name}/manifests/latest",
        method="HEAD",
        headers={"Accept": "application/vnd.docker.distribution.manifest.list.v2+json", **farm.registry_headers(name)},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.headers["Docker-Content-Digest"]


def _tamper_attestation(api: RegistryAPI, name: str, digest: str) -> None:
    tag = cosign_layout.attestation_tag(digest)
    _, manifest = api.stored(name, tag)
    layers = []
    for layer in cosign_layout.layers_of(manifest):
        envelope = json.loads(api.blob(name, layer["digest"]))
        statement = json.loads(base64.b64decode(envelope["payload"]))
        statement["predicate"] = {"forged": True}
        envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()  # the signature kept
        layers.append(cosign_layout.attestation_layer(envelope, layer["annotations"]["predicateType"]))
    image = cosign_layout.image_of(layers)
    for blob in image.blobs:
        api.push_blob(name, blob)
    api.put_manifest(name, tag, OCI_MANIFEST, image.manifest)


def test_a_team_that_brought_its_own_key_gets_its_builds_signed_with_it(farm, token):
    brought = ec.generate_private_key(ec.SECP256R1())
    pem = brought.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()  # fmt: skip
    # Through the API, as a team's admin would: the farm encrypts it under its own keys.
    assert _api(farm, token, "PUT", "/api/v1/teams/default/signing-key/", {"private_key": pem}) == 201
    try:
        job_id = api_build(farm, token, {"image": f"{farm.registry}/team/own-key:1", "team": "default",
                                         "dockerfile": "FROM busybox\nRUN echo signed > /signed\n"})  # fmt: skip
        done = follow(farm, job_id, token)
    finally:
        assert _api(farm, token, "DELETE", "/api/v1/teams/default/signing-key/") == 204
    assert done.end["status"] == "succeeded", done.end
    job = BuildJob.objects.get(pk=job_id)
    with RegistryAPI(farm.registry, token_source=farm.signer.farm_token) as api:
        image_verification.verify(api, "team/own-key", job.digest, brought.public_key())
        farm_key = load_public_key(http_get(f"http://{farm.web}/api/v1/signing-key/")[1])
        with pytest.raises(image_verification.VerificationFailed, match="does not verify with the key"):
            image_verification.verify(api, "team/own-key", job.digest, farm_key)


def _api(farm, token: str, method: str, path: str, body: dict | None = None) -> int:
    request = urllib.request.Request(
        f"http://{farm.web}{path}",
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"Authorization": f"Token {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status
