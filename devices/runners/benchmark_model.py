"""TFLite/LiteRT ``benchmark_model`` (the C++ tool users bring for their phone): argv and output.

Pure functions, no I/O: :func:`benchmark_argv` builds the command a transport runs,
:func:`parse_benchmark_output` reads what the tool printed, :func:`check_delegate` refuses a
run whose requested delegate did not take the graph. Formats are those of
``shared/reference/devices.md``: newer builds prefix lines with ``INFO: `` and add
``p5``/``median``/``p95``; older builds have neither and may print ``Peak memory footprint``
instead of (or besides) ``Memory footprint delta``. Numbers may be in scientific notation.

The tool prints one statistics line (``count=...``) per "Running benchmark for at least ..."
block: first the warm-up's, then the timed run's. The timed run is the last block; when the
output has several blocks and the last has no statistics line, the timed run did not finish
and parsing fails rather than report the warm-up as the result.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from devices.base import MeasureSettings
from devices.runners.errors import BenchmarkParseError, DelegateError, shorten

__all__ = [
    "BenchmarkResult",
    "DelegateUse",
    "benchmark_argv",
    "parse_benchmark_output",
    "check_delegate",
    "DEFAULT_MAX_SECS",
]

DEFAULT_MAX_SECS = 150.0
"""The tool's own ``--max_secs`` default; :func:`benchmark_argv` raises it for long windows."""

_DELEGATE_FLAGS = {"gpu": "--use_gpu=true", "nnapi": "--use_nnapi=true"}
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_MASK = re.compile(r"(?:0[xX])?[0-9a-fA-F]+")
_RUNNING = re.compile(r"Running benchmark for at least")
_STATS = re.compile(r"(?:^|\s|INFO: )count=")
_PAIR = re.compile(r"(\w+)=(\S*)")
_MODEL_SIZE = re.compile(r"The input model file size \(MB\): (\S+)")
_SESSION = re.compile(r"Initialized session in (\S+?)ms\.?\s*$")
_TIMINGS = re.compile(
    r"Inference timings in us: Init: (\S+?), First inference: (\S+?), "
    r"Warmup \(avg\): (\S+?), Inference \(avg\): (\S+?)\s*$")
_DELTA = re.compile(r"Memory footprint delta from the start of the tool \(MB\): "
                    r"init=(\S+) overall=(\S+)")
_PEAK = re.compile(r"Peak memory footprint \(MB\): init=(\S+) overall=(\S+)")
_DELEGATE = re.compile(r"Replacing (\S+) out of (\S+) node\(s\) with delegate(?: \(([^)]*)\))?")

_STATS_EXPECTED = ("a statistics line 'count=N first=US curr=US min=US max=US avg=US std=US' "
                   "after the last 'Running benchmark for at least ...' line")


@dataclass(frozen=True)
class DelegateUse:
    """One ``Replacing N out of M node(s) with delegate (NAME)`` line."""

    name: str
    nodes_replaced: int
    nodes_total: int


@dataclass(frozen=True)
class BenchmarkResult:
    """What one ``benchmark_model`` run printed. Units are in the names.

    Per-inference statistics come from the timed run only (warm-up excluded); ``p5_us``,
    ``median_us`` and ``p95_us`` are ``None`` in older builds. The ``Inference timings in us``
    line (``init_us`` ... ``inference_avg_us``) is required: the tool prints it only after a
    completed timed run. Fields of optional lines are ``None`` when the line is absent.
    ``delegates`` lists every delegate line in order;
    ``delegate_nodes_replaced``/``delegate_nodes_total`` repeat the last one.
    """

    count: int
    first_us: float
    curr_us: float
    min_us: float
    max_us: float
    avg_us: float
    std_us: float
    init_us: float
    first_inference_us: float
    warmup_avg_us: float
    inference_avg_us: float
    p5_us: float | None = None
    median_us: float | None = None
    p95_us: float | None = None
    init_session_ms: float | None = None
    memory_delta_init_mb: float | None = None
    memory_delta_overall_mb: float | None = None
    peak_memory_init_mb: float | None = None
    peak_memory_overall_mb: float | None = None
    model_size_mb: float | None = None
    delegates: tuple[DelegateUse, ...] = ()

    @property
    def delegate_nodes_replaced(self) -> int | None:
        return self.delegates[-1].nodes_replaced if self.delegates else None

    @property
    def delegate_nodes_total(self) -> int | None:
        return self.delegates[-1].nodes_total if self.delegates else None

    @property
    def latency_ms_median(self) -> float:
        """The timed run's median (its average in older builds, which print no median). Units: ms."""
        return (self.median_us if self.median_us is not None else self.avg_us) / 1e3


