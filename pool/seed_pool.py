"""Reading the seed's `conf/pool.json`: {"docker": [{"url": "127.0.0.1", "port": "19000"}, ...]}.

Beyond the seed's keys an entry may carry `name`, `capacity`, and, instead of
url/port, `engine`: a full engine URL such as unix:///run/dind/docker.sock; and
`emulated_platforms`: the platforms it builds under QEMU (["linux/arm64"], or "none"; without the key
its worker detects them); `tls`: {"ca": PATH, "cert": PATH, "key": PATH}, PEM files (relative to the pool
file) for a daemon started with --tlsverify; and `disk`: {"images_mb": N,
"build_cache_mb": N}, the daemon's disk policy (pool/disk_prune.py), a key left
out meaning the farm's default (an entry without "disk" keeps what admin set);
`data_disk_gb`: for a daemon `make up` starts, the size of the filesystem of its
own its data root lives on (scripts/farm.py; 0: the host's, as before).

A seed entry on loopback without "tls" (`{"url": "127.0.0.1", "port": "19000"}`)
names a daemon on this host, reached through its unix socket
`$GENERATOR_DAEMON_SOCKET_DIR/PORT/docker.sock` (default /run/generator): the
port is not opened, since a build can reach any TCP port on loopback
(docs/security.md). `make up` starts such daemons there.
"""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass, field
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
    # PEM text of tls.ca, tls.cert, tls.key; None when the entry has no "tls".
    tls: dict[str, str] | None = field(default=None, repr=False)
    group: str | None = None  # None: the entry does not say, and an operator's choice stays
    # {"images_limit_mb": N or None, "build_cache_limit_mb": ...}; None when the entry has no "disk".
    disk: dict[str, int | None] | None = None
    emulated_platforms: str | None = None  # likewise; "linux/arm64,...", or "none"
    data_disk_gb: float | None = None  # None: make up's default (scripts/farm.py)


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
    tls = _tls_material(path, where, member["tls"]) if "tls" in member else None
    group = member.get("group")
    if group is not None and not isinstance(group, str):
        raise PoolFileError(f'{where}: group must be a string ("" for the shared pool)')
    disk = _disk_policy(where, member["disk"]) if "disk" in member else None
    emulated = member.get("emulated_platforms")
    if emulated is not None:
        if isinstance(emulated, list) and all(isinstance(p, str) for p in emulated):
            emulated = ",".join(emulated) or "none"
        if not isinstance(emulated, str):
            raise PoolFileError(f'{where}: emulated_platforms must be a list such as ["linux/arm64"], or "none"')
    data_disk_gb = member.get("data_disk_gb")
    if data_disk_gb is not None and (
        not isinstance(data_disk_gb, int | float) or isinstance(data_disk_gb, bool) or data_disk_gb < 0
    ):
        raise PoolFileError(f"{where}: data_disk_gb must be a number of GiB, 0 or more (0: the host's disk)")
    extra = {"emulated_platforms": emulated, "data_disk_gb": data_disk_gb}
    if "engine" in member:
        if not member.get("name"):
            raise PoolFileError(f"{where}: an entry with engine needs a name")
        url = str(member["engine"])
        return PoolEntry(str(member["name"]), url, "", 0, capacity, tls, group, disk, **extra)
    host = str(member.get("url", "")).strip()
    # The seed wrote ports as strings; numbers are accepted too.
    port_text = str(member.get("port", "")).strip()
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise PoolFileError(f"{where} needs a host in url and a port from 1 to 65535")
    port = int(port_text)
    name = str(member.get("name") or f"{host}:{port}")
    url = f"tcp://{host}:{port}" if tls or not _is_loopback(host) else f"unix://{local_socket(port)}"
    return PoolEntry(name, url, host, port, capacity, tls, group, disk, **extra)


_DISK_KEYS = {"images_mb": "images_limit_mb", "build_cache_mb": "build_cache_limit_mb"}


def _disk_policy(where: str, disk: object) -> dict[str, int | None]:
    if not isinstance(disk, dict) or not set(disk) <= set(_DISK_KEYS):
        raise PoolFileError(f'{where}: disk must be {{"images_mb": N, "build_cache_mb": N}} (either may be left out)')
    policy = {}
    for key, field_name in _DISK_KEYS.items():
        value = disk.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise PoolFileError(f"{where}: disk.{key} must be a whole number of MiB, 0 or more")
        policy[field_name] = value
    return policy


def local_socket(port: int) -> Path:
    """Where the daemon of a loopback seed entry listens (see the module's doc)."""
    return Path(os.environ.get("GENERATOR_DAEMON_SOCKET_DIR", "/run/generator")) / str(port) / "docker.sock"


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _tls_material(path: str | Path, where: str, tls: object) -> dict[str, str]:
    """Reads the PEM files an entry's "tls" names; whether they parse is the model's check."""
    if not isinstance(tls, dict) or set(tls) != {"ca", "cert", "key"}:
        raise PoolFileError(f'{where}: tls must be {{"ca": PATH, "cert": PATH, "key": PATH}}')
    material = {}
    for key, name in (("ca", "tls_ca"), ("cert", "tls_cert"), ("key", "tls_key")):
        file = Path(path).parent / str(tls[key])
        try:
            material[name] = file.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise PoolFileError(f"{where}: cannot read tls.{key} {file}: {getattr(exc, 'strerror', exc)}") from None
    return material
