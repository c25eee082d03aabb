"""The daphne process serve.py starts (generator_site/daphne_process.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_daphne_borrows_postgresql_connections_from_a_pool():
    """The settings are read before asgi.py is imported, so daphne_process must ask
    for the pool itself: without it every request opened a PostgreSQL connection
    (issue 26: a backend forked per submit). Settings only: nothing connects."""
    probe = (
        "from generator_site import daphne_process; daphne_process.install();"
        "from django.conf import settings; database = settings.DATABASES['default'];"
        "print(bool(database.get('OPTIONS', {}).get('pool')), database['CONN_MAX_AGE'])"
    )
    unset = ("GENERATOR_DB_POOL", "DJANGO_SETTINGS_MODULE")
    env = {key: value for key, value in os.environ.items() if key not in unset}
    env |= {"DATABASE_URL": "postgres://nobody@127.0.0.1:1/generator", "GENERATOR_SECRET_KEY": "test-only"}
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "0"]