def benchmark_argv(
    binary: str,
    graph: str,
    settings: MeasureSettings,
    *,
    use_xnnpack: bool | None = None,
    delegate: str | None = None,
    taskset_mask: str | int | None = None,
    max_secs: float | None = None,
    report_peak_memory: bool = False,
) -> list[str]:
    """The ``benchmark_model`` command for ``graph`` (paths as seen on the device), unquoted.

    The warm-up runs exactly ``settings.warmup_runs`` times (``--warmup_min_secs=0``); the timed
    loop runs until both ``settings.min_runs`` and ``settings.min_seconds`` are met, and the
    tool stops it past ``max_secs`` (default: the tool's 150 s, raised to twice
    ``min_seconds`` for longer windows so it never cuts the window short).

    Args:
        binary: The tool's path on the device, e.g. ``/data/local/tmp/benchmark_model``.
        graph: The model's path on the device.
        settings: Threads, warm-up, minimum runs and seconds.
        use_xnnpack: ``--use_xnnpack=true/false``; ``None`` leaves the build's default.
        delegate: ``"gpu"``, ``"nnapi"``, or the path of an external delegate ``.so``.
        taskset_mask: CPU mask (hex string such as ``"f0"``, or an int) to pin the run with
            ``taskset``; ``None`` runs unpinned.
        max_secs: ``--max_secs``; see above.
        report_peak_memory: Add ``--report_peak_memory_footprint=true``.

    Raises:
        ValueError: an empty path, an unknown delegate, a bad mask or ``max_secs`` below
            ``min_seconds``.
    """
    if not binary or not graph:
        raise ValueError(f"benchmark_argv needs a binary and a graph path, got {binary!r} and {graph!r}")
    if max_secs is None:
        max_secs = max(DEFAULT_MAX_SECS, 2.0 * settings.min_seconds)
    elif max_secs < settings.min_seconds:
        raise ValueError(f"max_secs {max_secs} is below min_seconds {settings.min_seconds}: "
                         "the tool would stop before the window is complete")
    argv: list[str] = []
    if taskset_mask is not None:
        argv += ["taskset", _mask(taskset_mask)]
    argv += [
        binary,
        f"--graph={graph}",
        f"--num_threads={settings.threads}",
        f"--warmup_runs={settings.warmup_runs}",
        "--warmup_min_secs=0",
        f"--num_runs={settings.min_runs}",
        f"--min_secs={_flag_number(settings.min_seconds)}",
        f"--max_secs={_flag_number(max_secs)}",
    ]
    if use_xnnpack is not None:
        argv.append(f"--use_xnnpack={'true' if use_xnnpack else 'false'}")
    if delegate is not None:
        if delegate in _DELEGATE_FLAGS:
            argv.append(_DELEGATE_FLAGS[delegate])
        elif delegate.endswith(".so"):
            argv.append(f"--external_delegate_path={delegate}")
        else:
            raise ValueError(f"unknown delegate {delegate!r}: expected 'gpu', 'nnapi' or the path "
                             "of an external delegate .so")
    if report_peak_memory:
        argv.append("--report_peak_memory_footprint=true")
    return argv


