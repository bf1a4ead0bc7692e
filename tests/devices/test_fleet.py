"""The fleet: real LocalDevice measurements, and small Device subclasses for the faults.

Devices are this project's own interface, so test devices that fail, sleep or report problems
are ordinary subclasses; the lease database is a real SQLite file. Concurrency is asserted with
events and counters, never with durations.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from devices.base import Device, DeviceError, HealthReport, Measurement, MeasureSettings
from devices.fleet import Fleet, FleetError, FleetResult
from devices.leases import REACHABLE_FACT, LeaseStore
from devices.local import LocalDevice
from tests.devices.test_leases import FakeClock

FAST = MeasureSettings(threads=1, warmup_runs=1, min_seconds=0.0, min_runs=5)
WAIT_S = 10.0  # how long a test waits for an event that should come at once; never reached


def tiny_tflite() -> bytes:
    """A real one-op (RELU, 1x4 float) .tflite, built with the schema LiteRT ships: no TensorFlow."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT()
    model.version = 3
    model.description = "fleet test: relu"
    model.buffers = [schema.BufferT() for _ in range(3)]
    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.RELU
    code.version = 1
    model.operatorCodes = [code]
    tensors = []
    for index, name in enumerate(("x", "y")):
        tensor = schema.TensorT()
        tensor.shape, tensor.type = [1, 4], schema.TensorType.FLOAT32
        tensor.buffer, tensor.name = index + 1, name
        tensors.append(tensor)
    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0], [1]
    graph = schema.SubGraphT()
    graph.tensors, graph.operators, graph.name = tensors, [op], "main"
    graph.inputs, graph.outputs = [0], [1]
    model.subgraphs = [graph]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


class FakeDevice(Device):
    """A device that fails its first ``fail_times`` measurements, reports ``problems`` when
    checked, optionally blocks on ``gate``, and counts how many measurements overlap."""

    def __init__(self, name: str, device_class: str, *, fail_times: int = 0,
                 problems: Sequence[str] = (), reachable: bool = True,
                 gate: threading.Event | None = None, started: threading.Event | None = None,
                 hold_s: float = 0.0) -> None:
        super().__init__(name, (device_class,), device_class)
        self.fail_times = fail_times
        self.problems = tuple(problems)
        self.reachable = reachable
        self.gate = gate
        self.started = started
        self.hold_s = hold_s
        self.calls = 0
        self.checks = 0
        self.active = 0
        self.max_active = 0
        self.closed = False
        self._lock = threading.Lock()

    @property
    def has_energy_meter(self) -> bool:
        return False

    def measure(self, model_path: Path, settings: MeasureSettings,
                probe_input: np.ndarray | None = None) -> Measurement:
        with self._lock:
            self.calls += 1
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            call = self.calls
        try:
            if self.started is not None:
                self.started.set()
            if self.gate is not None and not self.gate.wait(WAIT_S):
                raise DeviceError(f"device {self.name!r}: test gate never opened")
            if self.hold_s:
                time.sleep(self.hold_s)  # widens the window for overlap; no assertion on time
            if call <= self.fail_times:
                raise DeviceError(
                    f"device {self.name!r}: runner exited 1 on attempt {call}\nstderr: boom")
            return Measurement(device=self.name, latency_ms_median=1.0, latency_ms_p90=1.5,
                               n_inferences=settings.min_runs, window_s=0.01, threads=settings.threads)
        finally:
            with self._lock:
                self.active -= 1

    def health_check(self) -> HealthReport:
        with self._lock:
            self.checks += 1
        facts = {} if self.reachable else {REACHABLE_FACT: "false"}
        return HealthReport(self.name, self.problems, facts)

    def close(self) -> None:
        self.closed = True


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fleet-model") / "relu.tflite"
    path.write_bytes(tiny_tflite())
    return path


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LeaseStore]:
    with LeaseStore(tmp_path / "harness.sqlite") as s:
        yield s


def make_fleet(devices: Sequence[Device], store: LeaseStore, **options: object) -> Fleet:
    settings: dict[str, object] = {"acquire_timeout_s": WAIT_S, "poll_s": 0.02, "recheck_s": 3600.0}
    settings.update(options)
    return Fleet(devices, store, **settings)  # type: ignore[arg-type]


