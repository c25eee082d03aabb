"""Django settings for Generator.

Everything is configured through environment variables, read by the small typed
helpers in `generator_site.env`. The embedded defaults run a single-machine farm
(SQLite, local Redis, local registry). The seed's `conf/runtime.conf` is read too,
where its keys still mean something; an environment variable always wins.
"""

from __future__ import annotations

from pathlib import Path

import dj_database_url
import redis.exceptions
from django.core.exceptions import ImproperlyConfigured

from generator_site.env import env_bool, env_choice, env_float, env_int, env_json_object, env_list, env_str
from generator_site.postgres import session_options
from generator_site.runtime_conf import load_runtime_conf

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("GENERATOR_VAR_DIR", str(BASE_DIR / "var")))

RUNTIME = load_runtime_conf(env_str("GENERATOR_RUNTIME_CONF", str(BASE_DIR / "conf" / "runtime.conf")))

# Django's DEBUG shows anyone who meets an error its technical page (settings,
# paths, source): only when an operator asks for it by name. The seed's
# `runmode = dev` no longer turns it on (runtime_conf.py).
DEBUG = env_bool("GENERATOR_DEBUG", False)

# The environment's key, else the one `make up` made in var/ (so `manage.py`
# works as README shows it on a machine where make up ran).
SECRET_KEY_FILE = VAR_DIR / "secret_key"
SECRET_KEY = env_str("GENERATOR_SECRET_KEY", "") or (
    SECRET_KEY_FILE.read_text().strip() if SECRET_KEY_FILE.is_file() else ""
)
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            f"GENERATOR_SECRET_KEY must be set when GENERATOR_DEBUG is off (or {SECRET_KEY_FILE} exist, "
            "as make up makes it)"
        )
    SECRET_KEY = "insecure-development-key-never-use-in-production"

ALLOWED_HOSTS = env_list("GENERATOR_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("GENERATOR_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "teams",
    "pool",
    "builds",
    "notifications",
    "audit",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "lib.login_throttle.LoginThrottleMiddleware",
    "audit.middleware.AuditRequestMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "generator_site.urls"
CSRF_FAILURE_VIEW = "lib.http_errors.csrf_failure"
ASGI_APPLICATION = "generator_site.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "generator_site" / "templates"],  # the error pages
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# SQLite by default. Daphne, several Celery workers and beat write to it at once:
# WAL lets readers run beside a writer, IMMEDIATE takes the write lock at BEGIN (so
# two writers queue instead of failing half-way with "database is locked"), and the
# timeout says how long a writer waits for its turn.
DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'generator.sqlite3'}"),
        conn_max_age=env_int("GENERATOR_DB_CONN_MAX_AGE", 0),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and env_bool("GENERATOR_DB_POOL", False):
    # Daphne runs each request in a new thread, so Django's persistent connections
    # (CONN_MAX_AGE) do not apply there: without a pool every request opened a
    # connection. asgi.py turns this on for the web process.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1,
        "max_size": env_int("GENERATOR_DB_POOL_MAX", 10),
        "timeout": 30,
    }
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/builds/"

STATIC_URL = "static/"
# Serve app static files without a collectstatic step (daphne has no static handler).
WHITENOISE_USE_FINDERS = True
STATIC_ROOT = VAR_DIR / "static"

# Redis carries Celery's messages and the channel layer. The seed's [db] section
# named this Redis (uri, passwd, db).
REDIS_URL = env_str("REDIS_URL", RUNTIME.redis_url or "redis://127.0.0.1:6379/0")

CELERY_BROKER_URL = REDIS_URL
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
# A build holds a worker slot for minutes: take one message at a time, and
# acknowledge it only when the build is over.
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Submitting must not hang when Redis is down: a few quick tries, then an error
# that the submit path records on the job.
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5}
CELERY_BROKER_TRANSPORT_OPTIONS = {"socket_connect_timeout": 5, "socket_timeout": 10}
# A build goes on while Redis is away: its state lives in the database.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
# The farm's own bookkeeping runs on the "farm" queue, served by the control
# worker that also runs beat (`make up`: control; compose: beat).
# Notifications (notifications/) have a queue and a worker of their own (`make up`
# and compose: notify): a slow receiver holds a sender for up to
# GENERATOR_NOTIFY_TIMEOUT seconds a try, which on the control worker would hold
# up dispatch, health checks and the reaper.
GENERATOR_NOTIFY_QUEUE = env_str("GENERATOR_NOTIFY_QUEUE", "notify")
CELERY_TASK_ROUTES = {
    "farm.*": {"queue": "farm"},
    "audit.*": {"queue": "farm"},
    "notify.*": {"queue": GENERATOR_NOTIFY_QUEUE},
}
# No control task can hold the control worker (lib/control_tasks.py):
# Celery's soft time limit for dispatch, the reaper, health checks and status
# reports, and for housekeeping (pruning, archiving), the hard one 30 s later;
# on PostgreSQL their statements give up a lock wait after the lock timeout.
GENERATOR_CONTROL_TASK_SECONDS = env_float("GENERATOR_CONTROL_TASK_SECONDS", 120)
GENERATOR_HOUSEKEEPING_TASK_SECONDS = env_float("GENERATOR_HOUSEKEEPING_TASK_SECONDS", 1800)
GENERATOR_CONTROL_LOCK_TIMEOUT_SECONDS = env_float("GENERATOR_CONTROL_LOCK_TIMEOUT_SECONDS", 5)

