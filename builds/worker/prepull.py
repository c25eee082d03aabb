"""Warm daemons: after a push, the other daemons that may build the image pull
it, so that the next build there finds every layer of BuildKit's cache import
in its own store (docs/operating-the-pool.md, "Warm daemons").

1. Asking. A pushed build's `succeeded` event (builds/signals.py, after commit,
   in the worker that pushed) names the daemons pool/prepull.py `targets`
   chooses: its daemon group's, taking builds, same platform, under their
   images limit. Not a pull request's build that is not pushed, not a
   multi-platform build (its children's tags are helpers, its index no
   daemon's image). Each (daemon, digest) is asked once at a time: a Redis key
   set with NX, gone when its warm ends.
2. Sending. One `builds.prepull` task per daemon, on that daemon's own queue,
   so a worker that reaches the daemon runs it (on its host, where it can
   measure the daemon's data disk). It goes at priority 9: kombu's Redis
   transport keeps a queue's messages in one list per priority step and
   takes from the list of 0 (every build's) first.
3. Pulling, never in a build's way. One warm per daemon at a time (a Redis
   lock); none while a build is given to the daemon (queued for it, building
   or pushing) and, while it pulls, a thread looks every POLL_SECONDS: a build
   given to the daemon meanwhile cuts the pull (the daemon stops it) and the
   warm is tried again RETRY_SECONDS later, at most TRIES times. So a warm
   holds no worker process a build needs for longer than a poll, and never
   shares the daemon's disk or network with a build for longer than that.
   Not pulled: an image the daemon holds, nor onto a daemon that stopped
   taking builds, or whose data disk is GENERATOR_PREPULL_MAX_DISK_FRACTION
   used or more.
4. What it leaves. The image the farm built carries its label
   (pool/disk_prune.py FARM_LABEL), pulled by digest, and tagged as the push
   tagged it where the registry still gives that tag this digest (a late warm
   moves no tag back to an older image): the next build's `--cache-from` of
   the tag then reads the inline cache from the daemon's own store, as on the
   daemon that built it (Docker 20.10's local importer, builder-next
   localinlinecache), not from the registry (a token, the manifest and the
   config: ~0.1 s of the build step, docs/benchmarks.md). A build that names
   the tag is checked against its team's read access before it runs
   (builds/worker/builders.py), as on the daemon that built it. The prune
   removes the image like any of the farm's, least recently tagged first. Its
   base images need no pull of their own: their layers are the image's lowest
   ones. What each warm cost is counted per daemon
   (`generator_worker_prepull_*` on /metrics).
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
from contextlib import suppress

import redis
from celery import current_app
from django.conf import settings
from django.db import close_old_connections, connection

from builds.engine.docker import EngineError, EngineSession, PullResult
from builds.metrics import figures as metrics
from builds.models import BuildJob
from builds.registry.accounts import pull_auth, registry_login
from builds.registry.client import ANY, RegistryAPI, RegistryError, repository_path
from lib.redis_clients import farm_redis
from lib.references import parse_reference
from pool import disks
from pool import prepull as policy
from pool.models import DockerDaemon
from pool.tls import InsecureEngineAddress, client_settings

logger = logging.getLogger(__name__)

PREPULL_TASK = "builds.prepull"
PRIORITY = 9  # the lowest of kombu's Redis priority steps (0, 3, 6, 9); builds' messages have none: 0
POLL_SECONDS = 0.2
MANIFEST_SECONDS = 10
RETRY_SECONDS = 15
TRIES = 20
ASKED_SECONDS = 3600  # a (daemon, digest) asked is not asked again for this long, unless its warm ended
LOCK_SECONDS = 1800  # one warm per daemon; a worker that died with the lock holds it no longer
PREFIX = "generator:prepull:"
PULLS, BYTES, MILLISECONDS = (
    "generator_worker_prepulls_total",
    "generator_worker_prepull_bytes_total",
    "generator_worker_prepull_milliseconds_total",
)


def on_job_event(sender, job_id: str, event: str, **kwargs) -> None:
    """`job_event`'s receiver: a pushed build warms the other daemons that may build its image."""
    if event != "succeeded" or not settings.GENERATOR_PREPULL_ENABLED:
        return
    job = BuildJob.objects.select_related("daemon", "repository").filter(pk=job_id).first()
    if job is None or not pushed_image(job):
        return
    group = job.daemon_group
    daemons = DockerDaemon.objects.filter(group=group)
    for daemon in policy.targets(daemons, job.daemon, group, job.image_repository, settings.GENERATOR_PREPULL_DAEMONS):
        ask(daemon, job.image_repository, job.digest, job.team_id, job.tags)


