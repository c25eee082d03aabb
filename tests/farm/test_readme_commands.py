"""README's first commands, run as a newcomer runs them: the shell blocks of
"The two commands" and "First build", in order, in bash.

`make up` is run for real (it is harmless where a farm already runs, and then
this test leaves that farm running); `make test` is this suite, so that one line
is not run again from inside it. The `export TOKEN=...` line takes the token
make up printed, as README says."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from scripts import localfarm as lf

pytestmark = pytest.mark.farm

README = lf.ROOT / "README.md"


def shell_blocks(section: str) -> list[str]:
    text = README.read_text()
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```sh\n(.*?)```", text[start:end], re.DOTALL)


def newcomer_env() -> dict[str, str]:
    """A shell's environment, without what this suite sets for itself."""
    ours = ("GENERATOR_", "DJANGO_", "DATABASE_URL", "REDIS_URL", "PYTEST")
    return {name: value for name, value in os.environ.items() if not name.startswith(ours)}


def run(script: str, env: dict[str, str], timeout: float) -> str:
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=lf.ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"{script}\nexited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_the_readmes_first_commands_run_as_written():
    two_commands = shell_blocks("The two commands")
    assert two_commands and "make up" in two_commands[0] and "make test" in two_commands[0]
    up_lines = [line for line in two_commands[0].splitlines() if not line.startswith("make test")]
    env = newcomer_env()
    already_up = subprocess.run(["make", "-s", "status"], cwd=lf.ROOT, env=env, capture_output=True).returncode == 0
    try:
        printed = run("\n".join(up_lines), env, timeout=600)
        token_line = re.search(r"^\s*(export TOKEN=\w+)\s*$", printed, re.MULTILINE)
        assert token_line, printed
        first_build = shell_blocks("First build")
        assert first_build[0].startswith("export TOKEN=...")
        script = "\n".join([token_line[1], first_build[0].split("\n", 1)[1], *first_build[1:]])
        output = run(script, env, timeout=300)
    finally:
        if not already_up:
            run("make down", env, timeout=120)
    assert re.search(r"^[0-9a-f]{32}$", output, re.MULTILINE), output  # echo $JOB
    assert "'status': 'succeeded'" in output, output  # the WebSocket's end frame
    assert "\nhello from the farm\n" in output, output  # docker run of the pushed image
    assert re.search(r"^Docker-Content-Digest: sha256:[0-9a-f]{64}", output, re.MULTILINE | re.IGNORECASE), output
