import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from modalmesh.common.once import ComputedOnce


def test_the_first_asker_computes_and_the_others_wait_for_its_value():
    once: ComputedOnce[list] = ComputedOnce(lambda kept, given: kept is given)
    inputs, calls, release = object(), [], threading.Event()

    def compute():
        calls.append(1)
        release.wait(5)
        return ["value"]

    with ThreadPoolExecutor(6) as pool:
        asked = [pool.submit(once.get, "key", inputs, compute) for _ in range(6)]
        assert not once.done("key")
        release.set()
        values = [f.result(timeout=10) for f in asked]
    assert len(calls) == 1 and all(v is values[0] for v in values) and once.done("key")
    assert once.get("key", object(), lambda: ["again"]) == ["again"] and len(calls) == 1  # other inputs: computed again
    assert once.get("other", inputs, lambda: ["other"]) == ["other"] and len(once) == 2


def test_a_failed_computation_reaches_its_waiters_and_the_next_asker_computes_again():
    once: ComputedOnce[int] = ComputedOnce(lambda kept, given: kept == given)
    started, release = threading.Event(), threading.Event()

    def failing():
        started.set()
        release.wait(5)
        raise ValueError("no features")

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(once.get, "key", 1, failing)
        started.wait(5)
        waiter = pool.submit(once.get, "key", 1, lambda: 2)  # waits for the first asker's computation
        release.set()
        for future in (first, waiter):
            with pytest.raises(ValueError, match="no features"):
                future.result(timeout=10)
    assert not once.done("key")
    assert once.get("key", 1, lambda: 3) == 3 and once.done("key")
