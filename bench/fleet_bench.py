"""Device-fleet benchmark: throughput and scaling of the fleet over 1, 2, 4, 8 emulated phones,
and where each measurement's time goes.

What is measured (issue "Device fleet", benchmark section): with N emulated devices on loopback,
candidates measured per minute and each device's busy share while the fleet is fed ready
candidates (aim: >= 90 % scaling efficiency at N = 8); the harness's overhead per measurement
(connect, push, run, parse ...) against the timed window itself; the first measurement on a
fresh device (connect, health check, runner push) apart from the steady state.

The emulated devices are Android phones over adb, not Linux boards over SSH, because this host
has two cores: real LiteRT inference on eight devices would measure CPU contention, not the
harness. Each device is a test adbd (``tests/peers/adbd.py``, one Python process per device, on
127.0.0.2 ... 127.0.0.9) reached through one real adb server (``adb nodaemon server`` on a free
port), and its ``benchmark_model`` is a wrapper around ``tests/peers/fake_benchmark_model.py``
with ``FAKE_BENCHMARK_SLEEP_US``: every inference sleeps, so a device's timed loop waits instead
of burning the host's cores. A sleeping fake computes no output, so the wrapper then writes the
raw output bytes that LiteRT on the host computed for that model and probe beforehand (the file
the real tool writes with ``--output_filepath``); the harness pulls, digests and compares them as
usual, so a wrong pipeline would show as ``output_matches = False``. The wrapper is padded to
``--runner-mb`` MiB (bytes after the script's ``exit``, never read) so that the first push of
the "binary" moves about as much as a real arm64 ``benchmark_model`` build.

The harness side is the real one: an inventory parsed from TOML (all devices share the tag, so
one device class), ``harness.fleet_setup.open_devices`` / ``open_fleet`` as the search builds
them (leases and health records in a fresh SQLite results database per N), and N worker
threads each calling ``fleet.measure(model, settings, probe)`` on the next ready candidate, as
the search's measurement pool does. Candidates are distinct ``.tflite`` files (document 000's
reference on 8x8x1 inputs, float32, ~106 KB, one seed each), so no host-side cache sees a model
twice within a run; the device's runner cache is left to work as in production.

Per N: a warm-up round (N candidates at once; each device's first measurement: adb connect,
health check with the runner push, first measure), then the steady run (K x N candidates, N
workers), timed. Time inside each measurement is split by wrapping, in this process only, the
fleet's, the devices' and the transports' methods (no harness file is changed); the wrappers
time exclusive spans, so the parts add up to the measurement's wall time.

    .venv/bin/python -m bench.fleet_bench                       # defaults: 1,2,4,8 devices, K = 16
    .venv/bin/python -m bench.fleet_bench --devices 1,8 --candidates-per-device 4 --min-seconds 0.5

Writes its section of ``bench/RESULTS.md`` between ``<!-- fleet-bench:start -->`` and
``<!-- fleet-bench:end -->`` (appended when absent; the rest of the file is left as it is) and
the raw numbers to ``bench/_runs/fleet-bench/last.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import logging
import os
import queue
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.machine import machine_info  # noqa: E402
from bench.results_file import write_section  # noqa: E402

log = logging.getLogger("fleet_bench")

SECTION = "fleet-bench"
TAG = "emu-phone"
FAKE_TOOL = REPO_ROOT / "tests" / "peers" / "fake_benchmark_model.py"
WORK_DIR = BENCH_DIR / "_runs" / "fleet-bench"
INPUT_SHAPE = (8, 8, 1)
EFFICIENCY_AIM = 0.90
_CLK = os.sysconf("SC_CLK_TCK")


# --- arguments ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark the device fleet over emulated adb phones (see the module docstring).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--devices", default="1,2,4,8", help="comma-separated device counts N (1..8)")
    p.add_argument("--candidates-per-device", type=int, default=16,
                   help="K: the steady run measures K x N candidates")
    p.add_argument("--min-seconds", type=float, default=1.0, help="MeasureSettings.min_seconds (timed window)")
    p.add_argument("--warmup-runs", type=int, default=5, help="MeasureSettings.warmup_runs")
    p.add_argument("--min-runs", type=int, default=20, help="MeasureSettings.min_runs")
    p.add_argument("--sleep-us", type=int, default=5000, help="FAKE_BENCHMARK_SLEEP_US: one emulated inference")
    p.add_argument("--runner-mb", type=float, default=4.0, help="size of the pushed benchmark_model wrapper (MiB)")
    p.add_argument("--output", type=Path, default=BENCH_DIR / "RESULTS.md")
    p.add_argument("--repeats", type=int, default=2,
                   help="run every N this many times (interleaved: 1,2,4,8,1,2,4,8 ...) to see the run-to-run spread")
    p.add_argument("--keep", action="store_true", help="keep the per-N work directories (peer roots, lease DB)")
    # internal: the child processes
    p.add_argument("--serve-peer", nargs=2, metavar=("ROOT", "HOST"), help=argparse.SUPPRESS)
    p.add_argument("--make-models", nargs=3, metavar=("DIR", "COUNT", "SEED"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_peer or args.make_models:
        return args
    try:
        args.device_counts = sorted({int(x) for x in args.devices.split(",") if x.strip()})
    except ValueError:
        p.error(f"--devices: expected comma-separated integers, got {args.devices!r}")
    if not args.device_counts or not all(1 <= n <= 8 for n in args.device_counts):
        p.error("--devices: each count must be in 1..8 (loopback peers 127.0.0.2 .. 127.0.0.9)")
    if args.candidates_per_device < 1 or args.repeats < 1:
        p.error("--candidates-per-device and --repeats must be >= 1")
    if args.min_seconds <= 0 or args.sleep_us < 1 or args.runner_mb < 0:
        p.error("--min-seconds and --sleep-us must be positive, --runner-mb >= 0")
    return args


# --- child processes: one emulated phone; the candidate models --------------------------------------


def serve_peer(root: str, host: str) -> int:
    """Run one test adbd on ``host`` with storage in ``root`` until stdin closes."""
    from tests.peers.adbd import AdbdPeer

    peer = AdbdPeer(Path(root), host=host, model="FleetBenchPhone")
    peer.start()
    print(json.dumps({"serial": peer.serial, "pid": os.getpid()}), flush=True)
    try:
        sys.stdin.read()
    finally:
        peer.stop()
    return 0


def make_models(out_dir: str, count: int, seed: int) -> int:
    """Write ``count`` distinct float32 .tflite candidates, the probe, and each model's raw output.

    ``outputs/<sha256>.bin`` holds every output tensor's raw bytes for the probe as the device
    code feeds it (``fit_probe``), computed with the host's LiteRT: what the real
    ``benchmark_model --output_filepath`` writes.
    """
    import hashlib

    import keras
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    from devices.remote.common import fit_probe
    from harness.example import build_doc000
    from search.lowering import lower

    out = Path(out_dir)
    (out / "models").mkdir(parents=True, exist_ok=True)
    (out / "outputs").mkdir(parents=True, exist_ok=True)
    probe = np.random.default_rng(seed).random((1, *INPUT_SHAPE)).astype(np.float32)
    np.save(out / "probe.npy", probe)
    calibration = np.random.default_rng(seed + 1).random((4, *INPUT_SHAPE)).astype(np.float32)
    names = []
    for i in range(count):
        keras.utils.set_random_seed(seed * 100_003 + i)
        model = build_doc000(INPUT_SHAPE, 10)
        precision = {layer.name: "float32" for layer in model.layers if layer.name.startswith(("conv", "dense"))}
        data = lower(model, precision, calibration).tflite_bytes
        path = out / "models" / f"cand-{i:03d}.tflite"
        path.write_bytes(data)
        interpreter = Interpreter(model_content=data, num_threads=1)
        interpreter.allocate_tensors()
        detail = interpreter.get_input_details()[0]
        x = fit_probe("fleet-bench", path, interpreter, detail, probe)
        interpreter.set_tensor(detail["index"], x)
        interpreter.invoke()
        raw = b"".join(interpreter.get_tensor(d["index"]).tobytes() for d in interpreter.get_output_details())
        (out / "outputs" / f"{hashlib.sha256(data).hexdigest()}.bin").write_bytes(raw)
        names.append(path.name)
        keras.backend.clear_session()
    (out / "manifest.json").write_text(json.dumps({"count": count, "seed": seed, "models": names}))
    return 0


def ensure_models(count: int, seed: int = 0) -> Path:
    """The model directory for ``count`` candidates (made once in a child process, then reused)."""
    for existing in sorted(WORK_DIR.glob(f"models-*-s{seed}")):  # a set at least this large will do
        try:
            if json.loads((existing / "manifest.json").read_text())["count"] >= count:
                return existing
        except (OSError, ValueError, KeyError):
            continue
    directory = WORK_DIR / f"models-{count}-s{seed}"
    log.info("making %d candidate models in %s (once)", count, directory)
    shutil.rmtree(directory, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "bench.fleet_bench", "--make-models", str(directory), str(count),
                    str(seed)], cwd=REPO_ROOT, check=True)
    return directory


def write_wrapper(path: Path, outputs: Path, sleep_us: int, pad_mb: float) -> None:
    """The emulated phone's ``benchmark_model``: the fake tool with sleeping inferences, then the
    host-computed output file; padded with bytes after ``exit`` to a realistic binary size."""
    script = f"""#!/bin/sh
