"""Deploy keys: a repository's SSH private key, for cloning `ssh://` and `git@`
URLs and, when the repository allows it, for BuildKit's `RUN --mount=type=ssh`.

The key is checked when it is saved (OpenSSH must load it, without a
passphrase: a worker cannot type one), stored encrypted like build secrets
(lib/crypto.py: GENERATOR_SECRETS_KEYS, `manage.py rotatesecrets`), and
never shown again: admin and the API show its public fingerprint only. It
reaches git and the docker CLI only as a 0600 file in a 0700 folder that lives
for one clone or one build step (`secret_values.as_files`).

Host keys are checked strictly, never trusted on first use: the repository's
`known_hosts` text, plus GitHub's published keys for github.com, is all ssh
accepts (docs/security.md, "Build secrets").
"""

from __future__ import annotations

import base64
import binascii
import csv
import hashlib
import subprocess
from dataclasses import dataclass

from builds.dockerfiles import text as dockerfile_text
from lib import crypto, secret_values

MAX_KEY_BYTES = 16 * 1024
MAX_KNOWN_HOSTS_BYTES = 64 * 1024
# As published on docs.github.com ("GitHub's SSH key fingerprints"); ssh.github.com:443 has the same keys.
# SHA256:+DiY3wvvV6TuJJhbpZisF/zLDA0zPMSvHdkr4UvCOqU (Ed25519), SHA256:p2QAMXNIC1TJYWeIOttrVc98/R1BUFWu3/LiyKgUfQM
# (ECDSA), SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s (RSA).
# tests/builds/sources/test_deploy_keys.py checks them.
GITHUB_KNOWN_HOSTS = """\
github.com,[ssh.github.com]:443 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl
github.com,[ssh.github.com]:443 ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBEmKSENjQEezOmxkZMy7opKgwFB9nkt5YRrYMjNuG5N87uRgg6CLrbo5wAdT/y6v0mKV0U2w0WZ2YB/++Tpockg=
github.com,[ssh.github.com]:443 ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABgQCj7ndNxQowgcQnjshcLrqPEiiphnt+VTTvDP6mHBL9j1aNUkY4Ue1gvwnGLVlOhGeYrnZaMgRK6+PKCUXaDbC7qtbW8gIkhL7aGCsOr/C56SJMy/BCZfxd1nWzAOxSDPgVsmerOBYfNqltV9/hWCqBywINIR+5dIg6JTJ72pcEpEjcYgXkE2YEFXV1JHnsKgbLWNlhScqb2UmyRkQyytRLtL+38TGxkxCflmO+5Z8CSSNY7GidjMIZ7Q4zMjA2n1nGrlTDkzwDCsw+wqFPGQA179cnfGWOWRVruj16z6XyvxvjJwbz0wQZ75XK5tKSb7FNyeIEs4TT4jk+S4dhPeAUC5y+bDYirYgM4GC7uEnztnZyaVWQ7B381AK4Qdrwt51ZqExKbQpTUNn+EjqoTwvqNj4kqx5QUCI0ThS/YkOxJCXmPUWZbhjpCg56i+2aB6CmK2JGhn57K5mj0MNdBXA4/WnwH6XoPWJzK5Nyu2zB3nAZp+S5hpQs+p1vN1/wsjk=
"""  # noqa: E501 (key lines are as long as they are)
_MARKERS = ("@cert-authority", "@revoked")
# strconv.ParseBool's false, for `required=` (BuildKit instructions/commands_runmount.go parseMount).
_GO_FALSE = ("0", "f", "F", "false", "FALSE", "False")


class DeployKeyError(ValueError):
    pass


@dataclass(frozen=True)
class DeployKey:
    private: str  # as OpenSSH reads it: LF line ends, one final newline
    fingerprint: str  # SHA256:..., as `ssh-keygen -l` prints it


def check(text: str) -> DeployKey:
    """The key as OpenSSH loads it, or DeployKeyError saying why not. The
    message never quotes the key."""
    private = text.replace("\r\n", "\n").strip() + "\n"
    if len(private.encode()) > MAX_KEY_BYTES:
        raise DeployKeyError(f"a deploy key is at most {MAX_KEY_BYTES} bytes")
    if "PRIVATE KEY-----" not in private:
        raise DeployKeyError("give the private key (the file without .pub, starting -----BEGIN ... PRIVATE KEY-----)")
    with secret_values.as_files({"key": private}) as files:
        # -P "": a key with a passphrase fails instead of asking for one; no terminal to ask on anyway.
        result = subprocess.run(
            ["ssh-keygen", "-y", "-P", "", "-f", files["key"]],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            timeout=20,
        )
    if result.returncode != 0:
        why = result.stderr.replace(files["key"], "the key").strip().splitlines()
        if any("passphrase" in line for line in why):
            raise DeployKeyError(
                "the key is protected by a passphrase, which the farm cannot type: give a key without one "
                "(a copy with it removed: ssh-keygen -p -N '' -f COPY)"
            )
        raise DeployKeyError(f"OpenSSH cannot load this private key ({why[-1] if why else 'no reason given'})")
    return DeployKey(private, fingerprint(result.stdout))


