"""The build step of an attempt, by the job's builder: the Engine API's classic
build (builds/engine/docker.py) or BuildKit through Docker's own CLI (builds/engine/buildkit.py).
Both stream lines into the log, stop on the watch's abort, and answer the
image id; the push is the same for both (docker-py)."""

from __future__ import annotations

import functools
import hashlib
import io
import logging
from typing import BinaryIO

from django.conf import settings

from builds.dockerfiles import text as dockerfile_text
from builds.dockerfiles.images import meta_args, referenced_images, trigger_images
from builds.dockerfiles.in_context import FoundDockerfile, UnreadableDockerfile, read_dockerfile
from builds.dockerfiles.text import DockerfileError
from builds.engine.buildkit import (
    BuildKitRequest,
    BuildKitSession,
    DaemonAddress,
    NoBuildKitClient,
    find_client,
    unsupported_features,
)
from builds.engine.docker import BuildFailed, DaemonUnavailable, EngineSession
from builds.jobs import build_secrets
from builds.models import BuildJob
from builds.provenance.slsa import FromLines
from builds.registry import accounts as registry_accounts
from builds.registry.accounts import is_farm_registry
from builds.registry.client import RegistryAPI, RegistryError, repository_path
from builds.sources import deploy_keys
from builds.worker import base_triggers, cache_scope, phase_times
from builds.worker.containment import Containment
from builds.worker.docker_config import classic_registry_config, docker_config
from lib import secret_values
from lib.references import InvalidReference, parse_reference
from pool.disk_prune import FARM_LABEL, FARM_LABEL_VALUE
from pool.models import DockerDaemon
from teams.registry_access import read_refusal

logger = logging.getLogger(__name__)

CACHE_LOOKUP_SECONDS = 5


@functools.cache
def buildkit_client():
    """Found once per worker process, and said in its log (NoBuildKitClient if none)."""
    client = find_client(settings.GENERATOR_DOCKER_CLI)
    logger.info("BuildKit client: %s", client.describe())
    return client


def report_client(daemon_names: list[str]) -> str:
    """Said at worker start, in its log and on its daemons' rows (the pool page)."""
    try:
        found = buildkit_client().describe()
    except NoBuildKitClient as exc:
        found = f"none: {exc}"
        logger.warning("BuildKit client: %s", found)
    # Its host's QEMU emulation is the heartbeat's to report (pool/workers.py EmulationReport).
    DockerDaemon.objects.filter(name__in=daemon_names).update(buildkit_client=found[:255])
    return found


def build(
    job,
    engine: EngineSession,
    access: dict,
    context: BinaryIO,
    dockerfile: str,
    buildargs: dict[str, str],
    containment: Containment,
    log,
    watch,
    tag: str,
    froms: FromLines | None = None,
) -> str:
    secrets = build_secrets.for_job(job)
    log.hide(list(secrets.values()))
    if job.fork:
        log.write(
            f"[generator] Pull request #{job.pull_request} comes from a fork: no build secrets, deploy key or"
            " registry credentials, and a step cache of its own"
        )
    # A Dockerfile text's context holds it as "Dockerfile" (builds/worker/runner.py): read like any other.
    found = _dockerfile_in(context, dockerfile)
    text = found.data
    # Before any builder runs: a daemon uses an image it holds without asking the registry.
    try:
        images = referenced_images(found.data, buildargs)
    except DockerfileError as exc:
        raise BuildFailed(f"the Dockerfile cannot be read as the engine reads it: {exc}") from None
    for image in images:
        if refusal := read_refusal(job.team, image):
            raise BuildFailed(refusal)
    if refusal := _trigger_refusal(job, engine, text, buildargs, images):
        raise BuildFailed(refusal)
    if froms is not None:
        froms.dockerfile_images = images  # what builds/triggers/base_images.py watches
    if job.pull:
        log.write("[generator] Pulling the base images afresh, even where the daemon holds them")
    # BuildKit unpacks a tar context with its owners as host ids: give them as the daemon remaps root.
    owners = cache_scope.remapped_root(engine.info()) if job.builder == "buildkit" else (0, 0)
    context, buildargs = _team_scoped(job, context, found, buildargs, owners)
    if job.builder != "buildkit":
        if secrets:
            log.write(f"[generator] Secrets ({', '.join(sorted(secrets))}) are mounted by BuildKit only: not passed")
        # Read here, not in the pump's thread: a query there opened a PostgreSQL session of that thread's own,
        # which nothing closed (one more session per build; "too many connections" in bench/scale.py).
        labels, registry_config = farm_labels(job), classic_registry_config(job, images)
        phase_times.mark("build_started")
        return log.pump(
            lambda emit: engine.build(
                context,
                tag=tag,
                dockerfile=dockerfile,
                buildargs=buildargs,
                labels=labels,
                nocache=job.no_cache,
                pull=job.pull,
                target=job.target or None,
                on_line=emit,
                registry_config=registry_config,
                **containment.engine_options,
            ),
            tick=watch.tick,
            abort=engine.abort,
        )
    ssh_key = deploy_keys.forwarded(job)
    if reason := unsupported_features(text, buildargs) or deploy_keys.ssh_mount_refusal(
        text, job.repository, forwarded=bool(ssh_key), fork=job.fork
    ):
        raise BuildFailed(reason)
    try:
        client = buildkit_client()
    except NoBuildKitClient as exc:  # this worker's host, not the build: another may have one
        raise DaemonUnavailable(str(exc)) from exc
    log.write(f"[generator] BuildKit ({client.describe()})")
    session = BuildKitSession(client, daemon_address(access))
    # The deploy key for RUN --mount=type=ssh: a 0600 file the CLI loads into its agent, gone after the build;
    # the build's registry credentials likewise (builds/worker/docker_config.py).
    with (
        secret_values.as_files(secrets) as files,
        secret_values.as_files({"ssh": ssh_key} if ssh_key else {}) as ssh,
        docker_config(job) as config,
    ):
        request = _request(job, tag, dockerfile, buildargs, containment, files)
        if (alone := _context_free_dockerfile(job, found)) is not None:
            context, request.dockerfile = io.BytesIO(alone), ""
        if request.cache_from:
            log.write(f"[generator] Cache from: {', '.join(request.cache_from)}")
        request.ssh, request.docker_config = ssh.get("ssh", ""), config
        if request.ssh:
            fingerprint = job.repository.deploy_key_fingerprint
            log.write(f"[generator] RUN --mount=type=ssh gets an SSH agent with the deploy key ({fingerprint})")
        try:
            phase_times.mark("build_started")
            return log.pump(
                lambda emit: _timed_cli(lambda: session.build(context, request, on_line=_first_marked(emit))),
                tick=watch.tick,
                abort=session.abort,
            )
        except BuildFailed as exc:  # an error line may quote a secret, like any other line
            message = secret_values.masked(str(exc), secret_values.mask_forms(list(secrets.values())))
            if exc.refused_image:
                raise BuildFailed(refused_pull(job, exc.refused_image, message)) from None
            if not engine.answers():  # the CLI's last words when its daemon dies vary: ask the daemon
                raise DaemonUnavailable(f"lost the Docker daemon at {engine.url} during the build: {message}") from None
            raise BuildFailed(message, exit_code=exc.exit_code) from None


