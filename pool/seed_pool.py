"""Reading the seed's `conf/pool.json`: {"docker": [{"url": "127.0.0.1", "port": "19000"}, ...]}.

Beyond the seed's keys an entry may carry `name`, `capacity`, and, instead of
url/port, `engine`: a full engine URL such as unix:///run/dind/docker.sock.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


class PoolFileError(ValueError):
    pass


@dataclass(frozen=True)
class PoolEntry:
    name: str
    url: str
    host: str  # empty, with port 0, for an entry given by engine URL
    port: int
    capacity: int


def read_pool_file(path: str | Path) -> list[PoolEntry]:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise PoolFileError(f"cannot read {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise PoolFileError(f"{path} is not valid JSON: {exc}") from None
    members = data.get("docker") if isinstance(data, dict) else None
    if not isinstance(members, list):
        raise PoolFileError(f'{path} must hold {{"docker": [{{"url": ..., "port": ...}}, ...]}}')
    return [_entry(path, index, member) for index, member in enumerate(members)]


def _entry(path: str | Path, index: int, member: object) -> PoolEntry:
    where = f"{path}: docker[{index}]"
    if not isinstance(member, dict):
        raise PoolFileError(f"{where} must be an object with url and port")
    capacity = member.get("capacity", 2)
    if not isinstance(capacity, int) or capacity < 1:
        raise PoolFileError(f"{where}: capacity must be a whole number of at least 1")
    if "engine" in member:
        if not member.get("name"):
            raise PoolFileError(f"{where}: an entry with engine needs a name")
        return PoolEntry(name=str(member["name"]), url=str(member["engine"]), host="", port=0, capacity=capacity)
    host = str(member.get("url", "")).strip()
    # The seed wrote ports as strings; numbers are accepted too.
    port_text = str(member.get("port", "")).strip()
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise PoolFileError(f"{where} needs a host in url and a port from 1 to 65535")
    port = int(port_text)
    name = str(member.get("name") or f"{host}:{port}")
    return PoolEntry(name=name, url=f"tcp://{host}:{port}", host=host, port=port, capacity=capacity)