# fleet-bench emulated benchmark_model (bench/fleet_bench.py): every inference sleeps
# {sleep_us} us; the output file is the one LiteRT on the host computed for this model.
graph=
out=
for a in "$@"; do
  case "$a" in
    --graph=*) graph="${{a#--graph=}}" ;;
    --output_filepath=*) out="${{a#--output_filepath=}}" ;;
  esac
done
FAKE_BENCHMARK_SLEEP_US={sleep_us} "{sys.executable}" -S "{FAKE_TOOL}" "$@" || exit $?
if [ -n "$out" ]; then
  sum=$(sha256sum < "$graph" | cut -c1-64)
  cp "{outputs}/$sum.bin" "$out" || exit 1
fi
exit 0
"""
    data = script.encode()
    pad = int(pad_mb * 1024 * 1024) - len(data)
    if pad > 0:
        data += b"\n#" + os.urandom(pad)
    path.write_bytes(data)
    path.chmod(0o755)


# --- instrumentation --------------------------------------------------------------------------------


class _Frame:
    __slots__ = ("label", "lump", "children")

    def __init__(self, label: str, lump: bool) -> None:
        self.label = label
        self.lump = lump
        self.children = 0.0


class Profiler:
    """Exclusive time per label, per measurement, in the thread that runs the measurement.

    The fleet runs a class's claim, attempt and release in one thread; the record begun there
    collects every wrapped call's *exclusive* time (its own minus its wrapped callees'), so the
    labels of one record add up to the wrapped top call. A *lump* label keeps its callees'
    time (nothing inside it is split further). Counters count calls even inside lumps.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def begin(self) -> dict:
        record = {"t": defaultdict(float), "n": defaultdict(int)}
        self._local.record = record
        self._local.stack = []
        return record

    def end(self) -> None:
        self._local.record = None

    @property
    def record(self) -> dict | None:
        return getattr(self._local, "record", None)

    def timed(self, fn, label, *, lump: bool = True):
        """``fn`` wrapped; ``label`` may be a function of the call's arguments."""

        def wrapper(*args, **kwargs):
            record = self.record
            stack = getattr(self._local, "stack", None)
            if record is None or (stack and stack[-1].lump):
                return fn(*args, **kwargs)
            name = label(*args, **kwargs) if callable(label) else label
            frame = _Frame(name, lump)
            stack.append(frame)
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent = time.perf_counter() - started
                stack.pop()
                record["t"][name] += spent - frame.children
                record["n"][name] += 1
                if stack:
                    stack[-1].children += spent

        return wrapper

    def counted(self, fn, label: str):
        def wrapper(*args, **kwargs):
            record = self.record
            if record is not None:
                record["n"][label] += 1
            return fn(*args, **kwargs)

        return wrapper


def _runner_or_other(argv_or_command, *_, **__) -> str:
    text = argv_or_command if isinstance(argv_or_command, str) else " ".join(argv_or_command)
    return "runner command" if "--graph=" in text else "other commands"


def instrument_transport(transport, prof: Profiler) -> None:
    transport.open = prof.timed(transport.open, "connect")
    transport.make_run_dir = prof.timed(transport.make_run_dir, "run dir")
    transport.push = prof.timed(transport.push, "push model+probe")
    transport.pull = prof.timed(transport.pull, "pull output")
    transport.run = prof.timed(transport.run, _runner_or_other)
    transport._exec = prof.counted(transport._exec, "shell commands")
    transport._put = prof.counted(transport._put, "file pushes")
    transport._get = prof.counted(transport._get, "file pulls")