def pushed_image(job: BuildJob) -> bool:
    """A build whose image was pushed, by digest, from a daemon: a pull request's
    unpushed build and a multi-platform build's parent or children are not."""
    return bool(
        job.status == BuildJob.Status.SUCCEEDED
        and job.digest
        and not job.not_pushed
        and job.daemon_id
        and not job.platform
        and not job.platforms
        and job.parent_id is None
    )


def ask(daemon: DockerDaemon, repository: str, digest: str, team_id: int | None, tags: list[str]) -> bool:
    """Sends the daemon's warm for repository@digest (pushed as `tags`), unless one is asked already. True if sent."""
    try:
        if not farm_redis().set(_asked_key(daemon.pk, digest), "1", nx=True, ex=ASKED_SECONDS):
            return False
        current_app.send_task(
            PREPULL_TASK,
            args=[daemon.pk, repository, digest, team_id, 0, tags],
            queue=daemon.queue,
            priority=PRIORITY,
        )
    except Exception:  # a warm is worth no failure: the next push asks again
        logger.warning("could not ask daemon %s to pull %s@%s", daemon.name, repository, digest, exc_info=True)
        return False
    return True


def warm(
    daemon_id: int, repository: str, digest: str, team_id: int | None, tries: int = 0, tags: list[str] | None = None
) -> str:
    """The task's work, on the daemon's worker: pulls repository@digest onto the
    daemon unless a bound says no, and tags it as pushed (`tags`: see the
    module's doc). Answers what it did, in words, as its log line says it."""
    tags = tags or []
    daemon = DockerDaemon.objects.filter(pk=daemon_id).first()
    reference = f"{repository}@{digest}"
    if daemon is None:
        return _done(daemon_id, digest, f"{reference}: no daemon {daemon_id} any more")
    if not daemon.takes_builds:
        return _done(daemon_id, digest, f"{reference} not pulled on {daemon.name}: it takes no builds")
    lock = secrets.token_hex(8)
    lock_key = f"{PREFIX}daemon:{daemon_id}"
    if not farm_redis().set(lock_key, lock, nx=True, ex=LOCK_SECONDS):
        return _again(daemon, repository, digest, team_id, tries, tags, "another warm runs there")
    try:
        if _build_given(daemon_id):
            return _again(daemon, repository, digest, team_id, tries, tags, "a build runs there")
        return _pull(daemon, repository, digest, team_id, tries, tags)
    finally:
        _release(lock_key, lock)


def _pull(daemon: DockerDaemon, repository: str, digest: str, team_id: int | None, tries: int, tags: list[str]) -> str:
    reference = f"{repository}@{digest}"
    try:
        access = client_settings(daemon)
    except InsecureEngineAddress as exc:
        return _done(daemon.pk, digest, f"{reference} not pulled on {daemon.name}: {exc}")
    timeout = settings.GENERATOR_DOCKER_TIMEOUT
    disk = disks.measure(daemon, api_version=settings.GENERATOR_DOCKER_API_VERSION, timeout=timeout)
    if refusal := policy.disk_refusal(disk, settings.GENERATOR_PREPULL_MAX_DISK_FRACTION):
        return _done(daemon.pk, digest, f"{reference} not pulled on {daemon.name}: {refusal}")
    host = parse_reference(repository).registry
    path = repository_path(parse_reference(repository).repository, host)
    credentials = pull_auth(host, team_id, path)
    session = EngineSession(**access, api_version=settings.GENERATOR_DOCKER_API_VERSION, timeout=timeout)
    with session:
        try:
            if session.holds(reference):
                tagged = _tag_as_pushed(session, repository, digest, _current_tags(host, team_id, path, digest, tags))
                return _done(daemon.pk, digest, f"{reference} is on {daemon.name} already{tagged}")
            with _BuildWatch(daemon.pk, session) as watch:
                try:
                    pulled = session.pull(repository, digest, credentials=credentials)
                except EngineError:
                    if not watch.build_came:
                        raise
            if watch.build_came:
                return _again(daemon, repository, digest, team_id, tries, tags, "a build came while it pulled")
            tagged = _tag_as_pushed(session, repository, digest, _current_tags(host, team_id, path, digest, tags))
        except EngineError as exc:
            return _done(daemon.pk, digest, f"{reference} not pulled on {daemon.name}: {exc}", warning=True)
    fetched = _fetched_bytes(pulled, host, team_id, path, digest)
    _count(daemon.name, fetched, pulled.seconds)
    return _done(
        daemon.pk,
        digest,
        f"{reference} pulled on {daemon.name}: {fetched} bytes in {pulled.seconds:.3f} s"
        f" ({len(pulled.fetched)} layer(s) fetched, {pulled.held} held already){tagged}",
    )


def _current_tags(host: str, team_id: int | None, path: str, digest: str, tags: list[str]) -> list[str]:
    """The pushed tags the registry still gives `digest` (one HEAD each): a warm
    that comes after a later push of the same tag leaves that tag where it is.
    No tag where the registry cannot say: the layers are warm all the same."""
    if not tags:
        return []
    try:
        with RegistryAPI(host, **registry_login(host, team_id), timeout=MANIFEST_SECONDS) as api:
            return [tag for tag in tags if _digest_of(api, path, tag) == digest]
    except RegistryError:
        return []


