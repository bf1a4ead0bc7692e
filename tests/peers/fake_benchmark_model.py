#!/usr/bin/env python3
"""A stand-in for the TFLite ``benchmark_model`` binary (the real one is built for the phone).

Accepts the real tool's ``--flag=value`` flags (exits 1 on an unknown one, so a wrong argv
shows), loads ``--graph`` with ``ai_edge_litert`` when it is installed and times real
inferences (else, or with ``FAKE_BENCHMARK_SLEEP_US`` set, each run sleeps that many µs),
with the tool's loop rules: warm-up while ``run < warmup_runs or t < warmup_min_secs``, timed
loop while ``run < num_runs or t < min_secs``, both stopped past ``max_secs``. Output follows
``shared/reference/devices.md``: the new format, or the old one with ``FAKE_BENCHMARK_FORMAT=old``.

Inputs and outputs as the real tool (``benchmark_tflite_model.cc``) takes and writes them:
``--input_layer=a,b`` with ``--input_layer_shape=1,16:1,4`` (as many shapes as names; each
input is resized to its shape) and ``--input_layer_value_files=a:/path,b:/path`` (each file holds
the tensor's raw bytes, exactly its size; a ``:`` inside a name is written ``::``; every name
must be one of ``--input_layer``); inputs without a file are zeros. ``--output_filepath=PATH``
writes every output tensor's raw bytes, in output order, after the run. Both need LiteRT (a
sleeping fake has no tensors: no file is read or written).

Fault knobs (environment):
    FAKE_BENCHMARK_EXIT=<code>        crash with that exit code after the warm-up block
    FAKE_BENCHMARK_HANG_S=<seconds>   sleep that long before the timed loop (a hang)
    FAKE_BENCHMARK_DELEGATE_NODES=<n> with a delegate flag, replace n of the graph's nodes
                                      (default all; 0 = the delegate took nothing)
    FAKE_BENCHMARK_WRONG_OUTPUT=1     --output_filepath gets every byte inverted (a device that
                                      computes a wrong answer)
"""

from __future__ import annotations

import math
import os
import resource
import sys
import time

_FLAGS = {
    "graph": str, "num_threads": int, "warmup_runs": int, "warmup_min_secs": float,
    "num_runs": int, "min_secs": float, "max_secs": float, "run_delay": float,
    "enable_op_profiling": bool, "report_peak_memory_footprint": bool, "use_xnnpack": bool,
    "use_gpu": bool, "use_nnapi": bool, "external_delegate_path": str,
    "input_layer": str, "input_layer_shape": str, "input_layer_value_files": str,
    "output_filepath": str,
}
_DEFAULTS: dict[str, object] = {
    "num_threads": -1, "warmup_runs": 1, "warmup_min_secs": 0.5, "num_runs": 50, "min_secs": 1.0,
    "max_secs": 150.0, "run_delay": -1.0, "enable_op_profiling": False,
    "report_peak_memory_footprint": False, "use_xnnpack": False, "use_gpu": False,
    "use_nnapi": False, "external_delegate_path": "", "input_layer": "", "input_layer_shape": "",
    "input_layer_value_files": "", "output_filepath": "",
}


def parse_flags(argv: list[str]) -> dict[str, object]:
    flags = dict(_DEFAULTS)
    for arg in argv:
        name, sep, value = arg.removeprefix("--").partition("=")
        if not arg.startswith("--") or name not in _FLAGS or (not sep and _FLAGS[name] is not bool):
            print(f"ERROR: Unconsumed cmdline flags: {arg}", flush=True)
            sys.exit(1)
        kind = _FLAGS[name]
        try:
            if kind is bool:
                if value not in ("", "true", "false", "1", "0"):
                    raise ValueError(value)
                flags[name] = value in ("", "true", "1")
            else:
                flags[name] = kind(value)
        except ValueError:
            print(f"ERROR: Couldn't parse value '{value}' for --{name}", flush=True)
            sys.exit(1)
    if "graph" not in flags:
        print("ERROR: Please specify the name of your TF Lite input file with --graph", flush=True)
        sys.exit(1)
    return flags


class InputError(Exception):
    """A bad --input_layer* flag or value file (the real tool logs an error and stops)."""


def split_value_file(item: str) -> tuple[str, str]:
    """``name:path`` split at the one unescaped ``:``; ``::`` stands for ``:`` (as the real tool)."""
    at = -1
    i = 0
    while i < len(item) - 1:
        if item[i] == ":":
            if item[i + 1] == ":":
                i += 2
                continue
            if at != -1:
                raise InputError(f"{item} contains more than one delimiter.")
            at = i
        i += 1
    if at == -1:
        raise InputError(f"{item} doesn't contain any delimiter.")
    return item[:at].replace("::", ":"), item[at + 1:].replace("::", ":")