def instrument_device(device, prof: Profiler) -> None:
    make_transport = device._make_transport

    def make_and_instrument():
        transport = make_transport()
        instrument_transport(transport, prof)
        return transport

    device._make_transport = make_and_instrument
    device._references.get = prof.timed(device._references.get, "host reference")
    device._ensure_cached = prof.timed(device._ensure_cached, "runner cache check/push")
    device._output_checksum = prof.timed(device._output_checksum, "pull output")
    device._fingerprint = prof.timed(device._fingerprint, "fingerprint")
    device._remove_run_dir = prof.timed(device._remove_run_dir, "cleanup")
    device.to_measurement = prof.timed(device.to_measurement, "device code")
    device.prepare = prof.timed(device.prepare, "device code", lump=False)
    device.health_check = prof.timed(device.health_check, "health check", lump=False)
    run_timed = prof.timed(device.run_timed, "device code", lump=False)

    def run_timed_noting(prepared, settings):
        run = run_timed(prepared, settings)
        record = prof.record
        if record is not None:
            record["command_s"] = run.command_s
        return run

    device.run_timed = run_timed_noting
    measure = prof.timed(device.measure, "device code", lump=False)

    def measure_noting(model_path, settings, probe_input=None):
        record = prof.record
        started = time.perf_counter()
        try:
            return measure(model_path, settings, probe_input)
        finally:
            if record is not None:
                record["device"] = device.name
                record["measure_span"] = (started, time.perf_counter())

    device.measure = measure_noting


def instrument_fleet(fleet, store, prof: Profiler, records: dict) -> None:
    for name in ("acquire", "release", "renew", "states", "state", "holder", "record_success",
                 "record_failure", "record_health"):
        setattr(store, name, prof.timed(getattr(store, name), "lease db"))
    fleet._take = prof.timed(fleet._take, "fleet logic", lump=False)
    fleet._give_back = prof.timed(fleet._give_back, "fleet logic", lump=False)
    measure_class = prof.timed(fleet._measure_class, "fleet logic", lump=False)

    def measure_class_recorded(device_class, path, settings, probe_input, order):
        record = prof.begin()
        started = time.perf_counter()
        try:
            return measure_class(device_class, path, settings, probe_input, order)
        finally:
            record["class_span"] = (started, time.perf_counter())
            records[str(path)] = record
            prof.end()

    fleet._measure_class = measure_class_recorded


# --- one N ----------------------------------------------------------------------------------------


def _proc_cpu_s(pid: int) -> float:
    """utime + stime + cutime + cstime of ``pid`` (its waited-for children included), seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return float("nan")
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / _CLK


def _self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Peers:
    """N emulated phones, one child process each, on 127.0.0.2 ... 127.0.0.(N+1)."""

    def __init__(self, root: Path, n: int) -> None:
        self.procs: list[subprocess.Popen] = []
        self.serials: list[str] = []
        env = {k: v for k, v in os.environ.items() if not k.startswith("FAKE_BENCHMARK_")}
        try:
            for i in range(n):
                phone = root / f"phone-{i + 1}"
                phone.mkdir(parents=True)
                proc = subprocess.Popen(
                    [sys.executable, "-m", "bench.fleet_bench", "--serve-peer", str(phone), f"127.0.0.{i + 2}"],
                    cwd=REPO_ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                self.procs.append(proc)
            for proc in self.procs:
                line = proc.stdout.readline()
                if not line:
                    raise RuntimeError(f"emulated phone (pid {proc.pid}) did not start")
                self.serials.append(json.loads(line)["serial"])
        except BaseException:
            self.stop()
            raise

    def cpu_s(self) -> float:
        return sum(_proc_cpu_s(p.pid) for p in self.procs)

    def stop(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def inventory_text(serials: list[str], adb_port: int, binary: Path) -> str:
    lines = ["[defaults]", 'transport = "adb"', f'adb_server = "127.0.0.1:{adb_port}"',
             f'benchmark_binary = "{binary}"', f'tags = ["{TAG}"]', ""]
    for i, serial in enumerate(serials, 1):
        lines += [f"[devices.emu-{i}]", f'serial = "{serial}"', ""]
    return "\n".join(lines)


def drive(fleet, models: list[Path], workers: int, settings, probe) -> tuple[list[dict], float, float]:
    """``workers`` threads each measuring the next ready candidate until none is left."""
    todo: queue.SimpleQueue = queue.SimpleQueue()
    for path in models:
        todo.put(path)
    done: list[dict] = []
    lock = threading.Lock()

    def work() -> None:
        while True:
            try:
                path = todo.get_nowait()
            except queue.Empty:
                return
            started = time.perf_counter()
            result = fleet.measure(path, settings, probe)
            ended = time.perf_counter()
            [klass] = result.classes.values()
            m = klass.measurement
            row = {"path": str(path), "start": started, "end": ended, "ok": klass.ok,
                   "attempts": klass.attempts, "errors": list(klass.error_lines()),
                   "device": m.device if m else None, "window_s": m.window_s if m else None,
                   "latency_ms_median": m.latency_ms_median if m else None,
                   "n_inferences": m.n_inferences if m else None,
                   "output_matches": m.output_matches if m else None}
            with lock:
                done.append(row)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=work, name=f"bench-worker-{i}") for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return done, t0, time.perf_counter()


def calibrate_link(device, server, serial: str, work: Path, repeats: int = 20) -> dict:
    """Median latency of single transport operations on an idle emulated phone (ms), and of the
    adb client's own ``adb shell true`` (a process start included), for reading the breakdown."""
    transport = device._link()  # open already; no record in this thread, so nothing is attributed
    small = work / "calibrate.bin"
    small.write_bytes(os.urandom(256))
    remote = f"{device.spec.workdir}/calibrate.bin"

    def median_ms(fn, k: int = repeats) -> float:
        spent = []
        for _ in range(k):
            started = time.perf_counter()
            fn()
            spent.append(time.perf_counter() - started)
        return statistics.median(spent) * 1e3

    out = {
        "run true": median_ms(lambda: transport.run("true", timeout_s=10)),
        "push 256 B (with sha256 check)": median_ms(lambda: transport.push(small, remote, timeout_s=10)),
        "pull 256 B": median_ms(lambda: transport.pull(remote, work / "calibrate.back", timeout_s=10)),
        "adb client: adb shell true (process start included)": median_ms(
            lambda: server.adb("-s", serial, "shell", "true"), 10),
    }
    transport.run(["rm", "-f", remote], timeout_s=10)
    return out