def test_measures_each_class_once_with_a_real_local_device(model: Path, store: LeaseStore) -> None:
    pi = FakeDevice("pi5-a", "pi5")
    with make_fleet([LocalDevice(), pi], store) as fleet:
        assert fleet.classes == {"local": ("local",), "pi5": ("pi5-a",)}
        result = fleet.measure(model, FAST, np.ones((1, 4), dtype=np.float32))
        assert result.ok and result.attempts == 2 and result.failures == () and result.errors == {}
        local = result.measurements["local"]
        assert local.device == "local" and local.n_inferences >= 5 and local.latency_ms_median > 0
        assert result.measurements["pi5"].device == "pi5-a"
        states = {s.device: s for s in fleet.states()}
        assert {n: s.state for n, s in states.items()} == {"local": "available", "pi5-a": "available"}
        assert states["local"].measurements_ok == 1 and states["local"].check_ok is True
        assert store.holder("local") is None and store.holder("pi5-a") is None  # released
    assert pi.closed


def test_retry_goes_to_another_device_of_the_same_class_only(model: Path, store: LeaseStore) -> None:
    pi_a = FakeDevice("pi5-a", "pi5", fail_times=99)
    pi_b = FakeDevice("pi5-b", "pi5")
    phone = FakeDevice("pixel7", "pixel7", fail_times=99)
    with make_fleet([pi_a, phone, pi_b], store, retries=2) as fleet:
        result = fleet.measure(model, FAST)
    assert result.measurements["pi5"].device == "pi5-b"
    pi5 = result.classes["pi5"]
    assert pi5.attempts == 2 and [f.device for f in pi5.failures] == ["pi5-a"]
    assert "runner exited 1 on attempt 1 stderr: boom" in pi5.failures[0].error  # one line
    # the phone class has nobody else to retry on: its devices never ran a pi5 model and vice versa
    assert (pi_a.calls, pi_b.calls, phone.calls) == (1, 1, 1)
    assert result.errors["pixel7"] == (
        "pixel7: device 'pixel7': runner exited 1 on attempt 1 stderr: boom",
        "class pixel7: no other device of this class to try (tried pixel7)")
    assert {f.device for f in result.failures} == {"pi5-a", "pixel7"}


def test_every_device_of_a_class_failing_reports_each_failure_without_hanging(
        model: Path, store: LeaseStore) -> None:
    devices = [FakeDevice(f"pi5-{c}", "pi5", fail_times=99) for c in "abc"]
    with make_fleet(devices, store, retries=5, acquire_timeout_s=600.0) as fleet:
        started = time.monotonic()
        result = fleet.measure(model, FAST)
        assert time.monotonic() - started < 60  # generous: fails fast, never waits the 600 s
    assert not result.ok and result.measurements == {}
    assert result.attempts == 3
    assert [f.device for f in result.failures] == ["pi5-a", "pi5-b", "pi5-c"]
    assert [f.attempt for f in result.failures] == [1, 2, 3]
    lines = result.errors["pi5"]
    assert len(lines) == 4 and all("\n" not in line for line in lines)
    assert lines[-1] == "class pi5: no other device of this class to try (tried pi5-a, pi5-b, pi5-c)"


def test_retries_are_bounded(model: Path, store: LeaseStore) -> None:
    devices = [FakeDevice(f"pi5-{c}", "pi5", fail_times=99) for c in "abc"]
    with make_fleet(devices, store, retries=1) as fleet:
        result = fleet.measure(model, FAST)
    assert result.attempts == 2 and devices[2].calls == 0
    assert result.classes["pi5"].error == "gave up after 2 attempts (retries = 1)"


def test_quarantine_after_failures_then_a_passing_check_lets_it_rejoin(
        model: Path, tmp_path: Path) -> None:
    clock = FakeClock()
    pi = FakeDevice("pi5-a", "pi5", fail_times=2)
    with LeaseStore(tmp_path / "h.sqlite", clock=clock) as store, \
            make_fleet([pi], store, retries=0, quarantine_after=2, recheck_s=300.0) as fleet:
        for _ in range(2):
            assert not fleet.measure(model, FAST).ok
        state = fleet.states()[0]
        assert state.state == "quarantined" and state.consecutive_failures == 2
        assert "2 consecutive failures; last: device 'pi5-a': runner exited 1 on attempt 2" in str(
            state.quarantine_reason)
        # quarantined: fails at once, without measuring or checking it
        checks = pi.checks
        result = fleet.measure(model, FAST)
        assert result.attempts == 0 and pi.calls == 2 and pi.checks == checks
        assert result.errors["pi5"] == (
            "class pi5: no healthy device of this class (pi5-a: quarantined (2 consecutive "
            "failures; last: device 'pi5-a': runner exited 1 on attempt 2 stderr: boom))",)
        # recheck_s later a health check runs; it passes, so the device rejoins and measures
        clock.advance(301)
        result = fleet.measure(model, FAST)
        assert result.ok and pi.checks == checks + 1
        state = fleet.states()[0]
        assert state.state == "available"
        assert (state.measurements_ok, state.measurements_failed) == (1, 2)