def input_layers(flags: dict[str, object]) -> list[tuple[str, list[int], str]]:
    """(name, shape, value file or "") per ``--input_layer`` entry, checked as the real tool does."""
    names = str(flags["input_layer"]).split(",") if flags["input_layer"] else []
    shapes = str(flags["input_layer_shape"]).split(":") if flags["input_layer_shape"] else []
    if len(names) != len(shapes):
        raise InputError(f"The number of items in --input_layer_shape ({flags['input_layer_shape']}, "
                         f"with {len(shapes)} items) must match the number of items in --input_layer "
                         f"({flags['input_layer']}, with {len(names)} items).")
    files = {name: "" for name in names}
    value_files = str(flags["input_layer_value_files"])
    for item in value_files.split(",") if value_files else []:
        name, path = split_value_file(item)
        if name not in files:
            raise InputError(f"Cannot find the corresponding input_layer name({name}) in "
                             f"--input_layer as {flags['input_layer']}")
        files[name] = path
    layers = []
    for name, shape in zip(names, shapes, strict=True):
        try:
            dims = [int(d) for d in shape.split(",")]
        except ValueError:
            raise InputError(f"Incorrect size string specified: {shape}") from None
        layers.append((name, dims, files[name]))
    return layers


class _Model:
    """One inference per :meth:`run`: real LiteRT when installed, else (or with a sleep given)
    a fixed sleep. The model is loaded whenever LiteRT is installed, so ``--output_filepath``
    gets the real output even when the timed runs only sleep."""

    def __init__(self, graph: str, threads: int, sleep_us: float | None,
                 inputs: list[tuple[str, list[int], str]] | None = None) -> None:
        self.sleep_s = None if sleep_us is None else sleep_us / 1e6
        self.nodes = 3
        self.interpreter = None
        self.invoked = False
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            if self.sleep_s is None:
                self.sleep_s = 0.002
            return
        import numpy as np

        try:
            self.interpreter = Interpreter(model_path=graph, num_threads=max(threads, 1))
        except ValueError:
            if self.sleep_s is None:
                raise
            return  # sleeping runs stand in for timing only: a placeholder model is fine
        details = self.interpreter.get_input_details()
        if inputs and len(inputs) != len(details):
            raise InputError(f"Inputs mismatch: Model inputs #:{len(inputs)} expected: {len(details)}")
        for detail, (_, shape, _) in zip(details, inputs or [], strict=False):  # no inputs: no resizing
            self.interpreter.resize_tensor_input(detail["index"], shape)
        self.interpreter.allocate_tensors()
        for i, detail in enumerate(self.interpreter.get_input_details()):
            path = inputs[i][2] if inputs else ""
            data = np.zeros(detail["shape"], dtype=detail["dtype"])
            if path:
                try:
                    with open(path, "rb") as f:
                        raw = f.read()
                except OSError:
                    raise InputError(f"Failed to read the input_layer_value_file:{path}") from None
                if len(raw) != data.nbytes:
                    raise InputError(f"The size of {path} is {len(raw)} bytes. It should be "
                                     f"{data.nbytes} bytes.")
                data = np.frombuffer(raw, dtype=data.dtype).reshape(data.shape)
            self.interpreter.set_tensor(detail["index"], data)
        self.nodes = len(self.interpreter._get_ops_details())

    def run(self) -> None:
        if self.sleep_s is None and self.interpreter is not None:
            self.interpreter.invoke()
            self.invoked = True
        else:
            time.sleep(self.sleep_s)  # type: ignore[arg-type]

    def save_outputs(self, path: str) -> None:
        """Every output tensor's raw bytes, in output order (the real tool's OutputSaver)."""
        if self.interpreter is None:
            return
        if not self.invoked:  # sleeping runs: compute the output once, as the real tool would have
            self.interpreter.invoke()
        data = b"".join(self.interpreter.get_tensor(d["index"]).tobytes()
                        for d in self.interpreter.get_output_details())
        if os.environ.get("FAKE_BENCHMARK_WRONG_OUTPUT"):
            data = bytes(b ^ 0xFF for b in data)
        try:
            with open(path, "wb") as f:
                f.write(data)
        except OSError:
            pass  # the real tool writes only when it can open the file, and says nothing


