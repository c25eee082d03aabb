"""Build jobs and their logs; the GitHub repositories that trigger builds, their
rules, and the webhook deliveries received."""

# One module per subject; every model and helper is importable from here, as before.
from builds.models.figures import DailyDaemonStats, DailyJobStats, MetricBucket, MetricCounter, StepStats
from builds.models.jobs import WAITING, BuildContext, BuildJob, CheckRun, last_starts, new_job_id, started_this_hour
from builds.models.logs import BuildLogArchive, BuildLogLine
from builds.models.registries import REGISTRY_HELP, Registry, RegistryQuerySet
from builds.models.repositories import (
    BaseImage,
    BuildRule,
    BuildSecret,
    Repository,
    WebhookDelivery,
    validate_clone_url,
    validate_image_repository,
)
from builds.models.signing import Attestation, SigningKey

__all__ = [
    "Attestation",
    "BaseImage",
    "BuildContext",
    "BuildJob",
    "BuildLogArchive",
    "BuildLogLine",
    "BuildRule",
    "BuildSecret",
    "CheckRun",
    "DailyDaemonStats",
    "DailyJobStats",
    "MetricBucket",
    "MetricCounter",
    "REGISTRY_HELP",
    "Registry",
    "RegistryQuerySet",
    "Repository",
    "SigningKey",
    "StepStats",
    "WAITING",
    "WebhookDelivery",
    "last_starts",
    "new_job_id",
    "started_this_hour",
    "validate_clone_url",
    "validate_image_repository",
]
