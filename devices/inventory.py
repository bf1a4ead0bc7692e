"""The device inventory: TOML files that name each device, how to reach it and how to measure on it.

One file holds any number of devices as ``[devices.<name>]`` tables; a ``[defaults]`` table
gives keys every device of that file inherits (``user``, ``key_file``, ``known_hosts`` ...).
Paths on the host (``key_file``, ``known_hosts``, ``benchmark_binary``) are relative to the
file that names them. Example::

    [defaults]
    known_hosts = "known_hosts"
    key_file = "~/.ssh/lab_ed25519"

    [devices.pi5-a]
    transport = "ssh"
    host = "10.0.0.21"
    user = "pi"
    python = "/home/pi/.venv-harness/bin/python"
    workdir = "/home/pi/energy-harness"
    tags = ["pi5", "arm64"]
    thermal_zones = ["/sys/class/thermal/thermal_zone0/temp"]
    meter = { kind = "pi5-pmic", path = "/usr/bin/vcgencmd" }

    [devices.pixel7]
    transport = "adb"
    serial = "29041FDH2000C1"
    benchmark_binary = "build/android_arm64/benchmark_model"
    taskset = "f0"
    tags = ["pixel7", "android"]

Every mistake is an :class:`InventoryError` whose one-line message names the file, the device
and the key. Nothing here opens a connection: :mod:`devices.remote` builds devices from specs.
"""

from __future__ import annotations

import math
import posixpath
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = [
    "AdbConnection",
    "DeviceSpec",
    "HealthLimits",
    "Inventory",
    "InventoryError",
    "MeterSpec",
    "SshConnection",
    "DEFAULT_INVENTORY_GLOB",
    "LOCAL",
    "METER_KINDS",
    "load_inventory",
    "parse_inventory",
]

DEFAULT_INVENTORY_GLOB = "devices/*.toml"
"""Where the CLI looks for inventory files when ``--inventory`` is not given (from the CWD)."""
LOCAL = "local"
"""The host's own name; always present, never in a file."""
METER_KINDS = ("odpm", "powerstats", "fuelgauge", "pi5-pmic", "hwmon", "jetson", "rapl", "command",
               "simulated")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")
_MASK = re.compile(r"(?:0[xX])?[0-9a-fA-F]+")


class InventoryError(ValueError):
    """A bad inventory file or entry; the message names the file, the device and the key."""


@dataclass(frozen=True)
class MeterSpec:
    """A power meter as the inventory names it; :mod:`devices.meters` builds it.

    Attributes:
        kind: One of :data:`METER_KINDS`.
        path: Overrides the meter's default sysfs directory or tool path (``None``: default).
        options: Every other key of the table, as written (``rails``, ``name``,
            ``interval_s``, ``unit``, ...); the meter factory validates them.
    """

    kind: str
    path: str | None = None
    options: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class HealthLimits:
    """What a health check demands before a lease. Units are in the names."""

    min_free_mb: float = 100.0
    max_temp_c: float = 85.0
    timeout_s: float = 30.0


@dataclass(frozen=True)
class SshConnection:
    """How to reach a Linux board over SSH (host keys pinned in ``known_hosts``)."""

    host: str
    port: int
    user: str
    key_file: Path
    known_hosts: Path
    python: str = "python3"
    allow_unknown_hosts: bool = False
    connect_timeout_s: float = 10.0
    keepalive_s: int = 15  # seconds between keepalives on an idle link; 0: none


@dataclass(frozen=True)
class AdbConnection:
    """How to reach an Android device through the adb server."""

    serial: str
    benchmark_binary: Path
    taskset: str | None = None
    adb_server: tuple[str, int] = ("127.0.0.1", 5037)
    connect_timeout_s: float = 10.0
    use_xnnpack: bool | None = None
    delegate: str | None = None


