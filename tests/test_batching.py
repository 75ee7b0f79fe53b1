"""The dynamic batcher: gathers concurrent callers, answers each with its own result."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from modalmesh.common.batching import DynamicBatcher
from modalmesh.common.errors import ServiceError


def test_concurrent_callers_share_batches_and_get_their_own_results():
    sizes = []

    def square_all(items):
        sizes.append(len(items))
        return [x * x for x in items]

    batcher = DynamicBatcher(square_all, max_batch_size=16, max_delay_ms=20, max_queue=64)
    try:
        with ThreadPoolExecutor(32) as pool:
            results = list(pool.map(lambda x: batcher.submit(x, timeout=5), range(32)))
    finally:
        batcher.close()
    assert [r.value for r in results] == [x * x for x in range(32)]
    assert sum(sizes) == 32
    assert max(sizes) > 1, f"no batching happened: {sizes}"
    assert all(size <= 16 for size in sizes)
    assert all(r.batch_size >= 1 and r.queue_ms >= 0 for r in results)


def test_batch_size_one_runs_requests_one_at_a_time():
    running = []
    overlap = []

    def run(items):
        running.append(1)
        overlap.append(len(running))
        time.sleep(0.005)
        running.pop()
        return items

    batcher = DynamicBatcher(run, max_batch_size=1, max_delay_ms=0, max_queue=64)
    try:
        with ThreadPoolExecutor(8) as pool:
            values = [r.value for r in pool.map(lambda x: batcher.submit(x, timeout=5), range(8))]
    finally:
        batcher.close()
    assert values == list(range(8))
    assert max(overlap) == 1


def test_full_queue_is_resource_exhausted():
    release = threading.Event()
    batcher = DynamicBatcher(lambda items: (release.wait(5), items)[1], max_batch_size=1, max_delay_ms=0, max_queue=2)
    pool = ThreadPoolExecutor(4)
    try:
        first = pool.submit(batcher.submit, "running", 5)
        time.sleep(0.1)  # the worker is now blocked on the first item
        queued = [pool.submit(batcher.submit, f"queued-{i}", 5) for i in range(2)]
        time.sleep(0.1)
        with pytest.raises(ServiceError) as raised:
            batcher.submit("one too many", timeout=5)
        assert raised.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "queue is full" in raised.value.message
        release.set()
        assert first.result(5).value == "running"
        assert [q.result(5).value for q in queued] == ["queued-0", "queued-1"]
    finally:
        release.set()
        batcher.close()
        pool.shutdown()


def test_items_submitted_together_share_one_batch_and_a_full_queue_takes_none_of_them():
    release = threading.Event()
    batches = []

    def run(items):
        batches.append(list(items))
        release.wait(5)
        return [item.upper() for item in items]

    batcher = DynamicBatcher(run, max_batch_size=8, max_delay_ms=0, max_queue=3)
    pool = ThreadPoolExecutor(2)
    try:
        blocker = pool.submit(batcher.submit, "running", 5)
        time.sleep(0.1)  # the worker is now busy with the first batch
        with pytest.raises(ServiceError) as raised:
            batcher.submit_many(["a", "b", "c", "d"], timeout=5)  # 4 > the 3 places
        assert raised.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        together = pool.submit(batcher.submit_many, ["a", "b", "c"], 5)
        time.sleep(0.1)
        release.set()
        assert blocker.result(5).value == "RUNNING"
        results = together.result(5)
        assert [r.value for r in results] == ["A", "B", "C"]
        assert [r.batch_size for r in results] == [3, 3, 3]
        assert batches == [["running"], ["a", "b", "c"]]  # none of the refused four ran
    finally:
        release.set()
        batcher.close()
        pool.shutdown()


def test_caller_deadline_gives_deadline_exceeded_and_skips_the_work():
    release = threading.Event()
    seen = []

    def run(items):
        seen.extend(items)
        release.wait(5)
        return items

    batcher = DynamicBatcher(run, max_batch_size=1, max_delay_ms=0, max_queue=8)
    pool = ThreadPoolExecutor(2)
    try:
        blocker = pool.submit(batcher.submit, "blocker", 5)
        time.sleep(0.05)
        with pytest.raises(ServiceError) as raised:
            batcher.submit("late", timeout=0.1)
        assert raised.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        release.set()
        blocker.result(5)
        time.sleep(0.1)
        assert "late" not in seen  # abandoned before it cost model time
    finally:
        release.set()
        batcher.close()
        pool.shutdown()


def test_a_failing_batch_fails_its_callers_and_the_batcher_keeps_working():
    calls = []

    def run(items):
        calls.append(items)
        if len(calls) == 1:
            raise RuntimeError("model exploded")
        return items

    batcher = DynamicBatcher(run, max_batch_size=4, max_delay_ms=0, max_queue=8)
    try:
        with pytest.raises(RuntimeError, match="model exploded"):
            batcher.submit("first", timeout=5)
        assert batcher.submit("second", timeout=5).value == "second"
    finally:
        batcher.close()


def test_a_turn_on_a_one_at_a_time_engine_respects_the_callers_deadline():
    from modalmesh.common.batching import Engine, deadline_after

    engine = Engine("engine")
    with engine.turn(deadline_after(5.0)):
        assert engine.busy()
    assert not engine.busy()
    with engine.turn(None):  # no deadline: waits as long as it takes
        pass
    with pytest.raises(ServiceError) as raised:
        with engine.turn(deadline_after(0.0)):
            pass
    assert raised.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and not engine.busy()
    with engine.turn(None):  # held by another caller past this one's deadline
        with pytest.raises(ServiceError, match="engine: deadline passed while waiting for the engine"):
            with engine.turn(deadline_after(0.1)):
                pass


def test_an_engine_serves_its_callers_in_the_order_they_came():
    from modalmesh.common.batching import Engine

    engine = Engine("engine")
    order: list[int] = []

    def caller(index: int) -> None:
        with engine.turn(None, lambda: True):
            order.append(index)

    with engine.turn(None):
        threads = []
        for index in range(5):
            threads.append(threading.Thread(target=caller, args=(index,)))
            threads[-1].start()
            while engine.waiting < index + 1:  # each in line before the next comes
                time.sleep(0.001)
    for thread in threads:
        thread.join(10)
    assert order == [0, 1, 2, 3, 4]


def test_a_caller_who_leaves_while_waiting_for_the_engine_gets_no_turn():
    from modalmesh.common.batching import TURN_CHECK_S, Engine, deadline_after

    engine = Engine("engine")
    present = threading.Event()
    present.set()
    ran = []
    with engine.turn(None, present.is_set):  # still there: runs as before
        ran.append("present")
    with engine.turn(None):  # another caller holds the engine; this one leaves after 0.2 s
        threading.Timer(0.2, present.clear).start()
        started = time.monotonic()
        with pytest.raises(ServiceError) as raised:
            with engine.turn(deadline_after(30.0), present.is_set):
                ran.append("gone")
        waited = time.monotonic() - started
    assert raised.value.code == grpc.StatusCode.CANCELLED and "caller went away" in raised.value.message
    assert 0.2 <= waited < 0.2 + 20 * TURN_CHECK_S  # noticed within a few checks, not at the deadline
    with pytest.raises(ServiceError, match="the caller went away"):  # gone before its turn came: no work
        with engine.turn(None, present.is_set):
            ran.append("gone, engine free")
    assert ran == ["present"] and not engine.busy() and engine.waiting == 0


def test_a_budget_lets_parts_through_while_they_fit_first_come_first_served():
    from modalmesh.common.batching import Budget, deadline_after

    budget = Budget(10, "pixels")
    order = []

    def later(name, amount):
        with budget.hold(amount, deadline_after(10)):
            order.append(name)

    with ThreadPoolExecutor(2) as pool:
        with budget.hold(6, None):
            assert budget.free == 4
            with budget.hold(4, None):  # fits beside the first
                assert budget.free == 0
            big = pool.submit(later, "big", 10)  # waits for the 6 to come back
            time.sleep(0.2)
            small = pool.submit(later, "small", 1)  # would fit now, but the big one came first
            time.sleep(0.2)
            assert order == []
        # giving the 6 back lets both run: the big one first
        big.result(timeout=10), small.result(timeout=10)
    assert order == ["big", "small"] and budget.free == 10


def test_a_budget_waiter_gives_up_at_its_deadline_and_a_part_over_the_whole_runs_alone():
    from modalmesh.common.batching import Budget, deadline_after

    budget = Budget(10, "decoded pixels")
    with budget.hold(8, None):
        with pytest.raises(ServiceError, match="decoded pixels: deadline passed while waiting for 5 of 10 [(]8 in use[)]") as raised:
            with budget.hold(5, deadline_after(0.1)):
                pass
        assert raised.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and budget.free == 2
    with pytest.raises(RuntimeError):
        with budget.hold(1000, None):  # more than the whole: takes the whole
            assert budget.free == 0
            raise RuntimeError("the work failed")
    assert budget.free == 10  # given back whatever happened


def test_an_inline_batcher_runs_a_lone_call_on_the_callers_thread_and_queues_the_rest():
    # inline=True (the text encoder on OpenVINO): a caller who finds the model idle runs its
    # batch itself; callers arriving while it runs queue for the worker and share a batch.
    threads, sizes = [], []
    release = threading.Event()

    def run(items):
        threads.append(threading.get_ident())
        sizes.append(len(items))
        if items[0] == "slow":
            release.wait(5)
        return [f"{x}!" for x in items]

    batcher = DynamicBatcher(run, max_batch_size=8, max_queue=16, inline=True)
    try:
        assert batcher.submit("alone", timeout=5).value == "alone!"
        assert threads[-1] == threading.get_ident()
        with ThreadPoolExecutor(4) as pool:
            slow = pool.submit(batcher.submit, "slow", 5)
            while len(sizes) < 2:  # the slow call holds the model on its own thread
                time.sleep(0.01)
            waiting = [pool.submit(batcher.submit, f"w{i}", 5) for i in range(3)]
            time.sleep(0.2)
            assert len(sizes) == 2, "nobody runs beside a batch in progress"
            release.set()
            assert slow.result().value == "slow!" and [w.result().value for w in waiting] == ["w0!", "w1!", "w2!"]
        assert sizes[2:] == [3], f"the queued calls ran together on the worker: {sizes}"
        assert threads[2] != threads[1]
    finally:
        release.set()
        batcher.close()


def test_an_inline_batchers_errors_reach_the_caller_and_it_keeps_serving():
    def run(items):
        if items == ["bad"]:
            raise ValueError("no")
        return items

    batcher = DynamicBatcher(run, max_batch_size=4, inline=True)
    try:
        with pytest.raises(ValueError, match="no"):
            batcher.submit("bad", timeout=5)
        assert batcher.submit("good", timeout=5).value == "good"
        with pytest.raises(ServiceError) as refused:  # a deadline already passed is not run
            batcher.submit("late", timeout=0)
        assert refused.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        batcher.close()