def parse_benchmark_output(text: str) -> BenchmarkResult:
    """Read ``benchmark_model``'s stdout (old or new format; see the module docstring).

    Raises:
        BenchmarkParseError: no statistics line for the timed run, no ``Inference timings``
            line, a missing required field, or a value that is not a finite, non-negative
            number (one line naming what was expected).
    """
    lines = [line.strip() for line in text.splitlines()]
    running = [i for i, line in enumerate(lines) if _RUNNING.search(line)]
    stats = [i for i, line in enumerate(lines) if _STATS.search(line)]
    after = [i for i in stats if not running or i > running[-1]]
    if not after:
        if len(running) > 1 or not stats:
            raise BenchmarkParseError(f"benchmark_model output: no timed-run statistics: expected "
                                      f"{_STATS_EXPECTED}")
        after = stats  # one block and its line before it: a trimmed log, take the last
    stat_line = lines[after[-1]]
    pairs = dict(_PAIR.findall(stat_line[stat_line.index("count="):]))
    for key in ("first", "curr", "min", "max", "avg", "std"):
        if key not in pairs:
            raise BenchmarkParseError(f"benchmark_model output: {shorten(stat_line)!r} has no {key}=: "
                                      f"expected {_STATS_EXPECTED}")
    count = _number(pairs["count"], "count", stat_line)
    if count != int(count) or count < 1:
        raise BenchmarkParseError(f"benchmark_model output: count={pairs['count']} in "
                                  f"{shorten(stat_line)!r}: expected a positive whole number of runs")

    def stat(key: str) -> float | None:
        return _number(pairs[key], key, stat_line) if key in pairs else None

    fields: dict[str, object] = {
        "count": int(count),
        **{f"{key}_us": stat(key) for key in ("first", "curr", "min", "max", "avg", "std",
                                              "p5", "median", "p95")},
    }
    delegates: list[DelegateUse] = []
    for line in lines:
        if match := _MODEL_SIZE.search(line):
            fields["model_size_mb"] = _number(match[1], "model file size (MB)", line)
        elif match := _SESSION.search(line):
            fields["init_session_ms"] = _number(match[1], "session init (ms)", line)
        elif match := _TIMINGS.search(line):
            for key, value in zip(("init_us", "first_inference_us", "warmup_avg_us",
                                   "inference_avg_us"), match.groups(), strict=True):
                fields[key] = _number(value, key, line)
        elif match := _DELTA.search(line):
            fields["memory_delta_init_mb"] = _number(match[1], "memory delta init (MB)", line)
            fields["memory_delta_overall_mb"] = _number(match[2], "memory delta overall (MB)", line)
        elif match := _PEAK.search(line):
            fields["peak_memory_init_mb"] = _number(match[1], "peak memory init (MB)", line)
            fields["peak_memory_overall_mb"] = _number(match[2], "peak memory overall (MB)", line)
        elif match := _DELEGATE.search(line):
            replaced = _number(match[1], "delegate nodes replaced", line)
            total = _number(match[2], "delegate nodes total", line)
            if replaced != int(replaced) or total != int(total) or replaced > total:
                raise BenchmarkParseError(f"benchmark_model output: {shorten(line)!r}: expected "
                                          "'Replacing N out of M node(s)' with whole N <= M")
            delegates.append(DelegateUse(match[3] or "", int(replaced), int(total)))
    if "init_us" not in fields:
        raise BenchmarkParseError("benchmark_model output: no 'Inference timings in us: Init: US, "
                                  "First inference: US, Warmup (avg): US, Inference (avg): US' "
                                  "line: the timed run did not complete")
    return BenchmarkResult(**fields, delegates=tuple(delegates))  # type: ignore[arg-type]


def check_delegate(
    result: BenchmarkResult, requested: bool, *, require_all: bool = False, name: str | None = None
) -> None:
    """Refuse a run whose requested delegate did not take the graph.

    Args:
        result: The parsed run.
        requested: Whether the run asked for a delegate; ``False`` checks nothing.
        require_all: Also refuse a delegate that took only some nodes (the rest ran on the CPU,
            so the numbers mix two processors).
        name: Only consider delegate lines whose name contains this (e.g. ``"GPU"``); the default
            looks at every delegate line.

    Raises:
        DelegateError: no matching delegate line, a delegate that replaced 0 nodes, or (with
            ``require_all``) fewer than all.
    """
    if not requested:
        return
    uses: Sequence[DelegateUse] = [d for d in result.delegates if name is None or name in d.name]
    wanted = f"delegate {name!r}" if name else "a delegate"
    if not uses:
        seen = ", ".join(d.name or "unnamed" for d in result.delegates) or "none"
        raise DelegateError(f"{wanted} was requested but the output has no 'Replacing N out of M "
                            f"node(s) with delegate' line for it (delegates seen: {seen}); check "
                            "that the build supports it and the flag was passed")
    for use in uses:
        label = use.name or "delegate"
        if use.nodes_replaced == 0:
            raise DelegateError(f"{label} replaced 0 out of {use.nodes_total} node(s): the whole "
                                "graph ran on the CPU; the delegate does not support this model")
        if require_all and use.nodes_replaced < use.nodes_total:
            raise DelegateError(f"{label} replaced only {use.nodes_replaced} out of "
                                f"{use.nodes_total} node(s): the rest ran on the CPU; pass "
                                "require_all=False to accept a partial delegation")


def _number(value: str, what: str, line: str) -> float:
    if not _NUMBER.fullmatch(value):
        raise BenchmarkParseError(f"benchmark_model output: {what} is {shorten(value)!r} in {shorten(line)!r}: "
                                  "expected a number")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise BenchmarkParseError(f"benchmark_model output: {what} is {shorten(value)!r} in {shorten(line)!r}: "
                                  "expected a finite, non-negative number")
    return number


def _flag_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _mask(mask: str | int) -> str:
    if isinstance(mask, bool) or not isinstance(mask, (str, int)):
        raise ValueError(f"taskset_mask must be a hex string or an int, got {mask!r}")
    if isinstance(mask, int):
        if mask <= 0:
            raise ValueError(f"taskset_mask must be positive, got {mask}")
        return format(mask, "x")
    if not _MASK.fullmatch(mask) or int(mask, 16) == 0:
        raise ValueError(f"taskset_mask {mask!r} is not a non-zero hex CPU mask such as 'f0'")
    return mask