@dataclass(frozen=True)
class DeviceSpec:
    """One inventory entry, validated. ``connection`` is ``None`` only for ``local``.

    Attributes:
        device_class: What the per-class latency and energy objectives group by (default: the
            device's first tag, else its name).
        threads: Interpreter threads on this device; ``None`` uses the search's setting.
        thermal_zones: Files on the device holding a temperature in millidegrees C.
        source: The file the entry came from (for messages).
    """

    name: str
    transport: Literal["ssh", "adb", "local"]
    runner: Literal["litert", "benchmark_model", "local"]
    connection: SshConnection | AdbConnection | None
    workdir: str
    tags: tuple[str, ...] = ()
    device_class: str = ""
    threads: int | None = None
    thermal_zones: tuple[str, ...] = ()
    meter: MeterSpec | None = None
    health: HealthLimits = field(default_factory=HealthLimits)
    source: Path | None = None

    @property
    def ssh(self) -> SshConnection:
        if not isinstance(self.connection, SshConnection):
            raise TypeError(f"device {self.name!r} is not an ssh device")
        return self.connection

    @property
    def adb(self) -> AdbConnection:
        if not isinstance(self.connection, AdbConnection):
            raise TypeError(f"device {self.name!r} is not an adb device")
        return self.connection


LOCAL_SPEC = DeviceSpec(name=LOCAL, transport="local", runner="local", connection=None, workdir="",
                        tags=(LOCAL,), device_class=LOCAL)


@dataclass(frozen=True)
class Inventory:
    """Every device known, by name (``local`` always included)."""

    devices: Mapping[str, DeviceSpec] = field(default_factory=lambda: {LOCAL: LOCAL_SPEC})

    def __getitem__(self, name: str) -> DeviceSpec:
        try:
            return self.devices[name]
        except KeyError:
            raise InventoryError(f"device {name!r}: not in the inventory (known: "
                                 f"{', '.join(sorted(self.devices))})") from None

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.devices.values())

    def __len__(self) -> int:
        return len(self.devices)

    def select(self, selectors: Sequence[str]) -> list[DeviceSpec]:
        """Devices named by ``selectors``: names, or ``tag:<tag>`` for every device with that tag.

        Order follows the selectors (then the inventory); a device selected twice is listed once.

        Raises:
            InventoryError: a name not in the inventory, or a tag no device has.
        """
        chosen: dict[str, DeviceSpec] = {}
        for selector in selectors:
            if selector.startswith("tag:"):
                tag = selector[4:]
                matches = [spec for spec in self.devices.values() if tag in spec.tags]
                if not matches:
                    known = sorted({t for spec in self.devices.values() for t in spec.tags})
                    raise InventoryError(f"device selector {selector!r}: no device has tag {tag!r} "
                                         f"(tags: {', '.join(known) or 'none'})")
                for spec in matches:
                    chosen.setdefault(spec.name, spec)
            else:
                chosen.setdefault(selector, self[selector])
        return list(chosen.values())


