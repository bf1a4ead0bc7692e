"""Energy benchmark: recovered vs injected energy per inference through the real device stack.

What is measured (issue "Real-world energy", benchmark section): across model sizes, the energy
per inference the harness recovers against the energy that was injected (error %), the device
time one candidate costs against the configured minimum measured window, and the repeatability
of the protocol's repeats (MAD and coefficient of variation).

The stack is the production one end to end: a :class:`devices.remote.AndroidDevice` built from
a :class:`devices.inventory.DeviceSpec` with ``meter = MeterSpec("odpm", path=...)`` and
``energy = EnergyProtocol(...)``, reached through the real adb server (``adb nodaemon server``)
to the test adbd (``tests/peers/adbd.py``), measuring with ``device.measure`` exactly as the
fleet does (prepare, a latency run, then the protocol's idle baseline and short/long runs with
repeats). The phone's power is injected by ``tests/peers/emulated_meters.OdpmEmulator``: ODPM
``energy_value`` files refreshed every 50 ms whose counters integrate ``idle_mw``, plus
``active_mw`` while the phone's ``benchmark_model`` process runs. That process is
``tests/peers/fake_benchmark_model.py`` (copied under a random name, which is the emulator's
marker, so no other engineer's test process can count as ours), wrapped as in
``tests/devices/test_remote_energy.py``.

Two series of model sizes, plus a window sweep:

* ``sleep``: every inference sleeps ``FAKE_BENCHMARK_SLEEP_US`` (0.5 ms ... 50 ms by default);
* ``litert``: real LiteRT inferences of four float32 conv nets built here (about 0.06 ms ...
  20 ms per inference on one core of this host);
* ``window``: one sleep size measured at several ``min_window_s``.

The injected energy per inference of one repeat is ``active_mw`` times the tool's own
per-inference time over the differenced timed loop, ``(window_long - window_short) / (n_long -
n_short)`` (what the runner reports; its window is the sum of its inference times). The bench also
records, by wrapping ``device.run_timed`` on the instance (no harness file is changed), the
emulator's integrated active time around every run, which splits each repeat's error into the
workload's share (the process's active time outside its timed loop did not cancel between the
short and the long run: start-up, warm-up, exit, loop overhead) and the meter chain's share (ODPM
counters, their ``t=`` timestamps, the idle baseline).

    .venv/bin/python -m bench.energy_bench                  # defaults, ~8 min on two shared cores
    .venv/bin/python -m bench.energy_bench --min-window-s 2 --repeats 3 --sizes 1 10 --no-litert
    .venv/bin/python -m bench.energy_bench --report-only        # re-render from the raw file

Writes its section of ``bench/RESULTS.md`` between ``<!-- energy-bench:start -->`` and
``<!-- energy-bench:end -->`` (appended when absent; the rest of the file is left as it is) and
the raw numbers (every measurement with its energy detail) to
``bench/_runs/energy-bench/last.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import logging
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.machine import machine_info  # noqa: E402
from bench.results_file import write_section  # noqa: E402

log = logging.getLogger("energy_bench")

SECTION = "energy-bench"
FAKE = REPO_ROOT / "tests" / "peers" / "fake_benchmark_model.py"
ODPM_DIR = "/data/local/tmp/sys/bus/iio/devices"
THERMAL_DIR = "data/local/tmp/sys/class/thermal"
PEER_HOST = "127.0.0.21"  # a loopback address of its own (the fleet bench uses .2 ... .9)
COUNTER_PERIOD_S = 0.05  # the emulated ODPM's refresh interval (the PMIC's)

DEFAULTS = {
    "min_window_s": 1.0,
    "repeats": 5,
    "sizes": [0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0],  # ms of sleep per inference
    "windows": [0.5, 1.0, 2.0, 4.0],
    "sweep_size": 2.0,
    "sweep_measures": 2,
    "idle_mw": 400.0,
    "active_mw": 1200.0,
}

# Real LiteRT models: (name, input side, conv widths). float32, 3x3 'same' convolutions + ReLU,
# global average pooling, dense 10. On one core of the host (AMD EPYC, XNNPACK) these run at
# about 0.06, 0.7, 7 and 22 ms per inference.
LITERT_MODELS = (
    ("conv-xs", 32, (8, 8)),
    ("conv-s", 64, (16, 32)),
    ("conv-m", 64, (32, 64, 64)),
    ("conv-l", 96, (64, 64, 64)),
)


# --- settings ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Energy benchmark: recovered vs injected energy per inference through "
                    "AndroidDevice + ODPM over the real adb server (see the module docstring).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--min-window-s", type=float, default=DEFAULTS["min_window_s"],
                   help="the protocol's min_window_s for the size series")
    p.add_argument("--repeats", type=int, default=DEFAULTS["repeats"],
                   help="the protocol's repeats (>= 3)")
    p.add_argument("--sizes", type=float, nargs="+", default=DEFAULTS["sizes"],
                   help="sleep per inference of the sleep series, ms")
    p.add_argument("--litert", action=argparse.BooleanOptionalAction, default=True,
                   help="also the series of real LiteRT models")
    p.add_argument("--windows", type=float, nargs="*", default=DEFAULTS["windows"],
                   help="min_window_s values of the window sweep (none: no sweep)")
    p.add_argument("--sweep-size", type=float, default=DEFAULTS["sweep_size"],
                   help="sleep per inference of the window sweep, ms")
    p.add_argument("--sweep-measures", type=int, default=DEFAULTS["sweep_measures"],
                   help="independent device.measure calls per window of the sweep")
    p.add_argument("--idle-mw", type=float, default=DEFAULTS["idle_mw"])
    p.add_argument("--active-mw", type=float, default=DEFAULTS["active_mw"])
    p.add_argument("--output", type=Path, default=BENCH_DIR / "RESULTS.md")
    p.add_argument("--raw", type=Path, default=BENCH_DIR / "_runs" / "energy-bench" / "last.json",
                   help="where every measurement's raw numbers go")
    p.add_argument("--no-write", action="store_true", help="print the section, leave RESULTS.md")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: render the section again from the raw file (--raw)")
    args = p.parse_args(argv)
    if args.repeats < 3:
        p.error("--repeats must be >= 3 (EnergyProtocol's minimum)")
    if args.min_window_s <= 0 or any(w <= 0 for w in args.windows):
        p.error("windows must be > 0 s")
    if any(s <= 0 for s in args.sizes) or args.sweep_size <= 0:
        p.error("sizes must be > 0 ms")
    if args.sweep_measures < 1:
        p.error("--sweep-measures must be >= 1")
    if not args.active_mw > 0 or args.idle_mw < 0:
        p.error("--active-mw must be > 0 and --idle-mw >= 0")
    return args


def measure_settings():
    """The harness's default [measure] settings (harness/config.py)."""
    from devices.base import MeasureSettings

    return MeasureSettings(threads=1, warmup_runs=5, min_seconds=0.5, min_runs=20)