CHANNEL_LAYERS = {
    "default": {
        # channels-redis's layer with a pool that waits for a free connection
        # rather than failing past redis-py's 100 (generator_site/channel_layer.py).
        # A daphne process joins each followed job's group once, for all its
        # viewers (builds/live/subscriptions.py).
        "BACKEND": "generator_site.channel_layer.PooledRedisChannelLayer",
        "CONFIG": {
            # redis-py 8 reads with a 5 s socket timeout by default, the same 5 s
            # that channels-redis blocks waiting for a message: a consumer of a
            # quiet build would die of a read timeout. Give the socket room; and
            # after Redis restarts, reconnect once instead of failing the
            # WebSocket on the pool's dead connection.
            "hosts": [
                {
                    "address": REDIS_URL,
                    "socket_timeout": 30,
                    "retry_on_error": [redis.exceptions.ConnectionError],
                    "health_check_interval": 15,
                }
            ],
            "capacity": 1000,
            "expiry": 60,
            "max_connections": env_int("GENERATOR_CHANNEL_LAYER_CONNECTIONS", 20),
        },
    }
}

# Live logs. The `websockets` client (the CLI's, many scripts') refuses messages
# over 1 MiB by default: a log frame holds at most GENERATOR_LOG_FRAME_BYTES of
# JSON, and a line is cut, with a marker, at GENERATOR_MAX_LOG_LINE_BYTES before
# it is stored. JSON escapes can make a line six times longer, so the two caps
# keep every frame under 1 MiB.
GENERATOR_LOG_FRAME_BYTES = env_int("GENERATOR_LOG_FRAME_BYTES", 256 * 1024)
GENERATOR_MAX_LOG_LINE_BYTES = env_int("GENERATOR_MAX_LOG_LINE_BYTES", 64 * 1024)
if not 4096 <= GENERATOR_LOG_FRAME_BYTES <= 768 * 1024:
    raise ImproperlyConfigured("GENERATOR_LOG_FRAME_BYTES must be between 4096 and 786432")
if not 256 <= GENERATOR_MAX_LOG_LINE_BYTES <= 160 * 1024:
    raise ImproperlyConfigured("GENERATOR_MAX_LOG_LINE_BYTES must be between 256 and 163840")
# A viewer whose client leaves this many bytes unread is sent nothing more until
# it reads; one that does not read for GENERATOR_WS_SLOW_CLIENT_SECONDS is closed
# (4408): daphne would otherwise buffer the whole log for it.
GENERATOR_WS_SEND_BUFFER_BYTES = env_int("GENERATOR_WS_SEND_BUFFER_BYTES", 512 * 1024)
GENERATOR_WS_SLOW_CLIENT_SECONDS = env_float("GENERATOR_WS_SLOW_CLIENT_SECONDS", 30)
if GENERATOR_WS_SEND_BUFFER_BYTES < 64 * 1024 or GENERATOR_WS_SLOW_CLIENT_SECONDS <= 0:
    raise ImproperlyConfigured(
        "GENERATOR_WS_SEND_BUFFER_BYTES must be at least 65536 and GENERATOR_WS_SLOW_CLIENT_SECONDS above 0"
    )

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "teams.access.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    # JSON bounded in depth as in size (lib/api_parsers.py).
    "DEFAULT_PARSER_CLASSES": [
        "lib.api_parsers.BoundedJSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Generator API",
    "DESCRIPTION": "Build Docker images on a pool of daemons, push them, follow their logs.",
    "VERSION": "1",
    # Swagger UI's files come from the sidecar package: no CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
}

# --- Generator's own settings ---------------------------------------------

# Anonymous writes are off unless an operator opens them: this restores the seed's
# open `/b1/build` for users who relied on it.
GENERATOR_ANONYMOUS_BUILDS = env_bool("GENERATOR_ANONYMOUS_BUILDS", False)
# Build logs need a login unless an operator makes them public.
GENERATOR_PUBLIC_LOGS = env_bool("GENERATOR_PUBLIC_LOGS", False)

GENERATOR_MAX_DOCKERFILE_BYTES = env_int("GENERATOR_MAX_DOCKERFILE_BYTES", 1024 * 1024)
# Base64 of the largest Dockerfile, with room for the other fields.
DATA_UPLOAD_MAX_MEMORY_SIZE = GENERATOR_MAX_DOCKERFILE_BYTES * 4 // 3 + 64 * 1024

