"""Signed provenance and SBOM of every pushed image, gathered by the worker
that pushed it (builds/worker/runner.py for an image or a platform's child,
builds/jobs/multiplatform.py for an index), and stored as cosign stores them.

For an image: the facts of the build (the job's row, the build args it ran
with, the base images BuildKit's log named, the daemon's versions), the
provenance statement made from them (builds/provenance/slsa.py, pure), the SBOM
read from the image as its daemon saves it (builds/provenance/sbom.py), each in a DSSE envelope
signed with the farm's key (builds/provenance/signing.py), and a cosign "simple
signing" signature of the digest. Written to the registry next to the image
(`sha256-<hex>.sig`, `sha256-<hex>.att`: builds/provenance/cosign_layout.py) through
RegistryAPI as the farm writes there (registry_accounts.registry_login: in
the farm's own registry a token the farm signs; elsewhere the build's account),
and kept on the job (Attestation rows: the API and the page show them).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import partial

from django.conf import settings
from django.utils import timezone

from builds.engine.docker import EngineError, EngineSession
from builds.jobs.build_secrets import models_q_for
from builds.models import Attestation, BuildContext, BuildJob, BuildSecret
from builds.provenance import cosign_layout, dsse, sbom, signing
from builds.provenance import slsa as provenance
from builds.provenance.slsa import BuildFacts, Child, FromLines, Source
from builds.registry import parallel as registry_parallel
from builds.registry.accounts import registry_login
from builds.registry.client import RegistryAPI, RegistryError, repository_path
from builds.uploads import store as context_store
from builds.worker import attestation_reads, layer_reads, phase_times
from builds.worker.attestation_reads import farm_version
from lib.references import parse_reference


class AttestationFailed(EngineError):
    """The image was pushed but could not be signed: the build fails, saying so."""

    def __init__(self, message: str) -> None:
        super().__init__(f"the image was pushed but its provenance could not be attached: {message}", transient=False)


@dataclass(frozen=True)
class Attached:
    digest: str
    signature_tag: str
    attestation_tag: str
    packages: int | None  # None: no SBOM (an index)
    written: dict[str, dict[str, int]]  # {tag: {digest: size}}: what the two tags name, for the registry quota


def attest_image(
    job: BuildJob,
    engine: EngineSession,
    digest: str,
    froms: FromLines,
    build_args: dict[str, str],
    tick=None,
    reading: attestation_reads.Reading | None = None,
) -> Attached:
    """Provenance, SBOM and signature of the image `job` just pushed as `digest`;
    what they need from the daemon from `reading` if the worker started it
    during the push, else read now; the SBOM from the pushed image's layers."""
    try:
        if reading is not None:
            bases = reading.result(tick)
            daemon = attestation_reads.DaemonFacts(bases, attestation_reads.versions(engine, job.builder))
            phase_times.mark("read_taken")
        else:
            daemon = attestation_reads.read(engine, froms.images.values(), job.builder)
        contents = layer_reads.read_contents(job.image_repository, digest, job.platform, job.team_id, tick)
        phase_times.mark("layers_read")
        facts = _facts(job, digest, build_args, daemon.versions, daemon.bases)
        statement = provenance.statement(facts, _secret_values(job))
        bom = json.loads(sbom.bom_json(contents, job.image_repository, digest))
        sbom_statement = _statement(job.image_repository, digest, sbom.PREDICATE_TYPE, bom)
        phase_times.mark("statements_made")
        return _attach(job, digest, [statement, sbom_statement], packages=len(bom.get("components", [])))
    except (RegistryError, EngineError, OSError, ValueError) as exc:
        if isinstance(exc, AttestationFailed):
            raise
        raise AttestationFailed(str(exc)) from exc


def attest_index(parent: BuildJob, children: list[BuildJob], digest: str) -> Attached:
    """Provenance and signature of a multi-platform build's index: its children by digest (each has its own)."""
    by_platform = sorted(children, key=lambda c: parent.platforms.index(c.platform))
    facts = _facts(
        parent,
        digest,
        {**(parent.repository.build_args if parent.repository else {}), **parent.build_args},
        {"generator": farm_version()},
        [],
        children=[Child(c.platform, c.digest, c.id) for c in by_platform],
    )
    try:
        return _attach(parent, digest, [provenance.statement(facts, _secret_values(parent))], packages=None)
    except (RegistryError, OSError, ValueError) as exc:
        raise AttestationFailed(str(exc)) from exc


