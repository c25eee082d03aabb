"""Throughput: many small builds submitted at once, on 1 daemon and then on 2.

    .venv/bin/python bench/throughput.py [--builds 200] [--sleep 0]

Each build is `FROM busybox` + a `RUN` + a `COPY` of a nonce file, sent as a tar
context through the REST API; the nonce makes every build's last steps new to
the daemon's cache. All builds of a case are submitted at once (16 client
threads), then the jobs' own timestamps are read back from the REST API: the
span runs from the first job's created_at to the last job's finished_at.

The cases differ only in the daemons that take builds (the others are disabled
through the API, and the pool is put back as it was at the end): each daemon
keeps its capacity, so 2 daemons offer twice the slots of 1.

When both daemons share the machine's few cores with the farm, a CPU-bound
build cannot go faster on two: `--sleep 2` makes each build wait instead, and
then the ratio shows how the farm itself (dispatch, workers, database) scales.

`--plain` adds the same builds made by hand on the same daemons, each case
with as many `docker build` + `docker push` pipelines at once as the farm has
slots (bench/rig.py's PlainCLI): the most these daemons and cores give, the
figure the farm's is read against.
"""

from __future__ import annotations

import argparse
import queue
import statistics
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import rig

SUBMIT_THREADS = 16
FINISHED = ("succeeded", "failed", "cancelled")


