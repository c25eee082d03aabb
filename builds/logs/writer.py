"""Build logs: stored first, then published to the job's channel group.

Every line is written to the database before it is published, and a WebSocket
consumer joins the group before it reads the stored backlog. So a line is either
in the backlog the consumer reads or in a message it receives after joining
(or both, which the sequence numbers sort out): none can fall between.
The channel layer is transport, never storage.

A log longer than GENERATOR_MAX_LOG_LINES is cut with a marker line and the
build goes on; a team's own, lower limit (Team.max_log_lines) fails the build
instead: the writer stores a line saying so and raises LogLimitExceeded.

A line longer than GENERATOR_MAX_LOG_LINE_BYTES is cut here, before it is
stored, with a marker saying how long it was: the stored log, its replay and the
live stream show the same text, and no WebSocket frame has to carry a line
larger than that (builds/consumers.py).
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import functools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import NoReturn, TypeVar

from asgiref.sync import SyncToAsync, async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection, connections, transaction
from django.db.models import F

from builds.logs import archive as log_archive
from builds.models import BuildJob, BuildLogArchive, BuildLogLine
from lib.db_sessions import Sessions, retrying
from lib.secret_values import mask_forms, masked

logger = logging.getLogger(__name__)

T = TypeVar("T")
LineSink = Callable[[str], None]


class LogLimitExceeded(Exception):
    """The build printed more lines than its team allows; str() says so."""


def group_name(job_id: str) -> str:
    return f"build-log.{job_id}"


def publish(job_id: str, event: dict) -> None:
    """Sends an event to the job's watchers. Watchers that miss it read the database.

    Inside an event loop's worker thread (daphne's sync views, `sync_to_async`)
    the event goes through that loop, whose Redis connections stay open. In a
    plain thread (a Celery worker) it goes to this process's publisher thread:
    `async_to_sync` there would make a new event loop, and so a new Redis
    connection, for every message.
    """
    layer = get_channel_layer()
    if layer is None:
        return
    if _event_loop_of_this_thread() is not None:
        _send(layer, group_name(job_id), event)
    else:
        _background_publisher().send(layer, group_name(job_id), event)


def _send(layer, group: str, event: dict) -> None:
    try:
        async_to_sync(layer.group_send)(group, event)
    except Exception:
        # Lines are already stored; a live viewer catches up from the database.
        logger.warning("could not publish %s to %s", event.get("type"), group, exc_info=True)


def _event_loop_of_this_thread():
    """The loop that `async_to_sync` would use from this thread, if any."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        pass
    if getattr(SyncToAsync.threadlocal, "main_event_loop_pid", None) == os.getpid():
        return getattr(SyncToAsync.threadlocal, "main_event_loop", None)
    return None


class Publisher:
    """Sends channel-layer events from plain threads, in the order given, on one
    long-lived event loop in a thread of its own: the sender does not wait for
    Redis, and channels-redis keeps one connection pool per loop."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="log-publisher", daemon=True)
        self._thread.start()
        atexit.register(self.drain, timeout=5)

    def send(self, layer, group: str, event: dict) -> None:
        self._queue.put((layer, group, event))

    def drain(self, timeout: float = 5) -> bool:
        """Waits until every event given so far has been sent (or has failed)."""
        sent = threading.Event()
        self._queue.put(sent)
        return sent.wait(timeout)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        while True:
            item = self._queue.get()
            if isinstance(item, threading.Event):
                item.set()
                continue
            layer, group, event = item
            try:
                loop.run_until_complete(layer.group_send(group, event))
            except Exception:
                logger.warning("could not publish %s to %s", event.get("type"), group, exc_info=True)


_publishers: dict[int, Publisher] = {}
_publishers_lock = threading.Lock()


def _background_publisher() -> Publisher:
    """This process's publisher (a forked Celery child makes its own: threads do not survive fork)."""
    with _publishers_lock:
        publisher = _publishers.get(os.getpid())
        if publisher is None:
            publisher = _publishers[os.getpid()] = Publisher()
        return publisher


