"""The event loop's watchdog: a thread that notices when the loop stops running callbacks.

A server whose loop is blocked (a handler waiting on a lock, a synchronous call, the process stopped) answers
nothing, health checks included, so it cannot say so itself while it is stuck. The watchdog thread posts a
heartbeat to the loop every interval; a heartbeat that runs late, one still waiting after stall_seconds, or
the watchdog thread itself waking up that late (the whole process was stopped or starved) is a stall. After
a stall the server reports itself unhealthy for hold_seconds, so a loop that stalls again and again shows
as NOT_SERVING to whoever asks between stalls instead of as SERVING (the health service reads `healthy`),
and the thread logs where the loop was stuck.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable

log = logging.getLogger(__name__)


class Watchdog:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        stall_seconds: float,
        hold_seconds: float,
        interval_seconds: float = 0.5,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self._loop = loop
        self._loop_thread = 0
        self.stall_seconds = stall_seconds
        self.hold_seconds = hold_seconds
        self._interval = interval_seconds
        # Called on the loop (from a heartbeat) whenever `healthy` changes.
        self._on_change = on_change
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loop-watchdog", daemon=True)
        # Plain attributes shared with the thread: single reads and writes of floats are atomic under the GIL,
        # and a lock here could itself block the loop.
        self._pending_since: float | None = None
        self._unhealthy_until = 0.0
        self._reported = True
        self.stalls = 0

    def start(self) -> Watchdog:
        """Call it from the loop's own thread (the stack of that thread is logged on a stall)."""
        self._loop_thread = threading.get_ident()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(self._interval * 4)

    @property
    def healthy(self) -> bool:
        """False while the loop is stalled and for hold_seconds after a stall."""
        now = time.monotonic()
        pending = self._pending_since
        if pending is not None and now - pending > self.stall_seconds:
            return False
        return now >= self._unhealthy_until

    def _stalled(self, seconds: float, where: str) -> None:
        first = time.monotonic() >= self._unhealthy_until
        self._unhealthy_until = time.monotonic() + self.hold_seconds
        if first:
            self.stalls += 1
            log.warning(
                "event loop stalled: reporting NOT_SERVING",
                extra={"stalled_seconds": round(seconds, 1), "hold_seconds": self.hold_seconds, "where": where},
            )

    def _beat(self, posted: float) -> None:
        """Runs on the loop."""
        late = time.monotonic() - posted
        self._pending_since = None
        if late > self.stall_seconds:
            self._stalled(late, "")
        healthy = self.healthy
        if healthy != self._reported:
            self._reported = healthy
            if self._on_change is not None:
                self._on_change(healthy)

    def _loop_stack(self) -> str:
        frame = sys._current_frames().get(self._loop_thread)
        return "".join(traceback.format_stack(frame, limit=8)) if frame is not None else ""

    def _run(self) -> None:
        last_tick = time.monotonic()
        while not self._stopped.wait(self._interval):
            now = time.monotonic()
            if now - last_tick > self.stall_seconds:
                # This thread slept far too long: the whole process was stopped or starved of CPU.
                self._stalled(now - last_tick, "the process was not scheduled")
            last_tick = now
            pending = self._pending_since
            if pending is not None:
                if now - pending > self.stall_seconds:
                    self._stalled(now - pending, self._loop_stack())
                continue  # one heartbeat in flight at a time
            self._pending_since = now
            try:
                self._loop.call_soon_threadsafe(self._beat, now)
            except RuntimeError:
                return  # the loop is closed
