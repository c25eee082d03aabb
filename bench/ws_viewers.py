"""Many viewers of one build's live log, and viewers that stop reading.

    .venv/bin/python bench/ws_viewers.py [--viewers 1000] [--lines 5000] [--connect-gap-ms 2]
                                         [--slow 20] [--slow-lines 30000] [--skip-many]

Run 1, "many viewers": `--viewers` WebSockets connect to a job while its daemon
is held back (draining), so every viewer follows the build from before its
first line; then the build prints `--lines` lines at a steady pace (about 1,000
a second) and each viewer reads to the end frame. Each must receive every line:
the bench counts the lines each viewer got, the gaps and repeats in the frames'
seq, and how each connection closed. A viewer whose connection fails or drops
before the end opens it again after its last line, as the page and the CLI do,
and the bench counts those. The clients run in `--client-processes` processes
(asyncio, the `websockets` client with its default 1 MiB message limit, as the
CLI has), `--connect-gap-ms` apart (0: all at once).

Run 2, "slow readers": `--slow` clients open the WebSocket of a build that
prints `--slow-lines` lines of 700 characters in a burst, and then read nothing
(a 4 KiB receive buffer: a client gone to sleep), beside one viewer that reads
normally. Prints daphne's memory (all its processes together) at idle, its peak,
once the server has dropped the sleepers (or `--slow-wait` seconds passed), and
after the clients closed their sockets; and whether the normal viewer got every
line.

Loopback only: a private farm on free ports (bench/rig.py), or `--web`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import json
import multiprocessing
import os
import queue
import signal
import socket
import struct
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import rig
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

TCP_ESTABLISHED = 1


def paced_dockerfile(lines: int, nonce: str) -> str:
    # 50 lines, then 50 ms: about 1,000 lines a second, each with its own timestamp.
    loop = (
        f"i=0; while [ $i -lt {lines} ]; do j=0; while [ $j -lt 50 ] && [ $i -lt {lines} ]; do"
        ' i=$((i+1)); j=$((j+1)); echo "bench-line $i $EPOCHREALTIME"; done; usleep 50000; done'
    )
    return f"FROM busybox\nRUN echo {nonce} >/dev/null; {loop}\n"


def burst_dockerfile(lines: int, nonce: str) -> str:
    pad = "z" * 680
    loop = f'i=0; while [ $i -lt {lines} ]; do i=$((i+1)); echo "slow-line $i {pad}"; done'
    return f"FROM busybox\nRUN echo {nonce} >/dev/null; {loop}\n"


# --- the viewers (in client processes) ------------------------------------------


@dataclass
class Seen:
    lines: int = 0  # bench lines received, repeats included
    numbers: set = field(default_factory=set)
    seq_problems: int = 0
    ended: bool = False
    close: str = ""  # how the last connection closed: its code, or what went wrong
    failures: list = field(default_factory=list)  # connections that ended before the end frame, and why
    delays: list = field(default_factory=list)  # every 50th line: arrival - its timestamp
    first_stamp: float = 0.0  # the earliest bench line's own timestamp
    last_arrival: float = 0.0
    last_seq: int = 0


RETRIES = 10
RETRY_PAUSE_SECONDS = 1.0


async def follow(url: str, token: str, ready: asyncio.Event, deadline: float) -> Seen:
    """One viewer, as the page and the CLI follow a log: a connection that fails
    or drops before the end is opened again after the last line received."""
    seen = Seen()
    loop = asyncio.get_running_loop()
    try:
        while not seen.ended and len(seen.failures) <= RETRIES and loop.time() < deadline:
            if seen.failures:
                await asyncio.sleep(RETRY_PAUSE_SECONDS)
            seen.close = await one_connection(f"{url}?after={seen.last_seq}", token, seen, deadline, ready)
            if not seen.ended:
                seen.failures.append(seen.close)
    finally:
        ready.set()
    return seen


async def one_connection(url: str, token: str, seen: Seen, deadline: float, ready: asyncio.Event) -> str:
    """Reads one connection into `seen`; answers how it closed."""
    try:
        async with connect(url, additional_headers={"Authorization": f"Token {token}"}, open_timeout=60) as ws:
            ready.set()
            try:
                async with asyncio.timeout_at(deadline):
                    async for message in ws:
                        read_frame(json.loads(message), seen, time.time())
            except TimeoutError:
                return "bench timeout"
        return str(ws.close_code)
    except ConnectionClosed as exc:
        return str(exc.rcvd.code if exc.rcvd else (exc.sent.code if exc.sent else 1006))
    except InvalidStatus as exc:
        return f"HTTP {exc.response.status_code}"
    except Exception as exc:  # counted, not fatal: the other viewers go on
        return type(exc).__name__


def read_frame(frame: dict, seen: Seen, arrived: float) -> None:
    if frame["type"] == "end":
        seen.ended = True
        return
    if frame["type"] != "log":
        return
    for line in frame["lines"]:
        if line["seq"] != seen.last_seq + 1:
            seen.seq_problems += 1
        seen.last_seq = line["seq"]
        words = line["text"].split()
        if len(words) >= 2 and words[0] in ("bench-line", "slow-line"):
            number = int(words[1])
            seen.lines += 1
            seen.numbers.add(number)
            if words[0] == "bench-line":
                stamp = float(words[2])
                if not seen.first_stamp or stamp < seen.first_stamp:
                    seen.first_stamp = stamp
                if number % 50 == 0:
                    seen.delays.append(arrived - stamp)
    seen.last_arrival = arrived


def client_process(url: str, token: str, count: int, wall_deadline: float, gap: float, connected, results) -> None:
    async def run() -> list[Seen]:
        deadline = asyncio.get_running_loop().time() + (wall_deadline - time.time())
        readies = [asyncio.Event() for _ in range(count)]
        tasks = []
        for ready in readies:
            tasks.append(asyncio.create_task(follow(url, token, ready, deadline)))
            if gap:
                await asyncio.sleep(gap)  # a steady stream of handshakes rather than one burst
        for ready in readies:
            await ready.wait()
        connected.release()
        return await asyncio.gather(*tasks)

    seen = asyncio.run(run())
    results.put([Seen(**vars(s)) for s in seen])


def many_viewers(farm: rig.Farm, count: int, processes: int, wall_deadline: float, url: str, gap: float = 0.002):
    """Starts the viewers; answers a function that waits for their results (a
    client process that died counts its viewers as lost)."""
    context = multiprocessing.get_context("fork")
    connected, results = context.Semaphore(0), context.Queue()
    shares = [count // processes + (1 if i < count % processes else 0) for i in range(processes)]
    shares = [share for share in shares if share]
    children = [
        context.Process(target=client_process, args=(url, farm.token, share, wall_deadline, gap, connected, results))
        for share in shares
    ]
    for child in children:
        child.start()
    for _ in children:
        if not connected.acquire(timeout=max(1.0, wall_deadline - time.time())):
            raise SystemExit("the viewers did not connect in time")

    def collect() -> list[Seen]:
        seen = []
        for share in shares:
            try:
                seen += results.get(timeout=max(1.0, wall_deadline - time.time() + 30))
            except queue.Empty:
                seen += [Seen(close="client process lost") for _ in range(share)]
        for child in children:
            child.join(10)
            if child.is_alive():
                child.kill()
        return seen

    return collect


# --- daphne's memory ---------------------------------------------------------------


class DaphneMemory:
    """VmRSS of daphne (all its processes together), sampled every 100 ms."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> int:
        if not self.pid:
            return 0
        return sum(rig.status_kib(member, "VmRSS") for member in rig.tree(self.pid))

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, self.now())

    def __enter__(self) -> DaphneMemory:
        self.peak = self.now()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def mib(kib: int) -> str:
    return f"{kib / 1024:.0f} MiB"


