"""One attempt of a build job, run inside the Celery worker of the job's daemon."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from typing import BinaryIO, NoReturn

from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.utils import timezone

from builds.engine.docker import (
    DaemonUnavailable,
    EngineError,
    EngineSession,
    PushFailed,
    PushResult,
    dockerfile_context,
)
from builds.jobs import daemon_usage as farm_housekeeping
from builds.jobs import transitions
from builds.jobs.dispatch import dispatch
from builds.jobs.limits import buildkit_share, limits_for
from builds.jobs.multiplatform import mirror_into_parent
from builds.logs.steps import StepTimes
from builds.logs.writer import LogLimitExceeded, LogWriter
from builds.metrics import figures as metrics
from builds.models import BuildContext, BuildJob
from builds.provenance.slsa import FromLines
from builds.registry import usage as registry_usage
from builds.registry.accounts import push_auth
from builds.registry.client import repository_path
from builds.sources.changed_files import git_source
from builds.sources.git import SourceError
from builds.triggers import base_images
from builds.uploads import store as context_store
from builds.worker import attestation_reads, attestations, builders, phase_times
from builds.worker.containment import contained
from lib import db_sessions, egress
from lib.references import parse_build_target
from pool import disk_prune as housekeeping
from pool import disks, health
from pool.tls import InsecureEngineAddress, client_settings

logger = logging.getLogger(__name__)

LOG_LINES, PUSH_RETRIES = "generator_worker_log_lines_written_total", "generator_worker_push_retries_total"


class Interrupted(Exception):
    """The attempt must stop before it ends by itself."""


class Cancelled(Interrupted):
    pass


class TimedOut(Interrupted):
    pass


class Preempted(Interrupted):
    """The fair share wants the slot back (builds/jobs/preemption.py): the build goes back to the queue."""


class AttemptLost(Interrupted):
    """Someone else decided this attempt's fate (the reaper took the worker for
    dead): stop and write nothing more."""


class Watch:
    """The attempt's heartbeat and deadline, checked between log lines.

    Renews the lease every `GENERATOR_HEARTBEAT_SECONDS`; a renewal that matches
    no row means the attempt was cancelled or taken away.
    """

    def __init__(self, job: BuildJob) -> None:
        self.job_id, self.attempt = job.id, job.attempt
        self.disk: disks.FullestWatch | None = None  # the daemon's data root, where this host sees it
        self.timeout = (job.repository and job.repository.build_timeout) or settings.GENERATOR_BUILD_TIMEOUT
        self.deadline = time.monotonic() + self.timeout
        self.last_beat = time.monotonic()

    def tick(self) -> None:
        if self.disk is not None:
            self.disk.sample()
        now = time.monotonic()
        if now >= self.deadline:
            raise TimedOut()
        if now - self.last_beat < settings.GENERATOR_HEARTBEAT_SECONDS:
            return
        self.last_beat = now
        try:
            renewed = transitions.renew_lease(self.job_id, self.attempt, settings.GENERATOR_LEASE_SECONDS)
        except (OperationalError, InterfaceError) as exc:
            # No session to be had (too many connections): the lease outlasts a
            # few missed beats, so try again in a second rather than fail the build.
            logger.warning("job %s: could not renew the lease (%s)", self.job_id, str(exc).strip()[:200])
            db_sessions.release()
            self.last_beat = now - settings.GENERATOR_HEARTBEAT_SECONDS + 1
            return
        if not renewed:
            self.stop()

    def stop(self) -> NoReturn:
        """Raises why this attempt may not go on: a cancel, or someone else took it."""
        job = BuildJob.objects.only("status", "attempt", "cancel_requested_at", "preempt_requested_at").get(
            pk=self.job_id
        )
        if job.attempt == self.attempt and job.status in transitions.RUNNING:
            if job.cancel_requested_at:
                raise Cancelled()
            if job.preempt_requested_at:
                raise Preempted()
        raise AttemptLost()

    def sleep(self, seconds: float) -> None:
        db_sessions.release()  # a wait: the heartbeat opens one when it beats
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(min(0.2, max(end - time.monotonic(), 0)))
            self.tick()


def run_build(job_id: str, attempt: int, daemon_id: int, worker: str) -> None:
    """Claims, builds, pushes and records one attempt.

    1. Claim: queued -> building for this attempt on this daemon
       (transitions.claim). A message delivered twice, or one for a daemon the
       job was since taken from, finds nothing to claim: one attempt is never
       built twice at once.
    2. Build, then push, streaming every line into the log; the heartbeat
       renews the lease and notices a cancel or the timeout.
    3. Record the outcome. Whatever step 2 raised, the job ends in a true state
       (succeeded, failed with the reason, cancelled) or goes back to the farm's
       queue as the next attempt when the daemon was lost.
    """
    claim = partial(transitions.claim, job_id, attempt, daemon_id, worker, settings.GENERATOR_LEASE_SECONDS)
    if not db_sessions.retrying(claim, f"claim job {job_id}"):
        logger.info("job %s attempt %s is not queued for daemon %s any more; nothing to do", job_id, attempt, daemon_id)
        return
    phase_times.mark("claimed")
    logger.info("job %s attempt %s claimed by %s", job_id, attempt, worker)
    job = BuildJob.objects.select_related("daemon", "cancelled_by", "repository", "team").get(pk=job_id)
    daemon_name = job.daemon.name if job.daemon else ""
    steps = StepTimes()
    froms = FromLines()  # the base images, as the builder named them: for the provenance

    lines_stored = 0

    def stored(batch: list[tuple[int, str]]) -> None:
        nonlocal lines_stored
        lines_stored += len(batch)
        for _, text in batch:
            steps.feed(text)
            froms.feed(text)

    log = LogWriter(
        job.id,
        last_seq=job.log_line_count,
        batch_lines=settings.GENERATOR_LOG_BATCH_LINES,
        flush_seconds=settings.GENERATOR_LOG_FLUSH_SECONDS,
        on_stored=stored,
        team_max_lines=job.team.max_log_lines if job.team else None,
    )
    if job.parent_id:  # a platform of a multi-platform build: its lines in the parent's log too
        log.mirror = mirror_into_parent(job)
    try:
        _record(job, log, froms)
        _record_steps(job, steps)
    finally:
        # Counted once the job has ended, not at each batch: a round trip to Redis on the way of every line.
        metrics.count_worker(LOG_LINES, daemon_name, lines_stored)
        try:
            dispatch()  # a slot is free: start the next waiting job now, not at the next beat
        except Exception:
            logger.warning("could not dispatch after job %s", job.id, exc_info=True)
        phase_times.mark("dispatched")


def _record(job: BuildJob, log: LogWriter, froms: FromLines) -> None:
    watch = Watch(job)
    try:
        pushed = _build_and_push(job, log, watch, froms)
    except AttemptLost:
        logger.warning("job %s attempt %s was taken from this worker; stopping", job.id, job.attempt)
    except Cancelled:
        job.refresh_from_db(fields=["cancelled_by", "superseded_by"])
        _end(job, log, f"Cancelled by {_canceller(job)}", transitions.finish_cancelled)
    except Preempted:
        job.refresh_from_db(fields=["error"])
        _end(
            job,
            log,
            f"{job.error}; back in the farm's queue as attempt {job.attempt + 1}",
            lambda i, a: transitions.requeue(i, a, job.error),
        )
    except TimedOut:
        _fail(job, log, f"timed out after {watch.timeout} s")
    except LogLimitExceeded as exc:
        _fail(job, log, str(exc))
    except SourceError as exc:
        _fail(job, log, str(exc))
    except EngineError as exc:
        if _out_of_disk(exc):
            _disk_full(job, log, exc)
        elif (disk := _full_data_disk(job, exc, watch)) is not None:
            _step_filled_disk(job, log, exc, disk)
        elif exc.transient:
            _retry_elsewhere(job, log, exc)
        else:
            _fail(job, log, str(exc))
    except Exception as exc:
        logger.exception("job %s failed inside the worker", job.id)
        _fail(job, log, f"internal error in the build worker: {exc.__class__.__name__}: {exc}")
    else:
        if isinstance(pushed, Unpushed):
            ended = partial(_succeed_unpushed, image_id=pushed.image_id)
            _end(job, log, f"Built {job.image}, not pushed: {job.not_pushed}", ended)
            return
        _end(job, log, f"Pushed {job.image}@{pushed.digest}", lambda i, a: transitions.succeed(i, a, pushed.digest))
        # What the team's tags take in the farm's registry now (its quota: builds/registry/usage.py), read
        # back after the job's end, which need not wait for it: a miss is healed by the next recount.
        registry_usage.record_push(job.team_id, job.image_repository, job.tags, pushed.digest, pushed.signed)
        phase_times.mark("usage_recorded")
        _record_base_images(job, froms)


@dataclass(frozen=True)
class Pushed:
    digest: str
    signed: dict[str, dict[str, int]]  # the `.sig` and `.att` tags the worker wrote: {tag: {digest: size}}


@dataclass(frozen=True)
class Unpushed:
    """A build that is only built (a pull request's check: BuildJob.not_pushed)."""

    image_id: str


def _succeed_unpushed(job_id: str, attempt: int, *, image_id: str) -> bool:
    return transitions.succeed_unpushed(job_id, attempt, image_id)


def _canceller(job: BuildJob) -> str:
    if job.superseded_by_id:
        return f"a newer push ({job.superseded_by_id})"
    if job.cancelled_by is None and job.pull_request is not None:
        return f"the close of pull request #{job.pull_request}"
    return str(job.cancelled_by or "an operator")


def _record_base_images(job: BuildJob, froms: FromLines) -> None:
    """The images a default-branch build was built FROM, for base-image updates: never fails the build."""
    try:
        base_images.record(job, froms)
    except Exception:
        logger.warning("could not record the base images of job %s", job.id, exc_info=True)


def _record_steps(job: BuildJob, steps: StepTimes) -> None:
    """The attempt's BuildKit step timings, for /insights/: never fails the build."""
    try:
        metrics.record_steps(job.repository.full_name if job.repository else "", steps.timings, timezone.now().date())
    except Exception:
        logger.warning("could not record the step timings of job %s", job.id, exc_info=True)


def _build_and_push(job: BuildJob, log: LogWriter, watch: Watch, froms: FromLines) -> Pushed | Unpushed:
    daemon = job.daemon
    if daemon is None:
        raise EngineError("the Docker daemon this job was assigned to has been removed from the pool")
    target = parse_build_target(job.image)
    try:
        access = client_settings(daemon)
    except InsecureEngineAddress as exc:  # a row older than the rule: the daemon's fault, not the build's
        raise DaemonUnavailable(str(exc)) from exc
    session = _engine_session(access)
    session.ask_info_now()  # the data root and remapped root, asked while the source and cgroup are made
    phase_times.mark("engine_ready")
    with session:
        platform = f" for {job.platform}" if job.platform else ""
        log.write(f"[generator] Building {target}{platform} on {daemon.name} (attempt {job.attempt})")
        network = job.repository.network if job.repository else ""
        limits = limits_for(daemon, job.repository)
        with (
            _source(job, log, watch) as (context, dockerfile, buildargs),
            contained(
                daemon.name,
                job.id,
                job.attempt,
                limits,
                network=network,
                builder=job.builder,
                share=buildkit_share(job.builder, daemon.capacity),
            ) as containment,
        ):
            log.write(f"[generator] {containment.summary}")
            phase_times.mark("contained")
            _measure_data_disk(session, daemon, watch)
            phase_times.mark("disk_measured")
            ran_with = dict(buildargs)  # the build args as given, before the farm adds its own
            image_id = builders.build(
                job, session, access, context, dockerfile, buildargs, containment, log, watch, str(target), froms
            )
            phase_times.mark("build_done")
        phase_times.mark("uncontained")
        log.write(f"[generator] Built {image_id}")
        log.flush()  # every FROM line stored, so read into `froms`, before the daemon is asked about them
        base_images.resolve_on_daemon(job, session, froms)
        phase_times.mark("bases_resolved")
        if job.not_pushed:
            return Unpushed(image_id)
        for tag in job.extra_tags:
            session.tag(image_id, target.repository, tag)
        log.flush()
        if not transitions.start_push(job.id, job.attempt, image_id):
            watch.stop()
        phase_times.mark("push_started")
        # What the attestations read from the daemon, read while the image is pushed.
        reading = _start_reading(access, froms, job) if settings.GENERATOR_ATTESTATIONS else None
        # Every tag of the build; they share one manifest, so one digest.
        pushed = [
            _push(session, replace(target, tag=tag), log, watch, daemon.name, job.team_id)
            for tag in [target.tag, *job.extra_tags]
        ]
        phase_times.mark("pushed")
        signed = {}
        if reading is not None:
            signed = _attest(job, session, pushed[0].digest, froms, ran_with, log, watch, reading)
            phase_times.mark("attested")
        return Pushed(pushed[0].digest, signed)


def _measure_data_disk(session: EngineSession, daemon, watch: Watch) -> None:
    """The data root's disk, as the build starts: watched while it runs (a step that fills it)."""
    if disk := disks.measure_by(session.info, daemon.name):
        if disk.size != daemon.data_disk_bytes:
            disks.record_size(daemon.pk, disk)
        watch.disk = disks.FullestWatch(disk)


def _engine_session(access: dict) -> EngineSession:
    return EngineSession(
        **access, api_version=settings.GENERATOR_DOCKER_API_VERSION, timeout=settings.GENERATOR_DOCKER_TIMEOUT
    )


def _start_reading(access: dict, froms: FromLines, job: BuildJob) -> attestation_reads.Reading:
    """The build's lines are all stored (and fed to `froms`) before its push starts."""
    bases = list(froms.images.values())
    return attestation_reads.Reading(partial(_engine_session, access), bases)


def _attest(job: BuildJob, session: EngineSession, digest: str, froms, build_args, log, watch, reading):
    """Signed provenance, SBOM and signature next to the pushed image (builds/worker/attestations.py);
    answers what the `.sig` and `.att` tags it wrote name."""
    log.write(f"[generator] Signing {job.image_repository}@{digest}: provenance and SBOM")
    log.flush()
    db_sessions.release()  # reading the image's layers may take a while
    attached = attestations.attest_image(job, session, digest, froms, build_args, tick=watch.tick, reading=reading)
    log.write(
        f"[generator] Signed: {attached.signature_tag}, provenance and SBOM ({attached.packages} packages) in "
        f"{attached.attestation_tag}"
    )
    return attached.written


@contextmanager
def _source(job: BuildJob, log: LogWriter, watch: Watch) -> Iterator[tuple[BinaryIO, str, dict[str, str]]]:
    """The build context as a stream for the daemon (closed, and a temporary
    file removed, on leaving), the Dockerfile's path in it, and the build args."""
    repository = job.repository
    if not job.dockerfile and not job.ref:  # an uploaded context, from the context store
        try:
            # A multi-platform child builds its parent's upload.
            upload = BuildContext.objects.filter(job_id=job.parent_id or job.id).first()
            with context_store.opened(upload) as context:
                yield context, job.dockerfile_path, dict(job.build_args)
        except context_store.ContextGone as exc:
            raise SourceError(f"the build cannot run: {exc}") from None
        return
    if not job.ref:
        yield io.BytesIO(dockerfile_context(job.dockerfile)), "Dockerfile", dict(job.build_args)
        return
    if repository is None:
        raise SourceError("the repository of this build was removed")
    source = git_source(repository)
    if not job.commit_sha:  # a build of a ref (REST API): the commit it points to now
        job.commit_sha = log.pump(lambda emit: source.resolve(job.ref, on_line=emit), tick=watch.tick)
        BuildJob.objects.filter(pk=job.pk).update(commit_sha=job.commit_sha)
    # A temporary file with no name: gone from the disk once closed, whatever happens.
    context = log.pump(
        lambda emit: source.context(
            job.commit_sha, repository.context_dir, max_bytes=settings.GENERATOR_MAX_CONTEXT_BYTES, on_line=emit
        ),
        tick=watch.tick,
    )
    with context:
        yield context, repository.dockerfile_path, {**repository.build_args, **job.build_args}


def _push(
    session: EngineSession, target, log: LogWriter, watch: Watch, daemon_name: str, team_id: int | None
) -> PushResult:
    tries = settings.GENERATOR_PUSH_TRIES
    registry = target.registry
    # The farm's registry: a token for this repository; elsewhere the team's own account, else the farm's.
    credentials = push_auth(registry, team_id, repository_path(target.repository, registry))
    for number in range(1, tries + 1):
        log.write(f"[generator] Pushing {target}" + (f" (try {number} of {tries})" if number > 1 else ""))
        try:
            return log.pump(
                lambda emit: session.push(target.repository, target.tag, on_line=emit, credentials=credentials),
                tick=watch.tick,
                abort=session.abort,
            )
        except PushFailed as exc:
            if not exc.transient:
                # The farm's registry refused it because the team is over its quota: say so, not just "denied".
                if why := registry_usage.push_refusal(registry, team_id):
                    raise PushFailed(f"{why} ({exc})") from exc
                raise
            if number == tries:
                raise PushFailed(f"registry {registry} did not take the push after {tries} tries: {exc}") from exc
            delay = settings.GENERATOR_PUSH_BACKOFF_SECONDS * 2 ** (number - 1)
            log.write(f"[generator] {exc}; trying again in {delay:g} s")
            metrics.count_worker(PUSH_RETRIES, daemon_name)
            log.flush()
            watch.sleep(delay)
    raise AssertionError("unreachable")


def _out_of_disk(exc: EngineError) -> bool:
    """The daemon's own error said its disk is full. Not a push's (that is the
    registry's disk), nor a RUN step's exit (what a step prints is the build's to
    say, and the step failed with its own message)."""
    if isinstance(exc, PushFailed) or getattr(exc, "exit_code", None) is not None:
        return False
    return housekeeping.is_disk_full(str(exc))


def _disk_full(job: BuildJob, log: LogWriter, exc: EngineError) -> None:
    """The daemon's disk filled during the build: the daemon's fault, not the
    Dockerfile's. It takes no builds until a prune brings it under its limits,
    and the build goes to another daemon as its next attempt (failing with the
    reason when attempts run out), as when a daemon is lost."""
    reason = f"the Docker daemon {job.daemon.name} ran out of disk space ({exc})"
    housekeeping.mark_disk_full(job.daemon_id, reason)
    _retry_elsewhere(job, log, EngineError(reason, transient=True))


def _full_data_disk(job: BuildJob, exc: EngineError, watch: Watch) -> disks.DataDisk | None:
    """The daemon's data root filesystem at its fullest during the build, if a
    RUN step failed and it was full. Measured (sampled as the build ran, and
    now), never read from the step's output: what a step prints is the build's
    to say."""
    if isinstance(exc, PushFailed) or getattr(exc, "exit_code", None) is None or watch.disk is None:
        return None
    watch.disk.sample(now=True)
    fullest = watch.disk.fullest
    return fullest if fullest.full else None


def _step_filled_disk(job: BuildJob, log: LogWriter, exc: EngineError, disk: disks.DataDisk) -> None:
    """A RUN step failed with its daemon's disk full. The build fails, naming the
    disk, rather than go to another daemon: the step's own writes may be what
    filled it (the farm cannot tell from its exit), and they would fill the next
    daemon's disk too. The daemon takes no builds until a prune, asked for now,
    brings it under its disk policy (held within the disk's size)."""
    name = job.daemon.name
    reason = f"the Docker daemon {name}'s disk is full ({disk.describe()}) after a RUN step failed: {exc}"
    housekeeping.mark_disk_full(job.daemon_id, reason)
    farm_housekeeping.prune_soon(job.daemon_id)
    _fail(job, log, reason)


def _retry_elsewhere(job: BuildJob, log: LogWriter, exc: EngineError) -> None:
    """The daemon (not the Dockerfile) failed: take the daemon out of service and
    give the build to another as the next attempt, while attempts remain."""
    if isinstance(exc, DaemonUnavailable) and job.daemon_id:
        health.mark_unreachable(job.daemon_id, str(exc))
    if job.attempt >= settings.GENERATOR_MAX_ATTEMPTS:
        _fail(job, log, f"{exc} (gave up after {job.attempt} attempts)")
        return
    _end(
        job,
        log,
        f"{exc}; trying again (attempt {job.attempt + 1} of {settings.GENERATOR_MAX_ATTEMPTS})",
        lambda i, a: transitions.requeue(i, a, str(exc)),
    )


def _fail(job: BuildJob, log: LogWriter, reason: str) -> None:
    if why := egress.explain(reason):  # "connection refused" alone reads like the farm's fault
        reason = f"{reason}; {why}"
    _end(job, log, f"Build failed: {reason}", lambda i, a: transitions.fail(i, a, reason))


def _end(job: BuildJob, log: LogWriter, last_line: str, transition) -> None:
    """The attempt's last line, then its state: a viewer who sees the state has the line."""
    logger.info("job %s attempt %s: %s", job.id, job.attempt, last_line)
    try:
        log.write(f"[generator] {last_line}")
        log.flush()
    except Exception:
        # The state matters more than the line: record it regardless.
        logger.exception("could not store the last log lines of job %s", job.id)
    # Retried while no session can be had: a build that ran must not be built again for it.
    db_sessions.retrying(partial(transition, job.id, job.attempt), f"record the outcome of job {job.id}")
    phase_times.mark("ended")