def _digest_of(api: RegistryAPI, path: str, tag: str) -> str:
    response = api.head_manifest(path, tag, ", ".join(ANY))
    return response.headers.get("Docker-Content-Digest", "") if response.status_code == 200 else ""


def _tag_as_pushed(session: EngineSession, repository: str, digest: str, tags: list[str]) -> str:
    """Tags the daemon's repository@digest as `tags`, so that the next build's
    `--cache-from` of them reads the inline cache from the daemon's own store
    (the module's doc, 4). Answers what it tagged, in words."""
    try:
        for tag in tags:
            session.tag(f"{repository}@{digest}", repository, tag)
    except EngineError as exc:  # the layers are warm all the same
        return f"; not tagged: {exc}"
    return f"; tagged {', '.join(tags)}" if tags else ""


def _fetched_bytes(pulled: PullResult, host: str, team_id: int | None, path: str, digest: str) -> int:
    """The compressed size of the layers the pull fetched, from the image's
    manifest (the daemon's progress says nothing of a layer of a few bytes);
    what the progress said where the manifest cannot be read."""
    try:
        with RegistryAPI(host, **registry_login(host, team_id), timeout=MANIFEST_SECONDS) as api:
            stored = api.stored(path, digest)
        layers = json.loads(stored[1])["layers"] if stored else []
        sizes = {layer["digest"].removeprefix("sha256:")[:12]: int(layer["size"]) for layer in layers}
        return sum(sizes[layer] for layer in pulled.fetched)
    except (RegistryError, ValueError, KeyError, TypeError):
        return pulled.reported_bytes


class _BuildWatch:
    """A thread that asks, every POLL_SECONDS while the pull runs, whether a build
    was given to the daemon, and cuts the pull if so (`session.abort`)."""

    def __init__(self, daemon_id: int, session: EngineSession) -> None:
        self.daemon_id, self.session = daemon_id, session
        self.build_came = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prepull-watch", daemon=True)

    def __enter__(self) -> _BuildWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            while not self._stop.wait(POLL_SECONDS):
                # Once a build came, cut again at each poll: the first may come before the stream starts.
                if self.build_came or _build_given(self.daemon_id):
                    self.build_came = True
                    self.session.abort()
        except Exception:  # cannot tell: give the daemon back to builds
            logger.warning("daemon %s: could not look for builds during a pull", self.daemon_id, exc_info=True)
            self.build_came = True
            self.session.abort()
        finally:
            connection.close()  # the thread's own


def _build_given(daemon_id: int) -> bool:
    close_old_connections()
    return BuildJob.objects.filter(daemon_id=daemon_id, status__in=BuildJob.ACTIVE).exists()


def _again(
    daemon: DockerDaemon, repository: str, digest: str, team_id: int | None, tries: int, tags: list[str], why: str
) -> str:
    """Tried again later (a new message, as low as the first), or given up after TRIES."""
    reference = f"{repository}@{digest}"
    if tries + 1 >= TRIES:
        return _done(daemon.pk, digest, f"{reference} not pulled on {daemon.name}: {why}, {TRIES} times")
    try:
        current_app.send_task(
            PREPULL_TASK,
            args=[daemon.pk, repository, digest, team_id, tries + 1, tags],
            queue=daemon.queue,
            priority=PRIORITY,
            countdown=RETRY_SECONDS,
        )
    except Exception:
        return _done(daemon.pk, digest, f"{reference} not pulled on {daemon.name}: {why}; could not ask again")
    message = f"{reference} not pulled on {daemon.name} yet: {why}; again in {RETRY_SECONDS} s"
    logger.info("prepull: %s", message)
    return message


def _done(daemon_id: int, digest: str, message: str, *, warning: bool = False) -> str:
    """The warm's end: its (daemon, digest) may be asked again."""
    (logger.warning if warning else logger.info)("prepull: %s", message)
    with suppress(redis.RedisError):  # else it expires
        farm_redis().delete(_asked_key(daemon_id, digest))
    return message


def _count(daemon_name: str, fetched: int, seconds: float) -> None:
    metrics.count_worker(PULLS, daemon_name)
    metrics.count_worker(BYTES, daemon_name, fetched)
    metrics.count_worker(MILLISECONDS, daemon_name, round(seconds * 1000))


def _asked_key(daemon_id: int, digest: str) -> str:
    return f"{PREFIX}{daemon_id}:{digest}"


_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"


def _release(key: str, token: str) -> None:
    with suppress(redis.RedisError):  # else it expires after LOCK_SECONDS
        farm_redis().eval(_RELEASE, 1, key, token)