def test_an_explicit_check_lifts_a_quarantine(model: Path, store: LeaseStore) -> None:
    pi = FakeDevice("pi5-a", "pi5")
    store.quarantine("pi5-a", "operator: loose cable")
    with make_fleet([pi], store) as fleet:
        assert fleet.states()[0].state == "quarantined"
        assert fleet.check() == [HealthReport("pi5-a")]
        assert fleet.states()[0].state == "available"
        with pytest.raises(FleetError, match="no device named 'nope'"):
            fleet.check(["nope"])


def test_sick_devices_are_skipped_and_a_sick_class_fails_fast(model: Path, store: LeaseStore) -> None:
    hot = FakeDevice("pi5-a", "pi5", problems=["temperature 91 C > 85 C"])
    good = FakeDevice("pi5-b", "pi5")
    gone = FakeDevice("pixel7", "pixel7", problems=["adb: device not found"], reachable=False)
    with make_fleet([hot, good, gone], store, acquire_timeout_s=600.0) as fleet:
        result = fleet.measure(model, FAST)
        assert result.measurements["pi5"].device == "pi5-b" and hot.calls == 0
        assert result.classes["pi5"].failures == ()  # a failed check is not a failed attempt
        assert result.errors["pixel7"] == (
            "class pixel7: no healthy device of this class (pixel7: health check failed: "
            "adb: device not found)",)
        assert {s.device: s.state for s in fleet.states()} == {
            "pi5-a": "unhealthy", "pixel7": "offline", "pi5-b": "available"}
        # known sick: skipped without another check until recheck_s passes
        again = fleet.measure(model, FAST)
        assert (hot.checks, gone.checks, good.checks) == (1, 1, 1)
        assert again.errors["pixel7"] == (
            "class pixel7: no healthy device of this class (pixel7: offline (adb: device not found))",)


def test_a_fresh_passing_check_is_not_repeated(model: Path, store: LeaseStore) -> None:
    cached = FakeDevice("pi5-a", "pi5")
    eager = FakeDevice("pixel7", "pixel7")
    with make_fleet([cached], store, health_max_age_s=3600.0) as a, \
            make_fleet([eager], store, health_max_age_s=0.0) as b:
        for _ in range(3):
            assert a.measure(model, FAST).ok and b.measure(model, FAST).ok
    assert (cached.checks, eager.checks) == (1, 3)


def test_classes_are_measured_in_parallel(model: Path, store: LeaseStore) -> None:
    pi_in, phone_in = threading.Event(), threading.Event()
    # each measurement waits until the other class's is in flight: one at a time would time out
    pi = FakeDevice("pi5-a", "pi5", started=pi_in, gate=phone_in)
    phone = FakeDevice("pixel7", "pixel7", started=phone_in, gate=pi_in)
    with make_fleet([pi, phone], store) as fleet:
        result = fleet.measure(model, FAST)
    assert result.ok, result.errors


def test_parallel_callers_never_run_one_device_twice_at_once(model: Path, store: LeaseStore) -> None:
    devices = [FakeDevice("pi5-a", "pi5", hold_s=0.002), FakeDevice("pi5-b", "pi5", hold_s=0.002),
               FakeDevice("pixel7", "pixel7", hold_s=0.002)]
    results: list[FleetResult] = []
    errors: list[BaseException] = []
    with make_fleet(devices, store) as fleet:
        def search_worker() -> None:
            try:
                for _ in range(4):
                    results.append(fleet.measure(model, FAST))
            except BaseException as e:  # noqa: BLE001 - surfaced below: a worker must hand the test every error
                errors.append(e)

        threads = [threading.Thread(target=search_worker) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT_S * 3)
        assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert len(results) == 24 and all(r.ok for r in results)
    assert all(d.max_active == 1 for d in devices), [(d.name, d.max_active) for d in devices]
    assert devices[2].calls == 24 and devices[0].calls + devices[1].calls == 24


