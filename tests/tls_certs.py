"""Certificates for daemons behind `dockerd --tlsverify`, made with the machine's
openssl: a CA, a server certificate for the daemon's addresses, a client
certificate for the farm; and a second, unrelated CA to be refused."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from pool.tls import ClientTLS
from scripts.localfarm import DaemonTLS

_EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class Authority:
    cert: Path
    key: Path

    def issue(self, folder: Path, name: str, extensions: str) -> tuple[Path, Path]:
        """A certificate and key `name`.pem / `name`-key.pem signed by this CA."""
        cert, key, csr, ext = (folder / f"{name}{suffix}" for suffix in (".pem", "-key.pem", ".csr", ".ext"))
        ext.write_text(extensions + "\n")
        _openssl("req", "-new", *_EC_KEY, "-keyout", key, "-out", csr, "-subj", f"/CN={name}")
        _openssl(
            "x509", "-req", "-in", csr, "-CA", self.cert, "-CAkey", self.key, "-CAcreateserial",
            "-days", "2", "-out", cert, "-extfile", ext,
        )  # fmt: skip
        return cert, key


@dataclass(frozen=True)
class TLSSet:
    ca: Authority
    server: DaemonTLS  # what dockerd is started with
    client_files: DaemonTLS  # the farm's side: the CA, the client certificate and key
    client: dict[str, str]  # what the pool entry holds: tls_ca, tls_cert, tls_key as PEM text

    def client_config(self) -> ClientTLS:
        files = self.client_files
        return ClientTLS(client_cert=(str(files.cert), str(files.key)), ca_cert=str(files.ca), verify=True)


def authority(folder: Path, name: str) -> Authority:
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / f"{name}.pem", folder / f"{name}-key.pem"
    _openssl(
        "req", "-x509", *_EC_KEY, "-keyout", key, "-out", cert, "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return Authority(cert, key)


def tls_set(folder: Path, server_ips: list[str], name: str = "farm-ca") -> TLSSet:
    """A CA, a server certificate valid for `server_ips`, and a client certificate."""
    ca = authority(folder, name)
    sans = ",".join(f"IP:{ip}" for ip in server_ips)
    server_cert, server_key = ca.issue(folder, "server", f"subjectAltName={sans}\nextendedKeyUsage=serverAuth")
    client_cert, client_key = ca.issue(folder, "client", "extendedKeyUsage=clientAuth")
    return TLSSet(
        ca=ca,
        server=DaemonTLS(ca=ca.cert, cert=server_cert, key=server_key),
        client_files=DaemonTLS(ca=ca.cert, cert=client_cert, key=client_key),
        client={"tls_ca": ca.cert.read_text(), "tls_cert": client_cert.read_text(), "tls_key": client_key.read_text()},
    )


def _openssl(*args) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)
