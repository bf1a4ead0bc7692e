"""Tests of harness.host_gate: measurements and host work take turns on the CPU.

Threads and events with bounded waits: a "does not happen" check waits SHORT seconds, a "does
happen" check waits up to LONG seconds, and every helper thread is joined.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import keras
import numpy as np
import pytest

from harness.host_gate import GateCallback, HostCpuGate

SHORT = 0.2  # s: long enough for a blocked thread to have run into the gate
LONG = 5.0  # s: a generous bound for something that must happen


@contextmanager
def running(target: Callable[[], None]) -> Iterator[threading.Thread]:
    """Run ``target`` in a daemon thread; join it (bounded) afterwards and re-raise its error."""
    errors: list[BaseException] = []

    def body() -> None:
        try:
            target()
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            errors.append(e)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        thread.join(LONG)
        assert not thread.is_alive(), "helper thread is stuck in the gate"
        if errors:
            raise errors[0]


def measurer(gate: HostCpuGate, entered: threading.Event, release: threading.Event) -> Callable[[], None]:
    def measure() -> None:
        with gate.exclusive():
            entered.set()
            assert release.wait(LONG), "the test never released the measurement"

    return measure


def test_measurement_waits_for_the_current_segment_only() -> None:
    gate = HostCpuGate()
    entered, release, next_segment = threading.Event(), threading.Event(), threading.Event()
    gate.begin_work()  # one training batch is running
    with running(measurer(gate, entered, release)):
        assert not entered.wait(SHORT), "the measurement did not wait for the running batch"

        def next_batch() -> None:
            with gate.work():
                next_segment.set()

        with running(next_batch):
            # The next batch queues behind the waiting measurement: it must not start.
            assert not next_segment.wait(SHORT)
            gate.end_work()  # the running batch ends...
            assert entered.wait(LONG), "the measurement did not start when the batch ended"
            # ...and the measurement holds the host; the queued batch is still held back.
            assert not next_segment.wait(SHORT)
            release.set()
            assert next_segment.wait(LONG), "work did not resume after the measurement"


def test_work_waits_while_a_measurement_holds_the_gate() -> None:
    gate = HostCpuGate()
    entered, release, worked = threading.Event(), threading.Event(), threading.Event()
    with running(measurer(gate, entered, release)):
        assert entered.wait(LONG), "an idle gate kept the measurement waiting"

        def work() -> None:
            gate.begin_work()
            worked.set()
            gate.end_work()

        with running(work):
            assert not worked.wait(SHORT), "work started during a measurement"
            release.set()
            assert worked.wait(LONG)


def test_measurements_take_turns() -> None:
    gate = HostCpuGate()
    first, second = threading.Event(), threading.Event()
    release_first, release_second = threading.Event(), threading.Event()
    with running(measurer(gate, first, release_first)):
        assert first.wait(LONG)
        with running(measurer(gate, second, release_second)):
            assert not second.wait(SHORT), "two measurements held the host at once"
            release_first.set()
            assert second.wait(LONG)
            release_second.set()


def test_segments_do_not_exclude_each_other_and_the_gate_is_reusable() -> None:
    gate = HostCpuGate()
    with gate.work(), gate.work():  # nested host work (a conversion inside a work block) is fine
        pass
    for _ in range(3):
        entered, release = threading.Event(), threading.Event()
        with running(measurer(gate, entered, release)):
            assert entered.wait(LONG)
            release.set()
        with gate.work():
            pass


def test_work_context_ends_its_segment_on_error() -> None:
    gate = HostCpuGate()
    with pytest.raises(RuntimeError), gate.work():
        raise RuntimeError("conversion failed")
    entered, release = threading.Event(), threading.Event()
    with running(measurer(gate, entered, release)):
        assert entered.wait(LONG), "a failed work block left its segment open"
        release.set()


def test_gate_callback_close_releases_a_segment_left_open() -> None:
    gate = HostCpuGate()
    callback = GateCallback(gate)
    callback.on_train_batch_begin(0)  # the batch then raises: no on_train_batch_end
    entered, release = threading.Event(), threading.Event()
    with running(measurer(gate, entered, release)):
        assert not entered.wait(SHORT), "the open batch did not hold the measurement back"
        callback.close()
        assert entered.wait(LONG), "close() did not end the open segment"
        release.set()


def test_gate_callback_close_is_idempotent_and_segments_pair_up() -> None:
    gate = HostCpuGate()
    callback = GateCallback(gate)
    callback.on_train_batch_begin(0)
    callback.on_train_batch_end(0)
    callback.on_test_batch_begin(0)
    callback.on_test_batch_end(0)
    callback.close()
    callback.close()  # nothing open: must not end someone else's segment
    gate.begin_work()  # another segment is running now
    entered, release = threading.Event(), threading.Event()
    with running(measurer(gate, entered, release)):
        assert not entered.wait(SHORT), "an extra close() ended a segment it did not open"
        gate.end_work()
        assert entered.wait(LONG)
        release.set()


class _Boom(keras.callbacks.Callback):
    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        raise RuntimeError("pruned mid-batch")


def test_gate_callback_in_a_real_fit_that_raises() -> None:
    """The pattern of CandidateEvaluator.train_and_lower: the gate's callback first, then a
    callback that raises after the gate opened the batch's segment; ``close()`` in finally."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    x, y = np.zeros((8, 3), "float32"), np.zeros(8, "int64")
    gate = HostCpuGate()
    callback = GateCallback(gate)
    entered, release = threading.Event(), threading.Event()
    with pytest.raises(RuntimeError, match="pruned mid-batch"):
        try:
            model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[callback, _Boom()])
        finally:
            # Before close() the raising batch still holds the host.
            with running(measurer(gate, entered, release)):
                assert not entered.wait(SHORT)
                callback.close()
                assert entered.wait(LONG)
                release.set()
    # A fit that completes leaves nothing open.
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, validation_data=(x, y), callbacks=[callback])
    done, release = threading.Event(), threading.Event()
    release.set()
    with running(measurer(gate, done, release)):
        assert done.wait(LONG)
