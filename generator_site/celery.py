"""The Celery application: configuration comes from Django settings (CELERY_*)."""

from __future__ import annotations

import os
from logging.config import dictConfig

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "generator_site.settings")

app = Celery("generator")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.setup_logging.connect
def log_like_the_other_processes(**kwargs) -> None:
    """Workers and beat log through settings.LOGGING (one structured line per
    record) instead of Celery's own format: with a receiver on this signal,
    Celery leaves the root logger and its task loggers alone."""
    from django.conf import settings

    dictConfig(settings.LOGGING)
