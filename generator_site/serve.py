"""The web tier as several daphne processes sharing one listening socket.

One Python process uses one core at a time, so a single daphne caps the web
tier at one core however many the host has. This opens the socket once and
starts `--processes` daphne processes on it (`daphne --fd`, through
generator_site/daphne_process.py, which bounds request heads); the kernel hands
each new connection to one of them. WebSocket groups span processes through
the channel layer, so a viewer may be served by any of them.

    python -m generator_site.serve [--bind 127.0.0.1] [--port 8080] [--processes N] [-- DAPHNE_ARGS...]

A process that dies is started again; SIGTERM or SIGINT stops them all.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

from generator_site.env import env_int

APPLICATION = "generator_site.asgi:application"
RESTART_PAUSE_SECONDS = 1.0


def default_processes() -> int:
    return env_int("GENERATOR_WEB_PROCESSES", os.cpu_count() or 1)


def daphne_argv(fd: int, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "generator_site.daphne_process", "--fd", str(fd), *extra, APPLICATION]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--processes", type=int, default=default_processes())
    parser.add_argument("daphne_args", nargs="*", help="passed on to each daphne (after --)")
    args = parser.parse_args(argv)
    if args.processes < 1:
        parser.error("--processes must be at least 1")

    listener = socket.create_server((args.bind, args.port), backlog=1024, reuse_port=False)
    fd = listener.fileno()
    os.set_inheritable(fd, True)

    def start() -> subprocess.Popen:
        # A submit's dispatch pass after its answer, in a thread of each process (builds/jobs/dispatch_soon.py).
        env = {**os.environ, "GENERATOR_DISPATCH_IN_BACKGROUND": "true"}
        return subprocess.Popen(daphne_argv(fd, args.daphne_args), pass_fds=[fd], env=env)

    stopping = False

    def stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    children = [start() for _ in range(args.processes)]
    while not stopping:
        time.sleep(0.2)
        for index, child in enumerate(children):
            if child.poll() is not None and not stopping:
                print(f"daphne {child.pid} exited with {child.returncode}; starting another", file=sys.stderr)
                time.sleep(RESTART_PAUSE_SECONDS)  # no busy loop if it dies at start
                children[index] = start()
    for child in children:
        child.terminate()
    for child in children:
        try:
            child.wait(timeout=15)
        except subprocess.TimeoutExpired:
            child.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
