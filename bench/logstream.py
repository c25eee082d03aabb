"""Log streaming: a build printing many lines, followed over the WebSocket.

    .venv/bin/python bench/logstream.py [--lines 100000] [--runs 1] [--daemons 1]
    .venv/bin/python bench/logstream.py --rate 20 --lines 200 [--builder classic]

With `--rate R` the build prints its lines R a second (busybox `usleep`)
instead of in a burst: each line's delay is what one line waits, not a
backlog. The same Dockerfile is then also built by hand with the docker CLI
on the same daemon, its output read as the CLI prints it: the delay from the
container to the CLI (BuildKit's own progress stream, which the farm cannot
shorten) beside the delay to the farm's viewer; the difference of the two is
the farm's part (issue 26: p50 under 100 ms).

The build's one RUN step prints `bench-line N TIME` for N = 1..lines, TIME being
the shell's clock ($EPOCHREALTIME) as the line is written; the container and
this client read the same machine's clock, so arrival minus TIME is the line's
delay from the daemon's output to the client. busybox prints the 100,000 lines
in about 0.2 s: a burst, so the figures are what the farm's pipeline (dockerd's
stream -> worker -> database + channel layer -> daphne -> client) sustains.

Prints per run: lines/s reaching the client (lines over the span from the first
line's own timestamp to the last line's arrival), delay p50/p99/max, lines
lost (numbers never received, and gaps or repeats in the frames' seq), and the
largest RSS of daphne and of each worker's processes: at the start, the peak
sampled every 100 ms, and VmHWM at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import time
import uuid
from dataclasses import dataclass

import rig
from websockets.sync.client import connect

from builds.engine.buildkit import find_client

LINE = re.compile(r"bench-line (\d+) (\d+\.\d+)")


def dockerfile(lines: int, nonce: str, rate: float = 0) -> str:
    pause = f"; usleep {round(1_000_000 / rate)}" if rate else ""
    loop = f'i=0; while [ $i -lt {lines} ]; do i=$((i+1)); echo "bench-line $i $EPOCHREALTIME"{pause}; done'
    return f"FROM busybox\nRUN echo {nonce} >/dev/null; {loop}\n"


@dataclass
class Run:
    received: int
    lost: int
    seq_problems: int
    produced_seconds: float  # first to last line's own timestamp
    delivered_seconds: float  # first line's timestamp to last line's arrival
    delays: list[float]
    status: str

    @property
    def lines_per_second(self) -> float:
        return self.received / self.delivered_seconds


def one_run(farm: rig.Farm, lines: int, rate: float = 0, builder: str = "") -> Run:
    text = dockerfile(lines, uuid.uuid4().hex, rate)
    request = {"image": f"{farm.registry}/bench/logstream:latest", "dockerfile": text}
    job = farm.ok("POST", "/api/v1/builds/", {**request, **({"builder": builder} if builder else {})})
    numbers, stamps, arrivals, seqs, end = [], [], [], [], None
    headers = {"Authorization": f"Token {farm.token}"}
    with connect(f"{farm.ws}/b1/build/log/ws/{job['id']}", additional_headers=headers, max_size=None) as ws:
        for message in ws:
            arrived = time.time()
            frame = json.loads(message)
            if frame["type"] == "end":
                end = frame
                break
            if frame["type"] != "log":
                continue
            for line in frame["lines"]:
                seqs.append(line["seq"])
                if match := LINE.search(line["text"]):  # BuildKit puts "#5 0.123 " before it
                    numbers.append(int(match[1]))
                    stamps.append(float(match[2]))
                    arrivals.append(arrived)
    if end is None:
        raise SystemExit(f"job {job['id']}: the stream closed without an end frame")
    seq_problems = sum(1 for a, b in zip(seqs, seqs[1:], strict=False) if b != a + 1) + (seqs[:1] != [1])
    return Run(
        received=len(set(numbers)),
        lost=lines - len(set(numbers) & set(range(1, lines + 1))),
        seq_problems=seq_problems,
        produced_seconds=max(stamps) - min(stamps) if stamps else 0.0,
        delivered_seconds=max(arrivals) - min(stamps) if stamps else float("inf"),
        delays=[a - s for a, s in zip(arrivals, stamps, strict=True)],
        status=end["status"] + (f" ({end['error']})" if end["error"] else ""),
    )


def by_hand(farm: rig.Farm, lines: int, rate: float, builder: str) -> list[float]:
    """Each line's delay from the container to the docker CLI's output, the same build run by hand."""
    engine = farm.daemons()[0]["url"]
    env = {**os.environ, "DOCKER_BUILDKIT": "0" if builder == "classic" else "1"}
    argv = [find_client().path, "--host", engine, "build", "--network", "none", "-"]
    if builder != "classic":
        argv.insert(-1, "--progress=plain")
    text = dockerfile(lines, uuid.uuid4().hex, rate).encode()
    delays = []
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.STDOUT}
    with subprocess.Popen(argv, env=env, **pipes) as cli:
        cli.stdin.write(text)
        cli.stdin.close()
        for raw in cli.stdout:
            arrived = time.time()
            if match := LINE.search(raw.decode(errors="replace")):
                delays.append(arrived - float(match[2]))
    return delays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--rate", type=float, default=0, help="lines a second (default: all at once)")
    parser.add_argument("--builder", choices=["buildkit", "classic"], default="", help="default: the farm's")
    rig.add_arguments(parser, daemons=1)
    args = parser.parse_args()
    with rig.farm_from(args) as farm:
        machine = rig.machine_note()
        runs, meters, hand = [], [], []
        with rig.MemoryWatch(farm.pids) as memory:
            for number in range(args.runs):
                with rig.CpuMeter(farm.processes) as cpu:
                    run = one_run(farm, args.lines, args.rate, args.builder)
                runs.append(run)
                meters.append(cpu)
                if args.rate:
                    hand += by_hand(farm, args.lines, args.rate, args.builder)
                rig.say(
                    f"run {number + 1}: {run.status}, {run.received} lines, {run.lines_per_second:,.0f} lines/s,"
                    f" p99 delay {rig.percentile(run.delays, 0.99) * 1000:.0f} ms, lost {run.lost}"
                )
    delays = [d for run in runs for d in run.delays]

    def median(values):
        return statistics.median(values)

    pace = f" at {args.rate:g} a second" if args.rate else ""
    print(f"\n{args.runs} run(s) of a build printing {args.lines:,} lines{pace}; medians over runs")
    print(machine)
    print("| measure | value |")
    print("| --- | --- |")
    print(f"| build outcome | {', '.join(run.status for run in runs)} |")
    print(f"| lines produced in (container clock) | {median([r.produced_seconds for r in runs]):.2f} s |")
    print(f"| first line produced to last line received | {median([r.delivered_seconds for r in runs]):.2f} s |")
    print(f"| lines/s reaching the client | {median([r.lines_per_second for r in runs]):,.0f} |")
    for name, fraction in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99), ("max", 1.0)):
        if delays:
            print(f"| delay {name}, line's timestamp to arrival | {rig.percentile(delays, fraction) * 1000:,.0f} ms |")
        if hand:
            cli = rig.percentile(hand, fraction) * 1000
            print(f"| by hand, the same build: delay {name}, line's timestamp to the CLI's output | {cli:,.0f} ms |")
    print(f"| lines lost (all runs) | {sum(r.lost for r in runs)} |")
    print(f"| seq gaps or repeats (all runs) | {sum(r.seq_problems for r in runs)} |")
    if farm.processes:
        print("\nCPU per run: the machine's cores busy, the share that went to anything but this farm and this")
        print("client (the build's container, other work on the machine), and CPU seconds by process")
        kinds = list(meters[0].grouped())
        print(f"| run | machine busy | not this farm | {' | '.join(kinds)} |")
        print("| --- | --- | --- |" + " --- |" * len(kinds))
        for number, cpu in enumerate(meters, 1):
            cells = " | ".join(f"{cpu.grouped().get(kind, 0):.2f}" for kind in kinds)
            print(f"| {number} | {cpu.machine_share:.0%} | {cpu.other_share:.0%} | {cells} |")
    if farm.pids:
        print("\n| process | RSS at start | peak RSS sampled | VmHWM at end |")
        print("| --- | --- | --- | --- |")
        print("\n".join(memory.rows()))


if __name__ == "__main__":
    main()