# Docker Engine 20.10 serves API 1.41; pinning it keeps an SDK upgrade from
# asking for a version the pool's daemons refuse.
GENERATOR_DOCKER_API_VERSION = env_str("GENERATOR_DOCKER_API_VERSION", "1.41")
GENERATOR_DOCKER_TIMEOUT = env_int("GENERATOR_DOCKER_TIMEOUT", 300)
# Builders: BuildKit (through the docker CLI, builds/engine/buildkit.py), the default,
# and classic (the Engine API's own build), for Dockerfiles that depend on it.
GENERATOR_BUILDERS = env_list("GENERATOR_BUILDERS", ["buildkit", "classic"])
GENERATOR_DEFAULT_BUILDER = env_choice("GENERATOR_DEFAULT_BUILDER", "buildkit", ("buildkit", "classic"))
if not set(GENERATOR_BUILDERS) <= {"classic", "buildkit"} or GENERATOR_DEFAULT_BUILDER not in GENERATOR_BUILDERS:
    raise ImproperlyConfigured("GENERATOR_BUILDERS lists classic and/or buildkit, and holds GENERATOR_DEFAULT_BUILDER")
# The docker CLI that drives BuildKit; empty: found at worker start (builds/engine/buildkit.py).
GENERATOR_DOCKER_CLI = env_str("GENERATOR_DOCKER_CLI", "")
# Fernet keys for build secrets at rest, newest first (lib/crypto.py); empty:
# one derived from GENERATOR_SECRET_KEY.
GENERATOR_SECRETS_KEYS = env_list("GENERATOR_SECRETS_KEYS", [])
# Plain TCP to a daemon is refused everywhere (pool/tls.py); bench/scale.py's
# simulated engines, which are no Docker API, are the one exception.
GENERATOR_INSECURE_LOOPBACK_ENGINES = env_bool("GENERATOR_INSECURE_LOOPBACK_ENGINES", False)
GENERATOR_BUILD_TIMEOUT = env_int("GENERATOR_BUILD_TIMEOUT", 3600)

# What one build may use (builds/jobs/limits.py): each daemon has defaults, a repository
# may ask for other figures up to these caps. The kernel holds a build to them through
# a cgroup the worker makes per build (builds/engine/cgroups.py), so a worker runs as root on
# its daemon's host with cgroup v1; without that a build fails, unless cgroups are
# turned off (then only the daemon's per-container memory and CPU limits apply).
GENERATOR_BUILD_MEMORY_MAX_MB = env_int("GENERATOR_BUILD_MEMORY_MAX_MB", 8192)
GENERATOR_BUILD_CPUS_MAX = env_float("GENERATOR_BUILD_CPUS_MAX", 4.0)
GENERATOR_BUILD_PIDS_MAX = env_int("GENERATOR_BUILD_PIDS_MAX", 4096)
GENERATOR_BUILD_CGROUPS = env_bool("GENERATOR_BUILD_CGROUPS", True)
GENERATOR_CGROUP_ROOT = Path(env_str("GENERATOR_CGROUP_ROOT", "/sys/fs/cgroup"))
# On: up to `capacity` BuildKit builds share a daemon, each held to its own limits
# (its RUN steps start in the build's own cgroup: the daemon runs the farm's runc,
# scripts/buildkit-runc/runc, first on its PATH, as make up's do). Off: a BuildKit
# build has its daemon to itself, for daemons without that runc (builds/jobs/limits.py).
GENERATOR_BUILDKIT_SHARED_DAEMONS = env_bool("GENERATOR_BUILDKIT_SHARED_DAEMONS", True)

# The pool under load and failure (docs/architecture.md, "Failures").
GENERATOR_MAX_ATTEMPTS = env_int("GENERATOR_MAX_ATTEMPTS", 3)
GENERATOR_MAX_BUILDS_PER_IMAGE = env_int("GENERATOR_MAX_BUILDS_PER_IMAGE", 2)
GENERATOR_LEASE_SECONDS = env_float("GENERATOR_LEASE_SECONDS", 60)
GENERATOR_HEARTBEAT_SECONDS = env_float("GENERATOR_HEARTBEAT_SECONDS", 10)
# A running build lets its database session go after this many idle seconds and
# opens one for its next write; a write that finds no session (too many
# connections) is tried again for this long (lib/db_sessions.py).
GENERATOR_DB_IDLE_SECONDS = env_float("GENERATOR_DB_IDLE_SECONDS", 0.25)
GENERATOR_DB_RETRY_SECONDS = env_float("GENERATOR_DB_RETRY_SECONDS", 120)
# A build host that vanishes mid-transaction must not hold its locks past its
# lease (generator_site/postgres.py): PostgreSQL ends a session idle in a
# transaction after this long (by default half the time between a lost worker's
# last heartbeat and the end of its lease), and both ends probe a silent TCP
# connection (idle, then every interval, giving up after count probes).
GENERATOR_DB_IDLE_IN_TRANSACTION_SECONDS = env_float(
    "GENERATOR_DB_IDLE_IN_TRANSACTION_SECONDS", (GENERATOR_LEASE_SECONDS - GENERATOR_HEARTBEAT_SECONDS) / 2
)
if not 0 < GENERATOR_DB_IDLE_IN_TRANSACTION_SECONDS <= GENERATOR_LEASE_SECONDS - GENERATOR_HEARTBEAT_SECONDS:
    raise ImproperlyConfigured(
        "GENERATOR_DB_IDLE_IN_TRANSACTION_SECONDS must be more than 0 and at most GENERATOR_LEASE_SECONDS"
        " - GENERATOR_HEARTBEAT_SECONDS: a lost worker's transaction must be gone before its lease runs out"
    )