def read_lines(job_id: str, after: int, *, max_lines: int, max_bytes: int) -> tuple[list[tuple[int, str]], bool]:
    """The lines after `after`, up to `max_lines` lines or about `max_bytes` of
    text (always at least one line), and whether more may follow. Every reader
    of a log comes here: the lines are in the table, or, for a job that ended
    long ago, in its archive (builds/logs/archive.py).

    Rows come from the cursor a chunk at a time and reading stops at the byte
    budget: a log of long lines never sits in a viewer's memory whole.
    """
    rows = BuildLogLine.objects.filter(job_id=job_id, seq__gt=after).order_by("seq")[:max_lines]
    lines: list[tuple[int, str]] = []
    size = 0
    for seq, text in rows.values_list("seq", "text").iterator(chunk_size=100):
        lines.append((seq, text))
        size += text_bytes(text)
        if size >= max_bytes:
            return lines, True
    if not lines or lines[0][0] != after + 1:
        # Archiving deletes a job's rows and records its archive in one
        # transaction: rows missing here are in the archive read now.
        archive = BuildLogArchive.objects.filter(job_id=job_id).first()
        if archive is not None and after < archive.last_seq:
            return log_archive.read(archive, after, max_lines=max_lines, max_bytes=max_bytes)
    return lines, len(lines) == max_lines


