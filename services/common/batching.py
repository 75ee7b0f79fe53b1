"""Dynamic batching: gather concurrent requests into one forward pass.

Handler threads call `DynamicBatcher.submit(item)` and block; one worker thread takes
the oldest request, waits up to `max_delay_ms` for more to arrive (or until
`max_batch_size` are waiting), runs `run_batch` on all of them at once, and hands each
caller its own result. The queue is bounded: a full queue is RESOURCE_EXHAUSTED at
once rather than an ever-growing wait. A request whose caller gave up (deadline) is
dropped from the queue before it costs model time.

With max_batch_size=1 this is a plain single-model executor: requests still run one
at a time on the worker. All torch work of a service belongs on this one thread:
torch calls from two threads start two OpenMP teams that fight over the cores
(measured: a tiny BERT forward took 3.6 ms instead of 1.5 ms on 2 cores).

`inline=True` (a model that may run on any thread, one call at a time: the text encoder
on OpenVINO) lets a caller that finds nothing queued and nothing running run its batch on
its own thread, without the hand-off to the worker and back (0.06-0.12 ms less per call
here); whoever comes meanwhile queues for the worker, which starts once it is done. With
a `max_delay_ms` every caller goes through the worker, to wait for company.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Generic, Iterator, Sequence, TypeVar

from modalmesh.common import errors, telemetry

log = logging.getLogger(__name__)

TURN_CHECK_S = 0.05  # how often a call waiting in a Budget's line checks that its caller is still there

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class Batched(Generic[Result]):
    """One caller's result and what it cost."""

    value: Result
    queue_ms: float  # from submit until its batch started
    batch_ms: float  # the whole batch's run_batch time
    batch_size: int
    started: float = 0.0  # perf_counter when its batch started


@dataclass
class _Pending(Generic[Item]):
    item: Item
    future: Future
    enqueued: float


