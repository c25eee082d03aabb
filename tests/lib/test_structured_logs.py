"""Log records as one structured line each, naming the job, daemon and attempt of
the task run that logged them."""

from __future__ import annotations

import io
import json
import logging
import re
from contextlib import contextmanager

import pytest
from django.conf import settings

from builds import tasks
from builds.models import BuildJob
from lib.structured_logs import ContextFilter, LineFormatter, log_fields, process_role


@contextmanager
def captured(style: str):
    """The root logger's records, formatted as the console handler of settings.LOGGING does."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter(role="worker"))
    handler.setFormatter(LineFormatter(style))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


_PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|[^ ]*)(?: |$)')


def logfmt(line: str) -> dict[str, str]:
    """key=value pairs; a quoted value's escapes are JSON's, so json.loads reads it."""
    pairs = _PAIR.findall(line)
    assert " ".join(f"{k}={v}" for k, v in pairs) == line, "not logfmt"
    return {key: json.loads(value) if value.startswith('"') else value for key, value in pairs}


def test_the_settings_log_through_the_structured_line_formatter():
    assert settings.LOGGING["handlers"]["console"]["formatter"] == "line"
    assert settings.LOGGING["handlers"]["console"]["filters"] == ["context"]
    assert settings.LOGGING["formatters"]["line"]["style"] == settings.GENERATOR_LOG_FORMAT


@pytest.mark.django_db
def test_a_record_inside_a_task_run_carries_job_daemon_and_attempt(daemon):
    # Not assigned to the daemon: the runner finds nothing to claim, and says so.
    job = BuildJob.objects.create(image="localhost:5000/team/app:latest", dockerfile="FROM busybox\n")
    with captured("json") as stream:
        logging.getLogger("builds.worker.runner").info("before the run")
        tasks.run_build(job.id, 1, daemon.pk)
        logging.getLogger("builds.worker.runner").info("after the run")
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    inside = [r for r in records if "nothing to do" in r["msg"]]
    assert len(inside) == 1
    assert inside[0]["job"] == job.id
    assert inside[0]["daemon"] == "unit-daemon"
    assert inside[0]["attempt"] == 1
    assert inside[0]["logger"] == "builds.worker.runner"
    assert inside[0]["role"] == "worker"
    assert inside[0]["level"] == "info"
    outside = [r for r in records if r["msg"] in ("before the run", "after the run")]
    assert len(outside) == 2
    assert all("job" not in r and "daemon" not in r for r in outside)


@pytest.mark.parametrize("style", ["logfmt", "json"])
def test_newlines_and_quotes_stay_on_one_line(style):
    message = 'Step 1/2 : RUN echo "hi"\nline two\r\n\ttabbed \\ back\u2028separator'
    with captured(style) as stream, log_fields(job="j1", daemon="d 1", attempt=2):
        logging.getLogger("builds.test").warning(message)
        try:
            raise ValueError('bad "value"\nsecond line')
        except ValueError:
            logging.getLogger("builds.test").exception("it failed")
    lines = stream.getvalue().split("\n")
    assert lines[-1] == "" and len(lines) == 3, lines
    first, second = lines[:2]
    if style == "json":
        record = json.loads(first)
        assert record["msg"] == message
        assert record["daemon"] == "d 1"
        failure = json.loads(second)
        assert failure["exc"].startswith("Traceback") and failure["exc"].endswith('bad "value"\nsecond line')
    else:
        record = logfmt(first)
        assert record["msg"] == message
        assert record["daemon"] == "d 1"
        assert record["job"] == "j1" and record["attempt"] == "2" and record["level"] == "warning"
        failure = logfmt(second)
        assert failure["exc"].startswith("Traceback") and failure["exc"].endswith('bad "value"\nsecond line')


def test_secrets_never_reach_the_log():
    with captured("logfmt") as stream:
        logging.getLogger("builds.test").warning(
            "cloning https://x-access-token:ghp_SECRET1@github.com/o/r.git?token=SECRET2&ref=main"
            " with Authorization: Bearer SECRET3 via redis://:SECRET4@redis:6379/0"
        )
    line = stream.getvalue()
    assert "SECRET" not in line
    assert "https://x-access-token:***@github.com/o/r.git?token=***&ref=main" in line
    assert "Authorization: Bearer ***" in line
    assert "redis://:***@redis:6379/0" in line


def test_the_process_role_comes_from_the_command_line():
    assert process_role([".venv/bin/daphne", "-b", "127.0.0.1", "generator_site.asgi:application"]) == "web"
    assert process_role([".venv/bin/celery", "-A", "generator_site", "worker", "--queues", "build.d1"]) == "worker"
    assert process_role([".venv/bin/celery", "-A", "generator_site", "worker", "--beat", "--queues", "farm"]) == "beat"
    assert process_role(["/usr/lib/python3/celery/__main__.py", "-A", "generator_site", "beat"]) == "beat"
    assert process_role(["manage.py", "migrate"]) == "manage"


def test_the_log_format_is_logfmt_by_default_and_an_unknown_one_stops_start_up(monkeypatch):
    from django.core.exceptions import ImproperlyConfigured

    from generator_site.env import env_choice

    monkeypatch.delenv("GENERATOR_LOG_FORMAT", raising=False)
    assert env_choice("GENERATOR_LOG_FORMAT", "logfmt", ("logfmt", "json")) == "logfmt"
    monkeypatch.setenv("GENERATOR_LOG_FORMAT", " JSON ")
    assert env_choice("GENERATOR_LOG_FORMAT", "logfmt", ("logfmt", "json")) == "json"
    monkeypatch.setenv("GENERATOR_LOG_FORMAT", "xml")
    with pytest.raises(ImproperlyConfigured, match="GENERATOR_LOG_FORMAT must be one of logfmt, json, not 'xml'"):
        env_choice("GENERATOR_LOG_FORMAT", "logfmt", ("logfmt", "json"))


@pytest.mark.django_db(transaction=True)
def test_records_from_the_thread_that_reads_a_build_name_the_job_too(daemon):
    from builds.logs.writer import LogWriter

    job = BuildJob.objects.create(image="localhost:5000/team/app:latest", dockerfile="FROM busybox\n")

    def produce(emit):
        logging.getLogger("builds.engine.docker").warning("the stream hiccuped")
        emit("a line")

    with captured("json") as stream, log_fields(job=job.id, daemon="unit-daemon", attempt=1):
        LogWriter(job.id, last_seq=0, batch_lines=10, flush_seconds=60).pump(produce)
    [record] = [json.loads(line) for line in stream.getvalue().splitlines() if "hiccuped" in line]
    assert (record["job"], record["daemon"], record["attempt"]) == (job.id, "unit-daemon", 1)
