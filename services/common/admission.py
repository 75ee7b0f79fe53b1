"""How much work a server takes on: calls, their bytes, and client streams that stall.

grpc's sync server runs every call on one thread pool, first come first served, and
reads a unary call's whole message before its handler runs. Left alone, calls past the
pool's threads queue without bound, in front of health checks too, and a client stream
that stops sending holds its thread for ever. The runtime (runtime.py) puts every call
through an `Admission` and every client stream through `arriving`.
"""

from __future__ import annotations

import collections
import contextlib
import queue
import statistics
import threading
import time

import grpc

from modalmesh.common import errors, telemetry
from modalmesh.common.batching import Budget, deadline_after

# Handler threads beyond worker_threads + max_waiting_calls: with every worker busy and
# every waiting place taken, health checks, reflection and the RESOURCE_EXHAUSTED replies
# still find a thread at once (grpc runs every call on one pool, first come first served).
SPARE_THREADS = 4
WAIT_SLICE_S = 0.05  # how often a stream reader checks whether it should stop
SERVICE_AVERAGING = 0.2  # the weight of the latest call in Admission.service_s
RATE_WINDOW, RATE_MIN_CALLS = 32, 8  # Admission.finish_rate: over the last 32 answers, once 8 have been given
ADMIT_SHARE = 0.8  # a call is admitted when its expected answer time is within this share of its time left
RETRY_AFTER_S = (0.1, 30.0)  # the bounds of the wait a refusal suggests (errors.retry_after)
REFUSAL_WINDOW = 64  # Admission.retry_hint: the crowd of refused callers is judged over the last 64 refusals