def protocol_for(min_window_s: float, repeats: int):
    """The protocol under test: the harness's [energy] defaults but for the window and repeats."""
    from devices.energy_protocol import EnergyProtocol

    return EnergyProtocol(min_window_s=min_window_s, repeats=repeats, max_temp_c=80.0)


# --- the cases -----------------------------------------------------------------------------------


@dataclass
class Case:
    series: str  # "sleep" | "litert" | "window"
    label: str
    model: Path
    min_window_s: float
    sleep_us: int | None = None  # None: real LiteRT inferences
    model_info: dict = field(default_factory=dict)


def build_models(folder: Path, with_litert: bool) -> tuple[Path, list[tuple[Path, dict]]]:
    """The tiny model the sleeping tool loads (for the output check) and the LiteRT series."""
    import keras
    import numpy as np

    from search.lowering import lower

    def build(name: str, side: int, widths: tuple[int, ...]) -> tuple[Path, dict]:
        keras.utils.set_random_seed(0)
        x = inputs = keras.Input((side, side, 3), name="input")
        precision = {}
        macs = 0
        channels = 3
        for i, width in enumerate(widths):
            x = keras.layers.Conv2D(width, 3, padding="same", activation="relu", name=f"conv{i}")(x)
            precision[f"conv{i}"] = "float32"
            macs += side * side * 9 * channels * width
            channels = width
        x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
        x = keras.layers.Dense(10, activation="softmax", name="dense")(x)
        precision["dense"] = "float32"
        macs += channels * 10
        model = keras.Model(inputs, x)
        sample = np.random.default_rng(0).random((4, side, side, 3)).astype(np.float32)
        path = folder / f"{name}.tflite"
        path.write_bytes(lower(model, precision, sample).tflite_bytes)
        return path, {"name": name, "input": f"{side}x{side}x3", "widths": list(widths),
                      "macs": macs, "params": int(model.count_params()), "bytes": path.stat().st_size}

    keras.utils.set_random_seed(1)
    inputs = keras.Input((16,), name="input")
    outputs = keras.layers.Dense(4, activation="softmax", name="dense")(inputs)
    tiny = folder / "tiny.tflite"
    tiny.write_bytes(lower(keras.Model(inputs, outputs), {"dense": "float32"},
                           np.random.default_rng(0).random((8, 16)).astype(np.float32)).tflite_bytes)
    litert = [build(name, side, widths) for name, side, widths in LITERT_MODELS] if with_litert else []
    return tiny, litert


def plan_cases(args: argparse.Namespace, tiny: Path, litert: list[tuple[Path, dict]]) -> list[Case]:
    cases = [Case("sleep", f"sleep {ms:g} ms", tiny, args.min_window_s, round(ms * 1000))
             for ms in args.sizes]
    cases += [Case("litert", info["name"], path, args.min_window_s, None, info) for path, info in litert]
    for window in args.windows:
        for k in range(args.sweep_measures):
            cases.append(Case("window", f"sleep {args.sweep_size:g} ms, window {window:g} s #{k + 1}",
                              tiny, window, round(args.sweep_size * 1000)))
    return cases


# --- running ---------------------------------------------------------------------------------------


