"""Offline provisioning of a Linux board: a venv on the board with what the LiteRT runner needs.

Boards in a lab often have no internet. ``devices/runners/litert_runner.py`` needs only numpy
and ai-edge-litert there, so the host fetches the wheels and the board installs them from local
files:

1. **detect** — the board's Python is asked, over SSH and with the standard library only, for
   its version, implementation, ABI (from ``SOABI``), ``sysconfig.get_platform()``, glibc
   version and whether it has the ``venv`` and ``ensurepip`` modules (:func:`detect_platform`).
   The wheel platform tags are computed here the way :mod:`packaging.tags` computes them on a
   machine (``linux_<arch>``, then ``manylinux_2_<glibc>_<arch>`` down to the architecture's
   oldest, with the ``manylinux2014``/``2010``/``1`` aliases): see :func:`linux_platform_tags`.
2. **check** — the venv ``<workdir>/venv`` is asked what it has. A venv that holds every
   requirement (recorded in its ``energy-harness-provision.json`` by an earlier run) and imports
   every module is left alone: the run only verifies it (idempotent).
3. **download** — ``python -m pip download --only-binary=:all: --platform … --python-version …
   --implementation … --abi …`` on the host (:func:`pip_download_argv`,
   :func:`download_wheels`), from the package index, or with ``wheelhouse`` only from that
   directory (``--no-index --find-links``, pip's own configuration ignored).
4. **push** — the wheels go into a fresh run directory under the workdir (sha256-checked by
   the transport), removed again at the end.
5. **venv** — ``<python> -m venv <workdir>/venv`` (``--clear`` to repair a broken one).
6. **install** — ``<venv>/bin/python -m pip install --no-index --find-links <pushed dir>
   <requirements>``, with pip's configuration on the board ignored.
7. **verify** — the venv's python imports every module and reports each requirement's version.

The result names the venv's python: set it as ``python`` of the device's inventory entry.

Deadlines: ``timeout_s`` bounds the whole run; every remote command and the host's pip get
what is left of it (quick probes at most :data:`PROBE_TIMEOUT_S`). Every remote command is an
argv list, quoted by the transport.

Errors: every failure is a one-line :class:`ProvisionError` naming the device and the step.
Bad arguments (a requirement that is not a plain name with an optional version, a timeout
that is not positive) raise :class:`ValueError` before anything is contacted.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from devices.base import DeviceError
from devices.transports.base import TransportError

if TYPE_CHECKING:
    from devices.inventory import DeviceSpec
    from devices.transports.base import CommandResult, Transport

__all__ = [
    "BoardPlatform",
    "ProvisionError",
    "ProvisionResult",
    "DEFAULT_REQUIREMENTS",
    "MARKER_NAME",
    "PROBE_TIMEOUT_S",
    "VENV_DIRNAME",
    "detect_platform",
    "download_wheels",
    "linux_platform_tags",
    "pip_download_argv",
    "provision",
]

logger = logging.getLogger(__name__)

DEFAULT_REQUIREMENTS = ("numpy", "ai-edge-litert")
"""What ``litert_runner.py`` imports on the board (numpy, ai_edge_litert)."""
VENV_DIRNAME = "venv"
"""The venv's directory under the device's workdir."""
MARKER_NAME = "energy-harness-provision.json"
"""File in the venv recording what a successful provisioning installed."""
PROBE_TIMEOUT_S = 60.0
"""At most this long for a quick remote probe (detect, check, verify). Units: s."""

_REQUIREMENT = re.compile(
    r"(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)"  # PEP 508 name
    r"(?:\[[A-Za-z0-9._-]+(?:\s*,\s*[A-Za-z0-9._-]+)*\])?"  # extras
    r"(?:\s*(?:===|==|!=|~=|<=|>=|<|>)\s*[A-Za-z0-9.*+!_-]+"  # version clauses
    r"(?:\s*,\s*(?:===|==|!=|~=|<=|>=|<|>)\s*[A-Za-z0-9.*+!_-]+)*)?"
)
_NO_MATCH = re.compile(r"No matching distribution found for ([^\s;]+)")
_JSON_MARK = "__energy_harness_provision__="
_MAX_MESSAGE_CHARS = 600
# The oldest glibc minor with manylinux wheels, per architecture (PEP 600/599; as packaging).
_OLDEST_GLIBC_MINOR = {"x86_64": 5, "i686": 5}
_DEFAULT_OLDEST_GLIBC_MINOR = 17
_LEGACY_MANYLINUX = {5: "manylinux1", 12: "manylinux2010", 17: "manylinux2014"}

# Runs with the board's python: standard library only, and old enough syntax for Python 3.6.
_DETECT_SCRIPT = r"""
import json, os, platform, sys, sysconfig
def can_import(name):
    try:
        __import__(name)
        return True
    except Exception:
        return False
