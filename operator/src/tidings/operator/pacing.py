"""When status writes may go: they yield to a mass apply.

A status write costs the API server about as much as storing a new object
(docs/benchmarks.md). While thousands of Triggers are being applied, an
operator writing each one's status at once doubles the API server's work and
slows the apply itself (issue 17 measured 2.1-2.6x at 10,000 Triggers). So
while new Triggers and EventSources keep arriving (`BULK_CREATES` or more in
the last second), status writes keep to `--bulk-status-write-qps`; the rest
follow as soon as the apply is over (at `--status-write-qps`, if set).
Routes are never held back: only the
status waits, and the Events that go with a status change (a Trigger's
BackoffStarted, an EventSource's warnings) are posted with it.

`--status-write-qps` / `--status-write-burst` also cap status writes at all
times, as client-go's QPS and burst do (0: no cap).

Turns are tickets served first come, first served: a Trigger takes one when
it first has status to write and keeps it across rounds, so a waiting
Trigger holds no worker of the queue.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

# New objects a second that make an apply a mass apply, and how long after
# the last such second it still counts as one.
BULK_CREATES = 20
BULK_HOLD = 3.0
# Seconds at most between the releaser's looks at the waiting turns (the rate
# changes when a mass apply ends).
RECHECK = 1.0

log = logging.getLogger(__name__)


class TurnPending(Exception):
    """A status write's turn has not come: its holder is woken then (the round
    that raised this ends, and looks again after `delay` at the latest)."""

    def __init__(self, delay: float) -> None:
        super().__init__(f"status write in {delay:.1f}s")
        self.delay = delay


class BulkCreates:
    """New objects (watch ADDED events) arriving: a mass apply while `threshold`
    or more came within a second, and until `hold` seconds after that last
    held (the operator takes in watch events in bursts, with gaps)."""

    def __init__(
        self,
        threshold: int = BULK_CREATES,
        hold: float = BULK_HOLD,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._threshold = threshold
        self._hold = hold
        self._clock = clock
        self._seen: deque[float] = deque()
        self._last_busy = -math.inf

    def saw(self) -> None:
        now = self._clock()
        self._seen.append(now)
        while self._seen[0] < now - 1.0:
            self._seen.popleft()
        if len(self._seen) >= self._threshold:
            self._last_busy = now

    def busy(self) -> bool:
        return self._clock() - self._last_busy < self._hold


class Turns:
    """Turns for status writes: up to `burst` at once, then `rate()` a second
    (rate 0: every turn is due). The rate is read at each look, so a turn
    waiting at a mass apply's rate is due as soon as the apply ends."""

    def __init__(
        self,
        rate: Callable[[], float],
        burst: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate = rate
        self._burst = max(1, burst)
        self._clock = clock
        self._issued = 0  # tickets handed out
        self._admitted = float(self._burst)  # tickets below this may go
        self._at = clock()
        # Tickets whose holders are to be woken at their turn (call_when_due), and
        # the same tickets in order.
        self._waiting: dict[int, Callable[[], None]] = {}
        self._order: list[int] = []
        self._spawn: Callable[[Coroutine[Any, Any, None], str], None] | None = None
        self._releasing = False

    def wake_with(self, spawn: Callable[[Coroutine[Any, Any, None], str], None]) -> None:
        """Run the task that wakes waiting holders with `spawn` (the operator's
        background tasks, cancelled at exit)."""
        self._spawn = spawn

    def call_when_due(self, ticket: int, wake: Callable[[], None]) -> bool:
        """Call `wake` once `ticket` is due (the rate may rise before its estimated
        time: a mass apply ended); False if nothing can (no `wake_with`)."""
        if self._spawn is None:
            return False
        if ticket not in self._waiting:
            heapq.heappush(self._order, ticket)
        self._waiting[ticket] = wake
        if not self._releasing:
            self._releasing = True
            self._spawn(self._release(), "status write turns")
        return True

    def done(self, ticket: int) -> None:
        """`ticket` was used, or its holder is gone (its object deleted, or no
        longer driven here): nobody is to be woken for it, and a turn it had
        not reached yet goes to the tickets behind it."""
        self._waiting.pop(ticket, None)  # its entry in _order is skipped when reached
        self._advance()
        if ticket + 1 > self._admitted:
            self._admitted += 1

    async def _release(self) -> None:
        try:
            while self._order:
                self._advance()
                while self._order and (
                    self._order[0] + 1 <= self._admitted or self._order[0] not in self._waiting
                ):
                    wake = self._waiting.pop(heapq.heappop(self._order), None)
                    if wake is None:
                        continue  # done meanwhile
                    try:
                        wake()
                    except Exception:  # a bug: the other holders still get their turn
                        log.exception("waking a status write's holder failed")
                if self._order:
                    await asyncio.sleep(min(RECHECK, self.due_in(self._order[0])))
        finally:
            self._releasing = False

    def ticket(self) -> int:
        self._advance()  # the turns saved up before this ticket
        self._issued += 1
        return self._issued - 1

    def due_in(self, ticket: int) -> float:
        """Seconds until `ticket` may go at the present rate (0: now)."""
        rate = self._advance()
        if ticket + 1 <= self._admitted:
            return 0.0
        return (ticket + 1 - self._admitted) / rate

    def _advance(self) -> float:
        """Admit the turns due by now; the present rate."""
        now = self._clock()
        rate = self._rate()
        ceiling = self._issued + self._burst  # a quiet spell saves up `burst` turns
        if rate <= 0:
            self._admitted = ceiling
        else:
            self._admitted = min(ceiling, self._admitted + (now - self._at) * rate)
        self._at = now
        return rate


def status_rate(bulk: BulkCreates, *, qps: float, bulk_qps: float) -> Callable[[], float]:
    """The rate of status writes now: `bulk_qps` during a mass apply (when it is
    below `qps`, or `qps` is 0), else `qps` (0: none)."""

    held = False
    during = bulk_qps if qps <= 0 else min(qps, bulk_qps)
    after = f"{qps:g} a second" if qps > 0 else "full speed"

    def rate() -> float:
        nonlocal held
        busy = bulk_qps > 0 and bulk.busy()
        if busy != held:
            held = busy
            if busy:
                log.info("a mass apply: status writes keep to %g a second until it ends", during)
            else:
                log.info("the mass apply is over: status writes go at %s", after)
        return during if busy else qps

    return rate
