"""The pool of Docker daemons that builds run on. This layer knows nothing of jobs."""

from __future__ import annotations

import re

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models

from pool import platforms
from pool.tls import TLS_FIELDS, check_engine_access

_TCP_URL = re.compile(r"^tcp://(?P<host>[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:]+\]):(?P<port>[0-9]{1,5})$")
_UNIX_URL = re.compile(r"^unix:///\S+$")


def validate_engine_url(url: str) -> None:
    match = _TCP_URL.match(url)
    if match and 0 < int(match["port"]) < 65536:
        return
    if _UNIX_URL.match(url):
        return
    raise ValidationError(
        "%(url)s is not a Docker Engine address: use tcp://HOST:PORT or unix:///PATH",
        params={"url": url},
    )


class DockerDaemon(models.Model):
    """One Docker Engine that the farm builds on, served by its own Celery queue."""

    name = models.CharField(
        max_length=100,
        unique=True,
        validators=[
            RegexValidator(
                r"^[A-Za-z0-9][A-Za-z0-9_.:\-]*$",
                "Use letters, digits and . _ : - (it also names the daemon's Celery queue).",
            )
        ],
    )
    url = models.CharField(
        "engine URL",
        max_length=255,
        validators=[validate_engine_url],
        help_text="tcp://HOST:PORT or unix:///PATH. Plain TCP only on loopback; any other host needs TLS below.",
    )
    # dockerd --tlsverify: the CA that signed the daemon's certificate, and the
    # farm's client certificate and key (PEM). The key is write-only everywhere.
    tls_ca = models.TextField("TLS CA certificate", blank=True, help_text="PEM (dockerd --tlscacert).")
    tls_cert = models.TextField(
        "TLS client certificate", blank=True, help_text="PEM, signed by a CA the daemon trusts."
    )
    tls_key = models.TextField("TLS client key", blank=True, help_text="PEM, unencrypted; never shown again.")
    capacity = models.PositiveSmallIntegerField(
        default=2, validators=[MinValueValidator(1)], help_text="How many builds may run on it at once."
    )
    enabled = models.BooleanField(default=True, help_text="A disabled daemon takes no new builds.")
    draining = models.BooleanField(
        default=False, help_text="A draining daemon finishes the builds it runs and takes no new ones."
    )
    group = models.CharField(
        max_length=100,
        blank=True,
        validators=[RegexValidator(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$", "Use letters, digits and . _ -")],
        help_text="Daemons in a group build only for repositories pinned to it; empty: the shared pool.",
    )
    # What one build may use on this daemon (its RUN steps), enforced by the kernel's
    # cgroups; a repository may ask for other figures up to the operator's caps.
    build_memory_mb = models.PositiveIntegerField(
        "memory per build (MiB)", default=2048, validators=[MinValueValidator(16)]
    )
    build_cpus = models.FloatField("CPUs per build", default=1.0, validators=[MinValueValidator(0.01)])
    build_pids = models.PositiveIntegerField("processes per build", default=1024, validators=[MinValueValidator(16)])
    # Disk policy (pool/disk_prune.py): what the farm leaves on the daemon between
    # builds. Empty: the farm-wide default (GENERATOR_DISK_*_LIMIT_MB).
    images_limit_mb = models.PositiveIntegerField(
        "images kept (MiB)",
        null=True,
        blank=True,
        help_text="Images the farm built, pruned least recently tagged first above this. Empty: the farm's default.",
    )
    build_cache_limit_mb = models.PositiveIntegerField(
        "build cache kept (MiB)",
        null=True,
        blank=True,
        help_text="BuildKit's build cache, pruned least recently used first above this. Empty: the farm's default.",
    )

    # Written by the periodic health check (pool/health.py) and by workers that lose the daemon.
    healthy = models.BooleanField(default=True)
    consecutive_failures = models.PositiveIntegerField(default=0)
    last_checked_at = models.DateTimeField(null=True, blank=True)
    last_seen_at = models.DateTimeField(null=True, blank=True)
    latency_ms = models.FloatField(null=True, blank=True)
    engine_version = models.CharField(max_length=64, blank=True)
    last_error = models.TextField(blank=True)
    # Whether a live Celery worker consumes this daemon's queue (seen by the health check).
    worker_online = models.BooleanField(default=True)
    # The docker CLI its worker found for BuildKit builds at start (builds/worker/builders.py).
    buildkit_client = models.CharField("BuildKit client", max_length=255, blank=True)
    # The platform its engine runs images of, as it reports it (health check): linux/amd64.
    native_platform = models.CharField(max_length=64, blank=True)
    # The platforms QEMU's binfmt handlers on its host run, as its worker found them at start.
    detected_emulation = models.CharField("emulation detected", max_length=255, blank=True)
    emulated_platforms = models.CharField(
        max_length=255,
        blank=True,
        validators=[platforms.validate_list],
        help_text="Platforms it builds under emulation, e.g. linux/arm64,linux/riscv64; "
        "empty: those its worker detects (QEMU binfmt on its host); 'none' for no emulation.",
    )

    # Written by housekeeping (pool/disk_prune.py): the daemon's disk as `docker
    # system df` sees it, in bytes, and when the farm last pruned it.
    disk_images_bytes = models.BigIntegerField(null=True, blank=True)
    disk_farm_images_bytes = models.BigIntegerField(null=True, blank=True)
    disk_build_cache_bytes = models.BigIntegerField(null=True, blank=True)
    disk_volumes_bytes = models.BigIntegerField(null=True, blank=True)
    disk_measured_at = models.DateTimeField(null=True, blank=True)
    last_pruned_at = models.DateTimeField(null=True, blank=True)
    # The size of the filesystem its data root is on, as its worker measured it
    # (pool/disks.py); the disk policy's limits in force together never pass 3/4 of it.
    data_disk_bytes = models.BigIntegerField(null=True, blank=True)
    # A build met "no space left on device" here: no builds until a prune brings it under its limits.
    disk_full = models.BooleanField(default=False)
    disk_error = models.TextField(blank=True)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "Docker daemon"

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        check_engine_access(self.url, {name: getattr(self, name) for name in TLS_FIELDS})

    @property
    def uses_tls(self) -> bool:
        return bool(self.tls_key)

    @property
    def takes_builds(self) -> bool:
        return self.enabled and not self.draining and self.healthy and self.worker_online and not self.disk_full

    @property
    def images_limit_bytes(self) -> int:
        return self._limits_in_force()[0]

    @property
    def build_cache_limit_bytes(self) -> int:
        return self._limits_in_force()[1]

    def _limits_in_force(self) -> tuple[int, int]:
        """The disk policy (images, build cache) the daemon's disk can hold: where
        the two add up to more than three quarters of its data root's filesystem,
        both scaled down in proportion to fit (the rest is for builds to write
        in). Else a prune under the limits could leave the disk full."""
        images, cache = self.images_limit_mb, self.build_cache_limit_mb
        images = (settings.GENERATOR_DISK_IMAGES_LIMIT_MB if images is None else images) << 20
        cache = (settings.GENERATOR_DISK_BUILD_CACHE_LIMIT_MB if cache is None else cache) << 20
        room = (self.data_disk_bytes or 0) * 3 // 4
        if not room or images + cache <= room:
            return images, cache
        return images * room // (images + cache), cache * room // (images + cache)

    @property
    def emulated(self) -> list[str]:
        """The platforms it builds under emulation: the operator's list, else the detected one."""
        configured = self.emulated_platforms.strip()
        if configured == "none":
            return []
        return platforms.split(configured or self.detected_emulation)

    @property
    def builds_platforms(self) -> list[str]:
        """Every platform it builds, its native one first."""
        native = [self.native_platform] if self.native_platform else []
        return list(dict.fromkeys([*native, *self.emulated]))

    def builds_platform(self, platform: str) -> bool:
        return platform in self.builds_platforms

    @property
    def queue(self) -> str:
        """The Celery queue whose worker builds on this daemon."""
        return queue_for(self.name)


# What the health check writes (pool/health.py): shown everywhere, edited nowhere.
HEALTH_FIELDS = (
    "healthy",
    "worker_online",
    "consecutive_failures",
    "last_checked_at",
    "last_seen_at",
    "latency_ms",
    "engine_version",
    "last_error",
    "buildkit_client",
    "native_platform",
    "detected_emulation",
)

# What housekeeping writes (pool/disk_prune.py): shown everywhere, edited nowhere.
DISK_FIELDS = (
    "disk_images_bytes",
    "disk_farm_images_bytes",
    "disk_build_cache_bytes",
    "disk_volumes_bytes",
    "disk_measured_at",
    "last_pruned_at",
    "data_disk_bytes",
    "disk_full",
    "disk_error",
)


def queue_for(daemon_name: str) -> str:
    return f"build.{daemon_name}"