libc = ""
try:
    libc = os.confstr("CS_GNU_LIBC_VERSION") or ""
except (AttributeError, ValueError, OSError):
    pass
if not libc:
    lib, version = platform.libc_ver()
    if lib == "glibc" and version:
        libc = "glibc " + version
print(MARK + json.dumps({
    "version": list(sys.version_info[:3]),
    "implementation": sys.implementation.name,
    "executable": sys.executable,
    "prefix": sys.prefix,
    "platform": sysconfig.get_platform(),
    "machine": platform.machine(),
    "is_64bit": sys.maxsize > 2 ** 32,
    "libc": libc,
    "soabi": sysconfig.get_config_var("SOABI") or "",
    "debug": bool(sysconfig.get_config_var("Py_DEBUG")),
    "gil_disabled": bool(sysconfig.get_config_var("Py_GIL_DISABLED")),
    "venv": can_import("venv"),
    "ensurepip": can_import("ensurepip"),
}))
""".replace("MARK", repr(_JSON_MARK))

# Runs with the venv's python; argv[1] is {"dists": [...], "modules": [...], "marker": path}.
# Each import is announced on stderr first, so a crash (SIGILL ...) names its module.
_CHECK_SCRIPT = r"""
import importlib, json, sys
ask = json.loads(sys.argv[1])
out = {"version": list(sys.version_info[:3]), "implementation": sys.implementation.name,
       "pip": False, "dists": {}, "missing": [], "broken": {}, "marker": None}
try:
    from importlib import metadata
except ImportError:
    metadata = None
for name in ask["dists"]:
    try:
        out["dists"][name] = metadata.version(name)
    except Exception:
        out["missing"].append(name)
for module in ["pip"] + ask["modules"]:
    sys.stderr.write("importing " + module + "\n")
    sys.stderr.flush()
    try:
        importlib.import_module(module)
        if module == "pip":
            out["pip"] = True
    except BaseException as e:
        if module != "pip":
            out["broken"][module] = (type(e).__name__ + ": " + str(e)).strip()
try:
    with open(ask["marker"]) as f:
        out["marker"] = json.load(f)
except Exception:
    pass
