"""Keep host-side work off the CPU while the host itself is being timed.

The ``local`` device measures on the same two cores that train the next candidate. Timing a
model while Keras trains beside it would report contention, not the model. Training yields at
its next batch boundary whenever a local measurement wants the CPU, so a measurement waits at
most one batch and never for a whole training run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import keras

__all__ = ["HostCpuGate", "GateCallback"]


class HostCpuGate:
    """A many-short-segments vs one-exclusive-window lock. Thread-safe."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._waiting_measurements = 0
        self._measuring = False
        self._working = 0
        self._work_wait_s = 0.0

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the host for a measurement: waits for the running work segment to end."""
        with self._condition:
            self._waiting_measurements += 1
            self._condition.wait_for(lambda: self._working == 0 and not self._measuring)
            self._waiting_measurements -= 1
            self._measuring = True
        try:
            yield
        finally:
            with self._condition:
                self._measuring = False
                self._condition.notify_all()

    def begin_work(self) -> None:
        """Start a short segment of host work (one training batch, one conversion)."""
        started = time.perf_counter()
        with self._condition:
            self._condition.wait_for(lambda: not self._measuring and self._waiting_measurements == 0)
            self._working += 1
            self._work_wait_s += time.perf_counter() - started

    @property
    def work_wait_s(self) -> float:
        """Seconds host work has spent waiting for measurements, in total. Units: s."""
        with self._condition:
            return self._work_wait_s

    def end_work(self) -> None:
        with self._condition:
            self._working -= 1
            self._condition.notify_all()

    @contextmanager
    def work(self) -> Iterator[None]:
        self.begin_work()
        try:
            yield
        finally:
            self.end_work()


class GateCallback(keras.callbacks.Callback):
    """Makes every training and validation batch a work segment of the gate."""

    def __init__(self, gate: HostCpuGate) -> None:
        super().__init__()
        self._gate = gate
        self._open = False

    def _begin(self) -> None:
        self._gate.begin_work()
        self._open = True

    def _end(self) -> None:
        if self._open:
            self._open = False
            self._gate.end_work()

    def close(self) -> None:
        """End a segment left open by a batch that raised; call in ``finally``."""
        self._end()

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        self._begin()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._end()

    def on_test_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        self._begin()

    def on_test_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._end()
