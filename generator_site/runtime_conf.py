"""The seed's `conf/runtime.conf`, read for the keys that still mean something.

The seed (a beego service) kept top-level keys and a `[db]` section naming the
Redis it stored everything in. Here:

- `runmode = dev | prod` sets the default of GENERATOR_DEBUG (dev: on).
- `[db] uri / passwd / db` give the default REDIS_URL (Celery broker and channel layer).

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


@dataclass(frozen=True)
class RuntimeConf:
    debug: bool = True
    redis_url: str | None = None


def load_runtime_conf(path: str) -> RuntimeConf:
    file = Path(path)
    if not file.is_file():
        return RuntimeConf()
    parser = configparser.ConfigParser(interpolation=None)
    # The seed's keys before any section header belong to no section.
    parser.read_string("[seed]\n" + file.read_text(), source=str(file))
    return RuntimeConf(debug=_debug(parser, file), redis_url=_redis_url(parser))


def _debug(parser: configparser.ConfigParser, file: Path) -> bool:
    runmode = parser.get("seed", "runmode", fallback="dev").strip().lower()
    if runmode not in {"dev", "prod"}:
        raise ImproperlyConfigured(f"{file}: runmode must be dev or prod, not {runmode!r}")
    return runmode == "dev"


def _redis_url(parser: configparser.ConfigParser) -> str | None:
    uri = parser.get("db", "uri", fallback="").strip()
    if not uri:
        return None
    password = parser.get("db", "passwd", fallback="").strip()
    db = parser.get("db", "db", fallback="0").strip() or "0"
    auth = f":{quote(password, safe='')}@" if password else ""
    return f"redis://{auth}{uri}/{db}"