print(MARK + json.dumps(out))
""".replace("MARK", repr(_JSON_MARK))

_WRITE_SCRIPT = "import sys\nwith open(sys.argv[1], 'w') as f:\n    f.write(sys.argv[2])\n"


class ProvisionError(DeviceError):
    """Provisioning a board failed; the one-line message names the device and the step.

    Attributes:
        device: The device's name.
        step: ``connect``, ``detect``, ``check``, ``download``, ``push``, ``venv``, ``install``
            or ``verify``.
    """

    def __init__(self, device: str, step: str, problem: str) -> None:
        self.device = device
        self.step = step
        super().__init__(f"device {device!r}: provisioning step {step!r} failed: {_one_line(problem)}")


@dataclass(frozen=True)
class BoardPlatform:
    """What a board's Python accepts, as wheel tags (see :func:`detect_platform`).

    Attributes:
        python_version: ``"3.11"`` (major.minor, PEP 508's ``python_version``).
        python_full_version: ``"3.11.2"``.
        implementation: Wheel interpreter abbreviation: ``"cp"`` (CPython), ``"pp"`` (PyPy).
        abi: The interpreter's own ABI tag, e.g. ``"cp311"`` (pip adds ``abi3``/``none``).
        machine: The wheel architecture, e.g. ``"aarch64"``, ``"armv7l"``, ``"x86_64"``.
        glibc: ``(2, 36)``; ``None`` where the C library is not glibc (musl, ...).
        platforms: Wheel platform tags, best first (``linux_aarch64``,
            ``manylinux_2_36_aarch64``, ..., ``manylinux_2_17_aarch64``, ``manylinux2014_aarch64``).
        executable: ``sys.executable`` of the board's python.
        prefix: ``sys.prefix`` of the board's python (a venv's directory when it runs in one).
        has_venv: Whether the ``venv`` and ``ensurepip`` modules import (Debian: ``python3-venv``).
    """

    python_version: str
    python_full_version: str
    implementation: str
    abi: str
    machine: str
    glibc: tuple[int, int] | None
    platforms: tuple[str, ...]
    executable: str = ""
    prefix: str = ""
    has_venv: bool = True

    def __post_init__(self) -> None:
        if not re.fullmatch(r"\d+\.\d+", self.python_version):
            raise ValueError(f"python_version must look like '3.11', got {self.python_version!r}")
        if not self.platforms:
            raise ValueError("platforms must name at least one wheel platform tag")

    @property
    def wheel_platform(self) -> str:
        """The newest manylinux tag, e.g. ``manylinux_2_36_aarch64`` (``linux_<arch>`` without glibc)."""
        return next((p for p in self.platforms if p.startswith("manylinux_")), self.platforms[0])

    @property
    def key(self) -> str:
        """A short name for this platform, e.g. ``cp311-manylinux_2_36_aarch64`` (cache folders)."""
        return f"{self.abi}-{self.wheel_platform}"


@dataclass(frozen=True)
class ProvisionResult:
    """What :func:`provision` did.

    Attributes:
        device: The device's name.
        python: The venv's python on the board: set it as ``python`` in the inventory.
        venv: The venv's directory on the board.
        platform: The board's platform as detected.
        installed: Version of each requirement in the venv, by distribution name.
        changed: ``False`` when the venv was already complete and was only verified.
        wheels: Wheel files pushed to the board (empty when nothing changed).
        duration_s: Wall-clock time of the whole run. Units: s.
    """

    device: str
    python: str
    venv: str
    platform: BoardPlatform
    installed: Mapping[str, str] = field(default_factory=dict)
    changed: bool = True
    wheels: tuple[str, ...] = ()
    duration_s: float = 0.0

    @property
    def hint(self) -> str:
        """One line telling the user what to put in the inventory."""
        return f'set python = "{self.python}" in the inventory entry [devices.{self.device}]'

    def summary(self) -> str:
        """A few lines for a terminal: what happened, the versions, and :attr:`hint`."""
        what = "installed" if self.changed else "already provisioned (verified)"
        versions = ", ".join(f"{name} {version}" for name, version in self.installed.items())
        return (f"{self.device}: {what}: {versions} in {self.venv} "
                f"({self.platform.abi}, {self.platform.wheel_platform}, {self.duration_s:.1f} s)\n"
                f"{self.hint}")


# -- platform ------------------------------------------------------------------------------------


def linux_platform_tags(machine: str, glibc: tuple[int, int] | None) -> tuple[str, ...]:
    """Wheel platform tags a Linux ``machine`` with ``glibc`` accepts, best first.

    The same order :func:`packaging.tags.sys_tags` gives on such a machine: ``linux_<arch>``,
    then ``manylinux_2_<minor>_<arch>`` from the glibc's minor down to 17 (5 on x86_64 and
    i686), each legacy alias right after its version (``manylinux2014`` for 2.17,
    ``manylinux2010`` for 2.12, ``manylinux1`` for 2.5). ``armv8l`` (32-bit userland on an
    aarch64 kernel) also accepts ``armv7l``. Without glibc only ``linux_<arch>`` is returned.
    """
    if not re.fullmatch(r"[A-Za-z0-9_]+", machine):
        raise ValueError(f"machine must be a wheel architecture like 'aarch64', got {machine!r}")
    archs = ["armv8l", "armv7l"] if machine == "armv8l" else [machine]
    tags = [f"linux_{arch}" for arch in archs]
    if glibc is None or glibc[0] != 2:
        return tuple(tags)
    oldest = min(_OLDEST_GLIBC_MINOR.get(arch, _DEFAULT_OLDEST_GLIBC_MINOR) for arch in archs)
    for arch in archs:
        for minor in range(glibc[1], oldest - 1, -1):
            tags.append(f"manylinux_2_{minor}_{arch}")
            if minor in _LEGACY_MANYLINUX:
                tags.append(f"{_LEGACY_MANYLINUX[minor]}_{arch}")
    return tuple(tags)


def detect_platform(transport: Transport, python: str, timeout_s: float = PROBE_TIMEOUT_S) -> BoardPlatform:
    """Ask the board's ``python`` (over an open ``transport``) which wheels it accepts.

    Only the standard library runs on the board (``packaging`` is not there): see the module
    docstring for what is read.

    Raises:
        ProvisionError: step ``detect``: ``python`` is missing or not runnable, printed no
            answer, or is not a Python 3 on Linux.
    """
    device = transport.name
    result = _run(transport, [python, "-c", _DETECT_SCRIPT], timeout_s, "detect")
    if not result.ok:
        if result.exit_code in (126, 127):
            problem = f"board python {python!r} is not there or not executable"
        else:
            problem = f"board python {python!r} failed"
        raise ProvisionError(
            device, "detect",
            f"{problem} (exit code {result.exit_code}; {_tail(result.stderr or result.stdout)}); "
            "set 'python' of the inventory entry to the board's Python 3 (e.g. /usr/bin/python3)")
    info = _marked_json(result.stdout)
    if info is None:
        raise ProvisionError(device, "detect", f"board python {python!r} printed no platform report "
                                               f"(stdout {_tail(result.stdout)}, stderr {_tail(result.stderr)})")
    try:
        return _platform_from_report(info)
    except (KeyError, TypeError, ValueError) as e:
        raise ProvisionError(device, "detect", f"board python {python!r}: unusable platform report "
                                               f"({type(e).__name__}: {e}): {json.dumps(info)[:200]}") from e


def _platform_from_report(info: Mapping[str, object]) -> BoardPlatform:
    major, minor, micro = (int(str(v)) for v in _list(info["version"]))
    if major != 3:
        raise ValueError(f"Python {major}.{minor} is not Python 3")
    implementation = _implementation_tag(str(info["implementation"]))
    sysplatform = str(info["platform"]).replace("-", "_").replace(".", "_")
    if not sysplatform.startswith("linux_"):
        raise ValueError(f"sysconfig platform {info['platform']!r} is not Linux")
    machine = sysplatform.split("_", 1)[1]
    if not info["is_64bit"]:
        machine = {"x86_64": "i686", "aarch64": "armv8l"}.get(machine, machine)
    libc = str(info.get("libc") or "")
    found = re.fullmatch(r"glibc (\d+)\.(\d+)\S*", libc.strip())
    glibc = (int(found.group(1)), int(found.group(2))) if found else None
    return BoardPlatform(
        python_version=f"{major}.{minor}",
        python_full_version=f"{major}.{minor}.{micro}",
        implementation=implementation,
        abi=_abi_tag(str(info.get("soabi") or ""), implementation, major, minor,
                     debug=bool(info.get("debug")), gil_disabled=bool(info.get("gil_disabled"))),
        machine=machine,
        glibc=glibc,
        platforms=linux_platform_tags(machine, glibc),
        executable=str(info.get("executable") or ""),
        prefix=str(info.get("prefix") or ""),
        has_venv=bool(info.get("venv")) and bool(info.get("ensurepip")),
    )


def _abi_tag(soabi: str, implementation: str, major: int, minor: int, *, debug: bool, gil_disabled: bool) -> str:
    """The interpreter ABI tag from ``SOABI``, as :mod:`packaging.tags` derives it."""
    if soabi.startswith("cpython-") and len(soabi.split("-")) > 1:
        abi = "cp" + soabi.split("-")[1]  # cpython-311-aarch64-linux-gnu -> cp311 (313t, 311d)
    elif soabi.startswith("pypy"):
        abi = "-".join(soabi.split("-")[:2])  # pypy39-pp73-... -> pypy39_pp73
    elif soabi.startswith("graalpy"):
        abi = "-".join(soabi.split("-")[:3])
    elif soabi:
        abi = soabi
    elif implementation == "cp":
        abi = f"cp{major}{minor}{'d' if debug else ''}{'t' if gil_disabled else ''}"
    else:
        raise ValueError(f"no SOABI for a {implementation} interpreter: cannot name its ABI")
    return abi.replace("-", "_").replace(".", "_")


# -- host side -----------------------------------------------------------------------------------


def pip_download_argv(
    platform: BoardPlatform,
    requirements: Sequence[str],
    dest: Path | str,
    wheelhouse: Path | str | None = None,
    *,
    host_python: str | None = None,
) -> list[str]:
    """The host's ``pip download`` command for wheels that install on ``platform``.

    Binary wheels only, one ``--platform`` per tag of ``platform.platforms`` (best first), the
    board's full Python version (``Requires-Python`` is judged on it), implementation and ABI.
    With ``wheelhouse`` pip looks only there: ``--no-index --find-links <wheelhouse>`` and
    ``--isolated`` (no ``PIP_*`` variables, no user configuration).

    Args:
        host_python: The interpreter that runs pip (default: this one).

    Raises:
        ValueError: a requirement is not ``name``, ``name[extra]`` or ``name<op>version``
            (so nothing passed here can be read by pip as an option).
    """
    reqs = _check_requirements(requirements)
    argv = [host_python or sys.executable, "-m", "pip", "download",
            "--disable-pip-version-check", "--no-input", "--only-binary=:all:"]
    for tag in platform.platforms:
        argv += ["--platform", tag]
    argv += ["--python-version", platform.python_full_version,
             "--implementation", platform.implementation,
             "--abi", platform.abi,
             "--dest", str(dest)]
    if wheelhouse is not None:
        argv[3:3] = ["--isolated"]
        argv += ["--no-index", "--find-links", str(wheelhouse)]
    return argv + reqs


def download_wheels(
    platform: BoardPlatform,
    requirements: Sequence[str],
    dest: Path | str,
    *,
    device: str,
    wheelhouse: Path | str | None = None,
    timeout_s: float = 600.0,
) -> tuple[Path, ...]:
    """Run :func:`pip_download_argv`'s command on the host; returns the wheels in ``dest``.

    ``dest`` should be empty: every wheel in it afterwards is returned. With ``wheelhouse``,
    pip's configuration files are ignored too (``PIP_CONFIG_FILE`` is the null device), so
    only that directory is read and nothing is downloaded.

    Raises:
        ProvisionError: step ``download``: the wheelhouse is not a directory, a requirement (or
            one of its dependencies) has no wheel for the platform (named in the message), pip
            failed or ran past ``timeout_s``.
    """
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
    argv = pip_download_argv(platform, requirements, dest, wheelhouse)
    source = "the package index"
    env = dict(os.environ)
    if wheelhouse is not None:
        if not Path(wheelhouse).is_dir():
            raise ProvisionError(device, "download", f"wheelhouse {str(wheelhouse)!r} is not a directory")
        source = f"wheelhouse {str(wheelhouse)!r}"
        env["PIP_CONFIG_FILE"] = os.devnull
    Path(dest).mkdir(parents=True, exist_ok=True)
    logger.info("%s: pip download for %s from %s", device, platform.key, source)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, env=env, check=False)
    except subprocess.TimeoutExpired as e:
        raise ProvisionError(device, "download", f"pip download still running after {timeout_s:g} s "
                                                 f"(from {source}); killed it") from e
    except OSError as e:
        raise ProvisionError(device, "download", f"cannot run {argv[0]!r}: {e}") from e
    if done.returncode != 0:
        missing = _NO_MATCH.search(done.stderr or "")
        if missing:
            raise ProvisionError(
                device, "download",
                f"no wheel of {_named(missing.group(1))} for {platform.abi} {platform.wheel_platform} "
                f"(Python {platform.python_full_version}) in {source}; add one built for the board "
                "(pip wheel on a board like it) or change the requirement")
        raise ProvisionError(device, "download", f"pip download failed (exit code {done.returncode}; "
                                                 f"{_tail(done.stderr or done.stdout)})")
    wheels = tuple(sorted(Path(dest).glob("*.whl")))
    if not wheels:
        raise ProvisionError(device, "download", f"pip download left no wheel in {str(dest)!r}")
    return wheels


# -- the whole run -------------------------------------------------------------------------------


def provision(
    spec: DeviceSpec,
    *,
    requirements: Sequence[str] = DEFAULT_REQUIREMENTS,
    modules: Sequence[str] | None = None,
    wheelhouse: Path | str | None = None,
    cache_dir: Path | str | None = None,
    timeout_s: float = 900.0,
) -> ProvisionResult:
    """Make ``<workdir>/venv`` on an SSH board hold ``requirements``, offline for the board.

    See the module docstring for the steps. A venv that an earlier run completed with the same
    requirements is only verified (``changed=False``): no download, no push, no install.

    Args:
        spec: An ``ssh`` device of the inventory; its ``python`` creates the venv.
        requirements: What to install (plain names with optional extras and versions).
        modules: What the venv must import afterwards (default: each requirement's name with
            ``-`` and ``.`` as ``_``: ``ai-edge-litert`` -> ``ai_edge_litert``).
        wheelhouse: A host directory of wheels to use instead of the package index.
        cache_dir: Host directory that keeps the downloaded wheels, in a folder per board
            platform (:attr:`BoardPlatform.key`); pass that folder as ``wheelhouse`` to
            provision boards like it from a host without internet. ``None``: a temporary
            directory, removed afterwards.
        timeout_s: Budget of the whole run. Units: s.

    Raises:
        ProvisionError: not an SSH device, or a step failed (the message names it).
        ValueError: a bad requirement or module name, or ``timeout_s`` not positive.
    """
    from devices.transports.ssh import SshTransport

    reqs = _check_requirements(requirements)
    mods = _check_modules(modules if modules is not None else [_module_of(r) for r in reqs])
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
    if spec.transport != "ssh":
        what = ("Android devices run benchmark_model, which needs no Python"
                if spec.transport == "adb" else "the host runs models in this process")
        raise ProvisionError(spec.name, "connect", f"only ssh devices are provisioned; this is a "
                                                   f"{spec.transport} device ({what}): nothing to provision")
    ssh = spec.ssh
    start = time.monotonic()
    budget = _Budget(spec.name, timeout_s)
    transport = SshTransport(
        name=spec.name, host=ssh.host, port=ssh.port, user=ssh.user, key_file=ssh.key_file,
        known_hosts=ssh.known_hosts, workdir=spec.workdir, connect_timeout_s=ssh.connect_timeout_s,
        allow_unknown_hosts=ssh.allow_unknown_hosts)
    try:
        transport.open()
    except TransportError as e:
        raise ProvisionError(spec.name, "connect", _without_device(e, spec.name)) from e
    try:
        return _Provisioning(transport, ssh.python, reqs, mods, budget).run(
            wheelhouse=None if wheelhouse is None else Path(wheelhouse),
            cache_dir=None if cache_dir is None else Path(cache_dir), start=start)
    finally:
        transport.close()


@dataclass(frozen=True)
class _VenvState:
    """What the venv's python said about itself; ``error`` when it could not say (``absent``:
    there is no venv python at all)."""

    error: str = ""
    absent: bool = False
    version: tuple[int, ...] = ()
    implementation: str = ""
    has_pip: bool = False
    dists: Mapping[str, str] = field(default_factory=dict)
    missing: tuple[str, ...] = ()
    broken: Mapping[str, str] = field(default_factory=dict)
    marker: Mapping[str, object] | None = None

    def fits(self, platform: BoardPlatform) -> bool:
        """Runs, and is the board python's version and implementation."""
        return (not self.error and ".".join(map(str, self.version[:2])) == platform.python_version
                and _implementation_tag(self.implementation) == platform.implementation)

    def problems(self) -> list[str]:
        if self.error:
            return [self.error]
        return ([f"{name} is not installed" for name in self.missing]
                + [f"import {module} failed: {why}" for module, why in self.broken.items()])