def load_inventory(paths: Iterable[Path | str] | None = None, *, cwd: Path | None = None) -> Inventory:
    """Read inventory files; ``None`` reads ``devices/*.toml`` under ``cwd`` (none: only ``local``).

    Raises:
        InventoryError: a file is missing, is not TOML, or has a bad entry; two files name
            the same device.
    """
    if paths is None:
        base = cwd or Path.cwd()
        files = sorted(base.glob(DEFAULT_INVENTORY_GLOB))
    else:
        files = [Path(p) for p in paths]
    devices: dict[str, DeviceSpec] = {LOCAL: LOCAL_SPEC}
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise InventoryError(f"inventory {path}: no such file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise InventoryError(f"inventory {path}: cannot read it: {e}") from None
        for spec in parse_inventory(text, path).devices.values():
            if spec.name == LOCAL:
                continue
            if spec.name in devices:
                raise InventoryError(f"inventory {path}: device {spec.name!r} is also defined in "
                                     f"{devices[spec.name].source}")
            devices[spec.name] = spec
    return Inventory(devices)


def parse_inventory(text: str, source: Path | str = "<inventory>") -> Inventory:
    """Parse one inventory file's text; relative host paths resolve against ``source``'s folder."""
    source = Path(source)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InventoryError(f"inventory {source}: not valid TOML: {e}") from None
    unknown = set(data) - {"defaults", "devices"}
    if unknown:
        raise InventoryError(f"inventory {source}: unknown top-level key(s) {sorted(unknown)}; "
                             "expected [defaults] and [devices.<name>] tables")
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        raise InventoryError(f"inventory {source}: [defaults] must be a table")
    entries = data.get("devices", {})
    if not isinstance(entries, dict):
        raise InventoryError(f"inventory {source}: 'devices' must be tables [devices.<name>]")
    devices: dict[str, DeviceSpec] = {LOCAL: LOCAL_SPEC}
    for name, entry in entries.items():
        if not isinstance(entry, dict):
            raise InventoryError(f"inventory {source}: device {name!r}: must be a table [devices.{name}]")
        if name == LOCAL:
            raise InventoryError(f"inventory {source}: device 'local': the name is reserved for the host")
        devices[name] = _Entry(source, name, defaults, entry).spec()
    return Inventory(devices)


_COMMON_KEYS = {"transport", "runner", "tags", "class", "threads", "workdir", "thermal_zones", "meter",
                "min_free_mb", "max_temp_c", "health_timeout_s", "connect_timeout_s"}
_SSH_KEYS = {"host", "port", "user", "key_file", "known_hosts", "python", "allow_unknown_hosts", "keepalive_s"}
_ADB_KEYS = {"serial", "benchmark_binary", "taskset", "adb_server", "use_xnnpack", "delegate"}


class _Entry:
    """One device's merged table, read key by key with errors that name the key."""

    def __init__(self, source: Path, name: str, defaults: dict[str, object], own: dict[str, object]) -> None:
        self.source = source
        self.name = name
        self.own = own
        self.defaults = defaults
        self.table = {**defaults, **own}
        self.base = source.parent

    def fail(self, key: str | None, problem: str) -> InventoryError:
        where = f"inventory {self.source}: device {self.name!r}"
        return InventoryError(f"{where}: key {key!r}: {problem}" if key else f"{where}: {problem}")

    def spec(self) -> DeviceSpec:
        if not _NAME.fullmatch(self.name):
            raise self.fail(None, "names may hold only letters, digits, '.', '_' and '-'")
        transport = self.choice("transport", ("ssh", "adb"), None)
        allowed = _COMMON_KEYS | (_SSH_KEYS if transport == "ssh" else _ADB_KEYS)
        # [defaults] may hold keys of either transport; the entry's own keys must fit its own
        unknown = sorted([k for k in self.own if k not in allowed]
                         + [k for k in self.defaults if k not in _COMMON_KEYS | _SSH_KEYS | _ADB_KEYS])
        if unknown:
            raise self.fail(unknown[0], f"unknown key for transport {transport!r} (allowed: "
                                        f"{', '.join(sorted(allowed))})")
        runner_default = "litert" if transport == "ssh" else "benchmark_model"
        runner = self.choice("runner", (runner_default,), runner_default)
        connect_timeout = self.number("connect_timeout_s", 10.0, minimum=0.1)
        if transport == "ssh":
            connection: SshConnection | AdbConnection = SshConnection(
                host=self.string("host"), port=self.integer("port", 22, 1, 65535),
                user=self.string("user"), key_file=self.host_path("key_file"),
                known_hosts=self.host_path("known_hosts"), python=self.string("python", "python3"),
                allow_unknown_hosts=self.boolean("allow_unknown_hosts", False),
                connect_timeout_s=connect_timeout, keepalive_s=self.integer("keepalive_s", 15, 0, 3600))
            workdir = self.remote_dir("workdir", "/tmp/energy-harness")
        else:
            serial = self.string("serial")
            if any(c.isspace() for c in serial):
                raise self.fail("serial", f"{serial!r} holds whitespace")
            taskset = self.optional_string("taskset")
            if taskset is not None and not _MASK.fullmatch(taskset):
                raise self.fail("taskset", f"{taskset!r} is not a hexadecimal CPU mask like 'f0'")
            delegate = self.optional_string("delegate")
            if delegate is not None and delegate not in ("gpu", "nnapi"):
                raise self.fail("delegate", f"{delegate!r}: expected 'gpu' or 'nnapi'")
            connection = AdbConnection(
                serial=serial, benchmark_binary=self.host_path("benchmark_binary"), taskset=taskset,
                adb_server=self.address("adb_server", ("127.0.0.1", 5037)),
                connect_timeout_s=connect_timeout,
                use_xnnpack=self.boolean("use_xnnpack", None), delegate=delegate)
            workdir = self.remote_dir("workdir", "/data/local/tmp/energy-harness")
        tags = self.tags()
        return DeviceSpec(
            name=self.name, transport=transport, runner=runner, connection=connection,  # type: ignore[arg-type]
            workdir=workdir, tags=tags,
            device_class=self.string("class", tags[0] if tags else self.name),
            threads=self.integer("threads", None, 1, 1024),
            thermal_zones=self.remote_paths("thermal_zones"), meter=self.meter(),
            health=HealthLimits(min_free_mb=self.number("min_free_mb", 100.0, minimum=0.0),
                                max_temp_c=self.number("max_temp_c", 85.0, minimum=0.0),
                                timeout_s=self.number("health_timeout_s", 30.0, minimum=0.1)),
            source=self.source,
        )

    # -- typed reads --------------------------------------------------------------------------

    def choice(self, key: str, options: tuple[str, ...], default: str | None) -> str:
        value = self.table.get(key, default)
        if value is None:
            raise self.fail(key, f"missing; expected one of {', '.join(options)}")
        if value not in options:
            raise self.fail(key, f"{value!r} is not one of {', '.join(options)}")
        return str(value)

    def string(self, key: str, default: str | None = None) -> str:
        value = self.table.get(key, default)
        if value is None:
            raise self.fail(key, "missing")
        if not isinstance(value, str) or not value:
            raise self.fail(key, f"expected a non-empty string, got {value!r}")
        return value

    def optional_string(self, key: str) -> str | None:
        return self.string(key) if key in self.table else None

    def integer(self, key: str, default: int | None, low: int, high: int) -> int:
        value = self.table.get(key, default)
        if value is None:
            return None  # type: ignore[return-value]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(key, f"expected a whole number in {low}..{high}, got {value!r}")
        return value

    def number(self, key: str, default: float, minimum: float) -> float:
        value = self.table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= minimum \
                or not math.isfinite(value):
            raise self.fail(key, f"expected a finite number >= {minimum:g}, got {value!r}")
        return float(value)

    def boolean(self, key: str, default: bool | None) -> bool:
        value = self.table.get(key, default)
        if value is not None and not isinstance(value, bool):
            raise self.fail(key, f"expected true or false, got {value!r}")
        return value  # type: ignore[return-value]

    def host_path(self, key: str) -> Path:
        path = Path(self.string(key)).expanduser()
        return path if path.is_absolute() else (self.base / path)

    def remote_dir(self, key: str, default: str) -> str:
        value = self.string(key, default)
        if not posixpath.isabs(value) or "\0" in value or "\n" in value:
            raise self.fail(key, f"{value!r} is not an absolute path on the device")
        normal = posixpath.normpath(value)
        if normal in ("/", "//"):
            raise self.fail(key, "'/' cannot be a working directory (run directories are removed)")
        return normal

    def remote_paths(self, key: str) -> tuple[str, ...]:
        value = self.table.get(key, [])
        if not isinstance(value, list) or not all(
                isinstance(v, str) and posixpath.isabs(v) and not any(c in v for c in "\0\n\t")
                for v in value):
            raise self.fail(key, f"expected a list of absolute paths on the device, got {value!r}")
        return tuple(value)

    def address(self, key: str, default: tuple[str, int]) -> tuple[str, int]:
        value = self.table.get(key)
        if value is None:
            return default
        host, sep, port = str(value).rpartition(":")
        if not isinstance(value, str) or not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise self.fail(key, f"expected 'host:port', got {value!r}")
        return host, int(port)

    def tags(self) -> tuple[str, ...]:
        value = self.table.get("tags", [])
        if not isinstance(value, list) or not all(isinstance(t, str) and _TAG.fullmatch(t) for t in value):
            raise self.fail("tags", f"expected a list of names (letters, digits, '.', '_', '-', ':'), "
                                    f"got {value!r}")
        return tuple(dict.fromkeys(value))

    def meter(self) -> MeterSpec | None:
        value = self.table.get("meter")
        if value is None:
            return None
        if isinstance(value, str):
            value = {"kind": value}
        if not isinstance(value, dict):
            raise self.fail("meter", f"expected a table like {{ kind = \"odpm\" }}, got {value!r}")
        kind = value.get("kind")
        if kind not in METER_KINDS:
            raise self.fail("meter", f"kind {kind!r} is not one of {', '.join(METER_KINDS)}")
        path = value.get("path")
        if path is not None and (not isinstance(path, str) or not path):
            raise self.fail("meter", f"path must be a non-empty string, got {path!r}")
        options = {k: v for k, v in value.items() if k not in ("kind", "path")}
        return MeterSpec(kind=kind, path=path, options=options)