class Bench:
    """The adb server, the test adbd and the copied fake tool, for the whole run."""

    def __init__(self, root: Path) -> None:
        from tests.peers.adbd import AdbdPeer, AdbServer, missing_adb

        reason = missing_adb()
        if reason:
            raise SystemExit(f"error: {reason}")
        self.root = root
        # The emulator counts a process as the workload when its command line holds this name:
        # a random one, so no other test's fake_benchmark_model.py on this machine counts.
        self.marker = f"ebench_{uuid.uuid4().hex[:12]}_tool.py"
        self.tool = root / "bin" / self.marker
        self.tool.parent.mkdir(parents=True)
        shutil.copyfile(FAKE, self.tool)
        self.server = AdbServer(root / "adb-home")
        self.peer = AdbdPeer(root / "phone", host=PEER_HOST)
        self.zone = ""

    def __enter__(self) -> Bench:
        from tests.peers.emulated_meters import write_thermal_zone

        self.server.start()
        try:
            self.peer.start()
        except BaseException:
            self.server.stop()
            raise
        zone = write_thermal_zone(self.peer.root / THERMAL_DIR, 0, 40.0)
        self.zone = "/" + str(zone.relative_to(self.peer.root))
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            self.server.adb("disconnect", self.peer.serial, timeout_s=10.0)
        self.peer.stop()
        self.server.stop()

    def wrapper(self, sleep_us: int | None) -> Path:
        """The 'benchmark_model' the phone runs: the copied fake, sleeping or running LiteRT."""
        name = f"benchmark_model_{'litert' if sleep_us is None else sleep_us}"
        path = self.root / "bin" / name
        env = "" if sleep_us is None else f"FAKE_BENCHMARK_SLEEP_US={sleep_us} "
        path.write_text(f'#!/bin/sh\n{env}exec "{sys.executable}" "{self.tool}" "$@"\n')
        path.chmod(0o755)
        return path

    def spec(self, sleep_us: int | None):
        from devices.inventory import AdbConnection, DeviceSpec, MeterSpec

        connection = AdbConnection(serial=self.peer.serial, benchmark_binary=self.wrapper(sleep_us),
                                   adb_server=self.server.address)
        return DeviceSpec(name="bench-phone", transport="adb", runner="benchmark_model",
                          connection=connection, workdir="/data/local/tmp/energy-harness",
                          tags=("pixel7",), thermal_zones=(self.zone,),
                          meter=MeterSpec("odpm", path=ODPM_DIR))

    def measure(self, case: Case, args: argparse.Namespace) -> dict:
        """One candidate: a fresh AndroidDevice, one ``device.measure``, with its runs logged."""
        from devices.remote import AndroidDevice
        from tests.peers.emulated_meters import OdpmEmulator

        protocol = protocol_for(case.min_window_s, args.repeats)
        settings = measure_settings()
        runs: list[dict] = []
        load_before = os.getloadavg()[0]
        with OdpmEmulator(self.peer.root / ODPM_DIR.lstrip("/"), idle_mw=args.idle_mw,
                          active_mw=args.active_mw, marker=self.marker) as emulator:
            with AndroidDevice(self.spec(case.sleep_us), energy=protocol) as device:
                run_timed = device.run_timed

                def logged(prepared, s):  # the protocol calls device.run_timed through the instance
                    entry = {"min_seconds": s.min_seconds, "min_runs": s.min_runs,
                             "active_at_start_s": emulator.active_s}
                    started = time.perf_counter()
                    run = run_timed(prepared, s)
                    entry.update(call_s=time.perf_counter() - started, n=run.n_inferences,
                                 window_s=run.window_s, command_s=run.command_s,
                                 latency_ms_median=run.latency_ms_median)
                    runs.append(entry)
                    return run

                device.run_timed = logged  # type: ignore[method-assign]
                started = time.perf_counter()
                m = device.measure(case.model, settings)
                wall_s = time.perf_counter() - started
            time.sleep(2 * emulator.poll_s + 0.01)
            active_end_s = emulator.active_s
        for i, entry in enumerate(runs):
            nxt = runs[i + 1]["active_at_start_s"] if i + 1 < len(runs) else active_end_s
            entry["active_s"] = nxt - entry["active_at_start_s"]
        return {"case": case.__dict__ | {"model": str(case.model)}, "wall_s": wall_s,
                "loadavg_before": load_before, "loadavg_after": os.getloadavg()[0],
                "measurement": m.to_dict(), "runs": runs,
                "protocol": {"min_window_s": protocol.min_window_s, "repeats": protocol.repeats,
                             "short_s": protocol.short_s, "idle_s": protocol.idle_s,
                             "settle_s": protocol.settle_s, "max_temp_c": protocol.max_temp_c},
                "settings": settings.__dict__}


# --- analysis --------------------------------------------------------------------------------------


def analyse(result: dict, active_mw: float) -> dict:
    """Per repeat and per measurement: injected vs recovered, the error's two shares, times."""
    m = result["measurement"]
    detail = m["energy_detail"] or {}
    runs = result["runs"]
    records = [r for r in detail.get("records", []) if r.get("short") is not None]
    pairs = runs[1:]  # runs[0] is the latency run; then (short, long) per repeat that ran
    repeats = []
    for i, record in enumerate(records):
        if 2 * i + 1 >= len(pairs):
            break
        short, long = pairs[2 * i], pairs[2 * i + 1]
        dn = record["long_n"] - record["short_n"]
        loop_dt_s = record["long_window_s"] - record["short_window_s"]
        active_dt_s = long["active_s"] - short["active_s"]
        meter_dt_s = record["long"]["duration_s"] - record["short"]["duration_s"]
        recovered = record["energy_mj_per_inference"]
        injected = active_mw * loop_dt_s / dn  # mW x s = mJ
        injected_emu = active_mw * active_dt_s / dn
        windows_s = sum(record[k]["duration_s"] for k in ("baseline", "short", "long"))
        repeats.append({
            "index": record["index"], "rejected": record["rejected"], "dn": dn,
            "loop_dt_s": loop_dt_s, "meter_dt_s": meter_dt_s, "active_dt_s": active_dt_s,
            "injected_mj": injected, "injected_emulator_mj": injected_emu, "recovered_mj": recovered,
            "error": recovered / injected - 1.0,
            # the error in ms of active time, split: workload (active time outside the timed
            # loops that did not cancel) + meter chain (recovered vs the emulator's own count)
            "workload_ms": 1000.0 * (active_dt_s - loop_dt_s),
            "meter_ms": 1000.0 * (recovered - injected_emu) * dn / active_mw,
            "total_ms": 1000.0 * (recovered - injected) * dn / active_mw,
            "fixed_active_short_s": short["active_s"] - short["window_s"],
            "fixed_active_long_s": long["active_s"] - long["window_s"],
            "fixed_command_short_s": short["command_s"] - short["window_s"],
            "fixed_command_long_s": long["command_s"] - long["window_s"],
            "baseline_mw": record["baseline_power_mw"],
            "windows_s": windows_s,
        })
    accepted = [r for r in repeats if not r["rejected"]]
    per_repeat = list(detail.get("energy_mj_per_repeat", []))
    injected = statistics.median(r["injected_mj"] for r in accepted) if accepted else math.nan
    recovered = m["energy_mj_median"]
    mean = statistics.fmean(per_repeat) if per_repeat else math.nan
    cv = statistics.stdev(per_repeat) / mean if len(per_repeat) > 1 and mean else math.nan
    fixed = [r[k] for r in accepted for k in ("fixed_active_short_s", "fixed_active_long_s")]
    first = runs[0] if runs else {}
    return {
        "series": result["case"]["series"], "label": result["case"]["label"],
        "sleep_us": result["case"]["sleep_us"], "min_window_s": result["case"]["min_window_s"],
        "model_info": result["case"]["model_info"],
        "latency_ms": m["latency_ms_median"],
        "tool_ms_per_inference": (1000.0 * statistics.median(r["loop_dt_s"] / r["dn"] for r in accepted)
                                  if accepted else math.nan),
        "dn": statistics.median(r["dn"] for r in accepted) if accepted else math.nan,
        "injected_mj": injected, "recovered_mj": recovered,
        "error": recovered / injected - 1.0 if recovered is not None and injected else math.nan,
        "repeat_errors": [r["error"] for r in accepted],
        "mad_mj": m["energy_mj_spread"],
        "cv": cv,
        "net_power_mw": m["power_mw_mean"],
        "baseline_mw": detail.get("baseline_power_mw", math.nan),
        "window_s": detail.get("window_s", math.nan),
        "wall_s": result["wall_s"],
        "windows_s": sum(r["windows_s"] for r in repeats),
        "first_run_s": first.get("call_s", math.nan),
        "runs_s": sum(r.get("call_s", 0.0) for r in runs),
        "workload_ms": [r["workload_ms"] for r in accepted],
        "meter_ms": [r["meter_ms"] for r in accepted],
        "total_ms": [r["total_ms"] for r in accepted],
        "fixed_active_s": fixed,
        "fixed_short_s": [r["fixed_active_short_s"] for r in accepted],
        "fixed_long_s": [r["fixed_active_long_s"] for r in accepted],
        "command_short_s": [r["fixed_command_short_s"] for r in accepted],
        "command_long_s": [r["fixed_command_long_s"] for r in accepted],
        "flags": list(detail.get("flags", [])),
        "output_matches": m["output_matches"],
        "energy_source": m["energy_source"],
        "repeats": repeats,
        "loadavg": (result["loadavg_before"], result["loadavg_after"]),
    }