class Admission:
    """How many calls run at once (`running`), and how many more may wait for one of them
    (`waiting`); the next is RESOURCE_EXHAUSTED at once. Without it, calls past the pool's
    threads queued without bound in front of health checks: 40 slow router requests kept
    the router's health check waiting over 10 s, long enough for Kubernetes to restart a
    pod that was only busy.

    Also the bytes of the request messages in hand (`max_bytes_in_flight`): grpc reads a
    unary call's whole message before its handler runs, so a call waiting here holds it;
    one that would take the total past the limit is RESOURCE_EXHAUSTED at once (a call
    alone always runs: `max_message_bytes` bounds it).

    Waiting calls get a worker in the order they came (a free-for-all for the next free
    worker lets some wait far longer than admission expects, past their deadline).
    A call that finds every worker busy is admitted to wait only if it can be answered
    before its deadline: the expected answer time must fit in ADMIT_SHARE of the time
    left (a call that finds a free worker runs: its handler keeps its own deadline). Two estimates, the larger counts:
    the time a call holds a worker (`service_s`, an exponential average) times
    (1 + k / running) with k calls ahead of it; and, since the calls share the same cores,
    the calls in hand (running, waiting and this one) over the rate at which answers have
    been given lately (`finish_rate`; calls that failed or ended after their deadline are
    not answers). Until RATE_MIN_CALLS calls have been answered the rate is not known: a
    call with a deadline is then admitted only to a free worker (and, with `cold_start`,
    only while fewer than that many run), never to wait (a burst at
    start-up would otherwise fill every waiting place with calls that cannot all be
    answered in time).

    A refusal says when to come back (`retry_hint`): with many callers refused, later than
    the call alone would suggest, so that the crowd does not come back many times per
    answer."""

    def __init__(self, service: str, running: int, waiting: int, max_bytes: int = 0, cold_start: int = 0) -> None:
        self.running, self.waiting, self.max_bytes, self.cold_start = running, waiting, max_bytes, cold_start
        self.bytes_held = 0
        self._workers = _Workers(running)
        self._places = threading.BoundedSemaphore(waiting) if waiting else None
        self._gauge = telemetry.RPC_WAITING.labels(service)
        self._count_lock = threading.Lock()
        self.now_waiting = 0
        self.service_s = 0.0  # how long a call holds a worker, on average (SERVICE_AVERAGING)
        self.now_running = 0
        self._finished: collections.deque[float] = collections.deque(maxlen=RATE_WINDOW)  # when recent calls ended
        self._refused: collections.deque[tuple[float, float]] = collections.deque(maxlen=REFUSAL_WINDOW)  # (when, wait asked)

    @property
    def threads(self) -> int:
        """Handler threads the server needs so that no call waits for a thread."""
        return self.running + self.waiting + SPARE_THREADS

    @contextlib.contextmanager
    def slot(self, context: grpc.ServicerContext, message_bytes: int = 0):
        self._take_bytes(message_bytes)
        try:
            self._check_cold_start(context)
            if not self._workers.take_now(1):
                self._check_deadline(context)
                if not self.finish_rate() and context.time_remaining() is not None:
                    raise errors.resource_exhausted(
                        f"server busy: all {self.running} workers busy, and too few calls answered yet to tell how "
                        f"soon another would be; retry with backoff, or add replicas",
                        self.retry_hint(self.service_s or 1.0),
                    )
                self._wait(context)
            started = time.monotonic()
            with self._count_lock:
                self.now_running += 1
            answered = False
            try:
                yield
                answered = (context.time_remaining() or 1.0) > 0 and context.is_active()
            finally:
                with self._count_lock:
                    self.now_running -= 1
                self._workers.give_back(1)
                self._observe(time.monotonic() - started, answered)
        finally:
            with self._count_lock:
                self.bytes_held -= message_bytes

    def _take_bytes(self, message_bytes: int) -> None:
        with self._count_lock:
            if self.max_bytes and self.bytes_held and self.bytes_held + message_bytes > self.max_bytes:
                raise errors.resource_exhausted(
                    f"server busy: {self.bytes_held} bytes of requests in hand, and this one has {message_bytes} "
                    f"(max_bytes_in_flight {self.max_bytes}); retry with backoff, or add replicas"
                )
            self.bytes_held += message_bytes

    def _observe(self, seconds: float, answered: bool) -> None:
        with self._count_lock:
            self.service_s = seconds if not self.service_s else (1 - SERVICE_AVERAGING) * self.service_s + SERVICE_AVERAGING * seconds
            if answered:
                self._finished.append(time.monotonic())

    def assume_answered(self, service_s: float, count: int = RATE_MIN_CALLS) -> None:
        """Record `count` calls of `service_s` each as answered just now, as a server that
        has been serving for a while would have."""
        for _ in range(count):
            self._observe(service_s, answered=True)

    def finish_rate(self, now: float | None = None) -> float:
        """Answers given per second over the last RATE_WINDOW, up to `now` (a stall lowers
        it); 0 until RATE_MIN_CALLS answers are known."""
        if len(self._finished) < RATE_MIN_CALLS:
            return 0.0
        span = (time.monotonic() if now is None else now) - self._finished[0]
        return len(self._finished) / span if span > 0 else 0.0

    def expected_s(self, now: float | None = None) -> float:
        """How long a call arriving now would take to be answered, waiting included. The
        answer rate tells the server's capacity only while every worker is busy; under a
        light load it tells how often calls come."""
        per_worker = self.service_s * (1 + (self.now_waiting + 1) / self.running)
        saturated = self.now_waiting > 0 or self.now_running >= self.running
        rate = self.finish_rate(now) if saturated else 0.0
        shared = (self.now_running + self.now_waiting + 1) / rate if rate else 0.0
        return max(per_worker, shared)

    def retry_hint(self, seconds: float) -> float:
        """The wait a refusal asks for: `seconds` (when this server expects room for a call
        like the refused one), or longer when many callers are being refused. Callers who
        come back as asked are answered in turn, so a refused caller's turn comes after
        about (callers waiting to come back) / (answers per second); with a shorter hint
        the crowd comes back many times per answer, and the refusals take the CPU the
        answers need. The callers waiting to come back are counted by Little's law: the
        recent refusals per second times the wait they were asked for. Bounded by
        RETRY_AFTER_S."""
        now = time.monotonic()
        with self._count_lock:
            crowd = 0.0
            rate = self.finish_rate(now)
            if rate and len(self._refused) >= RATE_MIN_CALLS and (span := now - self._refused[0][0]) > 0:
                returning = len(self._refused) / span * statistics.fmean(asked for _, asked in self._refused)
                crowd = returning / rate
            hint = _bounded(max(seconds, crowd))
            self._refused.append((now, hint))
        return hint

    def _check_cold_start(self, context: grpc.ServicerContext) -> None:
        """`cold_start` > 0: until the answer rate is known, at most that many calls with a
        deadline run at once."""
        if self.cold_start and self.now_running >= self.cold_start and context.time_remaining() is not None and not self.finish_rate():
            raise errors.resource_exhausted(
                f"server starting: {self.now_running} calls running and too few answered yet to tell how soon "
                f"another would be (cold_start_calls {self.cold_start}); retry with backoff, or add replicas",
                self.retry_hint(self.service_s or 1.0),
            )

    def _check_deadline(self, context: grpc.ServicerContext) -> None:
        remaining = context.time_remaining()
        if remaining is None:
            return
        expected = self.expected_s()
        if expected > ADMIT_SHARE * remaining:
            # The calls in hand must shrink by the excess before one like this fits.
            raise errors.resource_exhausted(
                f"server busy: an answer would take about {expected:.1f} s ({self.now_running} calls running, "
                f"{self.now_waiting} waiting), more than the {max(remaining, 0):.1f} s left before the deadline allows; "
                f"retry with backoff, or add replicas",
                self.retry_hint(expected - ADMIT_SHARE * max(remaining, 0)),
            )

    def _wait(self, context: grpc.ServicerContext) -> None:
        if self._places is None or not self._places.acquire(blocking=False):
            raise errors.resource_exhausted(
                f"server busy: {self.running} calls running and {self.waiting} waiting (worker_threads, "
                f"max_waiting_calls); retry with backoff, or add replicas",
                self.retry_hint(self.expected_s() / 2),
            )
        self._count(+1)
        try:  # in turn: a waiting call gets the first free worker before any that came after it
            self._workers.take(1, deadline_after(context.time_remaining()), context.is_active)
        finally:
            self._count(-1)
            self._places.release()

    def _count(self, step: int) -> None:
        with self._count_lock:
            self.now_waiting += step
            self._gauge.set(self.now_waiting)