def run_phase(n: int, repeat: int, args: argparse.Namespace, server, model_dir: Path, run_root: Path) -> dict:
    import numpy as np

    from devices.base import MeasureSettings
    from devices.inventory import parse_inventory
    from harness.config import MeasureConfig
    from harness.fleet_setup import open_devices, open_fleet

    phase_dir = run_root / f"n{n}-r{repeat}"
    phase_dir.mkdir(parents=True)
    binary = phase_dir / "build" / "benchmark_model"
    binary.parent.mkdir()
    write_wrapper(binary, model_dir / "outputs", args.sleep_us, args.runner_mb)
    all_models = sorted((model_dir / "models").glob("cand-*.tflite"))  # cand-000, cand-001 ...
    k = args.candidates_per_device
    warm_models, steady_models = all_models[:n], all_models[n:n + k * n]
    probe = np.load(model_dir / "probe.npy")
    measure_config = MeasureConfig(devices=(f"tag:{TAG}",), min_seconds=args.min_seconds,
                                   warmup_runs=args.warmup_runs, min_runs=args.min_runs)
    settings = MeasureSettings(threads=measure_config.threads, warmup_runs=measure_config.warmup_runs,
                               min_seconds=measure_config.min_seconds, min_runs=measure_config.min_runs)
    peers = Peers(phase_dir / "phones", n)
    fleet = store = None
    prof = Profiler()
    records: dict[str, dict] = {}
    try:
        inventory_path = phase_dir / "inventory.toml"
        inventory_path.write_text(inventory_text(peers.serials, server.port, binary))
        inventory = parse_inventory(inventory_path.read_text(), inventory_path)
        devices = open_devices(list(measure_config.devices), inventory)
        assert len({d.device_class for d in devices}) == 1 and len(devices) == n
        for device in devices:
            instrument_device(device, prof)
        fleet, store = open_fleet(devices, phase_dir / "results", measure_config)
        instrument_fleet(fleet, store, prof, records)

        # warm-up: every device's first measurement (connect, health check + runner push, measure)
        warm, w0, w1 = drive(fleet, warm_models, n, settings, probe)
        first_devices = {records[r["path"]].get("device") for r in warm}
        extra = 0
        while len(first_devices - {None}) < n and extra < 3:  # a device was skipped: one more round
            extra += 1
            more_models = all_models[n + k * n + (extra - 1) * n: n + k * n + extra * n]
            if len(more_models) < n:
                break
            more, _, w1 = drive(fleet, more_models, n, settings, probe)
            warm += more
            first_devices |= {records[r["path"]].get("device") for r in more}

        # steady: K x N ready candidates, N workers
        cpu0 = (_self_cpu_s(), peers.cpu_s(), server.cpu_s())
        load0 = os.getloadavg()[0]
        steady, s0, s1 = drive(fleet, steady_models, n, settings, probe)
        cpu1 = (_self_cpu_s(), peers.cpu_s(), server.cpu_s())
        load1 = os.getloadavg()[0]
        link = (calibrate_link(devices[0], server, peers.serials[0], phase_dir)
                if n == min(args.device_counts) and repeat == 0 else None)
    finally:
        if fleet is not None:
            fleet.close()
        if store is not None:
            store.close()
        peers.stop()
        for serial in peers.serials:
            server.adb("disconnect", serial)
        if not args.keep:
            shutil.rmtree(phase_dir, ignore_errors=True)

    for row in warm + steady:
        rec = records.get(row["path"], {})
        row["times"] = dict(rec.get("t", {}))
        row["counts"] = dict(rec.get("n", {}))
        row["command_s"] = rec.get("command_s")
        row["measure_span"] = rec.get("measure_span")
        row["class_span"] = rec.get("class_span")
        row["measured_on"] = rec.get("device")
    return {"n": n, "repeat": repeat, "warm": warm, "warm_span": (w0, w1), "warm_extra_rounds": extra,
            "steady": steady, "steady_span": (s0, s1),
            "cpu_s": {"harness": cpu1[0] - cpu0[0], "phones": cpu1[1] - cpu0[1], "adb_server": cpu1[2] - cpu0[2]},
            "load": (load0, load1), "link": link, "devices": [f"emu-{i}" for i in range(1, n + 1)],
            "settings": {"min_seconds": settings.min_seconds, "warmup_runs": settings.warmup_runs,
                         "min_runs": settings.min_runs, "threads": settings.threads}}


# --- analysis ---------------------------------------------------------------------------------------

DEVICE_PARTS = ("connect", "host reference", "run dir", "push model+probe", "runner cache check/push",
                "pull output", "fingerprint", "cleanup", "other commands", "device code")


def breakdown(row: dict) -> dict:
    """One measurement's wall time (s) split into exclusive parts."""
    t = defaultdict(float, row["times"])
    wall = row["end"] - row["start"]
    class_s = row["class_span"][1] - row["class_span"][0] if row["class_span"] else wall
    window = row["window_s"] or 0.0
    runner = t["runner command"]
    parts = {
        "fleet dispatch": wall - class_s,  # Fleet.measure's per-call thread pool, result assembly
        "fleet logic": t["fleet logic"],
        "lease db": t["lease db"],
        "health check": t["health check"],
        **{p: t[p] for p in DEVICE_PARTS},
        "runner start/warm-up/exit": runner - window,
        "timed window": window,
    }
    parts["unaccounted"] = wall - sum(parts.values())
    return {"wall": wall, "parts": parts, "counts": row["counts"]}


def _mean(values) -> float:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else float("nan")


