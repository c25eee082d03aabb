"""`python -m builds.cli`: build on the farm from a terminal, like `gcloud builds submit`.

    python -m builds.cli submit [PATH] --image REF [--tag T] [--build-arg K=V] [--file Dockerfile] [--no-cache]
                                [--team SLUG]
    python -m builds.cli logs JOB_ID
    python -m builds.cli status JOB_ID
    python -m builds.cli verify IMAGE[@DIGEST] [--key PEM_FILE]
    python -m builds.cli pull IMAGE --docker-host unix:///path/to/docker.sock

PATH is a directory (sent as a gzipped context, honouring .dockerignore) or a
Dockerfile (sent as text). The log streams as it happens; `submit` and `logs`
exit 0 only if the image was pushed; a multi-platform build's lines each start
with their platform (`[linux/arm64] ...`), as the frames' text has it. The farm
and the token come from --server/--token or GENERATOR_URL/GENERATOR_TOKEN. Only the standard library
and `websockets` are needed, so it runs from any machine.

`verify` reads the image's signature and attestations from its registry
(cosign's `.sig` / `.att` tags), checks them with the farm's public key
(`--key FILE`, else `GET /api/v1/signing-key/` of --server, no token needed)
and prints the verified provenance; it exits 0 only if the signature and the
provenance verify and name the image's digest. It needs `cryptography` and
`requests` too; a registry that asks for credentials gets
GENERATOR_REGISTRY_USERNAME / GENERATOR_REGISTRY_PASSWORD, else (the farm's own
registry) a pull token the farm's token server gives for --token.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import io
import json
import os
import sys
import tarfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from builds import cli_pull

EXIT_FAILED, EXIT_USAGE = 1, 2
RESUME_TRIES = 3  # connections in a row that bring no new line
RESUME_PAUSE_SECONDS = 1.0


class CliError(Exception):
    pass


class Farm:
    def __init__(self, server: str, token: str) -> None:
        if not token:
            raise CliError("no API token: pass --token or set GENERATOR_TOKEN (manage.py createtoken USER prints one)")
        self.server = server.rstrip("/")
        self.token = token

    def request(self, method: str, path: str, body: bytes | None = None, content_type: str = "application/json"):
        request = urllib.request.Request(
            self.server + path,
            data=body,
            method=method,
            headers={"Authorization": f"Token {self.token}", "Content-Type": content_type},
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            with contextlib.suppress(ValueError, AttributeError):
                detail = json.loads(detail).get("detail", detail)
            raise CliError(f"the farm answered {exc.code}: {detail}") from None
        except urllib.error.URLError as exc:
            raise CliError(f"cannot reach the farm at {self.server}: {exc.reason}") from None

    def follow(self, job_id: str, out) -> str:
        """Prints the log as it comes; answers the job's final status.

        A connection that drops before the end (the farm closes one whose
        client stopped reading, 4408; a restart) is opened again after the last
        line printed, a few times over if nothing new arrives in between."""
        from websockets.exceptions import ConnectionClosed
        from websockets.sync.client import connect

        ws_url = self.server.replace("https://", "wss://").replace("http://", "ws://")
        last_seq, failures, why = 0, 0, "the log stream closed before the build ended"
        while failures < RESUME_TRIES:
            if failures:
                time.sleep(RESUME_PAUSE_SECONDS)
            printed = last_seq
            try:
                with connect(
                    f"{ws_url}/b1/build/log/ws/{job_id}?after={last_seq}",
                    additional_headers={"Authorization": f"Token {self.token}"},
                ) as ws:
                    for message in ws:
                        frame = json.loads(message)
                        if frame["type"] == "log":
                            for line in frame["lines"]:
                                if line["seq"] > last_seq:
                                    print(line["text"], file=out, flush=True)
                                    last_seq = line["seq"]
                        elif frame["type"] == "end":
                            if frame["error"]:
                                print(f"error: {frame['error']}", file=sys.stderr)
                            return frame["status"]
                        elif frame["type"] == "error":
                            raise CliError(frame["message"])
            except ConnectionClosed as exc:
                why = f"the log stream closed before the build ended ({exc})"
            except OSError as exc:
                why = f"cannot follow the log at {ws_url}: {exc}"
            failures = 0 if last_seq > printed else failures + 1
        raise CliError(why)


def ignored_by(root: Path) -> list[tuple[str, bool]]:
    """.dockerignore's patterns, in order: (pattern, excluded?)."""
    file = root / ".dockerignore"
    rules = []
    if file.exists():
        for line in file.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                negated = line.startswith("!")
                rules.append((line.lstrip("!").strip("/"), not negated))
    return rules