GENERATOR_DB_KEEPALIVE_IDLE_SECONDS = env_int("GENERATOR_DB_KEEPALIVE_IDLE_SECONDS", 30)
GENERATOR_DB_KEEPALIVE_INTERVAL_SECONDS = env_int("GENERATOR_DB_KEEPALIVE_INTERVAL_SECONDS", 10)
GENERATOR_DB_KEEPALIVE_COUNT = env_int("GENERATOR_DB_KEEPALIVE_COUNT", 3)
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    DATABASES["default"]["OPTIONS"] = session_options(
        DATABASES["default"].get("OPTIONS", {}),
        idle_in_transaction_seconds=GENERATOR_DB_IDLE_IN_TRANSACTION_SECONDS,
        keepalive_idle_seconds=GENERATOR_DB_KEEPALIVE_IDLE_SECONDS,
        keepalive_interval_seconds=GENERATOR_DB_KEEPALIVE_INTERVAL_SECONDS,
        keepalive_count=GENERATOR_DB_KEEPALIVE_COUNT,
    )
GENERATOR_DISPATCH_STALE_SECONDS = env_float("GENERATOR_DISPATCH_STALE_SECONDS", 60)
GENERATOR_PUSH_TRIES = env_int("GENERATOR_PUSH_TRIES", 4)
GENERATOR_PUSH_BACKOFF_SECONDS = env_float("GENERATOR_PUSH_BACKOFF_SECONDS", 2)
GENERATOR_HEALTH_TIMEOUT = env_float("GENERATOR_HEALTH_TIMEOUT", 5)
# Each Celery worker says which queues it consumes this often (in Redis); a queue
# none has named for the stale time has no live worker (pool/workers.py).
GENERATOR_WORKER_HEARTBEAT_SECONDS = env_float("GENERATOR_WORKER_HEARTBEAT_SECONDS", 5)
GENERATOR_WORKER_STALE_SECONDS = env_float("GENERATOR_WORKER_STALE_SECONDS", 15)
GENERATOR_UNHEALTHY_AFTER = env_int("GENERATOR_UNHEALTHY_AFTER", 2)

# GitHub (issue 3): webhooks, the git sources of builds, commit statuses.
GENERATOR_WEBHOOK_MAX_BYTES = env_int("GENERATOR_WEBHOOK_MAX_BYTES", 25 * 1024 * 1024)
# One build per (repository, ref, commit) delivered within this many seconds.
GENERATOR_WEBHOOK_DEDUPE_SECONDS = env_int("GENERATOR_WEBHOOK_DEDUPE_SECONDS", 24 * 3600)
GENERATOR_GITHUB_API_URL = env_str("GENERATOR_GITHUB_API_URL", "https://api.github.com").rstrip("/")
GENERATOR_SITE_URL = env_str("GENERATOR_SITE_URL", "http://localhost:8080").rstrip("/")
# A GitHub App (builds/github/app.py): check runs instead of commit statuses on the
# repositories it is installed on. Its private key stays in a file (0600) read at use,
# never in the database; its webhook secret signs the App's deliveries (check_run,
# check_suite, installation). Unset: commit statuses only.
GENERATOR_GITHUB_APP_ID = env_str("GENERATOR_GITHUB_APP_ID", "")
GENERATOR_GITHUB_APP_PRIVATE_KEY_FILE = env_str("GENERATOR_GITHUB_APP_PRIVATE_KEY_FILE", "")
GENERATOR_GITHUB_APP_WEBHOOK_SECRET = env_str("GENERATOR_GITHUB_APP_WEBHOOK_SECRET", "")
if GENERATOR_GITHUB_APP_ID and not (GENERATOR_GITHUB_APP_ID.isdigit() and GENERATOR_GITHUB_APP_PRIVATE_KEY_FILE):
    raise ImproperlyConfigured(
        "GENERATOR_GITHUB_APP_ID must be the App's number, with GENERATOR_GITHUB_APP_PRIVATE_KEY_FILE naming its key"
    )
