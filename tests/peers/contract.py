"""The behaviour every :class:`~devices.transports.base.Transport` must show against a real peer.

Subclass :class:`TransportContract` in a test module (name it ``Test…``) and provide fixtures:

* ``transport_factory`` — returns a new, *unopened* transport to the peer;
* ``transport`` — an opened one (closed after the test);
* ``host_path`` — maps a device path to the file on this machine that backs it;
* ``drop_device`` — makes the device vanish (kills its side of the connection).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from devices.transports.base import CommandTimeout, ConnectionLost, Transport, TransportError

EVIL_NAME = "a b;touch x'.tflite"


def processes_with(marker: str) -> list[int]:
    """Pids on this machine whose command line contains ``marker`` (read-only /proc scan)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


class TransportContract:
    """Shared tests; fixtures are described in the module docstring."""

    def test_run_reports_stdout_stderr_and_exit_code(self, transport: Transport) -> None:
        result = transport.run("echo out; echo err >&2; exit 3", timeout_s=10)
        assert (result.exit_code, result.stdout, result.stderr) == (3, "out\n", "err\n")
        assert result.command == "echo out; echo err >&2; exit 3"
        assert 0 < result.duration_s < 10

    def test_argv_is_quoted_argument_by_argument(self, transport: Transport) -> None:
        result = transport.run(["printf", "%s|", "a b", "c;d", "e'f", "$HOME"], timeout_s=10)
        assert result.ok and result.stdout == "a b|c;d|e'f|$HOME|"

    def test_run_checked_raises_with_evidence(self, transport: Transport) -> None:
        with pytest.raises(TransportError) as info:
            transport.run_checked("echo boom >&2; exit 7", timeout_s=10)
        message = str(info.value)
        assert "exit code 7" in message and "boom" in message and "\n" not in message

    def test_large_stdout_and_stderr_are_drained(self, transport: Transport) -> None:
        command = (
            "head -c 3000000 /dev/zero | tr '\\0' a; head -c 1000000 /dev/zero | tr '\\0' b >&2; echo end"
        )
        result = transport.run(command, timeout_s=30)
        assert result.ok
        assert result.stdout == "a" * 3_000_000 + "end\n"
        assert result.stderr == "b" * 1_000_000

    @pytest.mark.timeout(30)
    def test_hung_command_times_out_and_is_killed(self, transport: Transport) -> None:
        marker = f"{86000 + int(uuid.uuid4().int % 300)}.{uuid.uuid4().int % 10**6:06d}"
        start = time.monotonic()
        with pytest.raises(CommandTimeout) as info:
            transport.run(f"echo started; echo waiting >&2; sleep {marker}", timeout_s=1.0)
        elapsed = time.monotonic() - start
        assert 1.0 <= elapsed < 3.0, elapsed
        assert "still running after 1 s" in str(info.value) and "waiting" in str(info.value)
        for _ in range(40):
            if not processes_with(f"sleep {marker}") and not processes_with(marker):
                break
            time.sleep(0.05)
        assert not processes_with(marker), "the timed-out command is still running on the device"
        assert transport.run("echo still usable", timeout_s=10).stdout == "still usable\n"

    def test_push_verifies_sha256_and_pull_round_trips(
        self, transport: Transport, host_path: Callable[[str], Path], tmp_path: Path
    ) -> None:
        tmp_path = tmp_path / "transfer"
        tmp_path.mkdir()
        data = os.urandom(300_000)
        local = tmp_path / "model.tflite"
        local.write_bytes(data)
        run_dir = transport.make_run_dir("push")
        remote = f"{run_dir}/model.tflite"
        assert transport.push(local, remote, timeout_s=30) == hashlib.sha256(data).hexdigest()
        assert host_path(remote).read_bytes() == data
        back = tmp_path / "back.tflite"
        transport.pull(remote, back, timeout_s=30)
        assert back.read_bytes() == data
        assert sorted(p.name for p in tmp_path.iterdir()) == ["back.tflite", "model.tflite"]  # no .part left

    def test_evil_file_name_is_harmless(
        self, transport: Transport, host_path: Callable[[str], Path], tmp_path: Path
    ) -> None:
        local = tmp_path / EVIL_NAME
        local.write_bytes(b"tflite bytes")
        run_dir = transport.make_run_dir("evil")
        remote = f"{run_dir}/{EVIL_NAME}"
        transport.push(local, remote, timeout_s=30)
        transport.pull(remote, tmp_path / "back", timeout_s=30)
        listing = transport.run(["ls", run_dir], timeout_s=10)
        assert listing.stdout.splitlines() == [EVIL_NAME]
        assert host_path(remote).read_bytes() == b"tflite bytes"
        assert (tmp_path / "back").read_bytes() == b"tflite bytes"
        home = transport.run("pwd", timeout_s=10).stdout.strip()
        for where in {run_dir, transport.workdir, home}:
            assert not host_path(f"{where}/x").exists(), f"injected 'touch x' ran in {where}"
        assert not Path("x").exists()
        transport.remove_dir(run_dir)
        assert not host_path(run_dir).exists()

    def test_run_dirs_are_unique_and_removed(
        self, transport: Transport, host_path: Callable[[str], Path]
    ) -> None:
        first, second = transport.make_run_dir("trial"), transport.make_run_dir("trial")
        assert first != second
        for path in (first, second):
            assert path.startswith(transport.workdir + "/trial-")
            assert host_path(path).is_dir()
        transport.remove_dir(first)
        assert not host_path(first).exists() and host_path(second).is_dir()
        with pytest.raises(ValueError):
            transport.remove_dir(transport.workdir)
        with pytest.raises(ValueError):
            transport.remove_dir(f"{transport.workdir}/../etc")
        with pytest.raises(ValueError):
            transport.make_run_dir("bad prefix;rm")

    def test_pull_of_missing_file_raises_and_leaves_nothing(
        self, transport: Transport, tmp_path: Path
    ) -> None:
        tmp_path = tmp_path / "transfer"
        tmp_path.mkdir()
        with pytest.raises(TransportError) as info:
            transport.pull(f"{transport.workdir}/no-such-file", tmp_path / "out", timeout_s=10)
        assert "no-such-file" in str(info.value)
        assert list(tmp_path.iterdir()) == []

    def test_push_to_a_full_device_raises_clear_error(self, transport: Transport, tmp_path: Path) -> None:
        local = tmp_path / "model.tflite"
        local.write_bytes(os.urandom(100_000))
        with pytest.raises(TransportError) as info:
            transport.push(local, "/dev/full", timeout_s=20)  # the kernel answers ENOSPC
        assert "/dev/full" in str(info.value) and info.type is TransportError

    def test_refuses_to_act_unless_open(
        self, transport_factory: Callable[[], Transport], tmp_path: Path
    ) -> None:
        fresh = transport_factory()
        with pytest.raises(TransportError, match="not open"):
            fresh.run("true", timeout_s=5)
        with fresh as opened:
            assert opened.is_open and opened.run("true", timeout_s=10).ok
        assert not fresh.is_open
        with pytest.raises(TransportError, match="not open"):
            fresh.pull("/x", tmp_path / "x", timeout_s=5)

    @pytest.mark.timeout(30)
    def test_device_disappearing_mid_command_is_reported(
        self, transport: Transport, drop_device: Callable[[], None]
    ) -> None:
        timer = threading.Timer(0.5, drop_device)
        timer.start()
        start = time.monotonic()
        try:
            with pytest.raises(ConnectionLost) as info:
                transport.run("echo started; sleep 20", timeout_s=15)
        finally:
            timer.cancel()
        assert time.monotonic() - start < 10
        assert "sleep 20" in str(info.value)