def _first_marked(emit):
    """`emit`, marking the CLI's first line (`cli_first_line`): the CLI started and its daemon answered."""
    seen = []

    def marked(line: str) -> None:
        if not seen:
            seen.append(True)
            phase_times.mark("cli_first_line")
        emit(line)

    return marked


def _timed_cli(build):
    """The CLI's build, marking when it returned (`cli_returned`): what follows up
    to build_done is the log's last store and the pump's thread ending."""
    try:
        return build()
    finally:
        phase_times.mark("cli_returned")


def _team_scoped(job, context: BinaryIO, found: FoundDockerfile, buildargs: dict[str, str], owners=(0, 0)):
    """The context and build args with every step keyed to the build's team
    (builds/worker/cache_scope.py): its Dockerfile again with the team's ARG after each
    FROM, as a member at the path the engine reads it from (links resolved, so
    the member lands there), and that build arg."""
    name = _team_arg(job)
    try:
        scoped = cache_scope.scoped_dockerfile(found.data, name)
    except (DockerfileError, ValueError) as exc:
        raise BuildFailed(f"the Dockerfile cannot be read as the engine reads it: {exc}") from None
    return cache_scope.ContextWithFile(context, found.path, scoped, owners), {**buildargs, name: "1"}


def _team_arg(job) -> str:
    return cache_scope.arg_name(job.team_id, settings.SECRET_KEY, apart=fork_scope(job))


def _context_free_dockerfile(job, found: FoundDockerfile) -> bytes | None:
    """A Dockerfile given as text (no repository, no upload) with no COPY or ADD,
    scoped to the team as `_team_scoped` does: given to BuildKit's CLI on stdin
    with no context, as `docker build - < Dockerfile` does, rather than in a tar
    that BuildKit uploads (~120 ms more per build on a busy 2-core machine,
    docs/benchmarks.md). With a COPY or ADD the tar stays: what they may name
    (even the Dockerfile itself) is in it."""
    if not job.dockerfile or job.ref:
        return None
    try:
        if any(i.keyword in ("COPY", "ADD") for i in dockerfile_text.instructions(found.data)):
            return None
    except DockerfileError:
        return None  # the tar's way, where the engine says why
    scoped = cache_scope.scoped_dockerfile(found.data, _team_arg(job))
    return scoped if isinstance(scoped, bytes) else scoped.encode()


def refused_pull(job, image: str, message: str) -> str:
    """A registry's refusal of a pull, said as who may not read what."""
    who = f"team {job.team.slug}" if job.team else "a build of no team"
    try:
        host = parse_reference(image).registry
    except InvalidReference:
        host = ""
    if is_farm_registry(host):
        return f"{image}: {who} may not read it (the farm's registry refused the pull: {message})"
    return f"{image}: {who} may not read it with its account at {host or 'its registry'}, if any ({message})"


