"""devices.provision against a real OpenSSH sshd on 127.0.0.2 (tests/peers/sshd.py).

The "board" is this machine: its pythons are real ones (the bare Debian /usr/bin/python3 and
this venv's python). Wheels come from wheelhouses the tests write by hand (valid wheel zips
with a RECORD), so pip runs fully offline: ``--no-index`` and pip's configuration ignored.
"""

from __future__ import annotations

import base64
import hashlib
import json
import platform as host_platform
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from devices.base import DeviceError
from devices.inventory import LOCAL_SPEC, AdbConnection, DeviceSpec, SshConnection
from devices.provision import (
    MARKER_NAME,
    BoardPlatform,
    ProvisionError,
    detect_platform,
    download_wheels,
    linux_platform_tags,
    pip_download_argv,
    provision,
)
from devices.transports import SshTransport
from tests.peers.sshd import SshdPeer

pytestmark = pytest.mark.timeout(120)

SYSTEM_PYTHON = Path("/usr/bin/python3")


# -- helpers -------------------------------------------------------------------------------------


def write_wheel(folder: Path, name: str, version: str, *, tag: str = "py3-none-any",
                requires: Sequence[str] = ()) -> Path:
    """A minimal valid wheel: one package ``<name>`` whose ``VERSION`` is ``version``."""
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    files = {
        f"{dist}/__init__.py": f"VERSION = {version!r}\n",
        f"{info}/METADATA": (f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                             + "".join(f"Requires-Dist: {r}\n" for r in requires)),
        f"{info}/WHEEL": (f"Wheel-Version: 1.0\nGenerator: test_provision\n"
                          f"Root-Is-Purelib: {'true' if tag.endswith('-any') else 'false'}\nTag: {tag}\n"),
    }
    record = []
    for path, text in files.items():
        data = text.encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{dist}-{version}-{tag}.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
        z.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return wheel


def board_python() -> str:
    """The bare Debian python when its venv module works (python3-venv), else this venv's."""
    if SYSTEM_PYTHON.exists():
        probe = subprocess.run([str(SYSTEM_PYTHON), "-c", "import venv, ensurepip"], capture_output=True)
        if probe.returncode == 0:
            return str(SYSTEM_PYTHON)
    return sys.executable


def ssh_spec(peer: SshdPeer, workdir: Path, python: str, name: str = "board") -> DeviceSpec:
    return DeviceSpec(
        name=name, transport="ssh", runner="litert", workdir=str(workdir),
        connection=SshConnection(host=peer.host, port=peer.port, user=peer.user, key_file=peer.client_key,
                                 known_hosts=peer.known_hosts, python=python, connect_timeout_s=15.0))


def aarch64_board() -> BoardPlatform:
    return BoardPlatform(python_version="3.11", python_full_version="3.11.2", implementation="cp", abi="cp311",
                         machine="aarch64", glibc=(2, 36), platforms=linux_platform_tags("aarch64", (2, 36)))


@pytest.fixture
def wheelhouse(tmp_path: Path) -> Path:
    """tinyalpha 1.0 (needs tinybeta), tinybeta 0.3, and an unrelated tinyunused."""
    folder = tmp_path / "wheelhouse"
    write_wheel(folder, "tinyalpha", "1.0", requires=["tinybeta>=0.2"])
    write_wheel(folder, "tinybeta", "0.3")
    write_wheel(folder, "tinyunused", "9.9")
    return folder