GENERATOR_GIT_CACHE_DIR = Path(env_str("GENERATOR_GIT_CACHE_DIR", str(VAR_DIR / "git")))
# A webhook asks git which files a push changed (path filters) within this many seconds.
GENERATOR_CHANGED_FILES_TIMEOUT = env_float("GENERATOR_CHANGED_FILES_TIMEOUT", 5)
# Provenance and SBOM of every pushed image (docs/provenance.md): the SBOM reads at most
# this much of an image's filesystem, for at most this long, and says so when cut short.
# Off only where a registry cannot take cosign's .sig/.att tags, or on a simulated
# engine (bench/scale.py), which has no image to read and no registry to write.
GENERATOR_ATTESTATIONS = env_bool("GENERATOR_ATTESTATIONS", True)
GENERATOR_SBOM_MAX_BYTES = env_int("GENERATOR_SBOM_MAX_BYTES", 2 * 1024 * 1024 * 1024)
GENERATOR_SBOM_SECONDS = env_float("GENERATOR_SBOM_SECONDS", 120.0)
GENERATOR_MAX_CONTEXT_BYTES = env_int("GENERATOR_MAX_CONTEXT_BYTES", 512 * 1024 * 1024)
# An uploaded context (REST API): at most this many bytes as sent, and checked as it
# inflates against GENERATOR_MAX_CONTEXT_BYTES and GENERATOR_MAX_CONTEXT_FILES.
GENERATOR_MAX_UPLOAD_BYTES = env_int("GENERATOR_MAX_UPLOAD_BYTES", 100 * 1024 * 1024)
GENERATOR_MAX_CONTEXT_FILES = env_int("GENERATOR_MAX_CONTEXT_FILES", 100_000)
# Checked contexts wait for their build in a file store that web, workers and beat
# all reach (builds/uploads/store.py): a folder on one machine; on several hosts,
# another Django storage backend, e.g. storages.backends.s3.S3Storage with its
# options as JSON (docs/deploy.md). Kept this long after the job ends, for retries.
GENERATOR_CONTEXT_DIR = Path(env_str("GENERATOR_CONTEXT_DIR", str(VAR_DIR / "contexts")))
GENERATOR_CONTEXT_RETENTION_HOURS = env_float("GENERATOR_CONTEXT_RETENTION_HOURS", 24)

# Each daemon's disk policy (pool/disk_prune.py), unless its row says otherwise:
# the images the farm built and BuildKit's build cache are pruned, least recently
# used first, down to these sizes every GENERATOR_DISK_PRUNE_INTERVAL seconds.
GENERATOR_DISK_IMAGES_LIMIT_MB = env_int("GENERATOR_DISK_IMAGES_LIMIT_MB", 20480)
GENERATOR_DISK_BUILD_CACHE_LIMIT_MB = env_int("GENERATOR_DISK_BUILD_CACHE_LIMIT_MB", 10240)

# Warm daemons (builds/worker/prepull.py): after a push, the other daemons that may
# build the image pull it, one at a time, only while they run no build, and not
# where their data disk is this much used or more (0-1; by default the three
# quarters of the disk that the disk policy's limits stay within).
GENERATOR_PREPULL_ENABLED = env_bool("GENERATOR_PREPULL_ENABLED", True)
GENERATOR_PREPULL_MAX_DISK_FRACTION = env_float("GENERATOR_PREPULL_MAX_DISK_FRACTION", 0.75)
GENERATOR_PREPULL_DAEMONS = env_int("GENERATOR_PREPULL_DAEMONS", 2)
if not 0 < GENERATOR_PREPULL_MAX_DISK_FRACTION <= 1:
    raise ImproperlyConfigured("GENERATOR_PREPULL_MAX_DISK_FRACTION must be above 0 and at most 1")

# Logs of jobs that ended more than this many days ago leave the per-line table
# for one gzipped object per job in the log store (STORAGES["logs"]: a folder by
# default, any Django storage that web and beat both reach), a batch at a time.
GENERATOR_LOG_RETENTION_DAYS = env_float("GENERATOR_LOG_RETENTION_DAYS", 14)
GENERATOR_LOG_ARCHIVE_DIR = Path(env_str("GENERATOR_LOG_ARCHIVE_DIR", str(VAR_DIR / "logs")))
GENERATOR_LOG_ARCHIVE_BATCH_JOBS = env_int("GENERATOR_LOG_ARCHIVE_BATCH_JOBS", 200)
GENERATOR_LOG_ARCHIVE_BATCH_LINES = env_int("GENERATOR_LOG_ARCHIVE_BATCH_LINES", 1_000_000)
# Objects of the log store that no job's archive names (a crashed run's, a deleted
# job's) are deleted by beat once older than this: a run writes its object before
# its transaction names it.
GENERATOR_LOG_ORPHAN_GRACE_HOURS = env_float("GENERATOR_LOG_ORPHAN_GRACE_HOURS", 1)
if GENERATOR_LOG_ORPHAN_GRACE_HOURS < 0.25:  # shorter could delete an object a slow run is still naming
    raise ImproperlyConfigured("GENERATOR_LOG_ORPHAN_GRACE_HOURS must be at least 0.25 (15 minutes)")
# Finished jobs that ended more than this many days ago are deleted, with their
# log lines and archived logs (builds/jobs/retention.py), at most
# GENERATOR_JOB_PRUNE_BATCH_JOBS a run. 0: kept forever.
GENERATOR_JOB_RETENTION_DAYS = env_float("GENERATOR_JOB_RETENTION_DAYS", 0)
if GENERATOR_JOB_RETENTION_DAYS < 0:
    raise ImproperlyConfigured("GENERATOR_JOB_RETENTION_DAYS must be 0 (keep forever) or a number of days")