def is_ignored(relative: str, rules: list[tuple[str, bool]]) -> bool:
    excluded = False
    for pattern, excludes in rules:  # the last matching pattern wins, as in Docker
        if fnmatch.fnmatch(relative, pattern) or fnmatch.fnmatch(relative, pattern + "/*"):
            excluded = excludes
    return excluded


def pack(root: Path) -> bytes:
    rules = ignored_by(root)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(root.rglob("*")):
            relative = path.relative_to(root).as_posix()
            if ".git" in relative.split("/") or is_ignored(relative, rules):
                continue
            tar.add(path, arcname=relative, recursive=False)
    return buffer.getvalue()


def multipart(fields: list[tuple[str, str]], file_field: str, filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = f"generator-{uuid.uuid4().hex}"
    parts = []
    for name, value in fields:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; filename="{filename}"\r\n'
        "Content-Type: application/gzip\r\n\r\n".encode()
        + data
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def submit(farm: Farm, args, out) -> int:
    source = Path(args.path)
    options = {
        "image": args.image,
        "extra_tags": args.tag,
        "build_args": dict(item.split("=", 1) for item in args.build_arg),
        "no_cache": args.no_cache,
        **({"team": args.team} if args.team else {}),
        **({"platforms": platforms_of(args.platform)} if args.platform else {}),
    }
    if source.is_dir():
        fields = [("image", args.image), ("dockerfile_path", args.file), ("no_cache", str(args.no_cache).lower())]
        fields += [("team", args.team)] if args.team else []
        fields += [("platforms", ",".join(platforms_of(args.platform)))] if args.platform else []
        fields += [("extra_tags", tag) for tag in args.tag]
        fields += [(f"build_args.{key}", value) for key, value in options["build_args"].items()]
        body, content_type = multipart(fields, "context", "context.tar.gz", pack(source))
        job = farm.request("POST", "/api/v1/builds/", body, content_type)
    elif source.is_file():
        body = json.dumps({**options, "dockerfile": source.read_text()}).encode()
        job = farm.request("POST", "/api/v1/builds/", body)
    else:
        raise CliError(f"{source} is neither a directory nor a Dockerfile")
    print(f"job {job['id']}: {job['links']['page']}", file=sys.stderr)
    return finish(farm.follow(job["id"], out))


def platforms_of(values: list[str]) -> list[str]:
    """--platform linux/amd64,linux/arm64 (or given twice): one list."""
    return [p.strip() for value in values for p in value.split(",") if p.strip()]


def verify(args, out) -> int:
    """Checks IMAGE's signature and provenance (builds/provenance/verification.py) and prints the provenance."""
    from builds.provenance import verification as check
    from builds.provenance.dsse import load_public_key
    from builds.registry.client import RegistryAPI, RegistryError, repository_path
    from lib.references import InvalidReference, parse_reference

    try:
        reference = parse_reference(args.image)
    except InvalidReference as exc:
        raise CliError(str(exc)) from None
    pem = Path(args.key).read_bytes() if args.key else _farm_key(args.server)
    try:
        key = load_public_key(pem)
    except ValueError as exc:
        raise CliError(f"the public key: {exc}") from None
    host, name = reference.registry, repository_path(reference.repository, reference.registry)
    username = os.environ.get("GENERATOR_REGISTRY_USERNAME", "")
    if username:
        login = {"username": username, "password": os.environ.get("GENERATOR_REGISTRY_PASSWORD", "")}
    elif args.token:  # the farm's own registry: a pull token from its token server, as the API token's account
        from builds.cli_pull import registry_token

        login = {"token_source": lambda scope: registry_token(args.server, args.token, name)}
    else:
        login = {}
    with RegistryAPI(host, **login) as api:
        try:
            digest = check.resolve(api, name, reference.digest or reference.tag or "latest")
            verified = check.verify(api, name, digest, key)
        except (check.VerificationFailed, RegistryError) as exc:
            print(f"verification failed: {exc}", file=sys.stderr)
            return EXIT_FAILED
    print(f"Verified {reference.repository}@{digest}: signed for {verified.signed_reference}", file=sys.stderr)
    for kind in sorted(verified.statements):
        print(f"  attestation {kind}: signature verified", file=sys.stderr)
    print(json.dumps(verified.provenance, indent=2), file=out)
    return 0


def _farm_key(server: str) -> bytes:
    try:
        with urllib.request.urlopen(f"{server.rstrip('/')}/api/v1/signing-key/", timeout=30) as response:
            return response.read()
    except (urllib.error.URLError, OSError) as exc:
        raise CliError(f"cannot read the farm's signing key from {server}: {exc} (or pass --key)") from None


def finish(status: str) -> int:
    print(f"build {status}", file=sys.stderr)
    return 0 if status == "succeeded" else EXIT_FAILED


def main(argv: list[str] | None = None, out=sys.stdout) -> int:
    parser = argparse.ArgumentParser(prog="python -m builds.cli", description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default=os.environ.get("GENERATOR_URL", "http://localhost:8080"))
    parser.add_argument("--token", default=os.environ.get("GENERATOR_TOKEN", ""))
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("submit", help="build a directory or a Dockerfile, stream the log")
    build.add_argument("path", nargs="?", default=".")
    build.add_argument("--image", required=True, help="repository:tag to push")
    build.add_argument("--file", default="Dockerfile", help="the Dockerfile's path inside the directory")
    build.add_argument("--tag", action="append", default=[], help="another tag to push (repeatable)")
    build.add_argument("--build-arg", action="append", default=[], metavar="K=V")
    build.add_argument("--no-cache", action="store_true")
    build.add_argument("--team", default="", help="the team the build is for (default: the image namespace's)")
    build.add_argument(
        "--platform", action="append", default=[], metavar="OS/ARCH,...",
        help="build for these platforms into one image index (linux/amd64,linux/arm64); "
        "each log line then starts with its platform",
    )  # fmt: skip
    for name in ("logs", "status"):
        commands.add_parser(name).add_argument("job_id")
    checking = commands.add_parser("verify", help="check an image's signature and provenance, print the provenance")
    checking.add_argument("image", help="IMAGE[:TAG] or IMAGE@sha256:...")
    checking.add_argument("--key", default="", help="the public key (PEM); default: the farm's, from --server")
    fetch = commands.add_parser("pull", help="pull an image of the farm's registry into a daemon (builds/cli_pull.py)")
    fetch.add_argument("image")
    fetch.add_argument("--docker-host", required=True, help="the daemon's socket, unix:///...")
    args = parser.parse_args(argv)
    try:
        if args.command == "verify":
            return verify(args, out)
        farm = Farm(args.server, args.token)
        if args.command == "submit":
            if any("=" not in item for item in args.build_arg):
                raise CliError("--build-arg takes KEY=VALUE")
            return submit(farm, args, out)
        if args.command == "logs":
            return finish(farm.follow(args.job_id, out))
        if args.command == "pull":
            try:
                cli_pull.pull(farm.server, farm.token, args.image, args.docker_host, out)
            except cli_pull.PullError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return EXIT_FAILED
            return 0
        job = farm.request("GET", f"/api/v1/builds/{args.job_id}/")
        print(json.dumps(job, indent=2), file=out)
        return 0 if job["status"] == "succeeded" else EXIT_FAILED
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