class _Provisioning:
    """One provisioning run over an open transport (see :func:`provision`)."""

    def __init__(self, transport: Transport, python: str, requirements: list[str], modules: list[str],
                 budget: _Budget) -> None:
        self.transport = transport
        self.device = transport.name
        self.python = python
        self.requirements = requirements
        self.modules = modules
        self.budget = budget
        self.venv = posixpath.join(transport.workdir, VENV_DIRNAME)
        self.venv_python = posixpath.join(self.venv, "bin", "python")
        self.marker = posixpath.join(self.venv, MARKER_NAME)

    def run(self, *, wheelhouse: Path | None, cache_dir: Path | None, start: float) -> ProvisionResult:
        platform = detect_platform(self.transport, self.python, self.budget.left("detect", PROBE_TIMEOUT_S))
        logger.info("%s: board python %s is %s on %s", self.device, self.python, platform.abi, platform.key)
        state = self.check("check")
        if state.fits(platform) and not state.problems() and self.recorded(state):
            logger.info("%s: %s already holds %s", self.device, self.venv, ", ".join(self.requirements))
            return self.result(platform, state, changed=False, wheels=(), start=start)
        usable = state.fits(platform) and state.has_pip
        if not usable:
            self.require_venv_module(platform)
        with tempfile.TemporaryDirectory(prefix="provision-", dir=_made(cache_dir)) as tmp:
            wheels = download_wheels(platform, self.requirements, Path(tmp) / "wheels", device=self.device,
                                     wheelhouse=wheelhouse, timeout_s=self.budget.left("download"))
            if cache_dir is not None:
                _keep(wheels, cache_dir / platform.key)
            run_dir = self.push(wheels)
            try:
                if not usable:
                    self.make_venv(platform, clear=not state.absent)
                self.install(run_dir)
            finally:
                self.remove_quietly(run_dir)
        state = self.check("verify")
        if not state.fits(platform) or state.problems():
            raise ProvisionError(self.device, "verify", f"{self.venv_python}: {'; '.join(state.problems())}")
        self.record(platform, state)
        return self.result(platform, state, changed=True, wheels=tuple(w.name for w in wheels), start=start)

    # -- steps ------------------------------------------------------------------------------------

    def check(self, step: str) -> _VenvState:
        """Ask the venv's python what it holds (absent or broken venvs give ``error``)."""
        ask = json.dumps({"dists": [_name_of(r) for r in self.requirements], "modules": self.modules,
                          "marker": self.marker})
        result = _run(self.transport, [self.venv_python, "-c", _CHECK_SCRIPT, ask],
                      self.budget.left(step, PROBE_TIMEOUT_S), step)
        info = _marked_json(result.stdout)
        if info is None:
            if result.exit_code in (126, 127):
                return _VenvState(error=f"no runnable {self.venv_python}", absent=True)
            return _VenvState(error=f"{self.venv_python} does not run (exit code {result.exit_code}; "
                                    f"{_tail(result.stderr or result.stdout)})")
        marker = info.get("marker")
        return _VenvState(
            version=tuple(int(v) for v in _list(info.get("version"))),
            implementation=str(info.get("implementation", "")),
            has_pip=bool(info.get("pip")),
            dists=_str_map(info.get("dists")),
            missing=tuple(str(m) for m in _list(info.get("missing"))),
            broken=_str_map(info.get("broken")),
            marker=marker if isinstance(marker, dict) else None,
        )

    def recorded(self, state: _VenvState) -> bool:
        """Whether an earlier run recorded exactly these requirements in the venv."""
        return state.marker is not None and state.marker.get("requirements") == self.requirements

    def require_venv_module(self, platform: BoardPlatform) -> None:
        if not platform.has_venv:
            raise ProvisionError(
                self.device, "venv",
                f"board python {self.python!r} has no venv/ensurepip module; install the Debian package "
                "python3-venv on the board (sudo apt-get install python3-venv) and provision again")

    def push(self, wheels: Sequence[Path]) -> str:
        run_dir: str | None = None
        try:
            run_dir = self.transport.make_run_dir("wheels", timeout_s=self.budget.left("push", PROBE_TIMEOUT_S))
            for wheel in wheels:
                self.transport.push(wheel, posixpath.join(run_dir, wheel.name), timeout_s=self.budget.left("push"))
        except TransportError as e:
            if run_dir is not None:  # half-pushed wheels (a full disk, most likely) go too
                self.remove_quietly(run_dir)
            raise ProvisionError(self.device, "push", _without_device(e, self.device)) from e
        logger.info("%s: pushed %d wheel(s) to %s", self.device, len(wheels), run_dir)
        return run_dir

    def make_venv(self, platform: BoardPlatform, *, clear: bool) -> None:
        if clear and posixpath.normpath(platform.prefix) == posixpath.normpath(self.venv):
            raise ProvisionError(
                self.device, "venv",
                f"{self.venv} is broken and python {self.python!r} runs from it; set 'python' back to the "
                "board's system Python 3 (e.g. /usr/bin/python3) and provision again")
        argv = [self.python, "-m", "venv", *(["--clear"] if clear else []), self.venv]
        result = _run(self.transport, argv, self.budget.left("venv"), "venv")
        if not result.ok:
            output = result.stderr + result.stdout
            hint = ("; install the Debian package python3-venv on the board" if "ensurepip" in output else "")
            raise ProvisionError(self.device, "venv", f"{self.python} -m venv {self.venv} failed (exit code "
                                                      f"{result.exit_code}; {_tail(output)}){hint}")
        logger.info("%s: created %s", self.device, self.venv)

    def install(self, run_dir: str) -> None:
        # PIP_CONFIG_FILE=/dev/null and --isolated: the board's pip.conf (piwheels, find-links)
        # and PIP_* variables play no part; only the pushed wheels do.
        argv = ["env", "PIP_CONFIG_FILE=/dev/null", self.venv_python, "-m", "pip", "install", "--isolated",
                "--disable-pip-version-check", "--no-input", "--no-cache-dir", "--only-binary=:all:",
                "--no-index", "--find-links", run_dir, *self.requirements]
        result = _run(self.transport, argv, self.budget.left("install"), "install")
        if not result.ok:
            missing = _NO_MATCH.search(result.stderr)
            why = (f"the board's pip found no installable wheel of {_named(missing.group(1))} among the "
                   "pushed ones" if missing else "pip install failed")
            raise ProvisionError(self.device, "install", f"{why} (exit code {result.exit_code}; "
                                                         f"{_tail(result.stderr or result.stdout)})")
        logger.info("%s: installed %s", self.device, ", ".join(self.requirements))

    def record(self, platform: BoardPlatform, state: _VenvState) -> None:
        marker = json.dumps({"requirements": self.requirements, "modules": self.modules,
                             "installed": dict(state.dists), "abi": platform.abi, "platform": platform.key,
                             "by": "energy-harness devices.provision"}, indent=1)
        result = _run(self.transport, [self.venv_python, "-c", _WRITE_SCRIPT, self.marker, marker],
                      self.budget.left("verify", PROBE_TIMEOUT_S), "verify")
        if not result.ok:
            raise ProvisionError(self.device, "verify", f"cannot write {self.marker} (exit code "
                                                        f"{result.exit_code}; {_tail(result.stderr)})")

    def remove_quietly(self, run_dir: str) -> None:
        try:
            self.transport.remove_dir(run_dir, timeout_s=min(PROBE_TIMEOUT_S, max(1.0, self.budget.remaining)))
        except (TransportError, ValueError) as e:
            logger.warning("%s: could not remove %s: %s", self.device, run_dir, e)

    def result(self, platform: BoardPlatform, state: _VenvState, *, changed: bool, wheels: tuple[str, ...],
               start: float) -> ProvisionResult:
        return ProvisionResult(device=self.device, python=self.venv_python, venv=self.venv, platform=platform,
                               installed=dict(state.dists), changed=changed, wheels=wheels,
                               duration_s=time.monotonic() - start)


