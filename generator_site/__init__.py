from __future__ import annotations

# Load the Celery app whenever Django starts, so tasks sent by name from views
# and admin actions use the project's broker settings.
from generator_site.celery import app as celery_app

__all__ = ["celery_app"]
