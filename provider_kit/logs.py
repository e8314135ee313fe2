"""Structured logs: one JSON object per line on stderr, with the current trace id when there is one.

Logging never blocks the caller (the event loop above all): loggers put records on a bounded queue and one
thread, the QueueListener, writes them to stderr. When stderr does not keep up (a full pipe nobody reads, a
stuck log collector), records are dropped and counted rather than waited for, and the count is logged once
the queue has room again.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import queue
import sys
import threading
from datetime import UTC, datetime
from typing import IO, Any

from opentelemetry import trace

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            entry["trace_id"] = format(span.trace_id, "032x")
            entry["span_id"] = format(span.span_id, "016x")
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


#: Records waiting for stderr; beyond this many, new records are dropped.
QUEUE_RECORDS = 10_000
#: How long stop_logging waits for the queue to drain to stderr.
STOP_SECONDS = 2.0


class DroppingQueueHandler(logging.handlers.QueueHandler):
    """Formats the record in the caller's thread (where its trace context is) and queues the line without ever
    waiting: a full queue drops the record and counts it."""

    def __init__(self, records: queue.Queue[logging.LogRecord | None]) -> None:
        super().__init__(records)
        # Handler.handle holds this handler's lock around enqueue, so the count needs no lock of its own.
        self.dropped = 0
        self.dropped_total = 0

    def enqueue(self, record: logging.LogRecord) -> None:
        if self.dropped:
            notice = logging.makeLogRecord(
                {"name": __name__, "levelno": logging.WARNING, "levelname": "WARNING", "dropped": self.dropped}
            )
            notice.msg = "log records dropped: the log output did not keep up"
            try:
                self.queue.put_nowait(self.prepare(notice))
                self.dropped = 0
            except queue.Full:
                pass
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1
            self.dropped_total += 1


class LineWriter:
    """What the listener thread hands each record to: its line, written straight to the stream's file
    descriptor. Deliberately not a logging.Handler: logging.shutdown (at exit) takes every handler's lock, and
    a write stuck on a full pipe would hold it, so the process could never exit; nor does a stuck write hold
    the lock of sys.stderr's buffer, which the interpreter flushes on its way out."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def handle(self, record: logging.LogRecord) -> None:
        line = record.getMessage() + "\n"
        try:
            try:
                fd = self._stream.fileno()
            except (AttributeError, OSError):  # a stream without a descriptor (a test's capture)
                self._stream.write(line)
                self._stream.flush()
                return
            data = line.encode(errors="replace")
            while data:
                data = data[os.write(fd, data) :]
        except (OSError, ValueError):
            pass  # nobody reads any more (EPIPE) or the stream is closed: the line is lost, the thread goes on


# The running listener and its queue, for stop_logging.
_running: tuple[logging.handlers.QueueListener, queue.Queue[logging.LogRecord | None]] | None = None


def setup_logging(level: str) -> DroppingQueueHandler:
    """Routes every log record through a DroppingQueueHandler to a thread that writes to stderr."""
    global _running
    stop_logging()
    records: queue.Queue[logging.LogRecord | None] = queue.Queue(QUEUE_RECORDS)
    handler = DroppingQueueHandler(records)
    handler.setFormatter(JsonFormatter())
    # The queued record's message is already the JSON line.
    listener = logging.handlers.QueueListener(records, LineWriter(sys.stderr))  # type: ignore[arg-type]
    listener.start()
    _running = (listener, records)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    return handler


def stop_logging() -> None:
    """Writes out what is queued (for at most STOP_SECONDS: stderr may be stuck) and stops the thread."""
    global _running
    if _running is None:
        return
    (listener, records), _running = _running, None
    thread: threading.Thread | None = listener._thread
    try:
        records.put(None, timeout=STOP_SECONDS)  # QueueListener stops at None, its sentinel
    except queue.Full:
        return  # stderr is stuck: the thread is a daemon and dies with the process
    if thread is not None:
        thread.join(STOP_SECONDS)