class DynamicBatcher(Generic[Item, Result]):
    def __init__(
        self,
        run_batch: Callable[[Sequence[Item]], Sequence[Result]],
        *,
        max_batch_size: int = 32,
        max_delay_ms: float = 0.0,
        max_queue: int = 256,
        name: str = "model",
        inline: bool = False,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1:
            raise ValueError("max_batch_size and max_queue must be at least 1")
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_delay_s = max(0.0, max_delay_ms) / 1000.0
        self.max_queue = max_queue
        self.name = name
        self._pending: collections.deque[_Pending[Item]] = collections.deque()
        self._wakeup = threading.Condition()
        self._closed = False
        self._inline = inline and self.max_delay_s == 0  # a delay asks lone callers to wait for company
        self._running = False  # a batch is running, on the worker or on its caller's thread (inline)
        self._queue_depth = telemetry.QUEUE_DEPTH.labels(name)
        self._batch_size = telemetry.BATCH_SIZE.labels(name)
        self._worker = threading.Thread(target=self._work, name=f"batcher-{name}", daemon=True)
        self._worker.start()

    def submit(self, item: Item, timeout: float | None = None) -> Batched[Result]:
        """Queue `item`, wait for its batch, return its result (or raise its error).

        `timeout` is the caller's remaining deadline in seconds: past it the request is
        abandoned (DEADLINE_EXCEEDED) and skipped if its batch has not started yet.
        """
        return self.submit_many([item], timeout)[0]

    def submit_many(self, items: Sequence[Item], timeout: float | None = None) -> list[Batched[Result]]:
        """As submit, for several items queued together: one after another in the queue, so
        they share a batch (up to max_batch_size) instead of the first running alone while
        the others are still on their way. The results in the same order; the queue takes
        all of them or none (RESOURCE_EXHAUSTED)."""
        if self._inline and (timeout is None or timeout > 0) and self._take_idle_model(len(items)):
            return self._run_here(items)
        pending = [_Pending(item, Future(), time.perf_counter()) for item in items]
        with self._wakeup:
            if self._closed:
                raise errors.unavailable(f"{self.name}: shutting down")
            if len(self._pending) + len(pending) > self.max_queue:
                raise errors.resource_exhausted(f"{self.name}: queue is full ({self.max_queue} requests waiting); retry with backoff")
            self._pending.extend(pending)
            self._queue_depth.set(len(self._pending))
            self._wakeup.notify()
        deadline = None if timeout is None else time.perf_counter() + timeout
        results: list[Batched[Result]] = []
        for one in pending:
            try:
                result = one.future.result(timeout=None if deadline is None else max(0.0, deadline - time.perf_counter()))
            except TimeoutError:
                for waiting in pending:
                    waiting.future.cancel()
                raise errors.deadline_exceeded(f"{self.name}: deadline passed while waiting for the model") from None
            # Spans under the caller's span: the wait for a batch, and the batch's model time.
            enqueued = result.started - result.queue_ms / 1000.0
            telemetry.record_span(f"{self.name}.batch_wait", enqueued, result.started)
            telemetry.record_span(f"{self.name}.model", result.started, result.started + result.batch_ms / 1000.0, {"batch_size": result.batch_size})
            results.append(result)
        return results

    def _take_idle_model(self, count: int) -> bool:
        """Whether the model is the caller's: nothing queued, nothing running (inline)."""
        with self._wakeup:
            if self._closed or self._pending or self._running or count > self.max_batch_size:
                return False
            self._running = True
            return True

    def _run_here(self, items: Sequence[Item]) -> list[Batched[Result]]:
        """One batch on the caller's thread (the model taken by _take_idle_model)."""
        values, started, batch_ms = self._run(list(items))
        telemetry.record_span(f"{self.name}.model", started, started + batch_ms / 1000.0, {"batch_size": len(items)})
        return [Batched(value, 0.0, batch_ms, len(items), started) for value in values]

    def _run(self, items: list[Item]) -> tuple[Sequence[Result], float, float]:
        """Run one batch (the model taken): its results, start time and milliseconds; the
        model is free again afterwards, whatever happened."""
        started = time.perf_counter()
        try:
            values = self._run_batch(items)
            if len(values) != len(items):
                raise RuntimeError(f"run_batch returned {len(values)} results for {len(items)} items")
        finally:
            with self._wakeup:
                self._running = False
                self._wakeup.notify()  # the worker, for whoever queued meanwhile
        self._batch_size.observe(len(items))
        return values, started, (time.perf_counter() - started) * 1000.0

    def close(self) -> None:
        """Stop taking requests; those already queued still run."""
        with self._wakeup:
            self._closed = True
            self._wakeup.notify_all()
        self._worker.join(timeout=30)

    def _next_batch(self) -> list[_Pending[Item]]:
        with self._wakeup:
            while (not self._pending or self._running) and not self._closed:
                self._wakeup.wait()
            if not self._pending:
                return []
            # Wait for company: until the batch is full or the oldest has waited enough.
            flush_at = self._pending[0].enqueued + self.max_delay_s
            while len(self._pending) < self.max_batch_size and not self._closed:
                remaining = flush_at - time.perf_counter()
                if remaining <= 0:
                    break
                self._wakeup.wait(remaining)
            batch: list = []
            while self._pending and len(batch) < self.max_batch_size:
                pending = self._pending.popleft()
                if pending.future.set_running_or_notify_cancel():  # False: caller gave up
                    batch.append(pending)
            self._queue_depth.set(len(self._pending))
            self._running = bool(batch)
            return batch

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if not batch:
                if self._closed:
                    return
                continue
            try:
                results, started, batch_ms = self._run([p.item for p in batch])
            except BaseException as exc:  # handed to every caller of this batch
                for pending in batch:
                    pending.future.set_exception(exc)
                continue
            for pending, value in zip(batch, results):
                queue_ms = (started - pending.enqueued) * 1000.0
                pending.future.set_result(Batched(value, queue_ms, batch_ms, len(batch), started))


class Budget:
    """An amount shared by concurrent requests (the vision service: pixels of decoded
    images). A request holds its part while it runs; one whose part is not free waits,
    first come first served, up to its deadline. A part larger than the whole takes the
    whole (it then runs alone)."""

    def __init__(self, total: int, what: str) -> None:
        self.total, self.free, self.what = total, total, what
        self._changed = threading.Condition()
        self._queue: collections.deque = collections.deque()

    @property
    def waiting(self) -> int:
        return len(self._queue)

    @contextmanager
    def hold(self, amount: int, deadline: float | None, wanted: Callable[[], bool] | None = None) -> Iterator[None]:
        """Hold `amount` while the block runs (`take`, then `give_back`)."""
        amount = self.take(amount, deadline, wanted)
        try:
            yield
        finally:
            self.give_back(amount)

    def take(self, amount: int, deadline: float | None, wanted: Callable[[], bool] | None = None) -> int:
        """Wait in line until `amount` is free and take it; returns what was taken (at most
        the whole). `deadline`: time.monotonic(), DEADLINE_EXCEEDED once it passes while
        waiting. `wanted`: whether the caller is still there (grpc's context.is_active),
        checked every TURN_CHECK_S while waiting: one who has gone leaves the line (CANCELLED)."""
        amount = max(0, min(amount, self.total))
        ticket = object()
        with self._changed:
            self._queue.append(ticket)
            try:
                while self._queue[0] is not ticket or self.free < amount:
                    wait = None if deadline is None else deadline - time.monotonic()
                    if wait is not None and wait <= 0:
                        raise errors.deadline_exceeded(f"{self.what}: deadline passed while waiting for {self._waiting_for(amount)}")
                    if wanted is not None:
                        if not wanted():
                            raise errors.cancelled(f"{self.what}: the caller went away while waiting for {self._waiting_for(amount)}")
                        wait = TURN_CHECK_S if wait is None else min(wait, TURN_CHECK_S)
                    self._changed.wait(wait)
                self.free -= amount
            finally:
                self._queue.remove(ticket)
                self._changed.notify_all()  # the next in line may fit now
        return amount

    def take_now(self, amount: int) -> bool:
        """Take `amount` if it is free and nobody waits for it; else False, at once."""
        with self._changed:
            if self._queue or self.free < amount:
                return False
            self.free -= amount
            return True

    def give_back(self, amount: int) -> None:
        with self._changed:
            self.free += amount
            self._changed.notify_all()

    def _waiting_for(self, amount: int) -> str:
        return f"{amount} of {self.total} ({self.total - self.free} in use)"


class Engine(Budget):
    """One engine that takes one input at a time (OCR, speech recognition: each already
    uses every core), its callers served in turn, first come first served."""

    def __init__(self, what: str) -> None:
        super().__init__(1, what)

    def busy(self) -> bool:
        return self.free == 0

    def _waiting_for(self, amount: int) -> str:
        return "the engine"

    @contextmanager
    def turn(self, deadline: float | None, wanted: Callable[[], bool] | None = None) -> Iterator[None]:
        """Hold the engine for a caller with a `deadline` (time.monotonic(); None: none).
        Past its deadline, or once it passes while waiting, DEADLINE_EXCEEDED instead; and
        CANCELLED once `wanted()` (the caller is still there) turns False: work for a caller
        who has gone would only delay the next ones."""
        with self.hold(1, deadline, wanted):
            if deadline is not None and time.monotonic() >= deadline:
                raise errors.deadline_exceeded(f"{self.what}: deadline passed")
            if wanted is not None and not wanted():
                raise errors.cancelled(f"{self.what}: the caller went away")
            yield


def deadline_after(timeout: float | None) -> float | None:
    """A caller's seconds left as a time.monotonic() deadline (None stays None)."""
    return None if timeout is None else time.monotonic() + timeout
