"""LinuxBoardDevice against a real OpenSSH sshd on 127.0.0.2 (tests/peers/sshd.py): this machine
is the "board", this venv's Python its ``python``. End to end on a real tiny .tflite, faults
(dropped link, frozen board, corrupted upload, changed host key, corrupt model), health checks,
and the pure helpers behind them."""

from __future__ import annotations

import dataclasses
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from devices.base import DeviceError, Measurement, MeasureSettings
from devices.inventory import DeviceSpec, HealthLimits, SshConnection
from devices.local import LocalDevice
from devices.remote import LinuxBoardDevice, RemoteTimeouts
from devices.remote.common import NO_ENERGY_NOTE, parse_df_free_mb, parse_millidegrees
from devices.runners import RunnerOutputError
from devices.transports import CommandTimeout, ConnectionLost, HostKeyError, IntegrityError
from tests.peers.contract import EVIL_NAME
from tests.peers.sshd import SshdPeer

pytestmark = pytest.mark.timeout(60)

FAST = MeasureSettings(threads=1, warmup_runs=1, min_seconds=0.05, min_runs=5)
TIMEOUTS = RemoteTimeouts(command_s=10, push_base_s=10, run_base_s=30, run_window_factor=2,
                          run_per_inference_s=0.5, cleanup_s=10)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import keras

    from search.lowering import lower

    keras.utils.set_random_seed(0)
    inputs = keras.Input((16,), name="input")
    hidden = keras.layers.Dense(8, activation="relu", name="hidden")(inputs)
    outputs = keras.layers.Dense(4, activation="softmax", name="dense")(hidden)
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(0).random((8, 16)).astype(np.float32)
    path = tmp_path_factory.mktemp("linux") / "tiny.tflite"
    path.write_bytes(lower(model, {"hidden": "float32", "dense": "float32"}, x).tflite_bytes)
    return path


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path / "board-workdir"


def board_spec(peer: SshdPeer, workdir: Path, **overrides: object) -> DeviceSpec:
    connection = SshConnection(host=peer.host, port=peer.port, user=peer.user,
                               key_file=peer.client_key, known_hosts=peer.known_hosts,
                               python=str(overrides.pop("python", sys.executable)),
                               connect_timeout_s=5.0)
    spec = DeviceSpec(name="pi-test", transport="ssh", runner="litert", connection=connection,
                      workdir=str(workdir), tags=("pi5", "arm64"), device_class="pi5")
    return dataclasses.replace(spec, **overrides)  # type: ignore[arg-type]


def run_dirs(workdir: Path) -> list[str]:
    return sorted(p.name for p in workdir.glob("run-*")) if workdir.exists() else []


def in_background(work: Callable[[], Measurement]) -> tuple[threading.Thread, list[object]]:
    """``work()`` in a thread; the list receives its result or its exception."""
    outcome: list[object] = []

    def body() -> None:
        try:
            outcome.append(work())
        except BaseException as e:  # noqa: BLE001 - handed to the test
            outcome.append(e)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, outcome


