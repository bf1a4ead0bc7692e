"""``harness devices list | check | release | provision`` as a user runs them.

The inventory names a real OpenSSH sshd on 127.0.0.2 (tests/peers/sshd.py; this machine is the
"board", this venv's Python its ``python``), an SSH board on a loopback port where nothing
listens, and an adb phone whose adb server port is closed: each must fail fast and be reported.
Commands run in this process through click's runner; one ``list`` runs the installed
``.venv/bin/harness`` to show it imports no ML framework.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import Result

from devices.leases import LeaseStore
from tests.devices.test_provision import write_wheel
from tests.harness.conftest import HARNESS_BIN, assert_input_error, invoke, ok
from tests.peers.sshd import SshdPeer, sshd_peer_fixture

pytestmark = pytest.mark.timeout(120)

NAMES = ["local", "board", "ghost", "phone"]


@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshdPeer]:
    """One sshd for the module (skips when OpenSSH is not installed)."""
    yield from sshd_peer_fixture(tmp_path_factory.mktemp("devices-cli-sshd"))


def free_port(host: str) -> int:
    """A port on ``host`` where nothing listens (bound, then let go)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@pytest.fixture
def inventory(tmp_path: Path, peer: SshdPeer) -> Path:
    """board: the sshd peer; ghost: SSH to a closed port; phone: adb via a closed server port."""
    path = tmp_path / "lab.toml"
    path.write_text(f"""
[defaults]
key_file = "{peer.client_key}"
known_hosts = "{peer.known_hosts}"

[devices.board]
transport = "ssh"
host = "{peer.host}"
port = {peer.port}
user = "{peer.user}"
python = "{sys.executable}"
workdir = "{tmp_path / 'board'}"
tags = ["pi5", "lab"]
health_timeout_s = 30.0

[devices.ghost]
transport = "ssh"
host = "127.0.0.5"
port = {free_port("127.0.0.5")}
user = "pi"
tags = ["pi5", "lab"]
connect_timeout_s = 3.0
health_timeout_s = 5.0
meter = {{ kind = "pi5-pmic" }}

[devices.phone]
transport = "adb"
serial = "EMU0042"
adb_server = "127.0.0.1:{free_port('127.0.0.1')}"
benchmark_binary = "{tmp_path / 'benchmark_model'}"
tags = ["android"]
connect_timeout_s = 3.0
health_timeout_s = 5.0
meter = {{ kind = "odpm" }}
""")
    return path


def run(*args: object) -> Result:
    return invoke([str(a) for a in args])


def listed(inventory: Path, results: Path) -> dict[str, dict[str, object]]:
    rows = json.loads(ok(run("devices", "list", "--inventory", inventory, "--results-dir", results,
                             "--json")).stdout)
    return {row["name"]: row for row in rows}


def connections(peer: SshdPeer) -> int:
    """Connections the sshd has logged so far."""
    return peer.log_path.read_text(errors="replace").count("Connection from")


