"""AndroidDevice through the real adb server to the test adbd on 127.0.0.3 (tests/peers/adbd.py),
running tests/peers/fake_benchmark_model.py as the phone's ``benchmark_model`` (real LiteRT
inferences, the real tool's flags and output). End to end, wrong answers, faults, health."""

from __future__ import annotations

import dataclasses
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from devices.base import DeviceError, MeasureSettings
from devices.inventory import AdbConnection, DeviceSpec, HealthLimits
from devices.local import LocalDevice
from devices.remote import AndroidDevice, RemoteTimeouts
from devices.remote.android import benchmark_io_flags
from devices.remote.common import NO_ENERGY_NOTE
from devices.runners import RunnerError
from devices.transports import CommandTimeout, ConnectionLost, IntegrityError, TransportError
from tests.peers.adbd import AdbdPeer, AdbServer
from tests.peers.contract import EVIL_NAME, processes_with

pytestmark = pytest.mark.timeout(60)

FAKE = Path(__file__).resolve().parents[1] / "peers" / "fake_benchmark_model.py"
FAST = MeasureSettings(threads=1, warmup_runs=1, min_seconds=0.05, min_runs=5)
TIMEOUTS = RemoteTimeouts(command_s=10, push_base_s=10, run_base_s=30, run_window_factor=2,
                          run_per_inference_s=0.5, cleanup_s=10)
WORKDIR = "/data/local/tmp/energy-harness"
ZONE = "/data/local/tmp/thermal_zone0_temp"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import keras

    from search.lowering import lower

    keras.utils.set_random_seed(1)
    inputs = keras.Input((16,), name="input")
    # wide enough that one inference takes microseconds: the tool reports whole microseconds
    hidden = keras.layers.Dense(512, activation="relu", name="hidden")(inputs)
    hidden = keras.layers.Dense(256, activation="relu", name="hidden2")(hidden)
    outputs = keras.layers.Dense(4, activation="softmax", name="dense")(hidden)
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(0).random((8, 16)).astype(np.float32)
    path = tmp_path_factory.mktemp("android") / "tiny.tflite"
    path.write_bytes(lower(model, {"hidden": "float32", "hidden2": "float32", "dense": "float32"},
                           x).tflite_bytes)
    return path


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fake tool as the user's build output: an executable named like the real one."""
    path = tmp_path_factory.mktemp("android-build") / "benchmark_model"
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" "$@"\n')
    path.chmod(0o755)
    return path


def phone_spec(peer: AdbdPeer, server: AdbServer, binary: Path, **overrides: object) -> DeviceSpec:
    built = Path(str(overrides.pop("benchmark_binary", binary)))
    connection = AdbConnection(serial=peer.serial, benchmark_binary=built,
                               taskset=overrides.pop("taskset", "1"),  # type: ignore[arg-type]
                               adb_server=server.address, connect_timeout_s=10.0)
    spec = DeviceSpec(name="phone-test", transport="adb", runner="benchmark_model",
                      connection=connection, workdir=WORKDIR, tags=("pixel7", "android"))
    return dataclasses.replace(spec, **overrides)  # type: ignore[arg-type]


def on_phone(peer: AdbdPeer, remote: str) -> Path:
    return peer.root / remote.lstrip("/")


def run_dirs(peer: AdbdPeer) -> list[str]:
    workdir = on_phone(peer, WORKDIR)
    return sorted(p.name for p in workdir.glob("run-*")) if workdir.exists() else []


def _leftovers(peer: AdbdPeer, wait_s: float = 2.0) -> list[int]:
    """Processes still running a command on the phone (their command lines hold its root)."""
    deadline = time.monotonic() + wait_s
    while (found := processes_with(str(peer.root))) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


# --- end to end -------------------------------------------------------------------------------

