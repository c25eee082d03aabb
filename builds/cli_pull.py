"""`python -m builds.cli pull IMAGE --docker-host URL`: an image of the farm's
registry into a Docker daemon that cannot reach the token server itself (the
farm's own, in their sandboxes): the CLI asks the farm for a pull token with
its API token and hands it to the daemon as it is (`registrytoken`). Only the
standard library, as the rest of the CLI."""

from __future__ import annotations

import base64
import http.client
import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from typing import TextIO


class PullError(Exception):
    pass


def split_image(image: str) -> tuple[str, str, str]:
    """(registry host, repository path, tag or digest) of `host/path[:tag|@digest]`."""
    host, slash, rest = image.partition("/")
    if not slash or not ("." in host or ":" in host or host == "localhost"):
        raise PullError(f"{image} names no registry: pull takes one of the farm's registry, e.g. localhost:5000/app")
    if "@" in rest:
        path, _, reference = rest.partition("@")
    else:
        path, colon, tag = rest.rpartition(":") if ":" in rest.rsplit("/", 1)[-1] else (rest, "", "")
        reference = tag if colon else "latest"
    return host, path, reference


def registry_token(server: str, api_token: str, path: str) -> str:
    """A pull token for `path` from the farm's token server, as the API token's account."""
    query = urllib.parse.urlencode({"scope": f"repository:{path}:pull"})
    request = urllib.request.Request(f"{server}/v2/token?{query}", headers={"Authorization": f"Token {api_token}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())["token"]
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        raise PullError(f"the farm gave no registry token ({exc.code}): {detail[:300]}") from None


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


def pull(server: str, api_token: str, image: str, docker_host: str, out: TextIO) -> None:
    host, path, reference = split_image(image)
    token = registry_token(server, api_token, path)
    if not docker_host.startswith("unix://"):
        raise PullError("--docker-host takes unix:///path/to/docker.sock")
    connection = _UnixConnection(docker_host.removeprefix("unix://"), timeout=600)
    auth = base64.urlsafe_b64encode(json.dumps({"registrytoken": token}).encode()).decode()
    query = urllib.parse.urlencode({"fromImage": f"{host}/{path}", "tag": reference})
    connection.request("POST", f"/images/create?{query}", headers={"X-Registry-Auth": auth})
    response = connection.getresponse()
    if response.status != 200:
        raise PullError(f"the daemon refused the pull ({response.status}): {response.read().decode()[:300]}")
    for line in response:
        event = json.loads(line)
        if "error" in event:
            raise PullError(event["error"])
        if "progress" not in event:
            print(" ".join(str(event[k]) for k in ("id", "status") if k in event), file=out)
    connection.close()
