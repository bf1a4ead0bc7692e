"""``harness measure --device NAME --inventory PATH --json`` on a board behind the real OpenSSH
server: the JSON object of the core issue, from a leased, health-checked remote device."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from devices.leases import LeaseStore
from tests.harness.conftest import assert_input_error, invoke
from tests.peers.sshd import SshdPeer, sshd_peer_fixture

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def board(tmp_path: Path) -> Iterator[SshdPeer]:
    yield from sshd_peer_fixture(tmp_path)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    import keras

    from search.lowering import lower

    inputs = keras.Input((8,), name="input")
    outputs = keras.layers.Dense(3, activation="softmax", name="dense")(inputs)
    x = np.random.default_rng(0).random((4, 8)).astype(np.float32)
    path = tmp_path / "tiny.tflite"
    path.write_bytes(lower(keras.Model(inputs, outputs), {"dense": "float32"}, x).tflite_bytes)
    return path


def test_measure_prints_the_json_object_for_a_remote_board(board: SshdPeer, model: Path, tmp_path: Path) -> None:
    inventory = tmp_path / "lab.toml"
    inventory.write_text(
        f'[devices.pi]\ntransport = "ssh"\nhost = "{board.host}"\nport = {board.port}\n'
        f'user = "{board.user}"\nkey_file = "{board.client_key}"\nknown_hosts = "{board.known_hosts}"\n'
        f'python = "{sys.executable}"\nworkdir = "{tmp_path / "wd"}"\ntags = ["pi5"]\n')
    results = tmp_path / "results"

    result = invoke(["measure", model, "--device", "pi", "--inventory", inventory, "--results-dir",
                     results, "--min-seconds", "0.05", "--min-runs", "5", "--json"])

    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["device"] == "pi" and data["n_inferences"] >= 5
    assert data["latency_ms_p90"] >= data["latency_ms_median"] > 0
    assert data["energy_mj_median"] is None and data["energy_source"] == "none"
    assert data["output_matches"] is True and data["fingerprint"]["python"]
    with LeaseStore(results / "harness.sqlite") as leases:
        state = leases.state("pi")
    assert state.state == "available" and state.measurements_ok == 1  # leased, then released


def test_measure_names_a_device_missing_from_the_inventory(model: Path, tmp_path: Path) -> None:
    inventory = tmp_path / "lab.toml"
    inventory.write_text("")
    result = invoke(["measure", model, "--device", "pi9", "--inventory", inventory, "--json"])
    assert_input_error(result, "pi9", "not in the inventory")


def test_measure_of_an_unreachable_board_is_a_one_line_failure(model: Path, tmp_path: Path) -> None:
    inventory = tmp_path / "lab.toml"
    key = tmp_path / "key"
    key.write_text("not a key")
    inventory.write_text(
        f'[devices.gone]\ntransport = "ssh"\nhost = "127.0.0.9"\nport = 1\nuser = "pi"\n'
        f'key_file = "{key}"\nknown_hosts = "{tmp_path / "kh"}"\nconnect_timeout_s = 2\n')
    result = invoke(["measure", model, "--device", "gone", "--inventory", inventory,
                     "--results-dir", tmp_path / "results", "--json"])
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "gone" in lines[0]


def test_measure_json_fills_energy_for_a_board_with_a_meter(board: SshdPeer, model: Path, tmp_path: Path) -> None:
    """A ``simulated`` meter (dry runs without hardware): energy filled, and labelled so."""
    inventory = tmp_path / "lab.toml"
    inventory.write_text(
        f'[devices.pi]\ntransport = "ssh"\nhost = "{board.host}"\nport = {board.port}\n'
        f'user = "{board.user}"\nkey_file = "{board.client_key}"\nknown_hosts = "{board.known_hosts}"\n'
        f'python = "{sys.executable}"\nworkdir = "{tmp_path / "wd"}"\ntags = ["pi5"]\n'
        'meter = { kind = "simulated", idle_mw = 500.0, active_mw = 2000.0 }\n')

    result = invoke(["measure", model, "--device", "pi", "--inventory", inventory, "--results-dir",
                     tmp_path / "results", "--min-seconds", "0.05", "--min-runs", "5",
                     "--energy-window-s", "0.3", "--json"])

    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["energy_source"] == "simulated" and data["energy_window_s"] == 0.3
    assert data["energy_mj_median"] > 0 and data["energy_mj_spread"] is not None
    assert data["energy_detail"]["repeats"] == 3 and data["energy_detail"]["source"] == "simulated"
