"""A git server over SSH for tests: Debian's sshd (openssh-server, installed by
scripts/bootstrap.sh for the tests) on a free loopback port, with its own host
key, its own config and authorized keys in a folder of the test's, public keys
only, serving the bare repositories on this machine to the user running the
tests. Its log (sshd -e) says which key each login offered and used."""

from __future__ import annotations

import getpass
import os
import socket
import subprocess
import time
from pathlib import Path

SSHD = "/usr/sbin/sshd"


def keygen(path: Path, *, passphrase: str = "", kind: str = "ed25519") -> tuple[str, str]:
    """A new key pair at `path`: its private text and its public line."""
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", passphrase, "-C", path.name, "-f", str(path)], check=True)
    return path.read_text(), path.with_suffix(".pub").read_text().strip()


def free_port(address: str) -> int:
    with socket.socket() as probe:
        probe.bind((address, 0))
        return probe.getsockname()[1]


class SshServer:
    def __init__(self, root: Path, authorized: list[str], address: str = "127.0.0.1") -> None:
        self.root, self.address = root, address
        self.user = getpass.getuser()
        root.mkdir(parents=True, exist_ok=True)
        _, self.host_key = keygen(root / "host_ed25519")
        (root / "authorized_keys").write_text("".join(f"{line}\n" for line in authorized))
        self.port = free_port(address)
        config = root / "sshd_config"
        config.write_text(
            f"ListenAddress {address}:{self.port}\n"
            f"HostKey {root / 'host_ed25519'}\n"
            f"PidFile {root / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {root / 'authorized_keys'}\n"
            f"AllowUsers {self.user}\n"
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "PermitRootLogin prohibit-password\n"
            "UsePAM no\n"
            "StrictModes no\n"  # pytest's folders are the test's, not a home directory
            "AllowAgentForwarding no\n"
            "AllowTcpForwarding no\n"
            "X11Forwarding no\n"
            "PermitTTY no\n"
            "LogLevel VERBOSE\n"
        )
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        self.log = root / "sshd.log"
        self._process = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=self.log.open("w")
        )
        self._wait_listening()

    def known_hosts(self, host: str | None = None) -> str:
        """The known_hosts line for this server under `host` (its address by default)."""
        name = host or self.address
        return f"[{name}]:{self.port} {self.host_key}\n"

    def url(self, bare: Path, host: str | None = None) -> str:
        return f"ssh://{self.user}@{host or self.address}:{self.port}{bare}"

    def connections(self) -> int:
        """TCP connections sshd accepted, but for the one that saw it listening."""
        return self.log.read_text().count("Connection from ") - 1

    def close(self) -> None:
        self._process.terminate()
        self._process.wait(timeout=10)

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise AssertionError(f"sshd exited: {self.log.read_text()}")
            try:
                socket.create_connection((self.address, self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"sshd did not listen: {self.log.read_text()}")
