"""assets/background.py: a generator run ahead in a second thread."""

from __future__ import annotations

import threading

import pytest

from assets.background import in_background


def test_items_arrive_in_order_from_another_thread():
    seen = []

    def gen():
        for i in range(50):
            seen.append(threading.current_thread().name)
            yield i

    assert list(in_background(gen(), 2, "probe")) == list(range(50))
    assert set(seen) == {"probe"}


def test_an_error_in_the_generator_is_raised_in_the_consumer_after_the_items_before_it():
    def gen():
        yield 1
        yield 2
        raise OSError(28, "No space left on device")

    got = []
    with pytest.raises(OSError, match="No space left"):
        for item in in_background(gen()):
            got.append(item)
    assert got == [1, 2]


def test_a_consumer_that_stops_early_stops_the_generator():
    made = []

    def gen():
        for i in range(1000):
            made.append(i)
            yield i

    for item in in_background(gen(), depth=2):
        if item == 3:
            break
    assert len(made) <= 3 + 1 + 2 + 1  # the items taken, the queue, and one in hand