def _trigger_refusal(job, engine: EngineSession, text, buildargs: dict[str, str], images: list[str]) -> str:
    """Why a base image's ONBUILD triggers may not run in this build (they read
    an image its team may not read: builds/worker/base_triggers.py), or ''."""
    values = meta_args(text, buildargs)
    for image in images:
        try:
            triggers = base_triggers.triggers_of(engine, image, job.team_id)
        except base_triggers.Unreadable as exc:
            return f"{image}'s ONBUILD triggers cannot be checked: {exc}"
        for reference in trigger_images(triggers, values):
            if refusal := read_refusal(job.team, reference):
                return f"{image} has an ONBUILD trigger that reads {reference}, which this build may not: {refusal}"
    return ""


def _request(job, tag, dockerfile, buildargs, containment, secret_files) -> BuildKitRequest:
    return BuildKitRequest(
        tag=tag,
        dockerfile=dockerfile,
        buildargs=buildargs,
        labels=farm_labels(job),
        nocache=job.no_cache,
        pull=job.pull,
        target=job.target,
        network="none" if containment.engine_options.get("network_mode") == "none" else "",
        cache_namespace=cache_namespace(job),
        # A platform's child: the image's tags may be indexes, not this platform's layers.
        cache_from=[] if job.platform else pool_cache(job),
        secrets=secret_files,
        platform=job.platform,
        step_marker=containment.step_marker,
    )


def farm_labels(job) -> dict[str, str]:
    """The build's labels and the farm's own, which marks the images housekeeping
    may prune (pool/disk_prune.py); a build cannot take the farm's off."""
    return {**job.labels, FARM_LABEL: FARM_LABEL_VALUE}


def pool_cache(job) -> list[str]:
    """The cache candidates the registry has: BuildKit would print an ERROR
    line for each missing one, and a HEAD here is cheaper than its own look-up."""
    return [image for image in cache_candidates(job) if _in_registry(image, job.team_id)]


def cache_candidates(job) -> list[str]:
    """Where the pool's layers for this build may already be: the image's own
    tags as pushed before (every push carries BuildKit's inline cache), and its
    repository's default branch's last image, so a daemon that never built it,
    or a branch's first build, reuses them from the registry."""
    own = [f"{job.image_repository}:{tag}" for tag in [*job.tags, "latest"]]
    return list(dict.fromkeys([*own, *_default_branch_image(job)]))


def _in_registry(image: str, team_id: int | None) -> bool:
    """One HEAD of the manifest, as the build's team; False when the registry
    cannot say (a cache source is worth no failure and no long wait)."""
    reference = parse_reference(image)
    login = registry_accounts.registry_login(reference.registry, team_id)
    api = RegistryAPI(reference.registry, **login, timeout=CACHE_LOOKUP_SECONDS)
    with api:
        try:
            return api.has(repository_path(reference.repository, reference.registry), reference.tag or "latest")
        except RegistryError:
            return False


def _default_branch_image(job) -> list[str]:
    repository = job.repository
    if repository is None or not repository.default_branch:
        return []
    last = (
        BuildJob.objects.filter(
            repository=repository, ref=f"refs/heads/{repository.default_branch}", status=BuildJob.Status.SUCCEEDED
        )
        .order_by("-finished_at")
        .values_list("image", flat=True)
        .first()
    )
    return [last] if last else []


def cache_namespace(job) -> str:
    """Per repository, else per image repository: never a "/", so never a path.
    A fork's pull request has its own, so its cache mounts reach no other build."""
    owner = f"repository-{job.repository_id}" if job.repository_id else f"image-{job.image_repository}"
    return hashlib.sha256((owner + fork_scope(job)).encode()).hexdigest()[:24]


def fork_scope(job) -> str:
    """'' for any build but a fork's pull request, which is kept apart per pull request."""
    return f"fork-pull-request-{job.pull_request}" if job.fork else ""


def daemon_address(access: dict) -> DaemonAddress:
    """The CLI's way to the daemon from docker-py's client settings (pool/tls.py)."""
    tls = access.get("tls")
    if not tls:
        return DaemonAddress(access["base_url"])
    cert, key = tls.cert
    return DaemonAddress(access["base_url"], tls_ca=tls.ca_cert, tls_cert=cert, tls_key=key)


def _dockerfile_in(context: BinaryIO, path: str) -> FoundDockerfile:
    """The Dockerfile BuildKit will read from the tar context (left at its start),
    and where, found as it finds it (builds/dockerfiles/in_context.py);
    BuildFailed, naming the path and why, where the farm cannot tell or read it:
    the checks above never pass an empty text in its place."""
    try:
        return read_dockerfile(context, path, limit=settings.GENERATOR_MAX_DOCKERFILE_BYTES)
    except UnreadableDockerfile as exc:
        raise BuildFailed(str(exc)) from None