@pytest.fixture(autouse=True)
def no_pip_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Belt and braces: even a pip run without --no-index here could reach no index."""
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/nowhere")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "1")


# -- platform detection ------------------------------------------------------------------------


def test_detect_platform_reports_this_machine(sshd_peer: SshdPeer, tmp_path: Path) -> None:
    from packaging.tags import sys_tags

    with SshTransport("board", sshd_peer.host, sshd_peer.port, sshd_peer.user, sshd_peer.client_key,
                      sshd_peer.known_hosts, str(tmp_path / "w"), connect_timeout_s=15.0) as t:
        board = detect_platform(t, sys.executable, timeout_s=60)
        system = detect_platform(t, str(SYSTEM_PYTHON), timeout_s=60) if SYSTEM_PYTHON.exists() else None

    major, minor, micro = sys.version_info[:3]
    assert board.python_version == f"{major}.{minor}"
    assert board.python_full_version == f"{major}.{minor}.{micro}"
    assert board.implementation == "cp" and board.abi == f"cp{major}{minor}"
    assert board.machine == sysconfig.get_platform().split("-", 1)[1] == host_platform.machine()
    libc, version = host_platform.libc_ver()
    assert libc == "glibc" and board.glibc == tuple(int(v) for v in version.split(".")[:2])
    # The same platform tags, in the same order, as packaging computes on this machine.
    expected = list(dict.fromkeys(t.platform for t in sys_tags() if t.interpreter == board.abi
                                  and t.abi == board.abi))
    assert list(board.platforms) == expected
    assert board.executable == sys.executable and board.prefix == sys.prefix
    assert board.key == f"{board.abi}-manylinux_2_{board.glibc[1]}_{board.machine}"
    if system is not None:  # the bare Debian python: same interpreter, not in a venv
        assert (system.abi, system.platforms) == (board.abi, board.platforms)
        assert system.prefix == "/usr"


def test_linux_platform_tags_follow_packaging_order() -> None:
    tags = linux_platform_tags("aarch64", (2, 36))
    assert tags[:3] == ("linux_aarch64", "manylinux_2_36_aarch64", "manylinux_2_35_aarch64")
    assert tags[-2:] == ("manylinux_2_17_aarch64", "manylinux2014_aarch64")
    assert len(tags) == 1 + 20 + 1 and not any("manylinux1" in t or "2010" in t for t in tags)
    x86 = linux_platform_tags("x86_64", (2, 17))
    assert x86[-2:] == ("manylinux_2_5_x86_64", "manylinux1_x86_64")
    assert x86.index("manylinux2010_x86_64") == x86.index("manylinux_2_12_x86_64") + 1
    assert linux_platform_tags("armv8l", (2, 31))[:2] == ("linux_armv8l", "linux_armv7l")
    assert "manylinux_2_17_armv7l" in linux_platform_tags("armv8l", (2, 31))
    assert linux_platform_tags("aarch64", None) == ("linux_aarch64",)  # musl: no manylinux
    with pytest.raises(ValueError, match="machine"):
        linux_platform_tags("aarch64; rm -rf", (2, 36))


# -- the host's pip command ----------------------------------------------------------------------


def test_pip_download_argv_for_an_aarch64_board(tmp_path: Path) -> None:
    board = aarch64_board()
    argv = pip_download_argv(board, ["numpy", "ai-edge-litert>=2.3"], tmp_path / "dest", host_python="/h/python")
    assert argv[:4] == ["/h/python", "-m", "pip", "download"]
    assert "--only-binary=:all:" in argv
    platforms = [argv[i + 1] for i, a in enumerate(argv) if a == "--platform"]
    assert platforms == list(board.platforms)
    assert platforms[1] == "manylinux_2_36_aarch64" and "manylinux2014_aarch64" in platforms
    assert "manylinux_2_16_aarch64" not in platforms and not any("x86_64" in p for p in platforms)

    def value(flag: str) -> str:
        return argv[argv.index(flag) + 1]

    assert value("--python-version") == "3.11.2"
    assert value("--implementation") == "cp" and value("--abi") == "cp311"
    assert value("--dest") == str(tmp_path / "dest")
    assert argv[-2:] == ["numpy", "ai-edge-litert>=2.3"]
    assert "--no-index" not in argv and "--find-links" not in argv and "--isolated" not in argv

    offline = pip_download_argv(board, ["numpy"], tmp_path / "dest", tmp_path / "wh", host_python="/h/python")
    assert offline[:5] == ["/h/python", "-m", "pip", "--isolated", "download"]
    assert "--no-index" in offline and offline[offline.index("--find-links") + 1] == str(tmp_path / "wh")
    assert offline[-1] == "numpy"


@pytest.mark.parametrize("bad", ["--index-url=http://x", "-e .", "numpy; sys_platform=='linux'",
                                 "https://x/y.whl", "./local", "", "numpy @ file:///x"])
def test_requirements_that_pip_could_read_as_anything_else_are_refused(bad: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="requirement"):
        pip_download_argv(aarch64_board(), ["numpy", bad], tmp_path)
    with pytest.raises(ValueError, match="requirements"):
        pip_download_argv(aarch64_board(), "numpy", tmp_path)  # a string, not a list


def test_download_picks_the_wheels_the_board_can_install(tmp_path: Path) -> None:
    """Real pip, offline: the aarch64 flags choose the aarch64 wheel a glibc 2.36 board runs."""
    house = tmp_path / "house"
    write_wheel(house, "tinynative", "1.0", tag="cp311-cp311-manylinux_2_28_aarch64")
    write_wheel(house, "tinynative", "1.1", tag="cp311-cp311-manylinux_2_28_x86_64")  # wrong arch
    write_wheel(house, "tinynative", "2.0", tag="cp311-cp311-manylinux_2_38_aarch64")  # glibc too new
    write_wheel(house, "tinynative", "3.0", tag="cp312-cp312-manylinux_2_28_aarch64")  # wrong python
    wheels = download_wheels(aarch64_board(), ["tinynative"], tmp_path / "dest", device="pi", wheelhouse=house,
                             timeout_s=60)
    assert [w.name for w in wheels] == ["tinynative-1.0-cp311-cp311-manylinux_2_28_aarch64.whl"]


def test_download_of_a_package_missing_from_the_wheelhouse_names_it(tmp_path: Path, wheelhouse: Path) -> None:
    with pytest.raises(ProvisionError) as info:
        download_wheels(aarch64_board(), ["tinyalpha", "tinygamma"], tmp_path / "dest", device="pi",
                        wheelhouse=wheelhouse, timeout_s=60)
    message = str(info.value)
    assert "'tinygamma'" in message and "device 'pi'" in message and "'download'" in message
    assert str(wheelhouse) in message and "\n" not in message
    with pytest.raises(ProvisionError, match="is not a directory"):
        download_wheels(aarch64_board(), ["tinyalpha"], tmp_path / "d2", device="pi",
                        wheelhouse=tmp_path / "nowhere")


# -- end to end --------------------------------------------------------------------------------


def test_provision_makes_the_venv_then_only_verifies_or_adds(
    sshd_peer: SshdPeer, tmp_path: Path, wheelhouse: Path
) -> None:
    workdir = tmp_path / "board"
    spec = ssh_spec(sshd_peer, workdir, board_python())
    cache = tmp_path / "cache"
    first = provision(spec, requirements=["tinyalpha"], wheelhouse=wheelhouse, cache_dir=cache, timeout_s=100)

    venv_python = workdir / "venv" / "bin" / "python"
    assert first.changed and first.device == "board"
    assert first.python == str(venv_python) and first.venv == str(workdir / "venv")
    assert set(first.wheels) == {"tinyalpha-1.0-py3-none-any.whl", "tinybeta-0.3-py3-none-any.whl"}
    assert dict(first.installed) == {"tinyalpha": "1.0"}
    assert f'python = "{venv_python}"' in first.hint and "[devices.board]" in first.summary()
    # what the venv holds: the requirement and its dependency, nothing else from the wheelhouse
    shown = subprocess.run(
        [str(venv_python), "-c", "import json, importlib.metadata as m, tinyalpha, tinybeta; "
                                 "print(json.dumps(sorted(d.metadata['Name'] for d in m.distributions())))"],
        capture_output=True, text=True, check=True)
    installed = json.loads(shown.stdout)
    assert "tinyalpha" in installed and "tinybeta" in installed and "tinyunused" not in installed
    # the pushed wheels were removed from the board; the host cache keeps them
    assert [p.name for p in workdir.iterdir()] == ["venv"]
    assert sorted(p.name for p in (cache / first.platform.key).iterdir()) == sorted(first.wheels)
    marker = workdir / "venv" / MARKER_NAME
    recorded = json.loads(marker.read_text())
    assert recorded["requirements"] == ["tinyalpha"]
    cfg = workdir / "venv" / "pyvenv.cfg"
    stamp = (marker.stat().st_mtime_ns, cfg.stat().st_mtime_ns)

    # Second run: nothing downloaded (the wheelhouse is gone), pushed or installed.
    second = provision(spec, requirements=["tinyalpha"], wheelhouse=tmp_path / "gone", timeout_s=60)
    assert not second.changed and second.wheels == () and dict(second.installed) == {"tinyalpha": "1.0"}
    assert (marker.stat().st_mtime_ns, cfg.stat().st_mtime_ns) == stamp
    assert [p.name for p in workdir.iterdir()] == ["venv"]

    # The venv's own python (what the inventory is told to use) finds it complete too.
    by_venv = ssh_spec(sshd_peer, workdir, str(venv_python))
    assert not provision(by_venv, requirements=["tinyalpha"], timeout_s=60).changed

    # Other requirements are installed into the same venv, which is not made again.
    more = provision(spec, requirements=["tinyalpha", "tinyunused==9.9"], wheelhouse=wheelhouse, timeout_s=100)
    assert more.changed and dict(more.installed) == {"tinyalpha": "1.0", "tinyunused": "9.9"}
    assert set(more.wheels) == set(first.wheels) | {"tinyunused-9.9-py3-none-any.whl"}
    assert cfg.stat().st_mtime_ns == stamp[1], "the venv was reused"
    assert json.loads(marker.read_text())["requirements"] == ["tinyalpha", "tinyunused==9.9"]


def test_a_broken_venv_is_made_again(sshd_peer: SshdPeer, tmp_path: Path, wheelhouse: Path) -> None:
    """A venv without pip (an interrupted run, a user's experiment) is recreated with --clear."""
    workdir = tmp_path / "board"
    python = board_python()
    subprocess.run([python, "-m", "venv", "--without-pip", str(workdir / "venv")], check=True)
    (workdir / "venv" / "stale-file").write_text("left over")
    again = provision(ssh_spec(sshd_peer, workdir, python), requirements=["tinybeta"], wheelhouse=wheelhouse,
                      timeout_s=100)
    assert again.changed and dict(again.installed) == {"tinybeta": "0.3"}
    assert not (workdir / "venv" / "stale-file").exists(), "recreated with --clear"
    assert subprocess.run([again.python, "-m", "pip", "--version"], capture_output=True).returncode == 0


# -- failures ------------------------------------------------------------------------------------


def test_a_missing_requirement_fails_before_the_board_is_touched(
    sshd_peer: SshdPeer, tmp_path: Path, wheelhouse: Path
) -> None:
    workdir = tmp_path / "board"
    (wheelhouse / "tinybeta-0.3-py3-none-any.whl").unlink()  # tinyalpha's dependency
    with pytest.raises(ProvisionError) as info:
        provision(ssh_spec(sshd_peer, workdir, board_python()), requirements=["tinyalpha"],
                  wheelhouse=wheelhouse, timeout_s=60)
    message = str(info.value)
    assert message.startswith("device 'board': provisioning step 'download' failed")
    assert "'tinybeta'" in message and "\n" not in message
    assert isinstance(info.value, DeviceError) and info.value.step == "download"
    assert not workdir.exists()


def test_a_board_python_that_does_not_exist(sshd_peer: SshdPeer, tmp_path: Path, wheelhouse: Path) -> None:
    with pytest.raises(ProvisionError) as info:
        provision(ssh_spec(sshd_peer, tmp_path / "board", "/nonexistent/python3"), requirements=["tinyalpha"],
                  wheelhouse=wheelhouse, timeout_s=60)
    message = str(info.value)
    assert "device 'board'" in message and "'detect'" in message and "'/nonexistent/python3'" in message
    assert "not there or not executable" in message and "\n" not in message


def test_a_board_python_without_venv_names_python3_venv(
    sshd_peer: SshdPeer, tmp_path: Path, wheelhouse: Path
) -> None:
    """A Debian python without python3-venv: ensurepip does not import."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "ensurepip.py").write_text("raise ModuleNotFoundError(\"No module named 'ensurepip'\")\n")
    python = tmp_path / "bare-python3"
    python.write_text(f"#!/bin/sh\nPYTHONPATH={shadow} exec {sys.executable} \"$@\"\n")
    python.chmod(0o755)
    workdir = tmp_path / "board"
    with pytest.raises(ProvisionError) as info:
        provision(ssh_spec(sshd_peer, workdir, str(python), name="pi5-a"), requirements=["tinyalpha"],
                  wheelhouse=wheelhouse, timeout_s=60)
    message = str(info.value)
    assert "device 'pi5-a'" in message and "'venv'" in message and "python3-venv" in message
    assert "\n" not in message and not workdir.exists(), "failed before downloading or pushing"


@pytest.mark.parametrize("kind", ["adb", "local"])
def test_non_ssh_devices_are_refused(kind: str, tmp_path: Path) -> None:
    if kind == "adb":
        spec = DeviceSpec(name="pixel7", transport="adb", runner="benchmark_model", workdir="/data/local/tmp/eh",
                          connection=AdbConnection(serial="X1", benchmark_binary=tmp_path / "benchmark_model"))
    else:
        spec = LOCAL_SPEC
    with pytest.raises(ProvisionError, match="only ssh devices are provisioned") as info:
        provision(spec)
    assert f"device {spec.name!r}" in str(info.value)
    if kind == "adb":
        assert "benchmark_model" in str(info.value)


def test_bad_arguments_are_refused_before_connecting(tmp_path: Path) -> None:
    spec = DeviceSpec(name="b", transport="ssh", runner="litert", workdir="/tmp/eh",
                      connection=SshConnection(host="127.0.0.2", port=1, user="u", key_file=tmp_path / "k",
                                               known_hosts=tmp_path / "kh"))
    with pytest.raises(ValueError, match="requirement"):
        provision(spec, requirements=["-r", "reqs.txt"])
    with pytest.raises(ValueError, match="module"):
        provision(spec, requirements=["numpy"], modules=["os; import x"])
    with pytest.raises(ValueError, match="timeout_s"):
        provision(spec, timeout_s=0)
    with pytest.raises(ProvisionError, match="'connect'.*key_file"):
        provision(spec, requirements=["numpy"], timeout_s=5)

