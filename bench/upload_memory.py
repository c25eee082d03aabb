"""Memory of the web tier and the worker for an upload that inflates to 500 MiB.

    .venv/bin/python bench/upload_memory.py [--inflated-mib 500] [--multipart]

Starts a private farm (bench/rig.py; `--web URL --token T --web-pid P
--worker-pid P` for a running one), makes a gzip of a tar holding a Dockerfile
and `--inflated-mib` MiB of zeros (about 510 KB for 500 MiB: issue 13's
upload), sends it as the raw body of `POST /api/v1/builds/` (or as a
multipart form), and follows the build until it ends: the web tier checks and
stores the context, the worker streams it from the store to the daemon.

For every process of the daphne tree and of the worker's tree, the peak
resident memory is read exactly: each process's high-water mark (VmHWM) is
reset before the upload (/proc/PID/clear_refs, as root) and read at the end.
Printed per role: resident memory at idle (just before the upload), the peak,
and the peak above idle, for the process that grew most. Target: under 64 MiB
above idle.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import tarfile
import time
import uuid
from pathlib import Path

import rig

MiB = 1024 * 1024
TARGET_MIB = 64
DOCKERFILE = b"FROM busybox\nRUN true\n"


def zeros_context(inflated: int) -> bytes:
    """A gzip of a tar: the Dockerfile and `inflated` bytes of zeros, made a MiB at a time."""
    compressed = io.BytesIO()
    with gzip.GzipFile(fileobj=compressed, mode="wb", compresslevel=9) as tar:
        for name, size in (("Dockerfile", len(DOCKERFILE)), ("zeros", inflated)):
            info = tarfile.TarInfo(name)
            info.size = size
            tar.write(info.tobuf())
            if name == "Dockerfile":
                tar.write(DOCKERFILE.ljust(tarfile.BLOCKSIZE, b"\0"))
        for _ in range(inflated // MiB):
            tar.write(bytes(MiB))
        tar.write(bytes(inflated % MiB + 2 * tarfile.RECORDSIZE))
    return compressed.getvalue()


def multipart(fields: dict[str, str], body: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="context"; filename="context.tar.gz"\r\n'
        "Content-Type: application/gzip\r\n\r\n".encode()
        + body
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class PeakMemory:
    """Exact peaks of every process in some process trees: high-water marks reset
    on entry, read on exit."""

    def __init__(self, roots: dict[str, int]) -> None:
        self.roots = roots

    def __enter__(self) -> PeakMemory:
        self.idle: dict[str, dict[int, int]] = {}
        for role, root in self.roots.items():
            self.idle[role] = {pid: rig.status_kib(pid, "VmRSS") for pid in rig.tree(root)}
            for pid in self.idle[role]:
                with contextlib.suppress(OSError):
                    Path(f"/proc/{pid}/clear_refs").write_text("5")
        return self

    def __exit__(self, *exc) -> None:
        self.peaks = {role: {pid: rig.status_kib(pid, "VmHWM") for pid in pids} for role, pids in self.idle.items()}

    def rows(self) -> list[tuple[str, int, int, int]]:
        """(role, idle KiB, peak KiB, pid) of the process of each role that grew most."""
        rows = []
        for role, idle in self.idle.items():
            pid = max(idle, key=lambda p: self.peaks[role][p] - idle[p])
            rows.append((role, idle[pid], self.peaks[role][pid], pid))
        return rows


def wait_for_end(farm: rig.Farm, job_id: str, timeout: float = 900) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = farm.ok("GET", f"/api/v1/builds/{job_id}/")
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.5)
    raise SystemExit(f"build {job_id} did not end within {timeout:g} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inflated-mib", type=int, default=500, help="MiB of zeros in the context (default 500)")
    parser.add_argument("--multipart", action="store_true", help="send a multipart form, not a raw gzip body")
    rig.add_arguments(parser, daemons=1)
    args = parser.parse_args()
    body = zeros_context(args.inflated_mib * MiB)
    rig.say(f"context: {len(body)} bytes of gzip, {args.inflated_mib} MiB of zeros inside")
    with rig.farm_from(args) as farm:
        roles = {role: pid for role, pid in farm.pids.items() if role in ("daphne", "worker-0", "worker")}
        if not roles:
            raise SystemExit("no process to measure: give --web-pid and --worker-pid for a --web farm")
        image = f"{farm.registry}/bench/upload-memory:{uuid.uuid4().hex[:8]}"
        if farm.registry not in {row["host"] for row in farm.ok("GET", "/api/v1/registries/")["results"]}:
            farm.ok("POST", "/api/v1/registries/", {"host": farm.registry})  # builds push only to allowed ones
        time.sleep(3)  # let the farm settle after start
        note = rig.machine_note()
        with PeakMemory(roles) as memory:
            started = time.monotonic()
            if args.multipart:
                payload, content_type = multipart({"image": image}, body)
                status, job = farm.call("POST", "/api/v1/builds/", payload, content_type)
            else:
                status, job = farm.call("POST", f"/api/v1/builds/?image={image}", body, "application/gzip")
            answered = time.monotonic() - started
            if status != 201:
                raise SystemExit(f"the upload was answered {status}: {job}")
            job = wait_for_end(farm, job["id"])
            built = time.monotonic() - started
    print(f"\n{note}")
    print(
        f"upload: {len(body)} bytes ({'multipart' if args.multipart else 'raw gzip body'}), "
        f"{args.inflated_mib} MiB inflated; answered 201 in {answered:.1f} s; build {job['status']} after {built:.1f} s"
        + (f" ({job['error']})" if job["error"] else "")
    )
    print("\n| process (pid) | idle | peak | above idle | target |")
    print("| --- | --- | --- | --- | --- |")
    worst = 0.0
    for role, idle, peak, pid in memory.rows():
        above = (peak - idle) / 1024
        worst = max(worst, above)
        print(
            f"| {role} ({pid}) | {idle / 1024:.0f} MiB | {peak / 1024:.0f} MiB | {above:.1f} MiB | < {TARGET_MIB} MiB |"
        )
    print(f"\n{'met' if worst < TARGET_MIB else 'MISSED'}: the largest growth was {worst:.1f} MiB above idle")


if __name__ == "__main__":
    main()