def test_the_heartbeat_keeps_a_lease_past_its_ttl(model: Path, tmp_path: Path) -> None:
    db = tmp_path / "h.sqlite"
    gate, started = threading.Event(), threading.Event()
    slow = FakeDevice("pi5-a", "pi5", gate=gate, started=started)
    with LeaseStore(db) as store, LeaseStore(db) as other, \
            make_fleet([slow], store, lease_ttl_s=0.5, heartbeat_s=0.05) as fleet:
        outcome: list[FleetResult] = []
        worker = threading.Thread(target=lambda: outcome.append(fleet.measure(model, FAST)))
        worker.start()
        assert started.wait(WAIT_S)
        first = other.holder("pi5-a")
        assert first is not None and first.owner == fleet.owner
        while time.time() < first.expires_at + 0.3:  # well past the first grant's expiry
            time.sleep(0.05)
        assert other.acquire("pi5-a", "thief:1:x", ttl_s=5) is None
        held = other.holder("pi5-a")
        assert held is not None and held.token == first.token and held.expires_at > first.expires_at
        state = fleet.states()[0]
        assert state.state == "leased" and state.holder == fleet.owner
        gate.set()
        worker.join(WAIT_S)
        assert outcome and outcome[0].ok
        assert other.holder("pi5-a") is None  # released in the finally