def _facts(job: BuildJob, digest, build_args, versions, bases, children=()) -> BuildFacts:
    started = job.started_at
    if job.is_parent:
        started = job.children.order_by("started_at").values_list("started_at", flat=True).first() or started
    return BuildFacts(
        job_id=job.id,
        image_repository=job.image_repository,
        tags=job.tags,
        digest=digest,
        source=_source(job),
        dockerfile_path=job.repository.dockerfile_path if job.ref and job.repository else job.dockerfile_path,
        target=job.target,
        platforms=list(job.platforms) or ([job.platform] if job.platform else []),
        builder="index" if job.is_parent else job.builder,
        builder_id=settings.GENERATOR_SITE_URL + "/",
        versions=versions,
        started=started,
        finished=timezone.now(),
        build_args=build_args,
        labels=dict(job.labels),
        secret_names=sorted(set(BuildSecret.objects.filter(models_q_for(job)).values_list("name", flat=True))),
        base_images=bases,
        children=list(children),
        no_cache=job.no_cache,
        daemon=job.daemon.name if job.daemon_id and job.daemon else "",
        attempt=job.attempt,
        parent_job_id=job.parent_id or "",
    )


def _source(job: BuildJob) -> Source:
    if job.ref:
        repository = job.repository
        return Source(
            repository_url=repository.clone_url if repository else "",
            repository_name=repository.full_name if repository else "",
            ref=job.ref,
            commit=job.commit_sha,
            context_dir=repository.context_dir if repository else "",
        )
    if job.dockerfile:
        return Source(dockerfile_digest="sha256:" + hashlib.sha256(job.dockerfile.encode()).hexdigest())
    upload = BuildContext.objects.filter(job_id=job.parent_id or job.id).first()
    digest = hashlib.sha256()
    with context_store.opened(upload) as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return Source(upload_digest="sha256:" + digest.hexdigest())


def _secret_values(job: BuildJob) -> list[str]:
    from lib import crypto

    stored = BuildSecret.objects.filter(models_q_for(job)).values_list("value", flat=True)
    return [crypto.decrypt(value) for value in stored]


def _statement(name: str, digest: str, predicate_type: str, predicate: dict) -> dict:
    return {
        "_type": provenance.STATEMENT_TYPE,
        "subject": [{"name": name, "digest": {"sha256": digest.split(":", 1)[1]}}],
        "predicateType": predicate_type,
        "predicate": predicate,
    }


def _attach(job: BuildJob, digest: str, statements: list[dict], *, packages: int | None) -> Attached:
    key = signing.key_for(job.team_id)  # the team's own key if it brought one
    private = signing.private_key(key)
    envelopes = [dsse.sign(provenance.payload(s), private) for s in statements]
    reference = parse_reference(job.image_repository)
    payload = cosign_layout.simple_signing_payload(reference.repository, digest)
    signature = private.sign(payload, signing.ECDSA_SHA256)
    signature_image = cosign_layout.image_of([cosign_layout.signature_layer(payload, signature)])
    attestation_image = cosign_layout.image_of(
        [cosign_layout.attestation_layer(e, s["predicateType"]) for e, s in zip(envelopes, statements, strict=True)]
    )
    sig_tag, att_tag = cosign_layout.signature_tag(digest), cosign_layout.attestation_tag(digest)
    phase_times.mark("signed")
    images = {sig_tag: signature_image, att_tag: attestation_image}
    _write(job, reference, images)
    phase_times.mark("written")
    Attestation.objects.filter(job=job, digest=digest).delete()
    kid = key.key_id
    Attestation.objects.bulk_create(
        Attestation(job=job, digest=digest, predicate_type=s["predicateType"], envelope=json.dumps(e), key_id=kid)
        for e, s in zip(envelopes, statements, strict=True)
    )
    return Attached(digest, sig_tag, att_tag, packages, {tag: image.stored_sizes() for tag, image in images.items()})


def _write(job: BuildJob, reference, images: dict[str, cosign_layout.Image]) -> None:
    """The `.sig` and `.att` images with the farm's writes' credentials: every
    blob at once, then the manifests (builds/registry/parallel.py)."""
    host = reference.registry
    name = repository_path(reference.repository, host)
    login = registry_login(host, job.team_id)
    blobs = list(dict.fromkeys(blob for image in images.values() for blob in image.blobs))
    manifests = [(tag, image.manifest) for tag, image in images.items()]
    with registry_parallel.AtOnce(lambda: RegistryAPI(host, **login)) as registry:
        registry.each([partial(_push_blob, name, blob) for blob in blobs])
        phase_times.mark("blobs_written")
        registry.each([partial(_put, name, *manifest) for manifest in manifests])


def _push_blob(name: str, blob: bytes, api: RegistryAPI) -> str:
    return api.push_blob(name, blob)


def _put(name: str, tag: str, manifest: bytes, api: RegistryAPI) -> None:
    api.put_manifest(name, tag, cosign_layout.OCI_MANIFEST, manifest)