def summarize(phase: dict) -> dict:
    n = phase["n"]
    s0, s1 = phase["steady_span"]
    wall = s1 - s0
    steady = phase["steady"]
    ok = [r for r in steady if r["ok"]]
    busy = defaultdict(float)
    window = defaultdict(float)
    count = defaultdict(int)
    for r in ok:
        if r["measure_span"]:
            a, b = r["measure_span"]
            busy[r["device"]] += min(b, s1) - max(a, s0)
        window[r["device"]] += r["window_s"] or 0.0
        count[r["device"]] += 1
    shares = [busy[d] / wall for d in phase["devices"]]
    window_shares = [window[d] / wall for d in phase["devices"]]
    parts = [breakdown(r) for r in ok]
    mean_parts = {k: _mean(p["parts"][k] for p in parts) for k in parts[0]["parts"]} if parts else {}
    counts = {k: _mean(p["counts"].get(k, 0) for p in parts)
              for k in ("shell commands", "file pushes", "file pulls")} if parts else {}
    first_rows = {}
    for r in phase["warm"]:
        device = r["measured_on"]
        if device and device not in first_rows and r["ok"]:
            first_rows[device] = r
    firsts = [breakdown(r) for r in first_rows.values()]
    first = {k: _mean(p["parts"][k] for p in firsts) for k in firsts[0]["parts"]} if firsts else {}
    first_wall = _mean(p["wall"] for p in firsts)
    first_counts = {k: _mean(p["counts"].get(k, 0) for p in firsts)
                    for k in ("shell commands", "file pushes", "file pulls")} if firsts else {}
    cpu = phase["cpu_s"]
    return {
        "n": n, "repeat": phase["repeat"], "candidates": len(steady), "ok": len(ok), "failed": len(steady) - len(ok),
        "retried": sum(1 for r in steady if r["attempts"] > 1),
        "output_mismatch": sum(1 for r in ok if r["output_matches"] is not True),
        "wall_s": wall, "per_min": len(ok) / wall * 60,
        "busy_mean": _mean(shares), "busy_min": min(shares), "busy_max": max(shares),
        "window_share": _mean(window_shares),
        "per_device": {d: count[d] for d in phase["devices"]},
        "measurement_wall_s": _mean(p["wall"] for p in parts),
        "parts": mean_parts, "counts": counts,
        "latency_ms_median": _mean(r["latency_ms_median"] for r in ok),
        "n_inferences": _mean(r["n_inferences"] for r in ok),
        "first": first, "first_wall_s": first_wall, "first_counts": first_counts, "first_n": len(firsts),
        "warm_wall_s": phase["warm_span"][1] - phase["warm_span"][0],
        "warm_extra_rounds": phase["warm_extra_rounds"],
        "cpu_per_measurement_s": {k: v / max(1, len(steady)) for k, v in cpu.items()},
        "cores_used": sum(cpu.values()) / wall,
        "load": phase["load"],
        "errors": sorted({e for r in steady for e in r["errors"]})[:5],
        "link": phase.get("link"),
    }


def aggregate(summaries: list[dict]) -> list[dict]:
    """One entry per N: means over its repeats (each repeat measures the same number of
    candidates, so means of per-repeat means are the pooled means), with every repeat's
    throughput and its efficiency against the N = 1 run of the same repeat."""
    by_n: dict[int, list[dict]] = defaultdict(list)
    for s in summaries:
        by_n[s["n"]].append(s)
    base = {s["repeat"]: s["per_min"] for s in by_n.get(1, [])}
    out = []
    for n in sorted(by_n):
        runs = sorted(by_n[n], key=lambda s: s["repeat"])
        agg = dict(runs[0])
        for key in ("candidates", "ok", "failed", "retried", "output_mismatch"):
            agg[key] = sum(r[key] for r in runs)
        for key in ("wall_s", "per_min", "busy_mean", "window_share", "measurement_wall_s", "latency_ms_median",
                    "n_inferences", "first_wall_s", "warm_wall_s", "cores_used"):
            agg[key] = _mean(r[key] for r in runs)
        agg["busy_min"] = min(r["busy_min"] for r in runs)
        agg["busy_max"] = max(r["busy_max"] for r in runs)
        for key in ("parts", "counts", "first", "first_counts", "cpu_per_measurement_s"):
            keys = runs[0][key].keys()
            agg[key] = {k: _mean(r[key].get(k) for r in runs if r[key]) for k in keys}
        agg["first_n"] = sum(r["first_n"] for r in runs)
        agg["per_device"] = {d: sum(r["per_device"].get(d, 0) for r in runs) for d in runs[0]["per_device"]}
        agg["per_min_runs"] = [r["per_min"] for r in runs]
        agg["efficiency_runs"] = [r["per_min"] / (n * base[r["repeat"]]) for r in runs if base.get(r["repeat"])]
        agg["load"] = (min(r["load"][0] for r in runs), max(r["load"][1] for r in runs))
        agg["loads"] = [r["load"] for r in runs]
        agg["errors"] = sorted({e for r in runs for e in r["errors"]})[:5]
        agg["link"] = next((r["link"] for r in runs if r.get("link")), None)
        agg["repeats"] = len(runs)
        out.append(agg)
    return out


# --- the report -------------------------------------------------------------------------------------


def _ms(x: float) -> str:
    return "–" if x != x else f"{x * 1e3:.0f}"


def _pct(x: float) -> str:
    return "–" if x != x else f"{x * 100:.1f} %"