def loop(model: _Model, min_runs: int, min_secs: float, max_secs: float) -> list[int]:
    durations: list[int] = []
    start = time.perf_counter()
    while len(durations) < min_runs or time.perf_counter() - start < min_secs:
        if time.perf_counter() - start > max_secs:
            break
        before = time.perf_counter_ns()
        model.run()
        durations.append((time.perf_counter_ns() - before) // 1000)
    return durations


def stats_line(us: list[int], new: bool) -> str:
    if len(us) == 1:
        return f"count=1 curr={us[0]}"
    avg = sum(us) / len(us)
    std = int(math.sqrt(sum((u - avg) ** 2 for u in us) / len(us)))
    line = (f"count={len(us)} first={us[0]} curr={us[-1]} min={min(us)} max={max(us)} "
            f"avg={avg:g} std={std}")
    if new:
        ranked = sorted(us)
        pick = lambda q: ranked[min(len(ranked) - 1, int(q / 100 * len(ranked)))]  # noqa: E731
        line += f" p5={pick(5)} median={pick(50)} p95={pick(95)}"
    return line


def main(argv: list[str]) -> int:
    flags = parse_flags(argv)
    new = os.environ.get("FAKE_BENCHMARK_FORMAT", "new") != "old"

    def out(text: str) -> None:
        print(("INFO: " if new else "") + text, flush=True)

    graph = str(flags["graph"])
    if not os.path.isfile(graph):
        out(f"Could not open '{graph}'.")  # the real tool logs this as an error and exits 1
        return 1
    sleep_us = os.environ.get("FAKE_BENCHMARK_SLEEP_US")
    out(f"The input model file size (MB): {os.path.getsize(graph) / 1048576:g}")
    init_start = time.perf_counter()
    try:
        model = _Model(graph, int(flags["num_threads"]), float(sleep_us) if sleep_us else None,
                       input_layers(flags))
    except InputError as e:
        print(f"ERROR: {e}", flush=True)
        return 1
    init_ms = (time.perf_counter() - init_start) * 1e3
    mem_init = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    delegated = flags["use_gpu"] or flags["use_nnapi"] or flags["use_xnnpack"] \
        or flags["external_delegate_path"]
    if delegated:
        name = ("TfLiteGpuDelegateV2" if flags["use_gpu"] else
                "TfLiteNnapiDelegate" if flags["use_nnapi"] else
                "TfLiteXNNPackDelegate" if flags["use_xnnpack"] else "external")
        replaced = int(os.environ.get("FAKE_BENCHMARK_DELEGATE_NODES", model.nodes))
        out(f"Replacing {replaced} out of {model.nodes} node(s) with delegate ({name}) node, "
            f"yielding {1 if replaced else 0} partitions for the whole graph.")
    out(f"Initialized session in {init_ms:.3f}ms.")

    warmup_runs, warmup_secs = int(flags["warmup_runs"]), float(flags["warmup_min_secs"])
    max_secs = float(flags["max_secs"])
    out(f"Running benchmark for at least {warmup_runs} iterations and at least {warmup_secs:g} "
        f"seconds but terminate if exceeding {max_secs:g} seconds.")
    warm = loop(model, warmup_runs, warmup_secs, max_secs) if warmup_runs or warmup_secs else []
    if warm:
        out(stats_line(warm, new))
    print(flush=True)
    if os.environ.get("FAKE_BENCHMARK_EXIT"):
        print("Fatal signal: simulated crash", file=sys.stderr, flush=True)
        return int(os.environ["FAKE_BENCHMARK_EXIT"])
    if os.environ.get("FAKE_BENCHMARK_HANG_S"):
        time.sleep(float(os.environ["FAKE_BENCHMARK_HANG_S"]))

    num_runs, min_secs = int(flags["num_runs"]), float(flags["min_secs"])
    out(f"Running benchmark for at least {num_runs} iterations and at least {min_secs:g} seconds "
        f"but terminate if exceeding {max_secs:g} seconds.")
    timed = loop(model, num_runs, min_secs, max_secs)
    out(stats_line(timed, new) if len(timed) > 1 else f"count=1 first={timed[0]} curr={timed[0]} "
        f"min={timed[0]} max={timed[0]} avg={timed[0]} std=0")
    warm_avg = sum(warm) / len(warm) if warm else 0
    out(f"Inference timings in us: Init: {int(init_ms * 1000)}, First inference: "
        f"{warm[0] if warm else timed[0]}, Warmup (avg): {warm_avg:g}, Inference (avg): "
        f"{sum(timed) / len(timed):g}")
    mem_overall = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if new:
        out(f"Memory footprint delta from the start of the tool (MB): init={mem_init:g} "
            f"overall={mem_overall:g}")
    if flags["report_peak_memory_footprint"] or not new:
        out(f"Peak memory footprint (MB): init={mem_init:g} overall={mem_overall:g}")
    if flags["output_filepath"]:
        model.save_outputs(str(flags["output_filepath"]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