def test_measures_end_to_end_and_matches_the_host(adbd_peer: AdbdPeer, adb_server: AdbServer,
                                                  binary: Path, tiny_model: Path, tmp_path: Path) -> None:
    evil = tmp_path / EVIL_NAME
    shutil.copy(tiny_model, evil)
    probe = np.random.default_rng(5).random((1, 16))
    with AndroidDevice(phone_spec(adbd_peer, adb_server, binary, threads=2), timeouts=TIMEOUTS) as device:
        assert device.device_class == "pixel7"
        m = device.measure(evil, FAST, probe)
        assert m.device == "phone-test" and m.threads == 2
        assert m.n_inferences >= FAST.min_runs and m.latency_ms_p90 >= m.latency_ms_median > 0
        assert m.window_s > 0 and m.energy_mj_median is None and m.energy_source == "none"
        assert NO_ENERGY_NOTE in m.notes and any("p95" in n for n in m.notes)
        assert m.output_matches is True
        assert m.output_checksum == LocalDevice().measure(tiny_model, FAST, probe).output_checksum
        assert m.fingerprint["model"] == "HarnessPhone" and m.fingerprint["sdk"] == "34"
        assert m.fingerprint["build_fingerprint"].startswith("harness/") and m.fingerprint["kernel"]
        [cached] = on_phone(adbd_peer, WORKDIR).glob("cache/*/benchmark_model")
        assert m.fingerprint["benchmark_model_sha256"].startswith(cached.parent.name)
        stamp = cached.stat().st_mtime_ns

        again = device.measure(evil, FAST)  # the shared default probe; the binary is not re-pushed
        assert again.output_matches is True
        assert cached.stat().st_mtime_ns == stamp
    assert run_dirs(adbd_peer) == []
    assert not (tmp_path / "x").exists() and not (adbd_peer.root / "x").exists()