def test_a_lost_lease_discards_the_measurement(model: Path, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "h.sqlite"
    gate, started = threading.Event(), threading.Event()
    slow = FakeDevice("pi5-a", "pi5", gate=gate, started=started)
    caplog.set_level(logging.ERROR, logger="devices.fleet")
    with LeaseStore(db) as store, LeaseStore(db) as other, \
            make_fleet([slow], store, lease_ttl_s=30, heartbeat_s=0.02) as fleet:
        outcome: list[FleetResult] = []
        worker = threading.Thread(target=lambda: outcome.append(fleet.measure(model, FAST)))
        worker.start()
        assert started.wait(WAIT_S)
        # as if the lease had expired and another process had taken the device
        lease = other.holder("pi5-a")
        assert lease is not None and other.release(lease)
        assert other.acquire("pi5-a", "thief:1:x", ttl_s=30) is not None
        deadline = time.monotonic() + WAIT_S
        while not any("lease lost" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "the heartbeat never noticed the lost lease"
            time.sleep(0.01)
        gate.set()
        worker.join(WAIT_S)
        result = outcome[0]
        assert not result.ok
        assert result.failures[0].error.startswith("lease lost during the measurement")
        assert fleet.states()[0].consecutive_failures == 0  # not held against the device
        thief = other.holder("pi5-a")
        assert thief is not None and thief.owner == "thief:1:x"


class CountingStore(LeaseStore):
    """A real lease store that counts lease attempts (to see a waiter poll, not spin)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.acquires = 0

    def acquire(self, device: str, owner: str, ttl_s: float):  # type: ignore[no-untyped-def]
        self.acquires += 1
        return super().acquire(device, owner, ttl_s)


def test_waits_for_a_device_leased_elsewhere_with_a_deadline(model: Path, tmp_path: Path) -> None:
    db = tmp_path / "h.sqlite"
    pi = FakeDevice("pi5-a", "pi5")
    with CountingStore(db) as store, LeaseStore(db) as other:
        lease = other.acquire("pi5-a", "other-host:7:x", ttl_s=600)
        assert lease is not None
        with make_fleet([pi], store, acquire_timeout_s=0.2, poll_s=0.05) as fleet:
            result = fleet.measure(model, FAST)
        assert pi.calls == 0 and result.attempts == 0
        assert 1 <= store.acquires <= 10  # one look per poll_s at most: about 5, never a spin
        (line,) = result.errors["pi5"]
        assert line.startswith("class pi5: no device of this class free within 0.2 s "
                               "(pi5-a: leased by other-host:7:x for ")
        with make_fleet([pi], store) as fleet:  # freed while waiting: it proceeds
            outcome: list[FleetResult] = []
            worker = threading.Thread(target=lambda: outcome.append(fleet.measure(model, FAST)))
            worker.start()
            other.release(lease)
            worker.join(WAIT_S)
            assert outcome and outcome[0].ok


def test_check_reports_a_busy_device_without_recording_it(model: Path, store: LeaseStore) -> None:
    gate, started = threading.Event(), threading.Event()
    pi = FakeDevice("pi5-a", "pi5", gate=gate, started=started)
    with make_fleet([pi], store, health_max_age_s=3600.0) as fleet:
        worker = threading.Thread(target=fleet.measure, args=(model, FAST))
        worker.start()
        assert started.wait(WAIT_S)
        (report,) = fleet.check(timeout_s=0)
        assert report.problems == ("not checked: in use by this process",)
        gate.set()
        worker.join(WAIT_S)
        assert fleet.states()[0].check_ok is True and pi.checks == 1


def test_unexpected_errors_propagate_after_releasing(model: Path, store: LeaseStore) -> None:
    class Broken(FakeDevice):
        def measure(self, model_path: Path, settings: MeasureSettings,
                    probe_input: np.ndarray | None = None) -> Measurement:
            raise KeyError("a bug, not a device fault")

    with make_fleet([Broken("pi5-a", "pi5")], store) as fleet:
        with pytest.raises(KeyError, match="a bug"):
            fleet.measure(model, FAST)
        assert store.holder("pi5-a") is None
        assert fleet.states()[0].consecutive_failures == 0


def test_close_and_arguments(model: Path, store: LeaseStore) -> None:
    pi = FakeDevice("pi5-a", "pi5")
    fleet = make_fleet([pi], store)
    fleet.measure(model, FAST)
    fleet.close()
    fleet.close()
    assert pi.closed
    with pytest.raises(FleetError, match="closed"):
        fleet.measure(model, FAST)
    with pytest.raises(ValueError, match="at least one device"):
        Fleet([], store)
    with pytest.raises(ValueError, match="two devices are named 'pi5-a'"):
        Fleet([pi, FakeDevice("pi5-a", "x")], store)
    with pytest.raises(ValueError, match="heartbeat_s must be positive and below lease_ttl_s"):
        Fleet([pi], store, lease_ttl_s=1.0, heartbeat_s=1.0)
    with pytest.raises(ValueError, match="retries must be >= 0"):
        Fleet([pi], store, retries=-1)


def test_close_waits_for_a_running_measurement_before_releasing_its_lease(model: Path, store: LeaseStore,
                                                                          tmp_path: Path) -> None:
    """Regression: Ctrl-C leaves the measuring thread running; close() used to release its lease
    (another process could take the busy board) and close the device under it."""
    gate, started = threading.Event(), threading.Event()
    board = FakeDevice("pi5-a", "pi5", gate=gate, started=started)
    fleet = make_fleet([board], store)
    measuring = threading.Thread(target=fleet.measure, args=(model, FAST))
    measuring.start()
    assert started.wait(WAIT_S)
    closing = threading.Thread(target=fleet.close)
    closing.start()
    closing.join(0.3)
    with LeaseStore(tmp_path / "harness.sqlite") as other:
        assert closing.is_alive() and not board.closed
        assert other.acquire("pi5-a", "other:1:x", 60) is None  # still ours while it measures
    gate.set()
    measuring.join(WAIT_S)
    closing.join(WAIT_S)
    assert not closing.is_alive() and board.closed


def test_a_lease_taken_over_during_the_measurement_discards_the_result(model: Path, store: LeaseStore,
                                                                        tmp_path: Path) -> None:
    """Regression: the heartbeat noticed a lost lease only at its next beat; a result measured
    while another process held the board was accepted."""

    class TakenOver(FakeDevice):
        def measure(self, model_path, settings, probe_input=None):  # type: ignore[no-untyped-def]
            # another process whose clock says the lease expired long ago reclaims it
            with LeaseStore(tmp_path / "harness.sqlite", clock=lambda: time.time() + 10_000) as other:
                assert other.acquire(self.name, "other:1:x", 60) is not None
            return super().measure(model_path, settings, probe_input)

    with make_fleet([TakenOver("pi5-a", "pi5")], store, retries=0) as fleet:
        result = fleet.measure(model, FAST)
    assert not result.ok
    assert "lease lost during the measurement" in " ".join(result.errors["pi5"])