def test_list_shows_every_device_unknown_and_connects_to_none(
    inventory: Path, peer: SshdPeer, tmp_path: Path
) -> None:
    results = tmp_path / "results"
    before = connections(peer)
    start = time.monotonic()
    rows = listed(inventory, results)
    table = ok(run("devices", "list", "--inventory", inventory, "--results-dir", results)).stdout
    assert time.monotonic() - start < 5.0
    assert connections(peer) == before, "list connected to the board"
    assert not results.exists(), "list created the results database"

    assert list(rows) == NAMES
    assert {name: row["state"] for name, row in rows.items()} == dict.fromkeys(NAMES, "unknown")
    assert rows["board"]["address"] == f"{peer.user}@{peer.host}:{peer.port}"
    assert rows["board"]["tags"] == ["pi5", "lab"] and rows["board"]["class"] == "pi5"
    assert rows["phone"]["address"] == "EMU0042" and rows["phone"]["meter"] == "odpm"
    assert rows["ghost"]["meter"] == "pi5-pmic" and rows["local"]["address"] is None
    assert rows["board"]["checked_at"] is None and rows["board"]["measurements_ok"] == 0
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["NAME", "TRANSPORT", "ADDRESS"] and len(lines) == 1 + len(NAMES)
    assert any(line.startswith("phone") and "EMU0042" in line and "unknown" in line for line in lines)

    # the installed command: fast because it imports no ML framework
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1", "HARNESS_NATIVE_LOGS": "1"}
    done = subprocess.run([str(HARNESS_BIN), "devices", "list", "--inventory", str(inventory),
                           "--results-dir", str(results), "--json"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [row["name"] for row in json.loads(done.stdout)] == NAMES
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in done.stderr.splitlines()
                if line.startswith("import time:")}
    assert "click" in imported and not imported & {"tensorflow", "keras", "ai_edge_litert"}


def test_check_records_health_that_list_then_shows(inventory: Path, peer: SshdPeer, tmp_path: Path) -> None:
    results = tmp_path / "results"
    start = time.monotonic()
    result = ok(run("devices", "check", "--inventory", inventory, "--results-dir", results), code=1)
    assert time.monotonic() - start < 30.0, "unreachable devices must fail fast"
    lines = {line.split(":", 1)[0]: line for line in result.stdout.splitlines()}
    assert set(lines) == set(NAMES)
    assert lines["board"].startswith("board: healthy") and "ai_edge_litert=" in lines["board"]
    assert lines["local"].startswith("local: healthy")
    assert lines["ghost"].startswith("ghost: offline: unreachable") and "'ghost'" in lines["ghost"]
    assert lines["phone"].startswith("phone: offline: unreachable") and "adb server" in lines["phone"]
    (error,) = result.stderr.splitlines()
    assert error.startswith("error: 2 of 4 device(s) failed") and "ghost, phone" in error
    assert (results / "harness.sqlite").is_file()

    rows = listed(inventory, results)
    assert rows["board"]["state"] == "available" and rows["local"]["state"] == "available"
    assert rows["board"]["checked_at"] is not None and rows["board"]["check_ok"] is True
    for name in ("ghost", "phone"):
        assert rows[name]["state"] == "offline"  # the check could not reach it
        assert rows[name]["check_ok"] is False and "unreachable" in rows[name]["problems"][0]
        assert str(rows[name]["detail"]).startswith(f"{rows[name]['state']}: unreachable")

    # a selection by tag; a passing check lifts a quarantine
    with LeaseStore(results / "harness.sqlite") as store:
        store.quarantine("board", "3 consecutive failures; last: runner crashed")
    assert listed(inventory, results)["board"]["quarantine_reason"] == \
        "3 consecutive failures; last: runner crashed"
    again = ok(run("devices", "check", "tag:pi5", "--inventory", inventory, "--results-dir", results,
                   "--json"), code=1)
    reports = {r["name"]: r for r in json.loads(again.stdout)}
    assert set(reports) == {"board", "ghost"}
    assert reports["board"]["ok"] and reports["board"]["state"] == "available"
    assert "numpy" in reports["board"]["facts"] and not reports["ghost"]["ok"]
    assert listed(inventory, results)["board"]["quarantined"] is False


def test_release_lifts_a_quarantine(inventory: Path, tmp_path: Path) -> None:
    results = tmp_path / "results"
    with LeaseStore(results / "harness.sqlite") as store:
        store.quarantine("ghost", "3 consecutive failures; last: link lost")
    row = listed(inventory, results)["ghost"]
    assert row["state"] == "quarantined" and "link lost" in str(row["detail"])

    out = ok(run("devices", "release", "ghost", "board", "--inventory", inventory, "--results-dir", results))
    assert out.stdout.splitlines() == [
        "ghost: quarantine lifted (was: 3 consecutive failures; last: link lost)",
        "board: not quarantined (unknown)"]
    row = listed(inventory, results)["ghost"]
    assert row["state"] == "unknown" and row["quarantined"] is False and row["consecutive_failures"] == 0

    # a lease another process holds is shown with its holder and expiry
    with LeaseStore(results / "harness.sqlite") as store:
        store.acquire("phone", "ci-runner:4242:feedbeef", ttl_s=600)
    row = listed(inventory, results)["phone"]
    assert row["state"] == "leased" and row["holder"] == "ci-runner:4242:feedbeef"
    assert row["lease_expires_at"] is not None
    table = ok(run("devices", "list", "--inventory", inventory, "--results-dir", results)).stdout
    assert "leased by ci-runner:4242:feedbeef until " in table


def test_bad_input_is_one_line_and_exit_2(inventory: Path, tmp_path: Path) -> None:
    results = tmp_path / "results"
    common = ["--inventory", inventory, "--results-dir", results]
    assert_input_error(run("devices", "check", "nope", *common), "'nope'", "not in the inventory")
    assert_input_error(run("devices", "check", "tag:gpu", *common), "'tag:gpu'", "no device has tag")
    assert_input_error(run("devices", "release", "nope", *common), "'nope'")
    assert_input_error(run("devices", "list", "--inventory", tmp_path / "missing.toml"), "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text('[devices.x]\ntransport = "serial"\n')
    assert_input_error(run("devices", "list", "--inventory", bad), "bad.toml", "'x'", "'transport'")
    assert_input_error(run("devices", "provision", "nope", "--inventory", inventory), "'nope'")
    assert_input_error(run("devices", "provision", "phone", "--inventory", inventory),
                       "'phone'", "only ssh devices")
    assert_input_error(run("devices", "provision", "board", "--inventory", inventory, "--requirement",
                           "evil @ https://example.invalid/x.whl"), "--requirement", "evil")
    assert_input_error(run("devices", "provision", "board", "--inventory", inventory, "--wheelhouse",
                           tmp_path / "no-wheels"), "--wheelhouse", "no-wheels")
    assert not results.exists()


def test_provision_the_board_offline(
    inventory: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/nowhere")  # no index could be reached anyway
    wheelhouse = tmp_path / "wheelhouse"
    write_wheel(wheelhouse, "tinybeta", "0.3")
    out = ok(run("devices", "provision", "board", "--inventory", inventory, "--wheelhouse", wheelhouse,
                 "--cache-dir", tmp_path / "cache", "--requirement", "tinybeta"))
    venv_python = tmp_path / "board" / "venv" / "bin" / "python"
    first, hint = out.stdout.splitlines()
    assert first.startswith("board: installed: tinybeta 0.3")
    assert hint == f'set python = "{venv_python}" in the inventory entry [devices.board]'
    assert venv_python.exists() and any((tmp_path / "cache").iterdir())

    # an unreachable board: a runtime failure, exit 1, one line naming the device and the step
    failed = ok(run("devices", "provision", "ghost", "--inventory", inventory, "--requirement", "tinybeta",
                    "--wheelhouse", wheelhouse), code=1)
    (line,) = failed.stderr.splitlines()
    assert line.startswith("error: device 'ghost': provisioning step 'connect' failed")
