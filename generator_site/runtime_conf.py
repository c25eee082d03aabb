"""The seed's `conf/runtime.conf`, read for the keys that still mean something.

The seed (a beego service) kept top-level keys and a `[db]` section naming the
Redis it stored everything in. Here:

- `[db] uri / passwd / db` give the default REDIS_URL (Celery broker and channel layer).
- `runmode = dev | prod` is still checked and read, but no longer turns Django's
  DEBUG on: the seed's file says `dev`, and a farm that shows Django's technical
  error page to anyone is not a default. Only `GENERATOR_DEBUG=true` does.

`listenmode`, `httpscertfile`, `httpskeyfile` and `[log]` are not honoured: put
TLS in front of daphne (docs/deploy.md), and logs go to standard error.
Environment variables always win over this file.
"""

from __future__ import annotations

import configparser
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from django.core.exceptions import ImproperlyConfigured

RUNMODES = ("dev", "prod")


@dataclass(frozen=True)
class RuntimeConf:
    runmode: str = "dev"  # read and checked; it sets nothing (see above)
    redis_url: str | None = None


def load_runtime_conf(path: str) -> RuntimeConf:
    file = Path(path)
    if not file.is_file():
        return RuntimeConf()
    parser = configparser.ConfigParser(interpolation=None)
    # The seed's keys before any section header belong to no section.
    parser.read_string("[seed]\n" + file.read_text(), source=str(file))
    return RuntimeConf(runmode=_runmode(parser, file), redis_url=_redis_url(parser))


def _runmode(parser: configparser.ConfigParser, file: Path) -> str:
    runmode = parser.get("seed", "runmode", fallback="dev").strip().lower()
    if runmode not in RUNMODES:
        raise ImproperlyConfigured(f"{file}: runmode must be dev or prod, not {runmode!r}")
    return runmode


def _redis_url(parser: configparser.ConfigParser) -> str | None:
    uri = parser.get("db", "uri", fallback="").strip()
    if not uri:
        return None
    password = parser.get("db", "passwd", fallback="").strip()
    db = parser.get("db", "db", fallback="0").strip() or "0"
    auth = f":{quote(password, safe='')}@" if password else ""
    return f"redis://{auth}{uri}/{db}"
