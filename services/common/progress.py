"""A dependency-free progress bar for long command-line work (data, features, training)."""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], total: int, label: str, stream=None, every: float = 0.5) -> Iterator[T]:
    """Yield `items`, drawing `label [#####.....] done/total eta` on stderr (one line,
    redrawn on a terminal; a line every 10% otherwise)."""
    stream = stream or sys.stderr
    started = last = time.monotonic()
    tty = stream.isatty()
    shown_decile = -1
    for done, item in enumerate(items, start=1):
        yield item
        now = time.monotonic()
        decile = done * 10 // max(1, total)
        if (tty and now - last >= every) or done == total or (not tty and decile != shown_decile):
            last, shown_decile = now, decile
            filled = int(20 * done / max(1, total))
            eta = (now - started) / done * (total - done)
            line = f"{label} [{'#' * filled}{'.' * (20 - filled)}] {done}/{total} {now - started:5.1f}s eta {eta:5.1f}s"
            print(("\r" + line) if tty else line, end="" if tty and done < total else "\n", file=stream, flush=True)