class _Budget:
    """The run's deadline (monotonic); each step asks for what is left."""

    def __init__(self, device: str, timeout_s: float) -> None:
        self.device = device
        self.timeout_s = timeout_s
        self.deadline = time.monotonic() + timeout_s

    @property
    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def left(self, step: str, cap: float | None = None) -> float:
        """Seconds ``step`` may take (at most ``cap``); raises when the budget is spent."""
        remaining = self.remaining
        if remaining <= 0:
            raise ProvisionError(self.device, step, f"the {self.timeout_s:g} s budget (timeout_s) is spent")
        return remaining if cap is None else min(remaining, cap)


# -- helpers -------------------------------------------------------------------------------------


def _run(transport: Transport, argv: Sequence[str], timeout_s: float, step: str) -> CommandResult:
    """``transport.run`` with transport failures (timeouts, lost links) as ProvisionError."""
    try:
        return transport.run(argv, timeout_s=timeout_s)
    except TransportError as e:
        raise ProvisionError(transport.name, step, _without_device(e, transport.name)) from e


def _marked_json(stdout: str) -> dict[str, object] | None:
    """The JSON object on the last line that starts with our mark (other output is ignored)."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(_JSON_MARK):
            try:
                value = json.loads(line[len(_JSON_MARK):])
            except json.JSONDecodeError:
                return None
            return value if isinstance(value, dict) else None
    return None


def _list(value: object) -> list[object]:
    return list(value) if isinstance(value, list) else []


def _str_map(value: object) -> dict[str, str]:
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def _check_requirements(requirements: Sequence[str]) -> list[str]:
    if isinstance(requirements, str):
        raise ValueError(f"requirements must be a sequence of strings, got the string {requirements!r}")
    reqs = [str(r).strip() for r in requirements]
    if not reqs:
        raise ValueError("requirements must name at least one package")
    for req in reqs:
        if not _REQUIREMENT.fullmatch(req):
            raise ValueError(f"requirement {req!r} is not a package name with optional [extras] and "
                             "version clauses (like 'numpy>=2,<3'); URLs, paths, markers and options are refused")
    return reqs


def _check_modules(modules: Sequence[str]) -> list[str]:
    mods = [str(m) for m in modules]
    for module in mods:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*", module):
            raise ValueError(f"module {module!r} is not a dotted Python module name")
    return mods


def _name_of(requirement: str) -> str:
    found = _REQUIREMENT.match(requirement)
    assert found is not None  # checked by _check_requirements
    return found.group("name")


def _named(requirement: str) -> str:
    """``'name'``, or ``'name' ('name>=2')`` for a requirement pip printed with its version."""
    found = _REQUIREMENT.match(requirement)
    name = found.group("name") if found else requirement
    return repr(name) if name == requirement else f"{name!r} ({requirement!r})"


def _module_of(requirement: str) -> str:
    return re.sub(r"[-.]+", "_", _name_of(requirement)).lower()


def _implementation_tag(name: str) -> str:
    return {"cpython": "cp", "pypy": "pp", "graalpy": "gp"}.get(name, name)


def _made(path: Path | None) -> Path | None:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
    return path


def _keep(wheels: Sequence[Path], folder: Path) -> None:
    """Copy ``wheels`` into the cache ``folder`` (same names are replaced)."""
    folder.mkdir(parents=True, exist_ok=True)
    for wheel in wheels:
        shutil.copy2(wheel, folder / wheel.name)


def _without_device(error: TransportError, device: str) -> str:
    """A transport's message without its leading ``device '<name>': `` (ours adds it)."""
    text = str(error)
    prefix = f"device {device!r}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def _tail(text: str, limit: int = 200) -> str:
    """The last ``limit`` characters of ``text`` on one line, quoted."""
    flat = " | ".join(line.strip() for line in text.strip().splitlines() if line.strip())
    return repr(flat if len(flat) <= limit else "…" + flat[-limit:]) if flat else "no output"


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _MAX_MESSAGE_CHARS else flat[:_MAX_MESSAGE_CHARS] + "…"