# --- the runs ----------------------------------------------------------------------


def allow_registry(farm: rig.Farm) -> None:
    """Builds push only to registries on the farm's allow-list: add the bench's."""
    if farm.registry not in {row["host"] for row in farm.ok("GET", "/api/v1/registries/")["results"]}:
        farm.ok("POST", "/api/v1/registries/", {"host": farm.registry})


def held_back_job(farm: rig.Farm, dockerfile: str) -> tuple[dict, callable]:
    """A job that does not start until the returned function is called (its daemon drains meanwhile)."""
    daemons = farm.daemons()
    for daemon in daemons:
        farm.set_daemon(daemon, enabled=True, draining=True)  # takes no job, yet submitting works
    job = farm.ok(
        "POST", "/api/v1/builds/", {"image": f"{farm.registry}/bench/viewers:latest", "dockerfile": dockerfile}
    )

    def release() -> None:
        for daemon in daemons:
            farm.set_daemon(daemon, enabled=True, draining=False)

    return job, release


def run_many(farm: rig.Farm, args) -> None:
    job, release = held_back_job(farm, paced_dockerfile(args.lines, uuid.uuid4().hex))
    url = f"{farm.ws}/b1/build/log/ws/{job['id']}"
    started = time.monotonic()
    clients_before = os.times()
    with DaphneMemory(farm.pids.get("daphne")) as memory, rig.CpuMeter(farm.processes) as cpu:
        idle = memory.now()
        gap = args.connect_gap_ms / 1000
        collect = many_viewers(farm, args.viewers, args.client_processes, time.time() + args.timeout, url, gap)
        connected_in = time.monotonic() - started
        rig.say(f"{args.viewers} viewers connected in {connected_in:.1f} s; the build starts")
        release()
        seen = collect()
    clients_after = os.times()
    after_close = wait_for_settle(memory)
    every = set(range(1, args.lines + 1))
    complete = [s for s in seen if s.numbers == every and s.ended]
    lost = sum(len(every - s.numbers) for s in seen)
    delays = [d for s in seen for d in s.delays]
    failures = collections.Counter(reason for s in seen for reason in s.failures)
    closes = collections.Counter(s.close for s in seen)
    how = f"{args.connect_gap_ms:g} ms apart in each of {args.client_processes} processes" if gap else "all at once"
    print(f"\nRun 1: {args.viewers} viewers ({how}) of one build printing {args.lines:,} lines (~1,000/s)")
    print("| measure | value |")
    print("| --- | --- |")
    print(f"| viewers connected (handshake to backlog) in | {connected_in:.1f} s |")
    print(f"| viewers that got every line and the end frame | {len(complete)} / {len(seen)} |")
    print(f"| lines lost (all viewers) | {lost:,} |")
    print(f"| seq gaps or repeats (all viewers) | {sum(s.seq_problems for s in seen)} |")
    print(f"| lines delivered (all viewers) | {sum(s.lines for s in seen):,} |")
    if delays:
        for name, fraction in (("p50", 0.5), ("p99", 0.99), ("max", 1.0)):
            print(f"| delay {name}, line's timestamp to arrival | {rig.percentile(delays, fraction) * 1000:,.0f} ms |")
        print(f"| lines/s delivered (all viewers, over the build's output span) | {lines_per_second(seen):,.0f} |")
    print(f"| last connection's close, by code | {counted(closes)} |")
    retried = sum(1 for s in seen if s.failures)
    print(f"| connections lost before the end, resumed (by viewers) | {counted(failures) or 'none'} ({retried}) |")
    if memory.pid:
        print(
            f"| daphne RSS (all processes): idle / peak / 5 s after the viewers left | {mib(idle)} / {mib(memory.peak)}"
            f" / {mib(after_close)} |"
        )
    clients = (clients_after.children_user + clients_after.children_system) - (
        clients_before.children_user + clients_before.children_system
    )
    spent = cpu.grouped()
    print(
        f"| CPU seconds: daphne / worker / the viewers' processes; machine busy | {spent.get('daphne', 0):.1f}"
        f" / {spent.get('worker', 0):.1f} / {clients:.1f}; {cpu.machine_share:.0%} |"
    )