def fingerprint(public_line: str) -> str:
    """SHA256:<base64 without padding> of a public key line, as `ssh-keygen -l` prints it."""
    blob = base64.b64decode(public_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def check_known_hosts(text: str) -> None:
    """Lines of an OpenSSH known_hosts file: [marker] hosts type key [comment]."""
    if len(text.encode()) > MAX_KNOWN_HOSTS_BYTES:
        raise DeployKeyError(f"known_hosts is at most {MAX_KNOWN_HOSTS_BYTES} bytes")
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if fields[0] in _MARKERS:
            fields = fields[1:]
        if len(fields) < 3:
            raise DeployKeyError(f"known_hosts line {number} is not 'HOST KEY-TYPE BASE64-KEY' (ssh-keyscan prints it)")
        try:
            blob = base64.b64decode(fields[2], validate=True)
        except binascii.Error:
            raise DeployKeyError(f"known_hosts line {number}: the key is not base64") from None
        declared = blob[4 : 4 + int.from_bytes(blob[:4], "big")] if len(blob) > 4 else b""
        if declared != fields[1].encode():
            raise DeployKeyError(f"known_hosts line {number}: the key is not a {fields[1]} key")


def known_hosts_for(repository) -> str:
    """What ssh accepts for the repository's hosts: its own lines, then GitHub's published keys."""
    own = repository.known_hosts.strip()
    return (own + "\n" if own else "") + GITHUB_KNOWN_HOSTS


def private_key(repository) -> str:
    """The repository's deploy key in clear, or ''."""
    return crypto.decrypt(repository.deploy_key) if repository.deploy_key else ""


def assign(repository, key: DeployKey | None) -> None:
    """Sets the repository's deploy key, encrypted (None removes it); the caller saves."""
    repository.deploy_key = crypto.encrypt(key.private) if key else ""
    repository.deploy_key_fingerprint = key.fingerprint if key else ""


def forwarded(job) -> str:
    """The key a BuildKit build gets for `RUN --mount=type=ssh`: its repository's,
    when the repository allows it and the build is not a fork's pull request; else ''."""
    repository = job.repository
    if repository is None or not repository.forward_ssh_to_build or job.fork:
        return ""
    return private_key(repository)


def ssh_mount_refusal(text: str | bytes, repository, *, forwarded: bool, fork: bool = False) -> str | None:
    """Why a Dockerfile's `RUN --mount=type=ssh` cannot have the agent it asks
    for, said at once and naming the setting. BuildKit itself would skip such a
    mount silently (its `required` defaults to false) and let the step fail
    later in ssh's own words; an explicit `required=false` is taken at its word."""
    try:
        mounts = _ssh_mounts(text)
    except dockerfile_text.DockerfileError as exc:
        return f"BuildKit's Dockerfile parser refuses this Dockerfile: {exc}"
    wanted = [(options, fields) for options, fields in mounts if fields.get("required") not in _GO_FALSE]
    if forwarded:
        others = [options for options, fields in wanted if fields.get("id", "default") != "default"]
        if others:
            return (
                f"RUN --mount={others[0]} names an SSH agent id the farm does not give: "
                "the repository's deploy key is forwarded as the default id (leave id= out)"
            )
        return None
    if not wanted:
        return None
    if fork:
        why = "a fork's pull request never gets the repository's deploy key"
    elif repository is None:
        why = "only a registered repository's builds can forward its deploy key"
    elif not repository.deploy_key:
        why = f"repository {repository.full_name} has no deploy key"
    else:
        why = (
            f"repository {repository.full_name} does not forward its deploy key to builds: "
            "turn on forward_ssh_to_build (admin or /api/v1/repositories/)"
        )
    return f"the Dockerfile asks for an SSH agent (RUN --mount={wanted[0][0]}) and this build has none: {why}"


def _ssh_mounts(text: str | bytes) -> list[tuple[str, dict[str, str]]]:
    """Each `RUN --mount=` of type ssh as BuildKit reads it: the RUN instructions'
    flags as its parser splits them (builds/dockerfiles/text.py), each mount's
    options as parseMount does (a CSV record of key=value, keys and the type
    lower-cased): (the options as written, key -> value)."""
    mounts = []
    for instruction in dockerfile_text.instructions(text):
        if instruction.keyword != "RUN":
            continue
        for flag in instruction.flags:
            if not flag.startswith("--mount="):
                continue
            options = flag.removeprefix("--mount=")
            fields = {}
            for field in next(csv.reader([options]), []):
                key, _, value = field.partition("=")
                fields[key.lower()] = value
            if fields.get("type", "").lower() == "ssh":
                mounts.append((options, fields))
    return mounts