# --- the report --------------------------------------------------------------------------------------


def _f(value, fmt: str = ".4g") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return format(value, fmt)


def _pct(value, digits: int = 2) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{100 * value:+.{digits}f} %"


def _spread(values: list[float], fmt: str = "+.2f", scale: float = 1.0) -> str:
    if not values:
        return "n/a"
    return f"{format(scale * min(values), fmt)} … {format(scale * max(values), fmt)}"


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else math.nan


def size_table(rows: list[dict], litert: bool) -> list[str]:
    out = []
    first = "model (MACs)" if litert else "sleep / inference"
    out.append(f"| {first} | tool's time / inference (ms) | inferences differenced | injected (mJ) "
               "| recovered, median (mJ) | error | per-repeat error (min … max) | MAD (mJ) | MAD / median "
               "| CV across repeats | net power (mW) |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if litert:
            info = r["model_info"]
            name = f"{r['label']} ({info['macs'] / 1e6:.3g} M)"
        else:
            name = f"{r['sleep_us'] / 1000:g} ms"
        out.append(
            f"| {name} | {_f(r['tool_ms_per_inference'], '.4g')} | {_f(r['dn'], '.0f')} "
            f"| {_f(r['injected_mj'], '.4g')} | {_f(r['recovered_mj'], '.4g')} | {_pct(r['error'])} "
            f"| {_spread(r['repeat_errors'], '+.2f', 100)} % | {_f(r['mad_mj'], '.3g')} "
            f"| {_pct(r['mad_mj'] / r['recovered_mj'] if r['recovered_mj'] else math.nan)} "
            f"| {_f(100 * r['cv'], '.2f')} % | {_f(r['net_power_mw'], '.0f')} |")
    return out


def time_table(rows: list[dict], label) -> list[str]:
    out = ["| case | min_window_s (s) | device time per candidate (s) | ÷ min_window_s "
           "| ÷ (repeats × min_window_s) | in meter windows | latency run (s) "
           "| differenced window T_long − T_short, median (s) |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        w = r["min_window_s"]
        reps = len(r["repeat_errors"]) or math.nan
        out.append(
            f"| {label(r)} | {w:g} | {_f(r['wall_s'], '.1f')} | {_f(r['wall_s'] / w, '.1f')} "
            f"| {_f(r['wall_s'] / (reps * w), '.2f')} | {_f(100 * r['windows_s'] / r['wall_s'], '.0f')} % "
            f"| {_f(r['first_run_s'], '.2f')} | {_f(r['window_s'], '.3f')} |")
    return out


def decomposition_table(rows: list[dict], label) -> list[str]:
    out = ["| case | error, total (ms of active time per repeat: median, sd) | workload share (median, sd) "
           "| meter-chain share (median, sd) | fixed active time outside the loop, short run / long run "
           "(medians, ms) | same seen by the host (adb command time − loop), short / long (ms) |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        def ms(values):
            return f"{_f(_median(values), '+.1f')}, {_f(_sd(values), '.1f')}"
        out.append(f"| {label(r)} | {ms(r['total_ms'])} | {ms(r['workload_ms'])} | {ms(r['meter_ms'])} "
                   f"| {_f(1000 * _median(r['fixed_short_s']), '.0f')} / "
                   f"{_f(1000 * _median(r['fixed_long_s']), '.0f')} "
                   f"| {_f(1000 * _median(r['command_short_s']), '.0f')} / "
                   f"{_f(1000 * _median(r['command_long_s']), '.0f')} |")
    return out


def sweep_table(rows: list[dict]) -> list[str]:
    by_window: dict[float, list[dict]] = {}
    for r in rows:
        by_window.setdefault(r["min_window_s"], []).append(r)
    out = ["| min_window_s (s) | measures | injected (mJ) | recovered (mJ), each measure | error, each measure "
           "| mean abs error, measures | per-repeat abs error: mean, max | CV across repeats, each "
           "| device time (s), each | ÷ min_window_s |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for w in sorted(by_window):
        group = by_window[w]
        errors = [r["error"] for r in group]
        repeat_abs = [abs(e) for r in group for e in r["repeat_errors"]]
        out.append(
            f"| {w:g} | {len(group)} | {_f(_median([r['injected_mj'] for r in group]), '.4g')} "
            f"| {', '.join(_f(r['recovered_mj'], '.4g') for r in group)} "
            f"| {', '.join(_pct(e) for e in errors)} "
            f"| {_f(100 * statistics.fmean(abs(e) for e in errors), '.2f')} % "
            f"| {_f(100 * statistics.fmean(repeat_abs), '.2f')} %, {_f(100 * max(repeat_abs), '.2f')} % "
            f"| {', '.join(_f(100 * r['cv'], '.2f') + ' %' for r in group)} "
            f"| {', '.join(_f(r['wall_s'], '.1f') for r in group)} "
            f"| {', '.join(_f(r['wall_s'] / w, '.1f') for r in group)} |")
    return out


def workload_fit(rows: list[dict]) -> dict | None:
    """Least squares of each repeat's workload share (ms) on its differenced inference count:
    slope = uncounted active time per inference, intercept = start-up difference long - short."""
    points = [(rep["dn"], rep["workload_ms"]) for r in rows for rep in r["repeats"] if not rep["rejected"]]
    if len(points) < 4 or len({x for x, _ in points}) < 2:
        return None
    n = len(points)
    mx = statistics.fmean(x for x, _ in points)
    my = statistics.fmean(y for _, y in points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx
    intercept = my - slope * mx
    s2 = sum((y - intercept - slope * x) ** 2 for x, y in points) / (n - 2)
    return {"n": n, "x_min": min(x for x, _ in points), "x_max": max(x for x, _ in points),
            "slope_us": 1000 * slope, "slope_se_us": 1000 * math.sqrt(s2 / sxx),
            "intercept_ms": intercept, "intercept_se_ms": math.sqrt(s2 * (1 / n + mx * mx / sxx)),
            "resid_sd_ms": math.sqrt(s2)}


def reading(rows: list[dict], args: argparse.Namespace) -> list[str]:
    """The reading, every number in it computed from this run's rows."""
    out = []
    main = [r for r in rows if r["series"] in ("sleep", "litert")]
    sweep = [r for r in rows if r["series"] == "window"]
    ok = [r for r in main if math.isfinite(r["error"])]
    if ok:
        worst = max(ok, key=lambda r: abs(r["error"]))
        within = [r for r in ok if abs(r["error"]) <= 0.02]
        low = [r for r in ok if r["error"] < 0]
        out.append(f"- **Accuracy.** At min_window_s = {args.min_window_s:g} s and {args.repeats} repeats, "
                   f"{len(within)} of {len(ok)} sizes are recovered within ±2 % of the injected energy; "
                   f"{len(low)} of {len(ok)} errors are negative; the largest is {worst['label']} at "
                   f"{_pct(worst['error'])}.")
    all_total = [v for r in main for v in r["total_ms"]]
    all_work = [v for r in main for v in r["workload_ms"]]
    all_meter = [v for r in main for v in r["meter_ms"]]
    if all_total:
        medians = [_median(r["total_ms"]) for r in main if r["total_ms"]]
        out.append(
            f"- **Where the error comes from.** In active time (error × inferences ÷ {args.active_mw:g} mW, "
            "the table 'Where each repeat's error comes from'), a repeat's error over all sizes of both series "
            "is median "
            f"{_f(_median(all_total), '+.1f')} ms, sd {_f(_sd(all_total), '.1f')} ms, and the per-size "
            f"medians range over {_f(min(medians), '+.1f')} … {_f(max(medians), '+.1f')} ms while the "
            "differenced timed loop is the same min_window_s for every size: apart from a "
            "per-inference part that matters only for the shortest inferences (next bullet), the "
            "error is a per-run amount of active time that did not cancel, so its share is about "
            f"that amount ÷ min_window_s. The **workload** share is median "
            f"{_f(_median(all_work), '+.1f')} ms (sd {_f(_sd(all_work), '.1f')} ms): the tool's process "
            "was active for a different time outside its timed loop in the long run than in the short "
            "run, as the emulator saw it: the emulator decides 'active' by "
            "polling /proc every 5 ms from a thread that shares the GIL with the test adbd and the "
            "harness's host side, so each start and exit edge is also late by up to a poll or a GIL "
            "wait (host polling), and that lateness is part of the energy actually injected. The "
            f"**meter chain** share is median {_f(_median(all_meter), '+.1f')} ms (sd "
            f"{_f(_sd(all_meter), '.1f')} ms): recovered vs what the emulator integrated, through ODPM "
            "counters that move only every "
            f"{1000 * COUNTER_PERIOD_S:.0f} ms, `cat` over adb, the parser and the protocol's "
            "arithmetic. The 50 ms granularity costs almost nothing here because the reader times each "
            "reading by the counter's own t= stamp (so a window's energy and duration describe the same "
            "interval), settle_s lets the last refresh land inside the window, and the idle power over "
            "the extra interval is subtracted through the baseline.")
    fs = [v for r in main for v in r["fixed_short_s"]]
    fl = [v for r in main for v in r["fixed_long_s"]]
    cs = [v for r in main for v in r["command_short_s"]]
    cl = [v for r in main for v in r["command_long_s"]]
    fit = workload_fit(main)
    if fs and fl:
        text = (
            f"- **Process start jitter and loop bookkeeping.** The tool's active time outside its timed "
            f"inferences (process start, Python + LiteRT import, model load, "
            f"{measure_settings().warmup_runs} warm-up runs, the loop's bookkeeping between inferences, "
            f"exit) was median {_f(1000 * _median(fs), '.0f')} ms (sd {_f(1000 * _sd(fs), '.0f')} ms) in "
            f"the short runs and {_f(1000 * _median(fl), '.0f')} ms (sd {_f(1000 * _sd(fl), '.0f')} ms) "
            f"in the long runs; the host saw the same in the adb command's wall time minus the loop "
            f"({_f(1000 * _median(cs), '.0f')} vs {_f(1000 * _median(cl), '.0f')} ms), so this is the "
            "process, not the emulator. Differencing cancels what the two runs share; what stays is "
            "their difference, the workload share.")
        if fit is not None:
            text += (
                f" A least-squares fit of each repeat's workload share against its differenced "
                f"inference count n_long − n_short ({fit['n']} repeats of both series, counts "
                f"{fit['x_min']:.0f}–{fit['x_max']:.0f}) gives a slope of {_f(fit['slope_us'], '.2f')} ± "
                f"{_f(fit['slope_se_us'], '.2f')} µs per inference: the loop's bookkeeping between two "
                "timed inferences (and the tool's truncation of each inference time to whole µs), "
                "active time that the meter counts and the tool's per-inference time does not; an "
                f"intercept of {_f(fit['intercept_ms'], '+.1f')} ± {_f(fit['intercept_se_ms'], '.1f')} ms, "
                + ("a systematic start-up difference between the short run (which follows the idle "
                   "baseline) and the long run (which follows the short run after settle_s)"
                   if abs(fit["intercept_ms"]) > 2 * fit["intercept_se_ms"] else
                   "i.e. no systematic start-up difference between the short and the long run at this "
                   "precision")
                + f"; and a residual sd of {_f(fit['resid_sd_ms'], '.0f')} ms, the run-to-run jitter of "
                "process start and exit on a shared, loaded host, which differencing cannot remove.")
        out.append(text)
    sleep = [r for r in ok if r["series"] == "sleep"]
    if sleep:
        biases = ", ".join(f"{r['sleep_us'] / 1000:g} ms {_pct(r['error'])}" for r in sleep)
        sleep_ms = [v for r in sleep for v in r["total_ms"]]
        out.append(f"- **By size (sleep series).** {biases}. In active time the per-size medians are "
                   + ", ".join(f"{_f(_median(r['total_ms']), '+.0f')}" for r in sleep)
                   + f" ms, against a per-repeat sd of {_f(_sd(sleep_ms), '.0f')} ms over the series; "
                   "the differenced window is the same min_window_s for every size, so the same "
                   "amount of active time is the same share of the energy at every size.")
    lit = [r for r in ok if r["series"] == "litert"]
    if lit:
        shortest = min(lit, key=lambda r: r["tool_ms_per_inference"])
        out.append("- **Real LiteRT.** " + ", ".join(
            f"{r['label']} ({_f(r['tool_ms_per_inference'], '.3g')} ms/inference) {_pct(r['error'])}, "
            f"CV {_f(100 * r['cv'], '.1f')} %" for r in lit) + ". These runs are CPU-bound on the same "
            "two cores as the host side of the harness, the test adbd and the emulator; a repeat's "
            "error in active time has sd "
            f"{_f(_sd([v for r in lit for v in r['total_ms']]), '.0f')} ms here vs "
            f"{_f(_sd([v for r in sleep for v in r['total_ms']]), '.0f')} ms in the sleep series. "
            + (f"The fitted {_f(fit['slope_us'], '.2f')} µs of uncounted bookkeeping per inference is "
               + ", ".join(f"{_f(100 * fit['slope_us'] / (1000 * r['tool_ms_per_inference']), '.2g')} % "
                           f"of {r['label']}'s inference time" for r in lit)
               + f"; it is below 0.5 % for inferences longer than {_f(fit['slope_us'] / 5, '.2g')} ms. "
               f"For {shortest['label']}, the shortest, the expected bias from it is "
               f"{_pct(fit['slope_us'] / (1000 * shortest['tool_ms_per_inference']), 1)}, against a "
               f"measured {_pct(shortest['error'], 1)} (per-repeat CV {_f(100 * shortest['cv'], '.1f')} %)."
               if fit is not None else ""))
    if sweep:
        by_window: dict[float, list[dict]] = {}
        for r in sweep:
            by_window.setdefault(r["min_window_s"], []).append(r)
        parts, sds = [], []
        for w, group in sorted(by_window.items()):
            ms = [v for r in group for v in r["total_ms"]]
            rel = [abs(e) for r in group for e in r["repeat_errors"]]
            sds.append(_sd(ms))
            parts.append(f"{w:g} s: per-repeat |error| mean {_f(100 * statistics.fmean(rel), '.1f')} %, "
                         f"its sd in active time {_f(_sd(ms), '.0f')} ms, CV "
                         + "/".join(_f(100 * r["cv"], '.1f') for r in group) + " %, measure error "
                         + "/".join(_pct(r["error"], 1) for r in group))
        windows = sorted(by_window)
        rel = [sd / (1000 * w) for sd, w in zip(sds, windows, strict=True)]
        verdict = ""
        if len(windows) > 1 and all(math.isfinite(v) and v > 0 for v in rel):
            gain, wider = rel[0] / rel[-1], windows[-1] / windows[0]
            how = ("about in proportion to the window" if 0.7 * wider <= gain <= 1.3 * wider else
                   "less than in proportion to the window" if gain < 0.7 * wider else
                   "more than in proportion to the window")
            verdict = (" As a share of the window the per-repeat sd is "
                       + ", ".join(f"{_f(100 * v, '.1f')} %" for v in rel)
                       + f": {_f(gain, '.1f')} × smaller for a {wider:g} × longer window, {how} "
                       "(the jitter in ms grew with the window in this run: "
                       + " → ".join(f"{_f(v, '.0f')}" for v in sds) + " ms)." if gain < 0.7 * wider else
                       " As a share of the window the per-repeat sd is "
                       + ", ".join(f"{_f(100 * v, '.1f')} %" for v in rel)
                       + f": {_f(gain, '.1f')} × smaller for a {wider:g} × longer window, {how}.")
        out.append(f"- **Error vs window** ({args.sweep_size:g} ms inferences, {args.repeats} repeats): "
                   f"{'; '.join(parts)}.{verdict} A measurement's error (the median of its repeats) is "
                   "that jitter further reduced by the median; with this few measures per window it is "
                   "itself noisy. The harness's default min_window_s is 10 s, which this run did not "
                   "measure.")
    timing = [r for r in main if math.isfinite(r["wall_s"]) and r["repeat_errors"]]
    if timing:
        ratios = [r["wall_s"] / r["min_window_s"] for r in timing]
        per_window = [r["wall_s"] / (len(r["repeat_errors"]) * r["min_window_s"]) for r in timing]
        inside = [r["windows_s"] / r["wall_s"] for r in timing]
        out.append(
            f"- **Device time.** One candidate cost {_f(min(ratios), '.1f')}–{_f(max(ratios), '.1f')} × "
            f"min_window_s at {args.min_window_s:g} s ({_f(min(per_window), '.2f')}–"
            f"{_f(max(per_window), '.2f')} × min_window_s per repeat), {_f(100 * min(inside), '.0f')}–"
            f"{_f(100 * max(inside), '.0f')} % of it inside meter windows. By construction a repeat "
            "holds an idle baseline (min_window_s), a short run (min_window_s / 4 plus start-up) and a "
            "long run (min_window_s plus the short run's loop plus start-up), each closed by settle_s, "
            "so at least 2.5 × min_window_s of windows per repeat; the rest is the latency run, pushes, "
            "and adb round trips for counters, temperatures and CPU caps.")
    jitter = _f(_sd(all_total), '.0f') if all_total else "n/a"
    out.append("- **Where it breaks down.** (1) Short windows: the per-run amount of active time that does "
               f"not cancel (sd {jitter} ms per repeat in this run) is a visible share of a window of "
               "a second or less. (2) Very short inferences: the loop's own bookkeeping between "
               "inferences is counted by the meter and not by the tool's per-inference time"
               + (f" ({_f(fit['slope_us'], '.1f')} µs per inference here)" if fit is not None else "")
               + ". (3) A host so loaded that the tool's start-up or the emulator's poll "
               "stalls: such a repeat is an outlier, absorbed by the median, visible in the CV. These "
               "numbers test the harness's arithmetic and timing through the real adb path against an "
               "emulated PMIC; a real phone adds sensor error, DVFS and thermal drift that no emulator has.")
    return out


def render(rows: list[dict], args: argparse.Namespace, machine: dict, started: str, took_s: float,
           loads: tuple[float, float], failures: list[str], command: str) -> str:
    lines = ["## Energy benchmark (`bench/energy_bench.py`)", ""]
    add = lines.append
    add("Written by `bench/energy_bench.py`; do not edit by hand (rerun it). Raw numbers: "
        f"`{_rel(args.raw)}` (git-ignored).")
    add("")
    add(f"- Date: {started}; the run took {took_s / 60:.1f} min of wall time.")
    add(f"- Machine: {machine['nproc']} CPUs ({machine['cpu']}), memory {machine['memory']}, Linux "
        f"{machine['kernel']}, Python {machine['python']}, {machine['adb']}; "
        + ", ".join(f"{k} {v}" for k, v in machine["versions"].items()) + ".")
    add(f"- Code: commit {machine['commit']}.")
    add(f"- Load average (1 min) at start / end: {loads[0]:.2f} / {loads[1]:.2f} (shared machine: "
        "other engineers' jobs run at the same time; every timing includes that contention).")
    add(f"- Command: `{command}`")
    add("")
    add("**Setup.** `AndroidDevice` built from a `DeviceSpec` (transport adb, runner benchmark_model, "
        f"`meter = MeterSpec(\"odpm\", path=\"{ODPM_DIR}\")`, one thermal zone at 40 °C), over the real "
        "adb server (`adb nodaemon server` on a free port) to the test adbd of `tests/peers/adbd.py`, "
        "a fresh device per candidate, one `device.measure(model, settings)` each; "
        "`energy=EnergyProtocol(min_window_s=W, repeats=R, max_temp_c=80)` with every other setting "
        "at its default (short run W/4, idle baseline W, settle 0.25 s, policy flag). "
        f"Settings: threads 1, warm-up 5 runs, min_seconds 0.5, min_runs 20 (the harness's [measure] "
        f"defaults). Injected power: `OdpmEmulator` idle {args.idle_mw:g} mW, plus {args.active_mw:g} mW "
        "while the tool's process runs (counters refreshed every 50 ms, 5 rails on two iio devices). "
        "The tool is `tests/peers/fake_benchmark_model.py` (copied under a random name, the emulator's "
        "marker) behind a `#!/bin/sh` wrapper: in the sleep series each inference sleeps "
        "`FAKE_BENCHMARK_SLEEP_US` (the model it loads is a 16→4 dense net, for the output check); in "
        "the LiteRT series it runs real LiteRT inferences (ai-edge-litert, XNNPACK, one thread) of "
        "float32 conv nets built by this script.")
    add("")
    add("**Injected energy per inference** = active_mw × the tool's per-inference time over the "
        "differenced timed loop of that repeat, (window_long − window_short) ÷ (n_long − n_short), "
        "median over the repeats; **recovered** = `Measurement.energy_mj_median`; **error** = "
        "recovered ÷ injected − 1. Per-repeat values come from "
        "`Measurement.energy_detail[\"energy_mj_per_repeat\"]`; **MAD** = `energy_mj_spread` "
        "(unscaled median absolute deviation); **CV** = sample sd ÷ mean of the per-repeat values. "
        "**Device time per candidate** = wall time of `device.measure` (prepare and pushes, the "
        "latency run, all repeats, clean-up). **Net power** = `Measurement.power_mw_mean` (injected: "
        f"{args.active_mw:g} mW).")
    add("")
    if failures:
        add("**Failed cases** (not in the tables): " + "; ".join(failures))
        add("")

    sleep = [r for r in rows if r["series"] == "sleep"]
    litert = [r for r in rows if r["series"] == "litert"]
    sweep = [r for r in rows if r["series"] == "window"]
    n = 1
    if sleep:
        add(f"### {n}. Sleep series: recovered vs injected (min_window_s {args.min_window_s:g} s, "
            f"{args.repeats} repeats)")
        add("")
        lines += size_table(sleep, litert=False)
        add("")
        n += 1
    if litert:
        add(f"### {n}. Real LiteRT series: recovered vs injected (min_window_s {args.min_window_s:g} s, "
            f"{args.repeats} repeats)")
        add("")
        add("Models (float32, 3×3 'same' conv + ReLU layers, global average pooling, dense 10): "
            + "; ".join(f"{r['label']}: input {r['model_info']['input']}, widths "
                        f"{r['model_info']['widths']}, {r['model_info']['params']} parameters, "
                        f"{r['model_info']['bytes'] / 1024:.0f} KiB" for r in litert) + ".")
        add("")
        lines += size_table(litert, litert=True)
        add("")
        n += 1
    if sleep or litert:
        add(f"### {n}. Device time per candidate")
        add("")
        lines += time_table(sleep + litert + sweep, lambda r: r["label"])
        add("")
        n += 1
    if sweep:
        add(f"### {n}. Error vs window ({args.sweep_size:g} ms sleep per inference, "
            f"{args.repeats} repeats, {args.sweep_measures} independent measure(s) per window)")
        add("")
        lines += sweep_table(sweep)
        add("")
        n += 1
    if rows:
        add(f"### {n}. Where each repeat's error comes from")
        add("")
        add("Each repeat's error expressed as active time, (recovered − injected) × (n_long − n_short) ÷ "
            "active_mw, and split in two with the emulator's own integrated active time of each run "
            "(read around every `run_timed` call): the **workload share** is the long run's active time "
            "minus the short run's, minus the difference of their timed loops (start-up, warm-up, exit "
            "and loop overhead that did not cancel); the **meter-chain share** is recovered vs the "
            "emulator's own count (ODPM counters and their t= stamps, the idle baseline, the emulator's "
            "5 ms /proc poll). The two add up to the total.")
        add("")
        lines += decomposition_table(rows, lambda r: r["label"])
        add("")
        idle = [r["baseline_mw"] for r in rows if math.isfinite(r["baseline_mw"])]
        if idle:
            add(f"Idle baseline recovered: {min(idle):.2f} … {max(idle):.2f} mW (injected {args.idle_mw:g} "
                "mW). Flags raised by the protocol: "
                + (", ".join(sorted({f for r in rows for f in r['flags']})) or "none") + ". Output check: "
                + ("every measurement's output matched the host's" if all(r["output_matches"] for r in rows)
                   else "outputs: " + ", ".join(f"{r['label']}={r['output_matches']}" for r in rows))
                + f"; energy source: {', '.join(sorted({r['energy_source'] for r in rows}))}.")
            add("")
        add(f"### {n + 1}. Reading")
        add("")
        lines += reading(rows, args)
        add("")
    return "\n".join(lines) + "\n"


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def _command(argv: list[str] | None = None) -> str:
    argv = sys.argv[1:] if argv is None else argv
    return ".venv/bin/python -m bench.energy_bench" + "".join(f" {a}" for a in argv)


def report_only(args: argparse.Namespace) -> int:
    """Render the section again from a raw file, with the settings that run used."""
    raw = json.loads(args.raw.read_text())
    ran = argparse.Namespace(**{**vars(args), **{k: v for k, v in raw["args"].items()
                                                   if k not in ("output", "raw", "no_write", "report_only")}})
    section = render(raw["rows"], ran, raw["machine"], raw["started"], raw["took_s"],
                     tuple(raw["loadavg"]), raw["failures"], raw.get("command", "unknown"))
    if args.no_write:
        print(section)
    else:
        write_section(args.output, SECTION, section)
        log.info("rewrote the energy section of %s from %s", args.output, args.raw)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    if args.report_only:
        return report_only(args)
    os.environ.pop("FAKE_BENCHMARK_SLEEP_US", None)  # the LiteRT wrapper must not inherit one
    started = _dt.datetime.now().isoformat(timespec="seconds")
    load_start = os.getloadavg()[0]
    t0 = time.perf_counter()
    machine = machine_info(("ai-edge-litert", "keras", "tensorflow-cpu", "adbutils"),
                           watched=("devices", "tests/peers"), adb=True)
    results: list[dict] = []
    rows: list[dict] = []
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="energy_bench_") as tmp:
        root = Path(tmp)
        models = root / "models"
        models.mkdir()
        log.info("building models (keras + LiteRT converter)")
        tiny, litert = build_models(models, args.litert)
        cases = plan_cases(args, tiny, litert)
        log.info("%d cases", len(cases))
        with Bench(root) as bench:
            for i, case in enumerate(cases, 1):
                log.info("[%d/%d] %s (min_window_s %g s)", i, len(cases), case.label, case.min_window_s)
                try:
                    result = bench.measure(case, args)
                except Exception as e:  # noqa: BLE001 - one failed case must not lose the others
                    message = f"{case.label}: {type(e).__name__}: {' '.join(str(e).split())}"[:400]
                    log.error("%s", message)
                    failures.append(message)
                    continue
                results.append(result)
                row = analyse(result, args.active_mw)
                rows.append(row)
                log.info("    injected %.4g mJ, recovered %.4g mJ (%s), CV %.2f %%, device time %.1f s",
                         row["injected_mj"], row["recovered_mj"], _pct(row["error"]), 100 * row["cv"],
                         row["wall_s"])
    took_s = time.perf_counter() - t0
    loads = (load_start, os.getloadavg()[0])
    args.raw.parent.mkdir(parents=True, exist_ok=True)
    command = _command(argv)
    raw = {"started": started, "took_s": took_s, "command": command, "args": {k: str(v) if isinstance(v, Path) else v
                                                          for k, v in vars(args).items()},
           "machine": machine, "loadavg": loads, "failures": failures,
           "rows": [{k: v for k, v in r.items() if k != "repeats"} | {"repeats": r["repeats"]} for r in rows],
           "results": results}
    tmp_raw = args.raw.with_name(f".{args.raw.name}.{os.getpid()}.tmp")
    tmp_raw.write_text(json.dumps(raw, indent=1, default=str))
    os.replace(tmp_raw, args.raw)
    section = render(rows, args, machine, started, took_s, loads, failures, command)
    if args.no_write:
        print(section)
    else:
        write_section(args.output, SECTION, section)
        log.info("wrote the energy section of %s and %s", args.output, args.raw)
    return 1 if failures and not rows else 0


if __name__ == "__main__":
    sys.exit(main())