def test_a_phone_computing_wrong_answers_is_flagged_not_raised(
    adbd_peer: AdbdPeer, adb_server: AdbServer, binary: Path, tiny_model: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_BENCHMARK_WRONG_OUTPUT", "1")  # the adbd peer runs commands in our env
    with AndroidDevice(phone_spec(adbd_peer, adb_server, binary), timeouts=TIMEOUTS) as device:
        m = device.measure(tiny_model, FAST)
    assert m.output_matches is False and m.output_checksum
    [note] = [n for n in m.notes if "differs from the host's" in n]
    assert "device 'phone-test'" in note and "\n" not in note
    assert run_dirs(adbd_peer) == []


# --- faults -----------------------------------------------------------------------------------

HANG_TIMEOUTS = dataclasses.replace(TIMEOUTS, run_base_s=5, run_window_factor=0, run_per_inference_s=0)


@pytest.mark.parametrize("fault, error, expected", [
    ("drop", ConnectionLost, "went away"),
    ("adbd_hang", CommandTimeout, "still running after 5 s"),
    ("binary_hang", CommandTimeout, "killed pid"),
    ("corrupt_push", IntegrityError, "sha256 on the device"),
    ("disk_full", TransportError, "No space left on device"),
    ("crash", RunnerError, "exited with code 139; stderr tail"),
])
def test_faults_end_in_a_clear_device_error(
    adbd_peer: AdbdPeer, adb_server: AdbServer, binary: Path, tiny_model: Path,
    monkeypatch: pytest.MonkeyPatch, fault: str, error: type[DeviceError], expected: str,
) -> None:
    marker = "--graph="  # only the run command holds it
    if fault == "drop":
        adbd_peer.faults.drop_on = marker
    elif fault == "adbd_hang":
        adbd_peer.faults.hang_on = marker
    elif fault == "binary_hang":
        monkeypatch.setenv("FAKE_BENCHMARK_HANG_S", "60")
    elif fault == "corrupt_push":
        adbd_peer.faults.corrupt_push = True
    elif fault == "disk_full":
        adbd_peer.faults.disk_full = True
    elif fault == "crash":
        monkeypatch.setenv("FAKE_BENCHMARK_EXIT", "139")
    start = time.monotonic()
    with AndroidDevice(phone_spec(adbd_peer, adb_server, binary), timeouts=HANG_TIMEOUTS) as device:
        with pytest.raises(error) as info:
            # the drop comes 0.3 s after the command starts: make sure it is still running then
            device.measure(tiny_model, dataclasses.replace(FAST, min_seconds=2.0) if fault == "drop" else FAST)
        elapsed = time.monotonic() - start
        message = str(info.value)
        assert expected in message and "'phone-test'" in message and "\n" not in message, message
        if fault == "crash":
            assert "Fatal signal: simulated crash" in message
        assert elapsed < HANG_TIMEOUTS.run_base_s + 10
        assert run_dirs(adbd_peer) == []  # removed, over a fresh connection where the old one broke
        assert not _leftovers(adbd_peer), "a command outlived its deadline on the phone"
        adbd_peer.faults.drop_on = adbd_peer.faults.hang_on = None
        if fault in ("drop", "adbd_hang"):  # the device reconnects by itself
            assert device.measure(tiny_model, FAST).output_matches is True


def test_delegate_that_took_nothing_is_refused(adbd_peer: AdbdPeer, adb_server: AdbServer, binary: Path,
                                               tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_BENCHMARK_DELEGATE_NODES", "0")
    spec = phone_spec(adbd_peer, adb_server, binary)
    spec = dataclasses.replace(spec, connection=dataclasses.replace(spec.adb, delegate="gpu"))
    with AndroidDevice(spec, timeouts=TIMEOUTS) as device, pytest.raises(DeviceError) as info:
        device.measure(tiny_model, FAST)
    assert str(info.value).startswith("device 'phone-test': benchmark_model on 'tiny.tflite': "
                                      "TfLiteGpuDelegateV2 replaced 0 out of")
    assert run_dirs(adbd_peer) == []


# --- health -----------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["healthy", "unreachable", "low_disk", "hot", "missing_binary"])
def test_health_check_reports(adbd_peer: AdbdPeer, adb_server: AdbServer, binary: Path,
                              tmp_path: Path, case: str) -> None:
    on_phone(adbd_peer, ZONE).write_text("95000\n" if case == "hot" else "41000\n")
    overrides: dict[str, object] = {"thermal_zones": (ZONE,)}
    if case == "low_disk":
        overrides["health"] = HealthLimits(min_free_mb=1e12)
    if case == "missing_binary":
        overrides["benchmark_binary"] = tmp_path / "not-built" / "benchmark_model"
    if case == "unreachable":
        adbd_peer.stop()
    start = time.monotonic()
    with AndroidDevice(phone_spec(adbd_peer, adb_server, binary, **overrides), timeouts=TIMEOUTS) as device:
        report = device.health_check()
    assert time.monotonic() - start < HealthLimits().timeout_s
    expected = {"healthy": None, "unreachable": "unreachable:", "low_disk": "low disk:",
                "hot": "hot: thermal zone", "missing_binary": "runtime missing:"}[case]
    if expected is None:
        assert report.ok, report.summary()
        assert report.facts["temp_c"] == "41.0" and float(report.facts["free_mb"]) > 0
        assert report.facts["model"] == "HarnessPhone"
        assert report.facts["benchmark_model"].startswith(f"{WORKDIR}/cache/")
        assert on_phone(adbd_peer, report.facts["benchmark_model"]).stat().st_mode & 0o111
    else:
        assert len(report.problems) == 1, report.problems
        assert report.problems[0].startswith(expected) and "\n" not in report.problems[0]


def test_health_check_keeps_its_budget_when_every_step_is_slow(adbd_peer: AdbdPeer, adb_server: AdbServer,
                                                               binary: Path) -> None:
    """Regression: caching the binary gave its check, push and rename each the whole remaining
    budget, so slow steps could take a multiple of ``timeout_s``. A slow ``mkdir`` (the check)
    and ``chmod`` (the rename), shadowed first on the peer's PATH, now share one budget."""
    budget_s, step_s = 4.0, 3.0
    for tool in ("mkdir", "chmod"):
        shadow = adbd_peer.root / "system/bin" / tool
        shadow.write_text(f'#!/bin/sh\nsleep {step_s}\nexec /bin/{tool} "$@"\n')
        shadow.chmod(0o755)
    spec = phone_spec(adbd_peer, adb_server, binary, health=HealthLimits(timeout_s=budget_s))
    start = time.monotonic()
    try:
        with AndroidDevice(spec, timeouts=TIMEOUTS) as device:
            report = device.health_check()
        elapsed = time.monotonic() - start
    finally:
        for tool in ("mkdir", "chmod"):
            (adbd_peer.root / "system/bin" / tool).unlink()
    assert not report.ok
    assert report.problems[0].startswith("runtime:") and "benchmark_model" in report.problems[0]
    # one budget, plus the connection and the half file's clean-up: not check + push + rename
    assert elapsed < budget_s + step_s / 2, report.problems
    assert not any(p.name.endswith(".part") for p in on_phone(adbd_peer, WORKDIR).rglob("*"))


# --- flags ------------------------------------------------------------------------------------

def test_benchmark_io_flags_escape_colons_and_refuse_commas() -> None:
    assert benchmark_io_flags("serving_default_x:0", (1, 8, 8, 1), "/d/p.bin", "/d/o.bin") == [
        "--input_layer=serving_default_x:0", "--input_layer_shape=1,8,8,1",
        "--input_layer_value_files=serving_default_x::0:/d/p.bin", "--output_filepath=/d/o.bin"]
    with pytest.raises(ValueError, match="holds ','"):
        benchmark_io_flags("a,b", (1,), "/p", "/o")


def test_the_fake_tool_splits_value_files_as_the_real_one() -> None:
    from tests.peers.fake_benchmark_model import InputError, split_value_file

    assert split_value_file("input:/tmp/input") == ("input", "/tmp/input")
    assert split_value_file("input::0:/tmp/input") == ("input:0", "/tmp/input")
    assert split_value_file("input::::0:/tmp::input") == ("input::0", "/tmp:input")
    for bad in ("a:b:c", "abc"):
        with pytest.raises(InputError):
            split_value_file(bad)