def render(args: argparse.Namespace, summaries: list[dict], machine: dict, started: str, wall_s: float,
           load: tuple[float, float]) -> str:
    from harness.config import MeasureConfig

    defaults = MeasureConfig()
    by_n = {s["n"]: s for s in summaries}
    base = by_n.get(1)
    mismatched = sum(s["output_mismatch"] for s in summaries)
    matched = ("every measurement below compared equal" if not mismatched
               else f"{mismatched} measurement(s) below did not compare equal")
    lines = [
        "## Device fleet: throughput, scaling and overhead per measurement",
        "",
        "Written by `bench/fleet_bench.py` (its own section; the rest of this file belongs to "
        "the other benchmark scripts). Rerun it rather than edit this section.",
        "",
        f"- Date: {started} (section written {_dt.datetime.now().isoformat(timespec='seconds')}); "
        f"the benchmark took {wall_s:.0f} s of wall time",
        f"- Machine: {machine['nproc']} cores, {machine['cpu']}, memory {machine['memory']}, Linux "
        f"{machine['kernel']}, Python {machine['python']}, {machine['adb']}, "
        + ", ".join(f"{k} {v}" for k, v in machine["versions"].items()),
        f"- Code: commit {machine['commit']}",
        f"- Load average (1 min) at start / end: {load[0]:.2f} / {load[1]:.2f} (the machine is shared "
        "with other work; per-N values below)",
        f"- Command: `.venv/bin/python -m bench.fleet_bench --devices {','.join(map(str, args.device_counts))} "
        f"--candidates-per-device {args.candidates_per_device} --min-seconds {args.min_seconds:g} "
        f"--sleep-us {args.sleep_us} --runner-mb {args.runner_mb:g} --repeats {args.repeats}`",
        "",
        "### Setup",
        "",
        "- **Emulated devices: Android phones over adb**, one test adbd per device "
        "(`tests/peers/adbd.py`, each in its own process, on 127.0.0.2 … 127.0.0.(N+1)), all reached "
        "through one real adb server (`adb nodaemon server` on a free loopback port), as a phone farm "
        "on one host would be. Chosen over SSH boards because the host has 2 cores: real LiteRT "
        "inference on 8 devices would measure CPU contention, not the harness. The phones' "
        f"`benchmark_model` is `tests/peers/fake_benchmark_model.py` with `FAKE_BENCHMARK_SLEEP_US={args.sleep_us}`, "
        "so each inference *sleeps* and a timed window costs the host almost no CPU; a wrapper then "
        "writes the model's real output bytes (computed once beforehand with LiteRT on the host for "
        "that model and probe) to `--output_filepath`, so the harness pulls and checks an output as "
        f"with a real phone ({matched}). The wrapper is padded to "
        f"{args.runner_mb:g} MiB so its first push moves about as much as a real arm64 "
        "`benchmark_model`.",
        "- **Harness side: the real code path.** Inventory TOML → `harness.fleet_setup.open_devices` "
        "(`AndroidDevice` per phone, all tagged `emu-phone`, so **one device class**) → `open_fleet` "
        f"(fresh lease/health database per run, harness defaults: lease TTL {defaults.lease_ttl_s:g} s, "
        f"{defaults.retries} retries, quarantine after {defaults.quarantine_after}) → N worker "
        "threads each calling `fleet.measure(model, settings, probe)` on the next ready candidate (the "
        "search's measurement pool has one worker per device of the widest class). "
        f"Settings: min_seconds {args.min_seconds:g}, warm-up runs {args.warmup_runs}, "
        f"min runs {args.min_runs}, 1 thread.",
        f"- **Candidates**: distinct float32 `.tflite` files (document 000's reference on 8×8×1 inputs, "
        f"{args.model_kb:.0f} KB each, one weight seed each), never measured twice in a run; "
        "per N: a warm-up round of N candidates (each device's first measurement), then the steady run "
        f"of K × N = {args.candidates_per_device} × N "
        "candidates, timed from the first submission to the last result. Devices, adb connections and "
        "the lease database are fresh for each N.",
        "- **Attribution**: the bench wraps (in its own process, no harness file changed) the fleet's "
        "`_measure_class`/`_take`/`_give_back`, the lease store's methods, the device's `prepare`, "
        "`run_timed`, `_ensure_cached`, `_output_checksum`, `_fingerprint`, `_remove_run_dir`, host-reference "
        "lookup and health check, and the transport's `open`/`make_run_dir`/`push`/`pull`/`run`, timing "
        "exclusive spans in the thread that runs the measurement, so the parts add up to each "
        "measurement's wall time (`fleet.measure` seen from the worker).",
        "",
        "### Throughput and scaling (steady run, candidates ready)",
        "",
        "Scaling efficiency = throughput_N / (N × throughput_1). Busy share = time inside "
        "`device.measure` / steady wall time, per device (mean, min–max); timed-window share = the "
        "devices' timed windows / wall time (the part that is the measurement itself).",
        "",
        f"Each N was run {args.repeats} time(s), interleaved "
        f"({', '.join(map(str, args.device_counts))}, then again); "
        "the bold figures are means over those runs, efficiency from the mean rates; each run's own "
        "rate and efficiency (against the N = 1 run of the same round) follow in brackets.",
        "",
        "| devices N | candidates (ok / failed), all runs | steady wall per run (s) | candidates / min "
        "| per run | ideal N × rate₁ | scaling efficiency | per run "
        "| busy share mean (min–max over devices and runs) | timed-window share | wall per measurement (s) "
        "| measurements per device, all runs | load avg start→end per run |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        ideal = base["per_min"] * s["n"] if base else float("nan")
        eff = s["per_min"] / ideal if base else float("nan")
        s["efficiency"] = eff
        lines.append(
            f"| {s['n']} | {s['ok']} / {s['failed']} | {s['wall_s']:.1f} | **{s['per_min']:.1f}** | "
            f"({', '.join(f'{x:.1f}' for x in s['per_min_runs'])}) | {ideal:.1f} | **{_pct(eff)}** | "
            f"({', '.join(_pct(x) for x in s['efficiency_runs'])}) | "
            f"{_pct(s['busy_mean'])} ({_pct(s['busy_min'])}–{_pct(s['busy_max'])}) | "
            f"{_pct(s['window_share'])} | {s['measurement_wall_s']:.3f} | "
            f"{' '.join(str(c) for c in s['per_device'].values())} | "
            f"{', '.join(f'{a:.2f}→{b:.2f}' for a, b in s['loads'])} |")
    lines += [
        "",
        "### Where a steady-state measurement's time goes (mean ms per measurement)",
        "",
        "`runner command` is split into the timed window the tool reports (count × average) and the "
        "rest of that one device command (process start, model load, warm-up, writing the output, "
        "adb round trip). `overhead` = wall − timed window. Columns are exclusive: they add up to the wall.",
        "",
    ]
    cols = ["fleet dispatch", "fleet logic", "lease db", "health check", "connect", "host reference",
            "run dir", "push model+probe", "runner cache check/push", "runner start/warm-up/exit", "pull output",
            "fingerprint", "cleanup", "other commands", "device code", "unaccounted"]
    lines.append("| N | wall | timed window | **overhead** | overhead share | " + " | ".join(cols)
                 + " | device shell commands / pushes / pulls |")
    lines.append("|---" * (6 + len(cols)) + "|")
    for s in summaries:
        p = s["parts"]
        overhead = s["measurement_wall_s"] - p["timed window"]
        c = s["counts"]
        lines.append(
            f"| {s['n']} | {_ms(s['measurement_wall_s'])} | {_ms(p['timed window'])} | **{_ms(overhead)}** | "
            f"{_pct(overhead / s['measurement_wall_s'])} | " + " | ".join(_ms(p[k]) for k in cols)
            + f" | {c['shell commands']:.1f} / {c['file pushes']:.1f} / {c['file pulls']:.1f} |")
    lines += [
        "",
        "### First measurement on a fresh device (warm-up round, mean over the N devices, ms)",
        "",
        "The first candidate a device gets pays the adb connect, the fleet's health check before the "
        "first lease (runtime check with the runner push into the device's cache, disk, properties) "
        "and then the measurement itself; later measurements find the runner cached and a fresh "
        "health record.",
        "",
        "| N | first measurements (devices × runs) | first measurement wall | connect "
        "| health check (its commands and code, excl. connect and runner push) | runner cache check/push "
        "| timed window | rest | shell commands / pushes | steady wall for comparison | warm-up round wall (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        f = s["first"]
        if not f:
            lines.append(f"| {s['n']} | 0 | – | – | – | – | – | – | – | – | – |")
            continue
        health = f["health check"] + f["other commands"]
        rest = s["first_wall_s"] - f["connect"] - health - f["runner cache check/push"] - f["timed window"]
        fc = s["first_counts"]
        lines.append(
            f"| {s['n']} | {s['first_n']} | {_ms(s['first_wall_s'])} | {_ms(f['connect'])} | {_ms(health)} | "
            f"{_ms(f['runner cache check/push'])} | {_ms(f['timed window'])} | {_ms(rest)} | "
            f"{fc['shell commands']:.0f} / {fc['file pushes']:.0f} | {_ms(s['measurement_wall_s'])} | "
            f"{s['warm_wall_s']:.2f} |")
    lines += [
        "",
        "### Host CPU during the steady run",
        "",
        "CPU seconds per measurement: the harness process (fleet, devices, transports, this bench's "
        "threads), the emulated phones (adbd processes and every command they ran: shells, the fake "
        "tool, sha256sum …) and the adb server; `cores used` = all of it / wall time, out of "
        f"{machine['nproc']}.",
        "",
        "| N | harness (ms) | phones (ms) | adb server (ms) | cores used |",
        "|---|---|---|---|---|",
    ]
    for s in summaries:
        c = s["cpu_per_measurement_s"]
        lines.append(f"| {s['n']} | {_ms(c['harness'])} | {_ms(c['phones'])} | {_ms(c['adb_server'])} | "
                     f"{s['cores_used']:.2f} |")
    link = next((p for p in summaries if p.get("link")), None)
    if link:
        lines += ["", "### Link calibration (idle phone, median of single operations, ms)", "",
                  "One emulated phone, nothing else running on it, through the harness's `AdbTransport` "
                  "(each operation opens its own adb server connection, as the harness does) and, for "
                  "comparison, the adb command-line client.", "",
                  "| operation | median (ms) |", "|---|---|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in link["link"].items()]
    lines += ["", "### Reading", ""] + reading(summaries)
    return "\n".join(lines)


HARNESS_CODE = ("fleet dispatch", "fleet logic", "lease db", "host reference", "device code", "unaccounted")
LINK_OPS = ("connect", "health check", "run dir", "push model+probe", "runner cache check/push", "pull output",
            "fingerprint", "cleanup", "other commands")


def reading(summaries: list[dict]) -> list[str]:
    """Plain statements drawn from the numbers above (every number in them is measured or
    arithmetic on measured numbers, and says so)."""
    out: list[str] = []
    by_n = {s["n"]: s for s in summaries}
    top = max(by_n)
    s_top = by_n[top]
    if 1 in by_n and top > 1:
        eff = s_top["efficiency"]
        verdict = "reaches" if eff >= EFFICIENCY_AIM else "does not reach"
        runs_ok = all(x >= EFFICIENCY_AIM for x in s_top["efficiency_runs"])
        verdict += "" if runs_ok == (eff >= EFFICIENCY_AIM) else " (not in every run: see the per-run figures)"
        out.append(f"- **Scaling: {_pct(eff)} at N = {top}, which {verdict} the {EFFICIENCY_AIM:.0%} aim.** "
                   f"{s_top['per_min']:.1f} candidates/min against {by_n[1]['per_min']:.1f} with one device. "
                   "Per N: " + ", ".join(f"{s['n']}: {_pct(s['efficiency'])}" for s in summaries) + ".")
        w1, wt = by_n[1]["measurement_wall_s"], s_top["measurement_wall_s"]
        p1, pt = by_n[1]["parts"], s_top["parts"]
        d_link = sum(pt[k] for k in LINK_OPS) - sum(p1[k] for k in LINK_OPS)
        d_runner = pt["runner start/warm-up/exit"] - p1["runner start/warm-up/exit"]
        d_code = sum(pt[k] for k in HARNESS_CODE) - sum(p1[k] for k in HARNESS_CODE)
        fleet_top = sum(pt[k] for k in ("fleet dispatch", "fleet logic", "lease db"))
        out.append(f"- The loss has two parts. (1) Each measurement takes longer with more devices: "
                   f"{w1 * 1e3:.0f} ms at N = 1, {wt * 1e3:.0f} ms at N = {top} ({(wt / w1 - 1) * 100:+.1f} %), of "
                   f"which {d_link * 1e3:+.0f} ms in device link operations, {d_runner * 1e3:+.0f} ms in the runner "
                   f"command beyond its window and {d_code * 1e3:+.0f} ms in the harness's own code. Every link "
                   f"operation goes through the one adb server and into phones emulated on this host, whose "
                   f"{os.cpu_count()} cores are shared with other users (load averages above; this bench's own "
                   f"processes kept {s_top['cores_used']:.2f} cores busy on average at N = {top}): the slowdown is "
                   f"waiting in that shared path; the bench does not separate the adb server's queue from CPU "
                   f"scheduling. (2) Devices wait between measurements: busy share {_pct(by_n[1]['busy_mean'])} at "
                   f"N = 1, {_pct(s_top['busy_mean'])} at N = {top} (lowest device {_pct(s_top['busy_min'])}). "
                   f"The fleet's own work (claim, lease database, its per-call thread pool) is "
                   f"{fleet_top * 1e3:.0f} ms "
                   f"per measurement at N = {top}: the fleet does not limit scaling here.")
    for s in summaries:
        p = s["parts"]
        overhead = s["measurement_wall_s"] - p["timed window"]
        link = sum(p[k] for k in LINK_OPS)
        code = sum(p[k] for k in HARNESS_CODE)
        runner = p["runner start/warm-up/exit"]
        ranked = sorted(((p[k], k) for k in LINK_OPS), reverse=True)[:3]
        out.append(f"- N = {s['n']}: overhead {overhead * 1e3:.0f} ms per measurement "
                   f"({_pct(overhead / s['measurement_wall_s'])} "
                   f"of its wall) around a {p['timed window'] * 1e3:.0f} ms timed window: device link operations "
                   f"{link * 1e3:.0f} ms (largest: " + ", ".join(f"{k} {v * 1e3:.0f} ms" for v, k in ranked)
                   + f"), the runner command beyond its window {runner * 1e3:.0f} ms, the harness's own code "
                   f"(fleet, lease database, host reference, device code) {code * 1e3:.0f} ms.")
    link = next((s for s in summaries if s.get("link")), None)
    if link:
        cal = link["link"]
        c = link["counts"]
        plain = c["shell commands"] - c["file pushes"] - 1  # each push runs one sha256sum; one is the runner
        estimate = (plain * cal["run true"] + c["file pushes"] * cal["push 256 B (with sha256 check)"]
                    + c["file pulls"] * cal["pull 256 B"])
        measured = sum(link["parts"][k] for k in LINK_OPS)
        out.append(f"- **Where the overhead comes from: per-operation latency of the adb path**, not CPU and not the "
                   f"fleet. A measurement makes {c['shell commands']:.0f} device commands (one is the runner), "
                   f"{c['file pushes']:.0f} pushes and {c['file pulls']:.0f} pull; at the idle-link medians above "
                   f"({cal['run true']:.1f} ms a command, {cal['push 256 B (with sha256 check)']:.1f} ms a push, "
                   f"{cal['pull 256 B']:.1f} ms a pull) that is {estimate:.0f} ms, against {measured * 1e3:.0f} ms "
                   f"measured in link operations at N = {link['n']}. The adb command-line client runs a no-op "
                   "command on the same emulated phone in "
                   f"{cal['adb client: adb shell true (process start included)']:.1f} ms "
                   "including its own process start, so most of a transport command's latency is spent in the "
                   "harness's adb client path, not in the emulated phone.")
    first = [s for s in summaries if s["first"]]
    if first:
        parts = []
        for s in first:
            f = s["first"]
            parts.append(f"N = {s['n']}: {s['first_wall_s'] * 1e3:.0f} ms "
                         f"(runner push {f['runner cache check/push'] * 1e3:.0f} ms, "
                         f"connect {f['connect'] * 1e3:.0f} ms, "
                         f"health check {(f['health check'] + f['other commands']) * 1e3:.0f} ms)")
        out.append(f"- First measurement on a fresh device, against {first[0]['measurement_wall_s'] * 1e3:.0f} ms "
                   "in steady "
                   "state at N = 1: " + "; ".join(parts) + ". The runner push grows with N because the N "
                   "devices of a run push their runner at the same moment, through one adb server, into phones "
                   "emulated on the same host.")
    out.append("- Caveats: the phones are emulated on the measuring host (their processes cost "
               + ", ".join(f"{s['cpu_per_measurement_s']['phones'] * 1e3:.0f}" for s in summaries)
               + " ms CPU per measurement at N = " + ", ".join(str(s["n"]) for s in summaries)
               + "), which real phones would not take from the host; the link latencies are those of this "
               "loopback setup; the machine is shared (load averages above). Run-to-run spread of the "
               "efficiency: " + "; ".join(
                   f"N = {s['n']}: {min(s['efficiency_runs']) * 100:.1f}–{max(s['efficiency_runs']) * 100:.1f} %"
                   for s in summaries if s["n"] > 1 and s["efficiency_runs"])
               + f" over {summaries[0]['repeats']} run(s).")
    bad = [s for s in summaries if s["failed"] or s["output_mismatch"] or s["retried"]]
    if bad:
        for s in bad:
            out.append(f"- N = {s['n']}: {s['failed']} failed, {s['retried']} needed a retry, "
                       f"{s['output_mismatch']} without a matching output; errors: {s['errors']}")
    else:
        out.append("- Every measurement succeeded on its first attempt and every device output matched the "
                   "host's LiteRT output.")
    return out


# --- main ---------------------------------------------------------------------------------------------


class _AdbServer:
    """The real adb server from ``tests/peers/adbd.py``, plus its CPU time."""

    def __init__(self, home: Path) -> None:
        from tests.peers.adbd import AdbServer, missing_adb

        reason = missing_adb()
        if reason:
            raise SystemExit(f"error: {reason}")
        self._server = AdbServer(home)

    def __getattr__(self, name):
        return getattr(self._server, name)

    def cpu_s(self) -> float:
        proc = self._server._proc
        return _proc_cpu_s(proc.pid) if proc is not None else float("nan")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_peer:
        return serve_peer(*args.serve_peer)
    if args.make_models:
        return make_models(args.make_models[0], int(args.make_models[1]), int(args.make_models[2]))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("devices", "harness", "adbutils"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    started = _dt.datetime.now().isoformat(timespec="seconds")
    t0 = time.perf_counter()
    load_start = os.getloadavg()[0]
    machine = machine_info(("adbutils", "ai-edge-litert"), watched=("devices", "harness"), adb=True)
    top = max(args.device_counts)
    model_dir = ensure_models(top + args.candidates_per_device * top + 3 * top)
    sizes = [p.stat().st_size for p in (model_dir / "models").glob("cand-*.tflite")]
    args.model_kb = statistics.fmean(sizes) / 1024
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    run_root = WORK_DIR / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    server = _AdbServer(run_root / "adb-home")
    server.start()
    phases = []
    try:
        for repeat in range(args.repeats):
            for n in args.device_counts:
                log.info("N = %d (run %d): %d warm-up + %d steady candidates", n, repeat + 1, n,
                         args.candidates_per_device * n)
                phase = run_phase(n, repeat, args, server, model_dir, run_root)
                s = summarize(phase)
                log.info("N = %d (run %d): %.1f candidates/min, busy %.1f %%, %.3f s per measurement, %d failed",
                         n, repeat + 1, s["per_min"], s["busy_mean"] * 100, s["measurement_wall_s"], s["failed"])
                phases.append(phase)
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(run_root, ignore_errors=True)
    summaries = aggregate([summarize(p) for p in phases])
    section = render(args, summaries, machine, started, time.perf_counter() - t0,
                     (load_start, os.getloadavg()[0]))
    write_section(args.output, SECTION, section)
    (WORK_DIR / "last.json").write_text(json.dumps({"args": {k: v for k, v in vars(args).items()
                                                             if isinstance(v, (int, float, str, list))},
                                                    "machine": machine, "phases": phases}, default=str, indent=1))
    log.info("wrote %s (section %s)", args.output, SECTION)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