def counted(counter: collections.Counter) -> str:
    return ", ".join(f"{what}: {n}" for what, n in counter.most_common())


def lines_per_second(seen: list[Seen]) -> float:
    """Lines delivered to all viewers, over the span from the first line's own
    timestamp (the build's clock, the same machine's) to the last arrival."""
    stamps = [s.first_stamp for s in seen if s.first_stamp]
    if not stamps:
        return 0.0
    return sum(s.lines for s in seen) / (max(s.last_arrival for s in seen) - min(stamps))


def wait_for_settle(memory: DaphneMemory, seconds: float = 5.0) -> int:
    """daphne's RSS once it has had a moment to free what the closed connections held."""
    time.sleep(seconds)
    return memory.now()


def open_without_reading(web: str, path: str, token: str) -> socket.socket:
    host, port = web.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Token {token}\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)  # nothing past the handshake is read
    if not head.startswith(b"HTTP/1.1 101"):
        raise SystemExit(f"the slow reader's handshake failed: {head!r}")
    return sock


def still_open(sock: socket.socket) -> bool:
    """Whether the server has not closed or reset the connection (read from the kernel, not the socket)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
    return struct.unpack("B", info[:1])[0] == TCP_ESTABLISHED


def run_slow(farm: rig.Farm, args) -> None:
    job, release = held_back_job(farm, burst_dockerfile(args.slow_lines, uuid.uuid4().hex))
    path = f"/b1/build/log/ws/{job['id']}"
    with DaphneMemory(farm.pids.get("daphne")) as memory:
        idle = memory.now()
        sleepers = [open_without_reading(farm.web, path, farm.token) for _ in range(args.slow)]
        collect = many_viewers(farm, 1, 1, time.time() + args.slow_wait + 120, f"{farm.ws}{path}")
        opened = time.monotonic()
        release()
        closed_after: dict[int, float] = {}
        while len(closed_after) < len(sleepers) and time.monotonic() - opened < args.slow_wait:
            for index, sock in enumerate(sleepers):
                if index not in closed_after and not still_open(sock):
                    closed_after[index] = time.monotonic() - opened
            time.sleep(0.2)
        peak_with_sleepers = memory.peak
        server_dropped = memory.now()
        for sock in sleepers:
            sock.close()
        seen = collect()
        after = wait_for_settle(memory)
    reader = seen[0]
    complete = reader.numbers == set(range(1, args.slow_lines + 1)) and reader.ended
    log_bytes = args.slow_lines * 700
    print(
        f"\nRun 2: {args.slow} clients that read nothing, and one that reads, on a build printing"
        f" {args.slow_lines:,} lines of 700 characters ({log_bytes / 2**20:.0f} MiB)"
    )
    print("| measure | value |")
    print("| --- | --- |")
    dropped = sorted(closed_after.values())
    if dropped:
        spread = f"{dropped[0]:.0f}-{dropped[-1]:.0f} s"
        print(f"| sleepers dropped by the server | {len(dropped)} / {args.slow}, after {spread} |")
    else:
        print(f"| sleepers dropped by the server | 0 / {args.slow} within {args.slow_wait:.0f} s |")
    print(f"| the reading viewer: every line and the end | {'yes' if complete else 'no'} ({reader.close}) |")
    if memory.pid:
        print(f"| daphne RSS, all processes: idle | {mib(idle)} |")
        grown = mib(peak_with_sleepers - idle)
        print(f"| peak while the sleepers were connected | {mib(peak_with_sleepers)} (+{grown}) |")
        print(f"| when the server had dropped them (or at {args.slow_wait:.0f} s) | {mib(server_dropped)} |")
        print(f"| 5 s after the clients closed their sockets | {mib(after)} (+{mib(after - idle)} over idle) |")
    slow_closes = count_slow_closes(farm)
    if slow_closes is not None:
        print(f"| streams closed as too slow (4408), from daphne's log | {slow_closes} |")


def count_slow_closes(farm: rig.Farm) -> int | None:
    """How many streams daphne's log says it closed as too slow (a private farm's
    daphne writes its log to a file: found through its stderr)."""
    pid = farm.pids.get("daphne")
    if not pid:
        return None
    try:
        log = Path(os.readlink(f"/proc/{pid}/fd/2"))
        return log.read_text(errors="replace").count("closing the log stream of job")
    except OSError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--viewers", type=int, default=1000)
    parser.add_argument("--lines", type=int, default=5000)
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument(
        "--connect-gap-ms", type=float, default=2, help="pause between one client process's handshakes (0: all at once)"
    )
    parser.add_argument("--timeout", type=float, default=240, help="seconds the many-viewers run may take")
    parser.add_argument("--slow", type=int, default=20, help="clients that read nothing (0: skip run 2)")
    parser.add_argument("--slow-lines", type=int, default=30_000)
    parser.add_argument("--slow-wait", type=float, default=90, help="seconds to wait for the server to drop them")
    parser.add_argument("--skip-many", action="store_true", help="run 2 only")
    rig.add_arguments(parser, daemons=1)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # unwinds, so the private farm is stopped
    with rig.farm_from(args) as farm:
        print(rig.machine_note())
        allow_registry(farm)
        if not args.skip_many:
            run_many(farm, args)
        if args.slow:
            run_slow(farm, args)


if __name__ == "__main__":
    main()
