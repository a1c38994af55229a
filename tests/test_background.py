"""assets/background.py: a generator run ahead in a second thread."""

from __future__ import annotations

import sys
import threading

import pytest

from assets.background import SWITCH_INTERVAL, in_background


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


def test_the_gil_switch_interval_is_short_while_a_generator_runs_and_restored_after():
    before = sys.getswitchinterval()
    assert before > SWITCH_INTERVAL  # Python's default, 5 ms
    seen = []
    outer = in_background(iter(range(3)), 1, "outer")
    for item in outer:
        seen.append(sys.getswitchinterval())
        if item == 0:
            # A second user inside the first: the first to leave does not restore.
            assert list(in_background(iter(range(2)), 1, "inner")) == [0, 1]
            seen.append(sys.getswitchinterval())
    assert seen == [SWITCH_INTERVAL] * 4
    assert sys.getswitchinterval() == before

    def failing():
        yield 1
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        list(in_background(failing()))
    assert sys.getswitchinterval() == before
