"""Values computed once per key, by whoever asks first.

    kept = ComputedOnce(same=lambda kept_inputs, inputs: kept_inputs is inputs)
    value = kept.get(key, inputs, compute)   # compute() runs once; a concurrent asker waits for it

An entry stands while an asker's `inputs` are the same as those it was computed from
(`same`); other inputs compute again and replace it. A computation that raises is raised
to every asker waiting for it, and the next asker computes again.
"""

from __future__ import annotations

import threading
from concurrent import futures
from typing import Any, Callable, Generic, Hashable, TypeVar

V = TypeVar("V")


class ComputedOnce(Generic[V]):
    def __init__(self, same: Callable[[Any, Any], bool]) -> None:
        self._same = same
        self._lock = threading.Lock()
        self._kept: dict[Hashable, tuple[Any, futures.Future]] = {}

    def get(self, key: Hashable, inputs: Any, compute: Callable[[], V]) -> V:
        with self._lock:
            kept = self._kept.get(key)
            if kept is not None and self._same(kept[0], inputs) and not _failed(kept[1]):
                future, mine = kept[1], False
            else:
                future, mine = futures.Future(), True
                self._kept[key] = (inputs, future)
        if mine:
            try:
                future.set_result(compute())
            except BaseException as exc:
                future.set_exception(exc)
                raise
        return future.result()

    def done(self, key: Hashable) -> bool:
        """Whether a value for `key` has been computed (whatever inputs it was computed from)."""
        with self._lock:
            kept = self._kept.get(key)
        return kept is not None and kept[1].done() and not _failed(kept[1])

    def __len__(self) -> int:
        return len(self._kept)


def _failed(future: futures.Future) -> bool:
    return future.done() and future.exception() is not None
