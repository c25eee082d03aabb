"""One attempt of a build job, run inside the Celery worker of the job's daemon."""

from __future__ import annotations

import logging

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings

from . import transitions
from .engine import EngineError, EngineSession, PushResult, dockerfile_context
from .logs import LogWriter
from .models import BuildJob
from .references import parse_build_target

logger = logging.getLogger(__name__)


def run_build(job_id: str, attempt: int, worker: str) -> None:
    """Claims, builds, pushes and records one attempt.

    1. Claim: queued -> building for this attempt (transitions.claim). A message
       delivered twice finds the job no longer queued and does nothing, so one
       attempt is never built twice at once.
    2. Build on the job's daemon, then push, streaming every line into the log.
       The push starts only after the build has produced its image.
    3. Record the outcome: succeeded with image id and digest, or failed with the
       reason. Step 3 runs whatever step 2 raised: no job is left building.
    """
    if not transitions.claim(job_id, attempt, worker):
        logger.info("job %s attempt %s is not queued any more; nothing to do", job_id, attempt)
        return
    job = BuildJob.objects.select_related("daemon").get(pk=job_id)
    log = LogWriter(
        job.id,
        last_seq=job.log_line_count,
        batch_lines=settings.GENERATOR_LOG_BATCH_LINES,
        flush_seconds=settings.GENERATOR_LOG_FLUSH_SECONDS,
    )
    try:
        pushed = _build_and_push(job, log)
    except EngineError as exc:
        _fail(job, log, str(exc))
    except SoftTimeLimitExceeded:
        _fail(job, log, f"timed out after {settings.GENERATOR_BUILD_TIMEOUT} s")
    except Exception as exc:
        logger.exception("job %s failed inside the worker", job.id)
        _fail(job, log, f"internal error in the build worker: {exc.__class__.__name__}: {exc}")
    else:
        log.write(f"[generator] Pushed {job.image}@{pushed.digest}")
        log.flush()
        transitions.succeed(job.id, attempt, pushed.digest)


def _build_and_push(job: BuildJob, log: LogWriter) -> PushResult:
    daemon = job.daemon
    if daemon is None:
        raise EngineError("the Docker daemon this job was assigned to has been removed from the pool")
    target = parse_build_target(job.image)
    session = EngineSession(
        daemon.url,
        api_version=settings.GENERATOR_DOCKER_API_VERSION,
        timeout=settings.GENERATOR_DOCKER_TIMEOUT,
    )
    with session:
        log.write(f"[generator] Building {target} on {daemon.name} (attempt {job.attempt})")
        image_id = log.pump(
            lambda emit: session.build(dockerfile_context(job.dockerfile), tag=str(target), on_line=emit)
        )
        log.write(f"[generator] Built {image_id}")
        log.flush()
        if not transitions.start_push(job.id, job.attempt, image_id):
            raise EngineError("the job stopped being active during the build")
        log.write(f"[generator] Pushing {target}")
        return log.pump(lambda emit: session.push(target.repository, target.tag, on_line=emit))


def _fail(job: BuildJob, log: LogWriter, reason: str) -> None:
    try:
        log.write(f"[generator] Build failed: {reason}")
        log.flush()
    except Exception:
        # The status matters more than the last line: record it regardless.
        logger.exception("could not store the last log lines of job %s", job.id)
    transitions.fail(job.id, job.attempt, reason)
