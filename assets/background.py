"""A generator run one or two items ahead in a second thread (see ``in_background``)."""

from __future__ import annotations

import contextlib
import queue
import sys
import threading
from collections.abc import Iterator
from typing import Any, TypeVar

T = TypeVar("T")

# How long a thread may hold the GIL while another waits for it, while a
# background generator runs (Python's default is 5 ms). The consumer's calls into
# DuckDB or the kernel release the GIL and must take it back when they return;
# with the generator busy in Python, each return waited up to 5 ms: writing the
# 495 caseload pages at 200k episodes took ~7 s instead of ~4 s (decision 008).
# The ingest's reader thread showed no measurable change either way.
SWITCH_INTERVAL = 0.0005

_switch_lock = threading.Lock()
_switch_users = 0
_switch_saved = 0.0


@contextlib.contextmanager
def short_switch_interval() -> Iterator[None]:
    """``sys.setswitchinterval(SWITCH_INTERVAL)`` while any user is inside; then the old value."""
    global _switch_users, _switch_saved
    with _switch_lock:
        if _switch_users == 0:
            _switch_saved = sys.getswitchinterval()
            sys.setswitchinterval(min(SWITCH_INTERVAL, _switch_saved))
        _switch_users += 1
    try:
        yield
    finally:
        with _switch_lock:
            _switch_users -= 1
            if _switch_users == 0:
                sys.setswitchinterval(_switch_saved)


def in_background(items: Iterator[T], depth: int = 2, name: str = "background") -> Iterator[T]:
    """Run a generator in a second thread, ``depth`` items ahead of the consumer.

    The ingest reads and validates the next chunk (pyarrow, pandas, Pandera)
    while DuckDB writes the previous one; the reports build the next page while
    the previous one is written. Exceptions of the generator are raised in the
    consumer; a consumer that stops early stops the generator at its next item.
    """
    q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(kind: str, value: Any) -> bool:
        while not stop.is_set():
            try:
                q.put((kind, value), timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put("item", item):
                    return
            put("done", None)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put("error", exc)

    with short_switch_interval():
        worker = threading.Thread(target=work, name=name, daemon=True)
        worker.start()
        try:
            while True:
                kind, value = q.get()
                if kind == "done":
                    return
                if kind == "error":
                    raise value
                yield value
        finally:
            stop.set()
            worker.join()