def text_bytes(text: str) -> int:
    """The UTF-8 size of `text` (isascii is O(1) on CPython: no copy for the common case)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def fit_line(text: str, max_bytes: int) -> str:
    """`text`, or its head and a marker saying how long it was, in at most `max_bytes` of UTF-8."""
    if len(text) * 4 <= max_bytes:  # no UTF-8 character is longer than 4 bytes
        return text
    data = text.encode("utf-8", "replace")
    if len(data) <= max_bytes:
        return text
    marker = f"… [line cut: {len(data):,} bytes]"
    keep = max(0, max_bytes - len(marker.encode()))
    # "ignore" drops a character cut in two at the boundary.
    return data[:keep].decode("utf-8", "ignore") + marker


@functools.cache
def _insert_lines_head() -> str:
    meta = BuildLogLine._meta
    quote = connection.ops.quote_name
    columns = ", ".join(quote(meta.get_field(name).column) for name in ("job", "seq", "text"))
    return f"INSERT INTO {quote(meta.db_table)} ({columns}) VALUES "


INSERT_ROWS = 1000  # rows per statement: 3,000 parameters, well under SQLite's 32,766


def _insert_lines(job_id: str, batch: list[tuple[int, str]]) -> None:
    """One statement for the batch (up to INSERT_ROWS lines). The ORM's bulk_create
    built a model object and SQL for every line and read back the new ids: most
    of a chatty build's cost in the worker.

    Not `executemany`: psycopg runs it in pipeline mode, whose closing Flush
    disarms PostgreSQL's idle_in_transaction_session_timeout (the timer starts
    at the Sync, any message after it stops it, and nothing restarts it). A host
    cut after such an INSERT left a session that held its lines' locks for hours
    (issue 25); after a plain statement, PostgreSQL ends it in seconds."""
    with connection.cursor() as cursor:
        for start in range(0, len(batch), INSERT_ROWS):
            rows = batch[start : start + INSERT_ROWS]
            values = ", ".join(["(%s, %s, %s)"] * len(rows))
            cursor.execute(_insert_lines_head() + values, [v for seq, text in rows for v in (job_id, seq, text)])


def _in_one_statement(batch: list[tuple[int, str]]) -> bool:
    """On PostgreSQL a batch and the job's line count go in one statement (`_insert_counted_lines`): one
    round trip where a transaction took four (BEGIN, the INSERT, the count's UPDATE, COMMIT), several
    times per build (bench/scale.py, docs/benchmarks.md)."""
    return (
        connection.vendor == "postgresql"
        and len(batch) <= INSERT_ROWS
        and not settings.GENERATOR_TEST_HOLD_LOG_TRANSACTION
    )


@functools.cache
def _count_lines_tail() -> str:
    job, quote = BuildJob._meta, connection.ops.quote_name
    column = quote(job.get_field("log_line_count").column)
    return f") UPDATE {quote(job.db_table)} SET {column} = %s WHERE {quote(job.pk.column)} = %s"


def _insert_counted_lines(job_id: str, batch: list[tuple[int, str]]) -> None:
    """The lines and the job's count of them, both or neither: PostgreSQL runs a statement in a WITH
    as part of the one statement (and its transaction)."""
    values = ", ".join(["(%s, %s, %s)"] * len(batch))
    params = [v for seq, text in batch for v in (job_id, seq, text)]
    with connection.cursor() as cursor:
        cursor.execute(
            f"WITH stored AS ({_insert_lines_head()}{values}{_count_lines_tail()}", [*params, batch[-1][0], job_id]
        )


def _held_for_test(job_id: str, batch: list[tuple[int, str]]) -> bool:
    """For tests only: in a job's first attempt, a batch with a line containing
    GENERATOR_TEST_HOLD_LOG_TRANSACTION is held (`_hold`) after its INSERT, not
    committed, until the process is stopped: a test can cut the host at the moment
    issue 25's stall needed (tests/farm/test_netns_farm.py), and the next attempt
    goes through."""
    marker = settings.GENERATOR_TEST_HOLD_LOG_TRANSACTION
    if not marker or not any(marker in text for _, text in batch):
        return False
    return BuildJob.objects.filter(pk=job_id).values_list("attempt", flat=True).get() == 1


def _hold(job_id: str) -> NoReturn:
    logger.warning("job %s: holding a log transaction open (GENERATOR_TEST_HOLD_LOG_TRANSACTION)", job_id)
    while True:
        time.sleep(3600)


class LogWriter:
    """Appends lines to one job's log, in batches: a database transaction and a
    channel-layer message per batch, not per line.

    A line is stored as soon as the build pauses (the pump finds no next line
    waiting), at most `MIN_FLUSH_GAP` after the previous batch: a viewer sees a
    quiet build's lines at once, and a chatty build's lines go in batches of up
    to `batch_lines`. No line waits longer than `flush_seconds`.
    """

    MIN_FLUSH_GAP = 0.02  # at most 50 transactions a second per job

    def __init__(
        self,
        job_id: str,
        *,
        last_seq: int,
        batch_lines: int,
        flush_seconds: float,
        max_lines: int | None = None,
        max_line_bytes: int | None = None,
        batch_bytes: int | None = None,
        on_stored: Callable[[list[tuple[int, str]]], None] | None = None,
        team_max_lines: int | None = None,
    ) -> None:
        self.job_id = job_id
        self.on_stored = on_stored  # given each batch once stored (the runner counts lines, times steps)
        self.last_seq = last_seq
        # Past the cap one marker line is stored and the rest dropped: a runaway
        # build must not fill the database.
        self.max_lines = max_lines or settings.GENERATOR_MAX_LOG_LINES
        # A team's lower limit fails the build where the farm's would cut its log.
        self.fails_past_limit = bool(team_max_lines) and team_max_lines <= self.max_lines
        if self.fails_past_limit:
            self.max_lines = team_max_lines
        self.max_line_bytes = max_line_bytes or settings.GENERATOR_MAX_LOG_LINE_BYTES
        self._truncated = last_seq >= self.max_lines
        self.batch_lines = batch_lines
        # A batch is also one channel-layer message: about one WebSocket frame of text.
        self.batch_bytes = batch_bytes or settings.GENERATOR_LOG_FRAME_BYTES
        self.flush_seconds = flush_seconds
        self._pending: list[tuple[int, str]] = []
        self._pending_bytes = 0
        self._last_flush = float("-inf")  # the first line goes out at once
        self._hidden: list[str] = []
        # No session held while the build is quiet (lib/db_sessions.py).
        self.sessions = Sessions()
        # Also given each stored batch, in its transaction: a multi-platform child's parent log.
        self.mirror: Callable[[list[str]], None] | None = None

    def hide(self, values: list[str]) -> None:
        """Values (the build's secrets) written as *** in every line from now on."""
        self._hidden = mask_forms(values)

    def write(self, text: str) -> None:
        if self.last_seq >= self.max_lines and not text.startswith("[generator] "):
            if self._truncated:
                return  # the farm's own lines (the outcome) are still stored
            self._truncated = True
            if self.fails_past_limit:
                reason = f"more than {self.max_lines} log lines, its team's limit (max_log_lines)"
                self._store(f"[generator] Log limit passed: {reason}; the build is stopped")
                raise LogLimitExceeded(reason)
            text = (
                f"[generator] Log truncated: more than {self.max_lines} lines; the build's further output is not stored"
            )
        self._store(text)

    def _store(self, text: str) -> None:
        self.last_seq += 1
        # PostgreSQL's text cannot hold NUL, which a build may well print.
        text = fit_line(masked(text, self._hidden).replace("\x00", "\ufffd"), self.max_line_bytes)
        self._pending.append((self.last_seq, text))
        self._pending_bytes += text_bytes(text)
        if (
            len(self._pending) >= self.batch_lines
            or self._pending_bytes >= self.batch_bytes
            or time.monotonic() - self._last_flush >= self.flush_seconds
        ):
            self.flush()

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        if not self._pending:
            return
        batch, self._pending, self._pending_bytes = self._pending, [], 0
        retrying(partial(self._store_batch, batch), f"store log lines of job {self.job_id}")
        self.sessions.used()

    def _store_batch(self, batch: list[tuple[int, str]]) -> None:
        if _in_one_statement(batch) and self.mirror is None:
            _insert_counted_lines(self.job_id, batch)
            transaction.on_commit(partial(publish, self.job_id, {"type": "log.lines", "lines": batch}))
            if self.on_stored:
                self.on_stored(batch)
            return
        with transaction.atomic():
            held = _held_for_test(self.job_id, batch)
            _insert_lines(self.job_id, batch)
            if held:
                _hold(self.job_id)
            BuildJob.objects.filter(pk=self.job_id).update(log_line_count=batch[-1][0])
            if self.mirror is not None:
                self.mirror([text for _, text in batch])
            transaction.on_commit(partial(publish, self.job_id, {"type": "log.lines", "lines": batch}))
        if self.on_stored:
            self.on_stored(batch)

    def _flush_if_quiet(self, lines: queue.SimpleQueue) -> None:
        """Stores what is pending when no next line is waiting, unless a batch went out just now."""
        if self._pending and lines.empty() and time.monotonic() - self._last_flush >= self.MIN_FLUSH_GAP:
            self.flush()

    def pump(
        self,
        produce: Callable[[LineSink], T],
        *,
        tick: Callable[[], None] = lambda: None,
        abort: Callable[[], None] = lambda: None,
    ) -> T:
        """Runs `produce(emit)` in a thread and writes what it emits from this one.

        The docker stream blocks while a step is silent; reading it in a thread
        lets this one store what is pending as soon as the stream pauses (so a
        viewer sees `RUN sleep 60` before the minute is over) and call `tick`
        (the heartbeat) at least every `flush_seconds`. If `tick` raises, `abort` stops the
        producer and the tick's exception is raised here.
        """
        lines: queue.SimpleQueue = queue.SimpleQueue()
        outcome: dict[str, object] = {}
        done = object()

        def run() -> None:
            try:
                outcome["value"] = produce(lines.put)
            except BaseException as exc:  # handed over to the caller's thread
                outcome["error"] = exc
            finally:
                # A session the producer opened is this thread's alone, and nothing else would close it.
                connections.close_all()
                lines.put(done)

        # In the caller's context, so the producer's own log records name the job too.
        thread = threading.Thread(
            target=contextvars.copy_context().run, args=(run,), name=f"log-pump-{self.job_id}", daemon=True
        )
        thread.start()
        try:
            self._flush_if_quiet(lines)
            while (item := self._next(lines)) is not done:
                if item is not None:
                    self.write(item)
                    self._flush_if_quiet(lines)
                tick()
        except BaseException:
            abort()
            thread.join(timeout=30)
            self._drain(lines, done)
            raise
        self.flush()
        thread.join()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]

    def _next(self, lines: queue.SimpleQueue):
        """The next line; None after a pause (pending lines are then stored, and
        the heartbeat ticks). A pause long enough lets the database session go:
        a build waiting on its daemon holds none."""
        timeout = self.flush_seconds
        if self._pending:  # held back only by the gap since the last batch
            timeout = max(0.0, self._last_flush + self.MIN_FLUSH_GAP - time.monotonic())
        try:
            return lines.get(timeout=timeout)
        except queue.Empty:
            self.flush()
            self.sessions.release_if_idle()
            return None

    def _drain(self, lines: queue.SimpleQueue, done: object) -> None:
        """Keeps what the producer said before it stopped."""
        while True:
            try:
                item = lines.get_nowait()
            except queue.Empty:
                break
            if item is not done:
                self.write(item)
        self.flush()


def append_shared(job_id: str, texts: list[str]) -> None:
    """Lines into a log that several writers share (a multi-platform build's, which
    each child writes into): the sequence numbers are taken by one update of the
    job's line count, so two writers never take the same ones. Run inside a
    transaction, the row stays locked until it commits."""
    if not texts:
        return
    with transaction.atomic():
        BuildJob.objects.filter(pk=job_id).update(log_line_count=F("log_line_count") + len(texts))
        last = BuildJob.objects.filter(pk=job_id).values_list("log_line_count", flat=True).get()
        batch = list(zip(range(last - len(texts) + 1, last + 1), texts, strict=True))
        _insert_lines(job_id, batch)
        transaction.on_commit(partial(publish, job_id, {"type": "log.lines", "lines": batch}))


def append_line(job_id: str, text: str) -> None:
    """One line from outside the job's worker (the reaper, a cancel): only for a
    job no worker is writing to, inside the transaction that made it so."""
    last_seq = BuildJob.objects.filter(pk=job_id).values_list("log_line_count", flat=True).get()
    writer = LogWriter(job_id, last_seq=last_seq, batch_lines=1, flush_seconds=0)
    writer.write(text)