def seconds_between(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def one_case(farm: rig.Farm, daemons: list[dict], builds: int, timeout: float, sleep: float) -> dict:
    run = uuid.uuid4().hex[:8]
    machine = rig.machine_note()
    prefix = f"{farm.registry}/bench/throughput:{run}-"

    def submit(index: int) -> None:
        farm.ok(
            "POST",
            f"/api/v1/builds/?image={prefix}{index}",
            rig.small_build_context(f"{run}-{index}", sleep),
            "application/x-tar",
        )

    with rig.CpuMeter(farm.processes) as cpu:
        with ThreadPoolExecutor(SUBMIT_THREADS) as pool:
            list(pool.map(submit, range(builds)))
        rig.say(f"{builds} builds submitted on {len(daemons)} daemon(s)")
        deadline = time.monotonic() + timeout
        done = 0
        while done < builds:
            if time.monotonic() > deadline:
                raise SystemExit(f"only {done} of {builds} builds finished within {timeout:.0f} s")
            time.sleep(2)
            # Finished jobs only: listing waiting ones costs the server a queue position each.
            done = sum(farm.count(prefix, status) for status in FINISHED)
    jobs = farm.jobs(prefix)
    failed = [job for job in jobs if job["status"] != "succeeded"]
    for job in failed[:5]:
        rig.say(f"job {job['id']} {job['status']}: {job['error']}")
    span = seconds_between(min(j["created_at"] for j in jobs), max(j["finished_at"] for j in jobs))
    built = [j for j in jobs if j["started_at"]]
    busy = sum(seconds_between(j["started_at"], j["finished_at"]) for j in built)
    slots = sum(d["capacity"] for d in daemons)
    return {
        "daemons": len(daemons),
        "slots": slots,
        "busy": busy / (slots * span),
        "cpu": cpu,
        "machine": machine,
        "builds": len(jobs),
        "failed": len(failed),
        "span": span,
        "per_minute": len(jobs) / span * 60,
        "run_median": statistics.median(seconds_between(j["started_at"], j["finished_at"]) for j in built),
        "by_daemon": {
            name: sum(1 for j in jobs if j["daemon"] == name) for name in sorted({j["daemon"] for j in built})
        },
    }


def plain_case(farm: rig.Farm, daemons: list[dict], builds: int, sleep: float, folder: Path) -> dict:
    """The case's builds by hand: a pipeline per slot (capacity of each daemon), each
    building and pushing one after another until none is left."""
    run = uuid.uuid4().hex[:8]
    left = queue.SimpleQueue()
    for index in range(builds):
        left.put(index)
    slots = [daemon for daemon in daemons for _ in range(daemon["capacity"])]

    def pipeline(number: int, daemon: dict) -> list[rig.Plain]:
        config = folder / f"{run}-{number}"
        config.mkdir()
        cli, done = rig.PlainCLI(farm, daemon["url"], "admin", "buildkit", config), []
        while True:
            try:
                index = left.get_nowait()
            except queue.Empty:
                return done
            image = f"{farm.registry}/bench/throughput-plain:{run}-{index}"
            done.append(cli.run(image, rig.small_build_context(f"plain-{run}-{index}", sleep)))

    started = time.monotonic()
    with ThreadPoolExecutor(len(slots)) as pool:
        made = [plain for each in pool.map(pipeline, range(len(slots)), slots) for plain in each]
    span = time.monotonic() - started
    return {
        "daemons": len(daemons),
        "slots": len(slots),
        "span": span,
        "per_minute": len(made) / span * 60,
        "run_median": statistics.median(p.total for p in made),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--builds", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds a case may take")
    parser.add_argument(
        "--sleep",
        type=float,
        default=0,
        help="seconds each build's RUN sleeps first: builds that wait, not compute, so that the figure is the"
        " farm's scaling rather than the machine's cores (default 0)",
    )
    parser.add_argument("--plain", action="store_true", help="also the same builds by hand on the same daemons")
    rig.add_arguments(parser, daemons=2)
    args = parser.parse_args()
    results, plains = [], []
    with rig.farm_from(args) as farm, farm.pool_restored() as pool, tempfile.TemporaryDirectory() as folder:
        if len(pool) < 2:
            raise SystemExit("needs a farm with two daemons")
        for count in (1, 2):
            used, others = pool[:count], pool[count:]
            for daemon in used:
                farm.set_daemon(daemon, enabled=True, draining=False)
            for daemon in others:
                farm.set_daemon(daemon, enabled=False, draining=daemon["draining"])
            results.append(one_case(farm, used, args.builds, args.timeout, args.sleep))
            rig.say(f"{count} daemon(s): {results[-1]['per_minute']:.1f} builds/min, {results[-1]['failed']} failed")
            if args.plain:
                plains.append(plain_case(farm, used, args.builds, args.sleep, Path(folder)))
                rig.say(f"{count} daemon(s) by hand: {plains[-1]['per_minute']:.1f} builds/min")

    what = f"builds whose RUN sleeps {args.sleep:g} s" if args.sleep else "builds"
    print(f"\n{args.builds} {what} submitted at once; span = first job created to last job finished")
    print(
        "| daemons | slots | builds | failed | span s | builds/min | build+push s (median) | slots busy | per daemon |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        spread = ", ".join(f"{name}: {n}" for name, n in r["by_daemon"].items())
        print(
            f"| {r['daemons']} | {r['slots']} | {r['builds']} | {r['failed']} | {r['span']:.1f}"
            f" | {r['per_minute']:.1f} | {r['run_median']:.2f} | {r['busy']:.0%} | {spread} |"
        )
    print(f"| 2 / 1 | | | | | {results[1]['per_minute'] / results[0]['per_minute']:.2f}x | | | |")
    for r in results:
        print(f"{r['daemons']} daemon(s): {r['machine']}")
    if plains:
        print("\nThe same builds by hand (docker build + docker push), a pipeline per slot, on the same daemons")
        print("| daemons | pipelines | span s | builds/min | build+push s (median) | farm / by hand |")
        print("| --- | --- | --- | --- | --- | --- |")
        for r, farm_result in zip(plains, results, strict=True):
            print(
                f"| {r['daemons']} | {r['slots']} | {r['span']:.1f} | {r['per_minute']:.1f} | {r['run_median']:.2f}"
                f" | {farm_result['per_minute'] / r['per_minute']:.2f} |"
            )
        print(f"| 2 / 1 | | | {plains[1]['per_minute'] / plains[0]['per_minute']:.2f}x | | |")
    if farm.processes:
        print("\nCPU during each case: the machine's cores busy, the share of them that went to anything but")
        print("this farm and this client (containers, other work on the machine), and CPU ms per build by process")
        kinds = list(results[0]["cpu"].grouped())
        print(f"| daemons | machine busy | not this farm | {' | '.join(kinds)} |")
        print("| --- | --- | --- |" + " --- |" * len(kinds))
        for r in results:
            cpu = r["cpu"]
            cells = " | ".join(f"{cpu.grouped().get(kind, 0) / r['builds'] * 1000:.0f}" for kind in kinds)
            print(f"| {r['daemons']} | {cpu.machine_share:.0%} | {cpu.other_share:.0%} | {cells} |")


if __name__ == "__main__":
    main()
