"""A generator run one or two items ahead in a second thread (see ``in_background``)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any, TypeVar

T = TypeVar("T")


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
