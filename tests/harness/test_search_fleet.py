"""A search measuring on a fleet of real peers: two Linux boards over OpenSSH (one whose runner
always crashes) and a metered phone over the real adb server, with ODPM counters following a
known power. Every candidate is measured once per device class, retried on the healthy board,
and its energy objective is the phone's measured energy."""

from __future__ import annotations

import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devices.leases import LeaseStore
from harness.config import config_from_mapping
from harness.search_loop import SearchRun
from results.store import ResultsStore
from tests.harness.conftest import cheap_config, merged
from tests.peers.adbd import AdbdPeer, AdbServer, adb_server_fixture, adbd_peer_fixture
from tests.peers.emulated_meters import OdpmEmulator
from tests.peers.sshd import SshdPeer, missing_tools

pytestmark = pytest.mark.timeout(600)

FAKE = Path(__file__).resolve().parents[1] / "peers" / "fake_benchmark_model.py"
ODPM_DIR = "/data/local/tmp/sys/bus/iio/devices"


def _started_sshd(base: Path, host: str) -> Iterator[SshdPeer]:
    reason = missing_tools()
    if reason:
        pytest.skip(f"real sshd peer unavailable: {reason}")
    peer = SshdPeer(base, host=host)
    peer.start()
    try:
        yield peer
    finally:
        peer.stop()


@pytest.fixture
def board_a(tmp_path: Path) -> Iterator[SshdPeer]:
    yield from _started_sshd(tmp_path / "sshd-a", "127.0.0.2")


@pytest.fixture
def board_b(tmp_path: Path) -> Iterator[SshdPeer]:
    yield from _started_sshd(tmp_path / "sshd-b", "127.0.0.4")


@pytest.fixture(scope="module")
def adb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdbServer]:
    yield from adb_server_fixture(tmp_path_factory.mktemp("adb-home"))


@pytest.fixture
def phone(tmp_path: Path, adb_server: AdbServer) -> Iterator[AdbdPeer]:
    yield from adbd_peer_fixture(tmp_path / "phone", adb_server, connect=False)


def _ssh_entry(name: str, peer: SshdPeer, python: Path | str, workdir: Path) -> str:
    return (f'[devices.{name}]\ntransport = "ssh"\nhost = "{peer.host}"\nport = {peer.port}\n'
            f'user = "{peer.user}"\nkey_file = "{peer.client_key}"\nknown_hosts = "{peer.known_hosts}"\n'
            f'python = "{python}"\nworkdir = "{workdir}"\ntags = ["pi5"]\n')


def test_search_measures_every_class_retries_a_crashing_board_and_uses_measured_energy(
    board_a: SshdPeer, board_b: SshdPeer, phone: AdbdPeer, adb_server: AdbServer,
    tiny_reference: Path, tmp_path: Path,
) -> None:
    # board b passes its health check (python -c imports work) but its runner always crashes
    crashing = tmp_path / "crashing-python"
    crashing.write_text(f'#!/bin/sh\ncase "$1" in -c) exec "{sys.executable}" "$@";; esac\n'
                        'echo "Segmentation fault" >&2\nexit 139\n')
    crashing.chmod(0o755)
    marker = f"fake_benchmark_{uuid.uuid4().hex[:12]}.py"  # only this test's tool is the workload
    shutil.copy(FAKE, tmp_path / marker)
    tool = tmp_path / "benchmark_model"
    tool.write_text(f'#!/bin/sh\nFAKE_BENCHMARK_SLEEP_US=8000 exec "{sys.executable}" "{tmp_path / marker}" "$@"\n')
    tool.chmod(0o755)
    inventory = tmp_path / "lab.toml"
    inventory.write_text(
        _ssh_entry("pi-b", board_b, crashing, tmp_path / "wd-b")
        + _ssh_entry("pi-a", board_a, sys.executable, tmp_path / "wd-a")
        + f'[devices.phone]\ntransport = "adb"\nserial = "{phone.serial}"\n'
          f'adb_server = "{adb_server.address[0]}:{adb_server.address[1]}"\n'
          f'benchmark_binary = "{tool}"\ntags = ["pixel7"]\n'
          f'meter = {{ kind = "odpm", path = "{ODPM_DIR}" }}\n')
    results = tmp_path / "results"
    config = config_from_mapping(merged(cheap_config(tiny_reference, study="fleet"), {
        "search": {"trials": 3, "results_dir": str(results), "objectives": ["accuracy", "energy", "latency"]},
        "training": {"epochs": 0},
        "measure": {"devices": ["tag:pi5", "phone"], "inventory": [str(inventory)],
                    "quarantine_after": 2, "retries": 2},
        "energy": {"min_window_s": 0.5, "short_window_s": 0.15, "baseline_s": 0.3,
                   "settle_s": 0.1, "repeats": 3},
    }))

    active_mw = 1500.0
    with OdpmEmulator(phone.root / ODPM_DIR.lstrip("/"), idle_mw=300.0, active_mw=active_mw,
                      marker=marker):
        summary = SearchRun(config, progress=False).run()

    assert summary.counts == {"complete": 3}
    with ResultsStore(results / "harness.sqlite", create=False) as store:
        records = store.records("fleet")
    assert sorted(r.trial_number for r in records) == [0, 1, 2]  # none lost, none duplicated
    for record in records:
        by_class = {m["device_class"]: m for m in record.measurements}
        assert set(by_class) == {"pi5", "pixel7"}
        assert by_class["pi5"]["device"] == "pi-a"  # the crashing board never produced one
        assert by_class["pi5"]["output_matches"] is True
        metrics = record.metrics
        assert metrics["latency_ms.pi5"].source == "measured" and metrics["latency_ms.pixel7"].value > 0
        assert metrics["latency_ms"].value == max(metrics["latency_ms.pi5"].value,
                                                  metrics["latency_ms.pixel7"].value)
        phone_m = by_class["pixel7"]
        expected = active_mw * phone_m["latency_ms_median"] / 1000.0
        assert metrics["energy_mj"].source == "measured"
        # accuracy is the protocol's and the bench's business; here a 0.5 s window on a shared
        # 2-core machine only has to land near the truth, measured and labelled so
        assert metrics["energy_mj"].value == pytest.approx(expected, rel=0.2)
        assert metrics["energy_mj.pixel7"].value == metrics["energy_mj"].value
        assert metrics["energy_pj_estimated"].source == "estimated"
        assert phone_m["energy_window_s"] == 0.5 and phone_m["energy_detail"]["repeats"] == 3
    retried = [f for r in records for f in r.flags if f.startswith("retried:pi-b")]
    assert len(retried) == 2 and all("139" in f or "Segmentation" in f for f in retried)

    with LeaseStore(results / "harness.sqlite") as leases:
        states = {s.device: s for s in leases.states()}
    assert states["pi-b"].state == "quarantined" and states["pi-b"].measurements_failed == 2
    assert states["pi-a"].state == "available" and states["pi-a"].measurements_ok == 3
    assert states["phone"].measurements_ok == 3