def wait_for_runner(workdir: Path, timeout_s: float = 20.0) -> None:
    """Until the runner's Python itself runs on the board for a run directory under ``workdir``.

    Not just the session's shell: faults are injected only once the login shell has exec'd
    into the runner, so no killed or frozen shell is caught in its startup files (a shell killed
    there can leave a stale lock, e.g. pyenv's rehash lock, that stalls every later login).
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0") if entry.name.isdigit() else []
            except OSError:
                continue
            if len(argv) > 2 and argv[0] == sys.executable.encode() \
                    and argv[1].endswith(b"/litert_runner.py") and f"{workdir}/run-".encode() in argv[2]:
                return
        time.sleep(0.05)
    raise AssertionError("the runner never started")


# --- end to end -------------------------------------------------------------------------------

def test_measures_end_to_end_and_matches_the_host(sshd_peer: SshdPeer, workdir: Path,
                                                  tiny_model: Path, tmp_path: Path) -> None:
    evil = tmp_path / EVIL_NAME
    shutil.copy(tiny_model, evil)
    probe = np.random.default_rng(5).random((1, 16))  # float64: cast on both sides alike
    home_x = Path.home() / "x"
    x_existed = home_x.exists()
    with LinuxBoardDevice(board_spec(sshd_peer, workdir, threads=2), timeouts=TIMEOUTS) as device:
        assert device.device_class == "pi5" and device.tags == ("pi5", "arm64")
        m = device.measure(evil, FAST, probe)
        assert m.device == "pi-test" and m.threads == 2  # the inventory's threads win
        assert m.n_inferences >= FAST.min_runs and m.latency_ms_p90 >= m.latency_ms_median > 0
        assert m.energy_mj_median is None and m.energy_source == "none" and NO_ENERGY_NOTE in m.notes
        assert m.output_matches is True
        assert m.output_checksum == LocalDevice().measure(tiny_model, FAST, probe).output_checksum
        for key in ("python", "numpy", "ai_edge_litert", "kernel", "cpu_model"):
            assert m.fingerprint[key]
        [cached] = (workdir / "cache").glob("*/litert_runner.py")
        stamp = cached.stat().st_mtime_ns

        sshd_peer.drop_connections()  # the idle link dies (no session is running now)...
        time.sleep(0.2)
        again = device.measure(evil, FAST)  # ...and is reopened; the shared default probe
        assert again.output_matches is True
        assert [cached] == list((workdir / "cache").glob("*/*")) and cached.stat().st_mtime_ns == stamp
    assert run_dirs(workdir) == []
    assert not (tmp_path / "x").exists() and not (workdir / "x").exists()
    assert home_x.exists() == x_existed, "the model's name ran as a command"


def test_a_board_computing_wrong_answers_is_flagged_not_raised(
    sshd_peer: SshdPeer, workdir: Path, tiny_model: Path, tmp_path: Path
) -> None:
    # The board's "python" is this venv's with a sitecustomize that skews every output tensor:
    # a broken runtime on the board, not a mock of anything on the host's side.
    broken = tmp_path / "broken-runtime"
    broken.mkdir()
    (broken / "sitecustomize.py").write_text(
        "import ai_edge_litert.interpreter as _i\n"
        "_get = _i.Interpreter.get_tensor\n"
        "_i.Interpreter.get_tensor = lambda self, i, *a, **k: _get(self, i, *a, **k) + 1\n")
    python = tmp_path / "board-python"
    python.write_text(f'#!/bin/sh\nPYTHONPATH="{broken}" exec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    with LinuxBoardDevice(board_spec(sshd_peer, workdir, python=python), timeouts=TIMEOUTS) as device:
        m = device.measure(tiny_model, FAST)
    assert m.output_matches is False and m.output_checksum
    [note] = [n for n in m.notes if "differs from the host's" in n]
    assert "device 'pi-test'" in note and "\n" not in note
    assert run_dirs(workdir) == []


# --- faults -----------------------------------------------------------------------------------

def _expect(error: type[DeviceError], outcome: list[object], thread: threading.Thread,
            within_s: float) -> DeviceError:
    thread.join(within_s)
    assert not thread.is_alive(), f"measure did not end within {within_s} s"
    [raised] = outcome
    assert isinstance(raised, error), repr(raised)
    message = str(raised)
    assert "'pi-test'" in message and "\n" not in message, message
    return raised


def test_board_that_disappears_mid_run(sshd_peer: SshdPeer, workdir: Path, tiny_model: Path) -> None:
    slow = dataclasses.replace(FAST, min_seconds=20.0)
    with LinuxBoardDevice(board_spec(sshd_peer, workdir), timeouts=TIMEOUTS) as device:
        thread, outcome = in_background(lambda: device.measure(tiny_model, slow))
        wait_for_runner(workdir)
        start = time.monotonic()
        sshd_peer.drop_connections()
        _expect(ConnectionLost, outcome, thread, within_s=15)
        assert time.monotonic() - start < 15
        assert run_dirs(workdir) == []  # removed over a fresh connection
        assert device.measure(tiny_model, FAST).output_matches is True  # and the device reconnects


def test_frozen_board_ends_at_the_run_deadline(sshd_peer: SshdPeer, workdir: Path,
                                               tiny_model: Path) -> None:
    timeouts = dataclasses.replace(TIMEOUTS, run_base_s=4, run_window_factor=0, run_per_inference_s=0)
    slow = dataclasses.replace(FAST, min_seconds=30.0)
    with LinuxBoardDevice(board_spec(sshd_peer, workdir), timeouts=timeouts) as device:
        start = time.monotonic()
        thread, outcome = in_background(lambda: device.measure(tiny_model, slow))
        try:
            wait_for_runner(workdir)
            sshd_peer.freeze_connections()
            raised = _expect(CommandTimeout, outcome, thread, within_s=20)
        finally:
            sshd_peer.freeze_connections(False)
        assert "still running after 4 s" in str(raised)
        assert time.monotonic() - start < 4 + 10
        assert run_dirs(workdir) == []


def test_corrupted_upload(sshd_peer: SshdPeer, workdir: Path, tiny_model: Path) -> None:
    sshd_peer.corrupt_uploads = True
    with (
        LinuxBoardDevice(board_spec(sshd_peer, workdir), timeouts=TIMEOUTS) as device,
        pytest.raises(IntegrityError, match="sha256 on the device") as info,
    ):
        device.measure(tiny_model, FAST)
    assert "'pi-test'" in str(info.value) and "\n" not in str(info.value)
    assert run_dirs(workdir) == []


def test_changed_host_key_is_refused(sshd_peer: SshdPeer, workdir: Path, tiny_model: Path) -> None:
    sshd_peer.known_hosts.write_text(sshd_peer.other_host_key_line)
    with LinuxBoardDevice(board_spec(sshd_peer, workdir), timeouts=TIMEOUTS) as device:
        with pytest.raises(HostKeyError, match="CHANGED") as info:
            device.measure(tiny_model, FAST)
        assert "'pi-test'" in str(info.value)
        report = device.health_check()
    assert not report.ok and report.problems[0].startswith("unreachable:") and "CHANGED" in report.summary()


def test_corrupt_model_crashes_the_runner(sshd_peer: SshdPeer, workdir: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(range(256)) * 4)  # a header, then garbage
    with (
        LinuxBoardDevice(board_spec(sshd_peer, workdir), timeouts=TIMEOUTS) as device,
        pytest.raises(RunnerOutputError, match="model_invalid") as info,
    ):
        device.measure(junk, FAST)
    message = str(info.value)
    assert message.startswith("device 'pi-test': measuring 'junk.tflite'") and "\n" not in message
    assert run_dirs(workdir) == []


def test_closed_device_refuses(sshd_peer: SshdPeer, workdir: Path, tiny_model: Path) -> None:
    device = LinuxBoardDevice(board_spec(sshd_peer, workdir), timeouts=TIMEOUTS)
    device.close()
    with pytest.raises(DeviceError, match="'pi-test': closed"):
        device.measure(tiny_model, FAST)


# --- health -----------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["healthy", "unreachable", "low_disk", "hot", "missing_runtime"])
def test_health_check_reports(sshd_peer: SshdPeer, workdir: Path, tmp_path: Path, case: str) -> None:
    zones = [tmp_path / "thermal_zone0_temp", tmp_path / "thermal_zone1_temp"]
    zones[0].write_text("45000\n")
    zones[1].write_text("95000\n" if case == "hot" else "51500\n")
    overrides: dict[str, object] = {"thermal_zones": tuple(map(str, zones))}
    if case == "low_disk":
        overrides["health"] = HealthLimits(min_free_mb=1e12)
    if case == "missing_runtime":
        overrides["python"] = "/nonexistent/python3"
    if case == "unreachable":
        sshd_peer.stop()
    start = time.monotonic()
    with LinuxBoardDevice(board_spec(sshd_peer, workdir, **overrides), timeouts=TIMEOUTS) as device:
        report = device.health_check()
    assert time.monotonic() - start < HealthLimits().timeout_s
    assert report.device == "pi-test"
    expected = {"healthy": None, "unreachable": "unreachable:", "low_disk": "low disk:",
                "hot": "hot: thermal zone", "missing_runtime": "runtime missing:"}[case]
    if expected is None:
        assert report.ok, report.summary()
        assert report.facts["python"] == ".".join(map(str, sys.version_info[:3]))
        assert report.facts["ai_edge_litert"] and report.facts["numpy"] == np.__version__
        assert report.facts["temp_c"] == "51.5" and report.facts[f"temp_c:{zones[0]}"] == "45.0"
        assert float(report.facts["free_mb"]) > 0
    else:
        assert len(report.problems) == 1, report.problems
        assert report.problems[0].startswith(expected) and "\n" not in report.problems[0]
    if case == "hot":
        assert str(zones[1]) in report.problems[0] and "95.0 C" in report.problems[0]
        missing = tmp_path / "no_such_zone"
        spec = board_spec(sshd_peer, workdir, thermal_zones=(str(missing), str(zones[0])))
        with LinuxBoardDevice(spec, timeouts=TIMEOUTS) as device:
            report = device.health_check()
        assert report.problems == (f"thermal zone {missing}: cannot read it",)
        assert report.facts["temp_c"] == "45.0"


# --- pure helpers -----------------------------------------------------------------------------

@pytest.mark.parametrize("text, free_mb", [
    # coreutils
    ("Filesystem     1024-blocks     Used Available Capacity Mounted on\n"
     "/dev/nvme0n1p2   490617784 91234560 374378460      20% /\n", 374378460 / 1024),
    # toybox (Android), a name with spaces and a mount point with spaces
    ("Filesystem      1K-blocks    Used Available Use% Mounted on\n"
     "/dev/block/dm 4  115164556 4212344 110821140   4% /data/my dir\n", 110821140 / 1024),
    # busybox
    ("Filesystem           1024-blocks      Used Available Capacity Mounted on\n"
     "overlay                 30832548  10000000  20832548  32% /\n", 20832548 / 1024),
])
def test_parse_df_free_mb(text: str, free_mb: float) -> None:
    assert parse_df_free_mb(text) == pytest.approx(free_mb)


def test_parse_df_and_temperatures_reject_garbage() -> None:
    with pytest.raises(ValueError, match="df -Pk"):
        parse_df_free_mb("df: /x: No such file or directory\n")
    assert parse_millidegrees("45000\n") == 45.0 and parse_millidegrees("-5000") == -5.0
    for bad in ("", "45.5", "hot"):
        with pytest.raises(ValueError, match="millidegrees"):
            parse_millidegrees(bad)


def test_timeouts_are_validated_and_scale_with_the_settings() -> None:
    t = RemoteTimeouts()
    settings = MeasureSettings(warmup_runs=5, min_seconds=10.0, min_runs=20)
    assert t.run_s(settings) == 60 + 3 * 10 + 1 * 25
    assert t.push_s(10 * 1024 * 1024) == 30 + 2 * 10
    for bad in ({"command_s": 0}, {"run_window_factor": -1}, {"cleanup_s": float("inf")}):
        with pytest.raises(ValueError, match="RemoteTimeouts"):
            RemoteTimeouts(**bad)  # type: ignore[arg-type]