GENERATOR_JOB_PRUNE_BATCH_JOBS = env_int("GENERATOR_JOB_PRUNE_BATCH_JOBS", 1000)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    "contexts": {
        "BACKEND": env_str("GENERATOR_CONTEXT_STORAGE", "django.core.files.storage.FileSystemStorage"),
        "OPTIONS": env_json_object("GENERATOR_CONTEXT_STORAGE_OPTIONS", {"location": str(GENERATOR_CONTEXT_DIR)}),
    },
    # Archived logs (builds/logs/archive.py): read by the web tier, written by beat.
    "logs": {
        "BACKEND": env_str("GENERATOR_LOG_STORAGE", "django.core.files.storage.FileSystemStorage"),
        "OPTIONS": env_json_object("GENERATOR_LOG_STORAGE_OPTIONS", {"location": str(GENERATOR_LOG_ARCHIVE_DIR)}),
    },
}
# file:// clone URLs, and clone URLs and a GitHub API base on local addresses
# (lib/outbound.py): for tests and single-machine setups only; off by default.
GENERATOR_ALLOW_LOCAL_REPOSITORIES = env_bool("GENERATOR_ALLOW_LOCAL_REPOSITORIES", False)

# Notifications of build events (notifications/): webhooks, Slack, e-mail. Each
# send connects within GENERATOR_NOTIFY_CONNECT_TIMEOUT and is given up after
# GENERATOR_NOTIFY_TIMEOUT seconds in all; at most GENERATOR_NOTIFY_RESPONSE_BYTES
# of the answer are read and kept. A failed try is tried again after
# GENERATOR_NOTIFY_BACKOFF_SECONDS, doubled each time up to the max, up to
# GENERATOR_NOTIFY_MAX_TRIES tries.
GENERATOR_NOTIFY_CONNECT_TIMEOUT = env_float("GENERATOR_NOTIFY_CONNECT_TIMEOUT", 3)
GENERATOR_NOTIFY_TIMEOUT = env_float("GENERATOR_NOTIFY_TIMEOUT", 5)
GENERATOR_NOTIFY_RESPONSE_BYTES = env_int("GENERATOR_NOTIFY_RESPONSE_BYTES", 4096)
GENERATOR_NOTIFY_MAX_TRIES = env_int("GENERATOR_NOTIFY_MAX_TRIES", 6)
GENERATOR_NOTIFY_BACKOFF_SECONDS = env_float("GENERATOR_NOTIFY_BACKOFF_SECONDS", 10)
GENERATOR_NOTIFY_BACKOFF_MAX_SECONDS = env_float("GENERATOR_NOTIFY_BACKOFF_MAX_SECONDS", 3600)
# Deliveries and their tries are kept this long, then pruned (beat, hourly).
GENERATOR_NOTIFY_RETENTION_DAYS = env_float("GENERATOR_NOTIFY_RETENTION_DAYS", 30)
# E-mail goes through Django's mail settings (SMTP by default).
EMAIL_BACKEND = env_str("GENERATOR_EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend")
EMAIL_HOST = env_str("GENERATOR_EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("GENERATOR_EMAIL_PORT", 25)
EMAIL_HOST_USER = env_str("GENERATOR_EMAIL_USER", "")
EMAIL_HOST_PASSWORD = env_str("GENERATOR_EMAIL_PASSWORD", "")
EMAIL_USE_TLS = env_bool("GENERATOR_EMAIL_STARTTLS", False)
EMAIL_USE_SSL = env_bool("GENERATOR_EMAIL_SSL", False)
EMAIL_TIMEOUT = env_float("GENERATOR_EMAIL_TIMEOUT", 10)
DEFAULT_FROM_EMAIL = env_str("GENERATOR_EMAIL_FROM", "generator@localhost")

# --- The web tier's front door (issue 13) --------------------------------------

# Request heads: a longer URL is a 414, more header bytes a 431, each with a reason
# (generator_site/request_limits.py; daphne's own ceilings are 4x these).
GENERATOR_MAX_URL_BYTES = env_int("GENERATOR_MAX_URL_BYTES", 16 * 1024)
GENERATOR_MAX_HEADER_BYTES = env_int("GENERATOR_MAX_HEADER_BYTES", 32 * 1024)
# JSON bodies of the REST API nested deeper than this are a 400, not a RecursionError.
GENERATOR_MAX_JSON_DEPTH = env_int("GENERATOR_MAX_JSON_DEPTH", 64)
# Login throttling (lib/login_throttle.py): this many failures for one
# username from one address lock that pair out for the rest of the window.
GENERATOR_LOGIN_FAILURES = env_int("GENERATOR_LOGIN_FAILURES", 5)
GENERATOR_LOGIN_WINDOW_SECONDS = env_int("GENERATOR_LOGIN_WINDOW_SECONDS", 15 * 60)

# The farm as its registry's token server (issue 23; builds/registry/token_server.py):
# GET /v2/token signs, with the ES256 key `make up` made in var/, tokens for the
# registry at GENERATOR_REGISTRY_TOKEN_HOST (as images name it; "": the token
# server is off), whose `auth.token` names this service and issuer.
GENERATOR_REGISTRY_TOKEN_HOST = env_str("GENERATOR_REGISTRY_TOKEN_HOST", "")
GENERATOR_REGISTRY_TOKEN_KEY = Path(env_str("GENERATOR_REGISTRY_TOKEN_KEY", str(VAR_DIR / "registry-token.key")))
GENERATOR_REGISTRY_TOKEN_CERT = Path(env_str("GENERATOR_REGISTRY_TOKEN_CERT", str(VAR_DIR / "registry-token.crt")))
GENERATOR_REGISTRY_TOKEN_SERVICE = env_str("GENERATOR_REGISTRY_TOKEN_SERVICE", "generator-registry")
GENERATOR_REGISTRY_TOKEN_ISSUER = env_str("GENERATOR_REGISTRY_TOKEN_ISSUER", "generator")
# Minutes, not hours: a revoked API token gets no new one, and an old one lasts this long.
GENERATOR_REGISTRY_TOKEN_SECONDS = env_int("GENERATOR_REGISTRY_TOKEN_SECONDS", 5 * 60)
if not 30 <= GENERATOR_REGISTRY_TOKEN_SECONDS <= 3600:
    raise ImproperlyConfigured("GENERATOR_REGISTRY_TOKEN_SECONDS must be between 30 and 3600")

# Served over HTTPS (through a TLS proxy: daphne speaks plain HTTP): cookies only
# over TLS, and the proxy's X-Forwarded-Proto says a request came over HTTPS. Off
# unless the operator says so, since over plain HTTP secure cookies would never be
# sent back and nobody could log in. The proxy must set that header itself,
# overwriting any a client sent.
GENERATOR_HTTPS = env_bool("GENERATOR_HTTPS", GENERATOR_SITE_URL.startswith("https://"))
SESSION_COOKIE_SECURE = GENERATOR_HTTPS
CSRF_COOKIE_SECURE = GENERATOR_HTTPS
if GENERATOR_HTTPS:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# HSTS pins browsers to HTTPS for this long: off by default, as a wrong value locks
# users of the host name out of plain HTTP for that long.
SECURE_HSTS_SECONDS = env_int("GENERATOR_HSTS_SECONDS", 0)

# Seconds between beat's recounts of teams' registry use (builds/registry/usage.py).
GENERATOR_REGISTRY_USAGE_INTERVAL = env_int("GENERATOR_REGISTRY_USAGE_INTERVAL", 3600)
# Base-image updates (builds/triggers/base_images.py): beat asks the registries of the
# repositories' base images for their digests every INTERVAL seconds, at most
# HEADS manifest HEADs and TICK_SECONDS per look (the least recently checked
# first), each HEAD given up after TIMEOUT seconds.
GENERATOR_BASE_IMAGE_INTERVAL = env_float("GENERATOR_BASE_IMAGE_INTERVAL", 600)
GENERATOR_BASE_IMAGE_HEADS = env_int("GENERATOR_BASE_IMAGE_HEADS", 100)
GENERATOR_BASE_IMAGE_TICK_SECONDS = env_float("GENERATOR_BASE_IMAGE_TICK_SECONDS", 60)
GENERATOR_BASE_IMAGE_TIMEOUT = env_float("GENERATOR_BASE_IMAGE_TIMEOUT", 10)

CELERY_BEAT_SCHEDULE = {
    "dispatch": {
        "task": "farm.dispatch",
        "schedule": env_float("GENERATOR_DISPATCH_INTERVAL", 2),
        "options": {"expires": 30},
    },
    # Build rules' cron schedules: a tick fires within this many seconds of its time (and jitter).
    "fire-schedules": {
        "task": "farm.fire_schedules",
        "schedule": env_float("GENERATOR_SCHEDULE_INTERVAL", 30),
        "options": {"expires": 60},
    },
    "check-base-images": {
        "task": "farm.check_base_images",
        "schedule": GENERATOR_BASE_IMAGE_INTERVAL,
        "options": {"expires": 60},
    },
    "fair-share": {
        "task": "farm.fair_share",
        "schedule": env_float("GENERATOR_FAIR_SHARE_INTERVAL", 2),
        "options": {"expires": 30},
    },
    "reap": {"task": "farm.reap", "schedule": env_float("GENERATOR_REAP_INTERVAL", 10), "options": {"expires": 30}},
    "check-health": {
        "task": "farm.check_health",
        "schedule": env_float("GENERATOR_HEALTH_INTERVAL", 10),
        "options": {"expires": 30},
    },
    "retry-notifications": {
        "task": "notify.retry_due",
        "schedule": env_float("GENERATOR_NOTIFY_SWEEP_INTERVAL", 5),
        "options": {"expires": 30},
    },
    "prune-notifications": {"task": "notify.prune", "schedule": 3600, "options": {"expires": 600}},
    "prune-daemons": {
        "task": "farm.prune_daemons",
        "schedule": env_float("GENERATOR_DISK_PRUNE_INTERVAL", 600),
        "options": {"expires": 600},
    },
    "archive-logs": {
        "task": "farm.archive_logs",
        "schedule": env_float("GENERATOR_LOG_ARCHIVE_INTERVAL", 300),
        "options": {"expires": 300},
    },
    "prune-log-store": {
        "task": "farm.prune_log_store",
        "schedule": env_float("GENERATOR_LOG_ORPHAN_INTERVAL", 3600),
        "options": {"expires": 3600},
    },
    "prune-jobs": {
        "task": "farm.prune_jobs",
        "schedule": env_float("GENERATOR_JOB_PRUNE_INTERVAL", 300),
        "options": {"expires": 300},
    },
    "prune-contexts": {
        "task": "farm.prune_contexts",
        "schedule": env_float("GENERATOR_CONTEXT_PRUNE_INTERVAL", 600),
        "options": {"expires": 600},
    },
    "recount-registry-usage": {
        "task": "farm.recount_registry_usage",
        "schedule": GENERATOR_REGISTRY_USAGE_INTERVAL,
        "options": {"expires": 3600},
    },
    "prune-audit": {
        "task": "audit.prune",
        "schedule": env_float("GENERATOR_AUDIT_PRUNE_INTERVAL", 3600),
        "options": {"expires": 3600},
    },
}

# Log lines are stored and published in batches: each channel-layer message costs
# about 1.8 ms whatever its size (docs/architecture.md).
GENERATOR_LOG_BATCH_LINES = env_int("GENERATOR_LOG_BATCH_LINES", 500)
GENERATOR_LOG_FLUSH_SECONDS = env_int("GENERATOR_LOG_FLUSH_MS", 50) / 1000
GENERATOR_MAX_LOG_LINES = env_int("GENERATOR_MAX_LOG_LINES", 200_000)
# Tests only: the log writer holds its transaction open forever on a line holding this text (builds/logs/writer.py).
GENERATOR_TEST_HOLD_LOG_TRANSACTION = env_str("GENERATOR_TEST_HOLD_LOG_TRANSACTION", "")

# A team over its concurrency or hourly limit (teams/models.py): its submit gets
# 429 with Retry-After ("reject"), or is taken and waits its turn ("queue").
# A team may choose for itself.
GENERATOR_TEAM_OVER_LIMIT = env_choice("GENERATOR_TEAM_OVER_LIMIT", "reject", ("reject", "queue"))
# The fair share (builds/jobs/preemption.py), on out of the box: while another team
# waits, a team that has held more than its even share of a daemon group's slots
# for this many seconds gets its longest-running excess build put back in the
# queue. 0: never (a team's builds then hold their slots until they end).
GENERATOR_FAIR_SHARE_SECONDS = env_float("GENERATOR_FAIR_SHARE_SECONDS", 10)
# Retry-After for a team at its concurrency limit: nobody knows when a build ends.
GENERATOR_TEAM_RETRY_AFTER_SECONDS = env_int("GENERATOR_TEAM_RETRY_AFTER_SECONDS", 30)
# Each team's storage in the farm's registry (teams/registry_quota.py), on out of
# the box: a team may set its own. 0: no quota for teams that set none.
GENERATOR_TEAM_REGISTRY_QUOTA_BYTES = env_int("GENERATOR_TEAM_REGISTRY_QUOTA_BYTES", 10 << 30)
if GENERATOR_TEAM_REGISTRY_QUOTA_BYTES < 0:
    raise ImproperlyConfigured("GENERATOR_TEAM_REGISTRY_QUOTA_BYTES must be 0 (no quota) or more bytes")
# Beat's recount of teams' registry use from the registry itself (builds/registry/usage.py),
# so the figure heals when tags go without the farm (deleted, garbage-collected):
# at most this many manifests read per team in one pass.
GENERATOR_REGISTRY_USAGE_MAX_MANIFESTS = env_int("GENERATOR_REGISTRY_USAGE_MAX_MANIFESTS", 5000)
# The audit log (audit/) keeps events this many days; beat prunes older ones.
GENERATOR_AUDIT_RETENTION_DAYS = env_int("GENERATOR_AUDIT_RETENTION_DAYS", 365)

# One line per record, with fields (lib/structured_logs.py): logfmt by
# default, JSON lines for a log collector. Celery workers and beat use this too.
GENERATOR_LOG_FORMAT = env_choice("GENERATOR_LOG_FORMAT", "logfmt", ("logfmt", "json"))
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "error_id": {"()": "lib.http_errors.ErrorIdFilter"},
        "context": {
            "()": "lib.structured_logs.ContextFilter",
            "role": env_str("GENERATOR_PROCESS_ROLE", ""),
        },
    },
    "formatters": {"line": {"()": "lib.structured_logs.LineFormatter", "style": GENERATOR_LOG_FORMAT}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "line", "filters": ["context"]}},
    # A 500's record (with its traceback) carries the error id the client was given.
    "loggers": {"django.request": {"filters": ["error_id"]}},
    "root": {"handlers": ["console"], "level": env_str("GENERATOR_LOG_LEVEL", "INFO")},
}
