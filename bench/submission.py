"""Submission under load: the answer times of the ways in, at 32 concurrent clients.

    .venv/bin/python bench/submission.py [--clients 32] [--requests 2000] [--endpoints floor,b1,rest,webhook]
        [--postgres postgres://postgres@127.0.0.1:5432]

Three endpoints, one after the other, each hit by `--clients` threads that keep
one HTTP/1.1 connection each and send the next request as soon as the last is
answered: `GET /b1/build` (token), `POST /api/v1/builds/` (JSON Dockerfile), and
`POST /webhooks/github/` (a signed push to a registered repository; every push
is to its own branch, which a rule matches, so each one creates a job). Every
request is made before the clock starts (bodies, signatures), so the client
spends its time sending and reading. The first `--warmup` requests of each
endpoint are not counted.

`--endpoints floor` adds `GET /healthz`: daphne and Django's middleware around a
view that asks nothing of the database, the floor under every answer.

Printed per endpoint: answers/s and latencies, then the CPU ms per answer of each
farm process (daphne; `postgres`, the server's whole process tree, other databases
on it included; `farm db`, the CPU of this farm's own database backends only), and
at the end one submit in-process by phase (`bench/history.py --jobs 0 --drained` on
a fresh database of the same kind): queries and CPU ms of the token, the
permission, the team, the quotas, the audit event, the dispatch pass and the rest,
so a change that adds a query or a millisecond shows in its phase.

What is measured is the web tier's answer, not the builds: every daemon is set
draining for the run (still enabled, so the farm accepts builds, but dispatch
gives them to none), the jobs wait in the farm's queue, and they are cancelled
through the API after each endpoint's turn, so each endpoint starts with an
empty queue. The pool is put back as it was, and the repository deleted, at the end.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import http.client
import json
import secrets
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import rig


@dataclass
class Request:
    method: str
    path: str
    body: bytes | None
    headers: dict[str, str]
    expect: int
    job_of: Callable[[bytes], str] | None  # the created job's id, from the answer's body (None: no job)


@dataclass
class Outcome:
    latencies: list[float] = field(default_factory=list)
    answered_at: list[float] = field(default_factory=list)  # perf_counter of each answer
    errors: list[str] = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)
    seconds: float = 0.0
    cpu: rig.CpuMeter | None = None


def seed_requests(farm: rig.Farm, run: str, count: int) -> list[Request]:
    headers = {"Authorization": f"Token {farm.token}"}
    requests = []
    for index in range(count):
        dockerfile = base64.b64encode(f"FROM busybox\nRUN echo {run} {index}\n".encode()).decode()
        query = urllib.parse.urlencode(
            {"imagename": f"{farm.registry}/bench/submit:b1-{run}-{index}", "dockerfile": dockerfile}
        )
        requests.append(Request("GET", f"/b1/build?{query}", None, headers, 200, lambda body: body.decode()))
    return requests


def floor_requests(count: int) -> list[Request]:
    """`GET /healthz`: daphne and Django's middleware around a view that asks nothing
    of the database, the floor under any answer of this web tier."""
    return [Request("GET", "/healthz", None, {}, 200, None) for _ in range(count)]


def rest_requests(farm: rig.Farm, run: str, count: int) -> list[Request]:
    headers = {"Authorization": f"Token {farm.token}", "Content-Type": "application/json"}
    requests = []
    for index in range(count):
        body = json.dumps(
            {
                "image": f"{farm.registry}/bench/submit:api-{run}-{index}",
                "dockerfile": f"FROM busybox\nRUN echo {run} {index}\n",
            }
        ).encode()
        requests.append(Request("POST", "/api/v1/builds/", body, headers, 201, lambda body: json.loads(body)["id"]))
    return requests


def webhook_requests(full_name: str, secret: str, run: str, count: int) -> list[Request]:
    requests = []
    for index in range(count):
        sha = hashlib.sha1(f"{run}-{index}".encode()).hexdigest()
        body = json.dumps(
            {
                "ref": f"refs/heads/bench-{run}-{index}",
                "before": "0" * 40,
                "after": sha,
                "created": True,
                "deleted": False,
                "repository": {"full_name": full_name},
                "head_commit": {"id": sha, "message": f"commit {index}"},
            }
        ).encode()
        headers = {
            "Content-Type": "application/json",
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": str(uuid.uuid4()),
            "X-Hub-Signature-256": "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest(),
        }
        requests.append(
            Request("POST", "/webhooks/github/", body, headers, 202, lambda body: json.loads(body)["jobs"][0])
        )
    return requests


def hammer(farm: rig.Farm, requests: list[Request], clients: int) -> Outcome:
    """Sends every request from `clients` threads with a kept-alive connection each."""
    outcome = Outcome()
    host = urllib.parse.urlsplit(farm.web)
    lock = threading.Lock()
    todo = iter(requests)

    def client() -> None:
        connection = http.client.HTTPConnection(host.hostname, host.port, timeout=60)
        while True:
            with lock:
                request = next(todo, None)
            if request is None:
                break
            started = time.perf_counter()
            try:
                connection.request(request.method, request.path, request.body, request.headers)
                response = connection.getresponse()
                body = response.read()
            except (OSError, http.client.HTTPException) as exc:
                connection.close()  # a new connection for the next request
                with lock:
                    outcome.errors.append(f"{exc.__class__.__name__}: {exc}")
                continue
            elapsed = time.perf_counter() - started
            with lock:
                outcome.latencies.append(elapsed)
                outcome.answered_at.append(started + elapsed)
                if response.status != request.expect:
                    outcome.errors.append(f"{response.status}: {body[:200]!r}")
                elif request.job_of is not None:
                    outcome.jobs.append(request.job_of(body))
        connection.close()

    started = time.perf_counter()
    with rig.CpuMeter(farm.processes, farm.database_url) as outcome.cpu, ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client) for _ in range(clients)]:
            future.result()
    outcome.seconds = time.perf_counter() - started
    return outcome


def longest_silence(outcome: Outcome) -> float:
    """The longest time no client got an answer: a stall of the whole server
    shows here, where slow requests spread over the run do not."""
    times = sorted(outcome.answered_at)
    return max((b - a for a, b in zip(times, times[1:], strict=False)), default=0.0)


def cancel_all(farm: rig.Farm, jobs: list[str]) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda job: farm.call("POST", f"/api/v1/builds/{job}/cancel/"), jobs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=2000, help="counted requests per endpoint")
    parser.add_argument("--warmup", type=int, default=64, help="requests per endpoint sent first, not counted")
    parser.add_argument(
        "--endpoints",
        default="b1,rest,webhook",
        help="which, comma-separated: b1, rest, webhook (default: those three), floor (GET /healthz)",
    )
    parser.add_argument(
        "--phase-submits",
        type=int,
        default=200,
        help="submits of the in-process phase table afterwards (bench/history.py --jobs 0 --drained; 0: none)",
    )
    rig.add_arguments(parser, daemons=1)
    args = parser.parse_args()
    run = uuid.uuid4().hex[:8]
    results = {}
    with rig.farm_from(args) as farm, farm.pool_restored() as pool:
        if not any(daemon["enabled"] for daemon in pool):
            raise SystemExit("needs a farm with an enabled daemon (else every submit is a 503)")
        for daemon in pool:
            farm.set_daemon(daemon, enabled=daemon["enabled"], draining=True)
        secret = secrets.token_hex(16)
        repository = farm.ok(
            "POST",
            "/api/v1/repositories/",
            {
                "full_name": f"bench/hook-{run}",
                "clone_url": "https://git.example.invalid/bench/hook.git",
                "webhook_secret": secret,
                "image": f"{farm.registry}/bench/hook",
                "rules": [{"source": "branch", "pattern": "/bench-.*/", "tags": "{ref}"}],
            },
        )
        total = args.warmup + args.requests
        chosen = args.endpoints.split(",")
        endpoints = {
            name: make()
            for key, name, make in (
                ("floor", "GET /healthz (floor)", lambda: floor_requests(total)),
                ("b1", "GET /b1/build", lambda: seed_requests(farm, run, total)),
                ("rest", "POST /api/v1/builds/", lambda: rest_requests(farm, run, total)),
                (
                    "webhook",
                    "POST /webhooks/github/ (push)",
                    lambda: webhook_requests(repository["full_name"], secret, run, total),
                ),
            )
            if key in chosen
        }
        machine = rig.machine_note()
        try:
            for name, requests in endpoints.items():
                warm = hammer(farm, requests[: args.warmup], args.clients)
                results[name] = hammer(farm, requests[args.warmup :], args.clients)
                cancel_all(farm, warm.jobs + results[name].jobs)
                outcome = results[name]
                waiting = farm.count(f"{farm.registry}/bench/", "queued")
                rig.say(
                    f"{name}: p99 {rig.percentile(outcome.latencies, 0.99) * 1000:.0f} ms,"
                    f" {len(outcome.errors)} errors, {len(warm.jobs) + len(outcome.jobs)} jobs made,"
                    f" {waiting} still queued after the cancel;"
                    f" longest time without any answer {longest_silence(outcome):.2f} s"
                )
                for error in outcome.errors[:3]:
                    rig.say(f"  {error}")
        finally:
            farm.call("DELETE", f"/api/v1/repositories/{repository['id']}/")

    print(f"\n{args.clients} concurrent clients, {args.requests} counted requests per endpoint (after {args.warmup})")
    print(machine)
    print("| endpoint | requests | errors | p50 ms | mean ms | p99 ms | max ms | answers/s | longest with no answer |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, outcome in results.items():
        times = outcome.latencies or [float("nan")]
        p50, p99 = (rig.percentile(times, fraction) * 1000 for fraction in (0.5, 0.99))
        mean = statistics.mean(times) * 1000
        print(
            f"| {name} | {args.requests} | {len(outcome.errors)} | {p50:.0f} | {mean:.0f} | {p99:.0f}"
            f" | {max(times) * 1000:.0f} | {args.requests / outcome.seconds:.0f} | {longest_silence(outcome):.2f} s |"
        )
    if farm.processes:
        print("\nCPU while each endpoint was hammered: the machine's cores busy, the share of them that went to")
        print("anything but this farm and this client (other work on the machine), and CPU ms per answer by process")
        print("(postgres: the server's whole tree, other databases on it included; farm db: this farm's backends)")
        kinds = list(next(iter(results.values())).cpu.grouped())
        database = farm.database_url != ""
        print(f"| endpoint | machine busy | not this farm | {' | '.join(kinds)} |{' farm db |' if database else ''}")
        print("| --- | --- | --- |" + " --- |" * (len(kinds) + database))
        for name, outcome in results.items():
            cpu = outcome.cpu
            cells = " | ".join(f"{cpu.grouped().get(kind, 0) / args.requests * 1000:.1f}" for kind in kinds)
            own = f" {cpu.database_seconds / args.requests * 1000:.1f} |" if database else ""
            print(f"| {name} | {cpu.machine_share:.0%} | {cpu.other_share:.0%} | {cells} |{own}")
    if args.phase_submits and not args.web:
        phase_table(args.postgres, args.phase_submits)


def phase_table(postgres: str, submits: int) -> None:
    """What one `/b1` submit spends by phase (CPU, queries), measured in-process on a
    fresh database of the same kind: a feature that adds a query shows here."""
    command = [sys.executable, str(Path(__file__).with_name("history.py")), "--jobs", "0", "--recent", "0"]
    command += ["--submits", str(submits), "--drained", *(["--postgres", postgres] if postgres else [])]
    rig.say(f"in-process phases: {' '.join(command[1:])}")
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        rig.say(f"the phase table failed:\n{result.stderr[-2000:]}")
        return
    print("\nOne submit in-process, by phase (Django's test client, no daphne; daemons draining as above):")
    print(result.stdout.split("filled in", 1)[-1].split("\n", 1)[-1].rstrip())


if __name__ == "__main__":
    main()