class _Workers(Budget):
    """A server's workers, taken one per call, first come first served."""

    def __init__(self, count: int) -> None:
        super().__init__(count, "server busy")

    def _waiting_for(self, amount: int) -> str:
        return f"one of {self.total} busy workers"


def _bounded(seconds: float) -> float:
    return min(RETRY_AFTER_S[1], max(RETRY_AFTER_S[0], seconds))


_END = object()


class _Puller(threading.Thread):
    """Reads a client's stream into a one-place queue (grpc keeps the flow control: the
    client is not read ahead of the handler) until the stream ends or the reader stops."""

    def __init__(self, messages) -> None:
        super().__init__(name="stream-reader", daemon=True)
        self.messages, self.stopped = messages, threading.Event()
        self.queue: queue.Queue = queue.Queue(maxsize=1)

    def run(self) -> None:
        try:
            for message in self.messages:
                if not self._hand(message):
                    return
            self._hand(_END)
        except Exception as exc:  # the call ended (cancelled, or aborted by the handler)
            self._hand(exc)

    def _hand(self, item) -> bool:
        while not self.stopped.is_set():
            try:
                self.queue.put(item, timeout=WAIT_SLICE_S)
                return True
            except queue.Full:
                continue
        return False


def arriving(messages, idle_s: float, what: str):
    """A client's stream messages as they come; DEADLINE_EXCEEDED when the next one takes
    longer than `idle_s` (`stream_idle_s`). Without it a client that stops sending
    without closing its stream, and set no deadline, held a worker for ever."""
    puller = _Puller(messages)
    puller.start()
    try:
        while True:
            try:
                item = puller.queue.get(timeout=idle_s)
            except queue.Empty:
                raise errors.deadline_exceeded(f"{what}: nothing arrived for {idle_s:g} s (stream_idle_s); close the stream when done") from None
            if item is _END:
                return
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        puller.stopped.set()
