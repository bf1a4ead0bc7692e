"""Search benchmark: energy reduction, hypervolume per sampler, and where a trial's time goes.

Runs document 000's reference (``reference.model = "example"``) through ``SearchRun`` once per
(sampler, seed), each in its own results directory under ``bench/_runs/``, and writes
``bench/RESULTS.md`` (atomically) with three sections:

1. the best estimated-energy reduction against the uniform-int8 seed trial among the trials
   that lose at most 1 accuracy point against it (accuracy = the .tflite's validation
   accuracy), with that candidate's measured local latency next to the int8 trial's;
2. the hypervolume of (accuracy, energy / int8 energy) with the reference point
   (accuracy 0, energy 2 x int8) after the first 25 / 50 / 100 finished trials, per sampler;
3. seconds per trial per stage (the records' ``time_*_s``) and the harness's overhead share
   of the search's wall time.

Defaults are the full protocol (100 trials, seeds 0 1 2, samplers tpe nsga2 random,
Fashion-MNIST, 1 epoch of proxy training on 10 % of the split). A reduced protocol is a matter of
flags; RESULTS.md then says what was not run and gives the command for the rest.

Resumable: a run directory is keyed by the dataset and every setting that changes a trial's
outcome (epochs, data fraction, measure settings, seed, sampler), not by the trial count, so
asking for more trials resumes the study (the harness resumes studies by name) and a study
that already holds the requested trials is not run again.

    .venv/bin/python bench/search_bench.py                       # the full protocol
    .venv/bin/python bench/search_bench.py --trials 6 --seeds 0 --samplers random --dataset digits
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import logging
import math
import os
import re
import sys
import time
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported anywhere

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bench.machine import machine_info  # noqa: E402

log = logging.getLogger("search_bench")

FULL = {
    "trials": 100,
    "seeds": [0, 1, 2],
    "samplers": ["tpe", "nsga2", "random"],
    "dataset": "fashion-mnist",
    "checkpoints": [25, 50, 100],
    # The protocol's proxy-training budget per candidate: 1 epoch on 10 % of the training split
    # (6,000 images). The issue fixes 900 trials but not the budget; at the harness default
    # (2 epochs on half the split, about 25 s of training per trial on 2 cores) the protocol
    # would take about 7 h, at this budget about 2.5 h.
    "epochs": 1,
    "data_fraction": 0.1,
    # After each search, `harness finetune` trains its Pareto candidates and the int8 and float
    # seeds on the whole training split (section 4). One epoch with a cosine decay (about 25 s
    # per model on 2 cores, some 100 models) keeps it under an hour; the harness default is 3.
    "finetune_epochs": 1,
}
STAGES = ("build", "train", "convert", "verify", "measure")
FINISHED_STATES = ("complete", "rejected", "pruned")  # what the harness counts towards `trials`
ACCURACY_LOSS_MAX = 0.01  # 1 accuracy point, accuracy being a fraction
SWEEP_POINTS = (0, 1, 2, 5)  # accuracy-loss allowances (points) for the supplementary table
HV_REF_ACCURACY = 0.0
HV_REF_ENERGY_X_INT8 = 2.0
FASHION_PATH = "/usr/share/datasets/fashion-mnist"


# --- settings ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunKey:
    dataset: str
    sampler: str
    seed: int

    def name(self, tag: str) -> str:
        return f"bench-{_slug(self.dataset)}-{tag}-{self.sampler}-s{self.seed}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark the harness's search (see bench/README.md).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--trials", type=int, default=FULL["trials"], help="trials per search (the harness's count)")
    p.add_argument("--seeds", type=int, nargs="+", default=FULL["seeds"])
    p.add_argument("--samplers", nargs="+", default=FULL["samplers"], choices=["tpe", "nsga2", "nsga3", "gp", "random"])
    p.add_argument("--dataset", default=FULL["dataset"], help="digits | fashion-mnist")
    p.add_argument("--data-path", default=None,
                   help=f"Fashion-MNIST IDX directory (default {FASHION_PATH} for fashion-mnist)")
    p.add_argument("--epochs", type=int, default=FULL["epochs"], help="proxy-QAT epochs")
    p.add_argument("--data-fraction", type=float, default=FULL["data_fraction"], help="training fraction")
    p.add_argument("--finetune-epochs", type=int, default=FULL["finetune_epochs"],
                   help="epochs of the fine-tune after each search (0: none, no section 4)")
    p.add_argument("--checkpoints", type=int, nargs="+", default=FULL["checkpoints"],
                   help="hypervolume after this many finished trials")
    p.add_argument("--min-seconds", type=float, default=None, help="[measure] min_seconds (default: the harness's)")
    p.add_argument("--config", type=Path, default=None,
                   help="optional TOML the bench settings are laid over (e.g. a search space)")
    p.add_argument("--runs-dir", type=Path, default=BENCH_DIR / "_runs")
    p.add_argument("--output", type=Path, default=BENCH_DIR / "RESULTS.md")
    p.add_argument("--progress", action="store_true", help="show the harness's progress bar")
    p.add_argument("--report-only", action="store_true", help="run nothing; report the runs already there")
    args = p.parse_args(argv)
    if args.trials < 1:
        p.error("--trials must be >= 1")
    if args.finetune_epochs < 0:
        p.error("--finetune-epochs must be >= 0")
    if args.data_fraction is not None and not 0 < args.data_fraction <= 1:
        p.error("--data-fraction must be in (0, 1]")
    return args


def build_mapping(args: argparse.Namespace, key: RunKey, study: str, results_dir: Path) -> dict:
    """The config mapping handed to ``config_from_mapping`` for one run."""
    base: dict = {}
    if args.config is not None:
        base = tomllib.loads(args.config.read_text())
    mapping = {section: dict(values) if isinstance(values, dict) else values for section, values in base.items()}
    mapping.setdefault("reference", {})["model"] = "example"
    data = mapping.setdefault("data", {})
    data["dataset"] = key.dataset
    path = args.data_path or (FASHION_PATH if key.dataset in ("fashion-mnist", "fashion_mnist") else None)
    if path is not None:
        data["path"] = path
    search = mapping.setdefault("search", {})
    search.update({
        "study": study, "trials": args.trials, "sampler": key.sampler, "seed": key.seed,
        "mode": "pareto", "objectives": ["accuracy", "energy"], "results_dir": str(results_dir),
        "accuracy_from": "tflite",
    })
    training = mapping.setdefault("training", {})
    if args.epochs is not None:
        training["epochs"] = args.epochs
    if args.data_fraction is not None:
        training["data_fraction"] = args.data_fraction
    if args.finetune_epochs:
        mapping.setdefault("finetune", {})["epochs"] = args.finetune_epochs
    measure = mapping.setdefault("measure", {})
    measure.setdefault("devices", ["local"])
    if args.min_seconds is not None:
        measure["min_seconds"] = args.min_seconds
    return mapping


def settings_tag(config) -> str:
    """What changes a trial's outcome, in the run directory's name (the trial count is not)."""
    t = config.training
    rest = {k: v for k, v in _config_dict(config).items()
            if k not in ("study", "trials", "results_dir", "sampler", "seed", "finetune")}  # finetune: after the search
    rest["training"].pop("seed", None)
    if rest["training"].get("lr_schedule") == "constant":
        # added after the full protocol ran, with the old behaviour as its default: runs made
        # before it keep their name (and are resumed, not redone)
        del rest["training"]["lr_schedule"]
    if rest.get("groups") is None:
        rest.pop("groups", None)  # likewise: group search came later, off by default
    return f"e{t.epochs}-f{t.data_fraction:g}-" + _short_hash(json.dumps(rest, sort_keys=True))


def _short_hash(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:8]


# --- running -------------------------------------------------------------------------------------


def finished_trials(results_dir: Path, study: str) -> int:
    """Trials the harness counts towards ``trials`` (COMPLETE + PRUNED), 0 for no study."""
    import optuna

    from harness.search_loop import study_storage_url

    if not (results_dir / "optuna.sqlite3").is_file():
        return 0
    try:
        s = optuna.load_study(study_name=study, storage=study_storage_url(results_dir))
    except KeyError:
        return 0
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(s.get_trials(deepcopy=False, states=states))


def _read_json(path: Path, default):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def run_one(args: argparse.Namespace, key: RunKey, config, study: str, results_dir: Path) -> dict:
    """Run (or resume, or skip) one search; returns its timing log."""
    from harness.search_loop import SearchRun

    timing_path = results_dir / "bench_timing.json"
    timing = _read_json(timing_path, {"segments": []})
    before = finished_trials(results_dir, study)
    if before >= args.trials:
        log.info("%s: already holds %d finished trials (>= %d); not rerun", study, before, args.trials)
        return timing
    results_dir.mkdir(parents=True, exist_ok=True)
    segment = {
        "started": _dt.datetime.now().isoformat(timespec="seconds"), "trials_requested": args.trials,
        "finished_before": before, "finished_after": None, "init_s": None, "run_s": None,
        "done": False, "loadavg_start": os.getloadavg()[0], "config": _config_dict(config), "code": args.code,
    }
    timing["segments"].append(segment)
    _write_json(timing_path, timing)  # a killed segment stays marked `done: false`
    log.info("%s: starting with %d finished trials, target %d", study, before, args.trials)
    t0 = time.perf_counter()
    try:
        search = SearchRun(config, progress=args.progress)  # loads data and the reference (trains it once)
        t1 = time.perf_counter()
        segment["init_s"] = t1 - t0
        waits, undo = instrument_waits(search)
        try:
            summary = search.run()
        finally:
            undo()
            segment.update(waits)
    except Exception as e:
        segment.update(error=f"{type(e).__name__}: {' '.join(str(e).split())}"[:500],
                       elapsed_s=time.perf_counter() - t0, finished_after=finished_trials(results_dir, study))
        _write_json(timing_path, timing)
        log.exception("%s: the search raised; its partial results are reported", study)
        return timing
    t2 = time.perf_counter()
    segment.update(run_s=t2 - t1, finished_after=summary.finished, done=True,
                   counts=summary.counts, loadavg_end=os.getloadavg()[0])
    _write_json(timing_path, timing)
    log.info("%s: %d finished in %.1f s (+%.1f s setup); states %s",
             study, summary.finished, t2 - t1, t1 - t0, summary.counts)
    return timing


def finetune_one(args: argparse.Namespace, config, study: str, results_dir: Path) -> dict:
    """`harness finetune` of one finished search (resumed like the search); returns its log."""
    from harness.finetune import FinetuneRun

    log_path = results_dir / "bench_finetune.json"
    timing = _read_json(log_path, {"segments": []})
    if finished_trials(results_dir, study) < args.trials:
        log.info("%s: search unfinished; not fine-tuned", study)
        return timing
    t0 = time.perf_counter()
    try:
        summary = FinetuneRun(config, progress=args.progress).run()
    except Exception as e:
        log.exception("%s: the fine-tune raised; its partial results are reported", study)
        timing["segments"].append({"error": f"{type(e).__name__}: {' '.join(str(e).split())}"[:500]})
    else:
        timing["segments"].append({
            "wall_s": time.perf_counter() - t0, "done": len(summary.done), "reused": len(summary.reused),
            "failed": summary.failed, "finished": _dt.datetime.now().isoformat(timespec="seconds"), "code": args.code,
        })
    _write_json(log_path, timing)
    return timing


def instrument_waits(search) -> tuple[dict, object]:
    """Time the main thread's waits for the device, without touching harness code.

    The stage timers overlap: a host stage (a training batch, a conversion) that finds a local
    measurement holding the host CPU waits for it inside its own timer, so that time is counted
    in ``train``/``convert``/``verify`` *and* (its window) in ``measure``. To split the wall
    time the bench wraps, for this process and this ``SearchRun`` instance only, the gate's
    ``begin_work`` (waits inside host stages) and the ``concurrent.futures.wait`` the loop
    blocks in for measurements. Returns the dict that fills in as the search runs (keys
    ``gate_wait_s``, ``device_wait_s``, ``instrumented``) and a function that undoes the hooks.
    """
    import threading

    import harness.search_loop as loop

    waits = {"gate_wait_s": 0.0, "device_wait_s": 0.0, "instrumented": False}
    gate = getattr(search, "gate", None)
    futures_wait = getattr(loop, "wait", None)
    if gate is None or not hasattr(gate, "begin_work") or futures_wait is None:
        return waits, lambda: None
    main = threading.get_ident()
    begin_work = gate.begin_work

    def timed_begin_work() -> None:
        started = time.perf_counter()
        begin_work()
        if threading.get_ident() == main:
            waits["gate_wait_s"] += time.perf_counter() - started

    def timed_wait(*a, **kw):
        started = time.perf_counter()
        try:
            return futures_wait(*a, **kw)
        finally:
            if threading.get_ident() == main:
                waits["device_wait_s"] += time.perf_counter() - started

    def undo() -> None:
        loop.wait = futures_wait
        with contextlib.suppress(AttributeError):  # already undone
            del gate.begin_work

    gate.begin_work = timed_begin_work
    loop.wait = timed_wait
    waits["instrumented"] = True
    return waits, undo


def _codes(timing: dict) -> list[str]:
    return list(dict.fromkeys(seg["code"] for seg in timing.get("segments", []) if seg.get("code")))


def _config_dict(config) -> dict:
    data = asdict(config)
    return json.loads(json.dumps(data, default=str))


# --- analysis -------------------------------------------------------------------------------------


def ordered_finished(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["state"].isin(FINISHED_STATES)].sort_values("trial_number")


def int8_row(frame: pd.DataFrame) -> pd.Series | None:
    rows = frame[(frame["label"] == "int8") & (frame["state"] == "complete")].sort_values("trial_number")
    return None if rows.empty else rows.iloc[0]


def best_reduction(frame: pd.DataFrame, upto: int) -> dict:
    """Section 1 for one run, over its first ``upto`` finished trials."""
    base = int8_row(frame)
    if base is None:
        return {"error": "no complete int8 trial"}
    trials = ordered_finished(frame).head(upto)
    done = trials[trials["state"] == "complete"].dropna(subset=["accuracy", "energy_mj"])
    eligible = done[done["accuracy"] >= base["accuracy"] - ACCURACY_LOSS_MAX - 1e-12]
    best = eligible.sort_values(["energy_mj", "accuracy"], ascending=[True, False]).iloc[0]
    reference = frame[(frame["label"] == "reference") & (frame["state"] == "complete")]
    by_tolerance = {}
    for points in SWEEP_POINTS:
        ok = done[done["accuracy"] >= base["accuracy"] - points / 100 - 1e-12]
        pick = ok.sort_values(["energy_mj", "accuracy"], ascending=[True, False]).iloc[0]
        by_tolerance[points] = {
            "trial": int(pick["trial_number"]), "accuracy": float(pick["accuracy"]),
            "reduction": 1.0 - float(pick["energy_mj"]) / float(base["energy_mj"]),
            "latency_ms": float(pick.get("latency_ms", math.nan)),
        }
    return {
        "by_tolerance": by_tolerance,
        "int8_trial": int(base["trial_number"]),
        "int8_accuracy": float(base["accuracy"]),
        "int8_energy_mj": float(base["energy_mj"]),
        "int8_latency_ms": float(base.get("latency_ms", math.nan)),
        "float_accuracy": float(reference["accuracy"].iloc[0]) if len(reference) else math.nan,
        "trial": int(best["trial_number"]),
        "accuracy": float(best["accuracy"]),
        "energy_mj": float(best["energy_mj"]),
        "energy_source": str(best.get("energy_mj_source", "")),
        "reduction": 1.0 - float(best["energy_mj"]) / float(base["energy_mj"]),
        "latency_ms": float(best.get("latency_ms", math.nan)),
        "n_eligible": len(eligible),
        "n_complete": len(done),
        "lowering_mode": str(best.get("param_lowering_mode", "")),
    }


def finetuned_reduction(frame: pd.DataFrame, tuned: pd.DataFrame, timing: dict) -> dict:
    """Section 4 for one run: section 1's pick over the fine-tuned set, against the fine-tuned
    int8 seed, with each pick's proxy (search) accuracy beside it."""
    result = best_reduction(tuned, upto=len(tuned))
    if "error" in result:
        return result
    proxy = frame.set_index("trial_number")["accuracy"]
    done = [seg for seg in timing.get("segments", []) if "wall_s" in seg]
    result.update(
        proxy_accuracy=float(proxy.get(result["trial"], math.nan)),
        int8_proxy_accuracy=float(proxy.get(result["int8_trial"], math.nan)),
        n_tuned=int((tuned["state"] == "complete").sum()),
        n_failed=int((tuned["state"] == "failed").sum()),
        train_s_per_model=float(tuned["time_train_s"].mean()) if "time_train_s" in tuned else math.nan,
        wall_s=sum(seg["wall_s"] for seg in done) if done else math.nan,
    )
    return result


def hypervolume_at(frame: pd.DataFrame, upto: int) -> float | None:
    """Section 2: HV of (accuracy max, energy/int8 min) with ref (0, 2) over the first ``upto``."""
    from results.pareto import hypervolume

    base = int8_row(frame)
    trials = ordered_finished(frame)
    if base is None or len(trials) < upto:
        return None
    done = trials.head(upto)
    done = done[done["state"] == "complete"].dropna(subset=["accuracy", "energy_mj"])
    relative_energy = done["energy_mj"].to_numpy(float) / float(base["energy_mj"])
    points = np.column_stack([done["accuracy"].to_numpy(float), relative_energy])
    return hypervolume(points, [HV_REF_ACCURACY, HV_REF_ENERGY_X_INT8], ["maximize", "minimize"])


def stage_times(frame: pd.DataFrame, timing: dict) -> dict:
    """Section 3 for one run."""
    columns = {s: f"time_{s}_s" for s in STAGES}
    evaluated = frame[frame[columns["build"]].notna()] if columns["build"] in frame else frame.iloc[0:0]
    sums = {s: float(frame[c].fillna(0).sum()) if c in frame else 0.0 for s, c in columns.items()}
    per_trial = {s: (sums[s] / len(evaluated) if len(evaluated) else math.nan) for s in STAGES}
    segments = timing.get("segments", [])
    complete = bool(segments) and all(seg.get("done") for seg in segments)
    run_s = sum(seg.get("run_s") or 0.0 for seg in segments) if complete else math.nan
    init_s = sum(seg.get("init_s") or 0.0 for seg in segments) if complete else math.nan
    total_stages = sum(sums.values())
    host_stages = total_stages - sums["measure"]
    instrumented = complete and all(seg.get("instrumented") for seg in segments)
    gate_wait = sum(seg.get("gate_wait_s", 0.0) for seg in segments) if instrumented else math.nan
    device_wait = sum(seg.get("device_wait_s", 0.0) for seg in segments) if instrumented else math.nan
    main_overhead = run_s - host_stages - device_wait
    reused = frame["flags"].fillna("").str.contains("reused:").sum()
    return {
        "finished": len(ordered_finished(frame)),
        "evaluated": len(evaluated),
        "reused": int(reused),
        "failed": int((frame["state"] == "failed").sum()),
        "sums": sums,
        "per_trial": per_trial,
        "stage_total_s": total_stages,
        "run_s": run_s,
        "init_s": init_s,
        "overhead_s": run_s - total_stages,
        "overhead_share": (run_s - total_stages) / run_s if run_s and not math.isnan(run_s) else math.nan,
        "host_stage_s": host_stages,
        "gate_wait_s": gate_wait,
        "device_wait_s": device_wait,
        "main_overhead_s": main_overhead,
        "main_overhead_share": main_overhead / run_s if run_s and not math.isnan(run_s) else math.nan,
        "segments": len(segments),
        "timing_complete": complete,
    }


# --- the report -------------------------------------------------------------------------------------


def _f(value, fmt: str = ".4g", missing: str = "n/a") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return format(value, fmt)


def _mean_sd(values: list[float]) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "not run"
    if len(values) == 1:
        return f"{values[0]:.4f} (n=1)"
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f} (n={len(values)})"


def _command(args: argparse.Namespace) -> str:
    parts = [".venv/bin/python bench/search_bench.py"] + (["--report-only"] if args.report_only else [])
    parts += ["--trials", str(args.trials), "--seeds", *map(str, args.seeds), "--samplers", *args.samplers,
              "--dataset", args.dataset, "--checkpoints", *map(str, args.checkpoints)]
    for flag, value in (("--epochs", args.epochs), ("--data-fraction", args.data_fraction),
                        ("--min-seconds", args.min_seconds), ("--config", args.config),
                        ("--data-path", args.data_path)):
        if value is not None:
            parts += [flag, str(value)]
    return " ".join(parts)


def not_run(args: argparse.Namespace, defaults) -> list[str]:
    """What the full protocol asks for that this invocation did not do."""
    gaps = []
    if args.dataset != FULL["dataset"]:
        gaps.append(f"dataset is {args.dataset!r}, not the protocol's {FULL['dataset']!r}")
    if args.trials < FULL["trials"]:
        gaps.append(f"{args.trials} trials per search, not {FULL['trials']}")
    missing_seeds = [s for s in FULL["seeds"] if s not in args.seeds]
    if missing_seeds:
        gaps.append(f"seeds {missing_seeds} not run (ran {args.seeds})")
    missing_samplers = [s for s in FULL["samplers"] if s not in args.samplers]
    if missing_samplers:
        gaps.append(f"samplers {missing_samplers} not run (ran {args.samplers})")
    missing_checkpoints = [c for c in FULL["checkpoints"] if c > args.trials or c not in args.checkpoints]
    if missing_checkpoints:
        gaps.append(f"hypervolume checkpoints {missing_checkpoints} not reached/asked")
    if args.epochs != FULL["epochs"]:
        gaps.append(f"proxy training {args.epochs} epoch(s), not the protocol's {FULL['epochs']}")
    if args.data_fraction != FULL["data_fraction"]:
        gaps.append(f"data fraction {args.data_fraction:g}, not the protocol's {FULL['data_fraction']:g}")
    if args.min_seconds is not None and args.min_seconds != defaults.measure.min_seconds:
        gaps.append(f"measure min_seconds {args.min_seconds:g}, "
                    f"not the harness default {defaults.measure.min_seconds:g}")
    if args.config is not None:
        gaps.append(f"settings laid over {args.config} (not the harness defaults)")
    return gaps


def unfinished(args: argparse.Namespace, runs: list[dict]) -> list[str]:
    """The asked-for searches that have no results yet or fewer finished trials than asked."""
    gaps = []
    by_key = {(r["seed"], r["sampler"]): r for r in runs}
    for seed in args.seeds:
        for sampler in args.samplers:
            run = by_key.get((seed, sampler))
            if run is None:
                gaps.append(f"{sampler} seed {seed}: not run yet")
            elif run["section3"]["finished"] < args.trials:
                gaps.append(f"{sampler} seed {seed}: {run['section3']['finished']} of {args.trials} trials finished "
                            "(interrupted or still running; rerunning the command resumes it)")
    return gaps


def shared_prefixes(runs: list[dict]) -> list[tuple[int, str, str, int]]:
    """(seed, sampler a, sampler b, n): pairs whose first n finished trials are the same candidates."""
    out = []
    for i, a in enumerate(runs):
        for b in runs[i + 1:]:
            if a["seed"] != b["seed"]:
                continue
            n = 0
            for x, y in zip(a.get("keys", []), b.get("keys", []), strict=False):  # runs may differ in length
                if x != y:
                    break
                n += 1
            if n > 2:  # the two enqueued seed trials are always shared
                out.append((a["seed"], a["sampler"], b["sampler"], n))
    return out


def write_report(args, runs: list[dict], machine: dict, started: str, bench_wall_s: float, load: tuple) -> None:
    from bench.results_file import write_section
    from harness.config import SearchConfig

    defaults = SearchConfig()
    gaps = not_run(args, defaults) + unfinished(args, runs)
    config = runs[0]["config"] if runs else None
    lines: list[str] = []
    add = lines.append
    add("# Search benchmark results")
    add("")
    add("Written by `bench/search_bench.py`; do not edit by hand (rerun the script).")
    add("")
    add(f"- Date: {started} (report written {_dt.datetime.now().isoformat(timespec='seconds')})")
    add(f"- Machine: nproc {machine['nproc']}, CPU {machine['cpu']}, memory {machine['memory']}, "
        f"Linux {machine['kernel']}, Python {machine['python']}")
    add("- Packages: " + ", ".join(f"{k} {v}" for k, v in machine["versions"].items()))
    add(f"- Code of this invocation: commit {machine['commit']} (each run's own, where recorded, is "
        "listed with the run directories at the end)")
    add(f"- Load average (1 min) at start / end of this invocation: {load[0]:.2f} / {load[1]:.2f}; per search "
        "at the end of this file (the machine is shared; timings include any contention)")
    add(f"- Command: `{_command(args)}`; this invocation took {bench_wall_s:.0f} s of wall time "
        "(runs already complete are not rerun, their times come from their own logs)")
    add("")
    add("## Protocol")
    add("")
    if gaps:
        add("**REDUCED PROTOCOL.** Not run (relative to the full protocol):")
        add("")
        for gap in gaps:
            add(f"- {gap}")
        add("")
        add("Command for the full protocol (runs are keyed by their settings but not by the trial count, "
            "so runs above with the protocol's settings are resumed and extended; others are not reused):")
        add("")
        add("```sh")
        add(".venv/bin/python bench/search_bench.py   # = --trials 100 --seeds 0 1 2 --samplers tpe nsga2 random "
            "--dataset fashion-mnist --checkpoints 25 50 100 --epochs 1 --data-fraction 0.1, "
            "harness-default measurement")
        add("```")
    else:
        add("Full protocol.")
    add("")
    if config is not None:
        t, m = config["training"], config["measure"]
        add(f"- Reference: `{config['reference']}` (document 000: conv 16 → conv 32 → conv 64 → dense 10), "
            f"dataset `{config['dataset']}`" + (f" from `{config['data_path']}`" if config["data_path"] else ""))
        add(f"- Searches: samplers {args.samplers} × seeds {args.seeds}, {args.trials} trials each "
            "(the harness's count: complete + pruned; the first two are the enqueued float reference and "
            "uniform-int8 candidates), objectives accuracy (max, the .tflite's validation accuracy) and "
            "energy (min, `energy_mj`), in_flight "
            f"{config['in_flight']}")
        add(f"- Proxy QAT: epochs {t['epochs']}, data fraction {t['data_fraction']}, batch size {t['batch_size']}, "
            f"learning rate {t['learning_rate']}")
        add(f"- Measurement (device `local`, LiteRT): devices {m['devices']}, threads {m['threads']}, "
            f"warm-up runs {m['warmup_runs']}, min_seconds {m['min_seconds']}, min_runs {m['min_runs']}")
        space = config["space"]
        add(f"- Search space (harness defaults unless `--config`): kernel {space['kernel']}, bias {space['bias']}, "
            f"activation {space['activation']}, multipliers {space['multipliers']}, size mode {space['size_mode']}, "
            f"rules {space['rules'] or 'none'}, activation ranges {space.get('activation_range', 'half')} "
            "(`calibrated`: each `fixed(M)` activation's binary point, and a binary/binary01/ternary one's "
            "scale, fitted to the reference's outputs; `half`: M/2 integer bits, scale 1)")
        add("- Note: with `reference.model = \"example\"` the harness trains the reference with the search's "
            "seed, so each seed searches around its own (equally trained) reference model.")
    add("")

    resumed = [r for r in runs if r["section3"]["segments"] > 1]
    reused = [r for r in runs if r["section3"]["reused"]]
    if resumed or reused:
        add("- Resumed runs: " + (", ".join(f"{r['sampler']} seed {r['seed']} ({r['section3']['segments']} invocations)"
                                            for r in resumed) or "none")
            + "; runs with reused (duplicate) candidates: "
            + (", ".join(f"{r['sampler']} seed {r['seed']} ({r['section3']['reused']})" for r in reused) or "none")
            + ". A reused trial repeats an earlier candidate's stored result and counts as a finished trial; "
            "the harness seeds each process's sampler identically, so a resumed random-sampler study "
            "re-proposes its first candidates (see bench/README.md).")
        add("")

    # Section 1
    add("## 1. Best estimated-energy reduction at ≤ 1 point accuracy loss vs uniform int8")
    add("")
    add("Per search, over all its finished trials: among the complete trials whose .tflite validation accuracy "
        "is at least the int8 seed trial's minus 0.01, the one with the least `energy_mj` (the estimate: the "
        "`local` device has no power meter; the source column says so). Reduction = 1 − E/E_int8. Latency is "
        "the measured median on `local` (one thread); it is one noisy measurement per trial on a shared host.")
    add("")
    add("| sampler | seed | trials | float ref acc | int8 acc | int8 energy (mJ) | best trial | its acc | Δacc (pts) | "
        "energy reduction | energy source | latency ms (best / int8) | lowering | eligible / complete |")
    add("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    reductions: dict[str, list[float]] = {}
    for run in runs:
        r = run["section1"]
        if "error" in r:
            add(f"| {run['sampler']} | {run['seed']} | {run['section3']['finished']} | " + f"{r['error']} |" * 11)
            continue
        reductions.setdefault(run["sampler"], []).append(r["reduction"])
        add(f"| {run['sampler']} | {run['seed']} | {run['section3']['finished']} | {_f(r['float_accuracy'], '.4f')} | "
            f"{r['int8_accuracy']:.4f} | {r['int8_energy_mj']:.4g} | {r['trial']} | {r['accuracy']:.4f} | "
            f"{(r['accuracy'] - r['int8_accuracy']) * 100:+.2f} | **{r['reduction'] * 100:.1f} %** | "
            f"{r['energy_source']} | "
            f"{_f(r['latency_ms'], '.4f')} / {_f(r['int8_latency_ms'], '.4f')} "
            f"({_f(r['latency_ms'] / r['int8_latency_ms'] if r['int8_latency_ms'] else math.nan, '.2f')}×) | "
            f"{r['lowering_mode']} | {r['n_eligible']} / {r['n_complete']} |")
    add("")
    if reductions:
        add_reduction_summary(add, reductions, "energy reduction, mean over seeds")
        best_run = max((r for r in runs if "error" not in r["section1"]), key=lambda r: r["section1"]["reduction"])
        b = best_run["section1"]
        add("")
        add(f"Headline: **{b['reduction'] * 100:.1f} %** less estimated energy than uniform int8 "
            f"({best_run['sampler']}, seed {best_run['seed']}, trial {b['trial']}: accuracy {b['accuracy']:.4f} vs "
            f"{b['int8_accuracy']:.4f}); measured local latency {_f(b['latency_ms'], '.4f')} ms vs "
            f"{_f(b['int8_latency_ms'], '.4f')} ms for int8. Document 000 reports 74 % on its own task; the estimate "
            "ranks candidates and is not an absolute energy.")
        add("")
        add("For context only (not the benchmark's figure): the same pick with other accuracy-loss allowances, "
            "reduction (trial, accuracy, latency ms):")
        add("")
        add("| sampler | seed | " + " | ".join(f"≤ {pt} pt" for pt in SWEEP_POINTS) + " |")
        add("|---|---|" + "---|" * len(SWEEP_POINTS))
        for run in runs:
            sweep = run["section1"].get("by_tolerance")
            if not sweep:
                continue
            add(f"| {run['sampler']} | {run['seed']} | " + " | ".join(
                f"{sweep[pt]['reduction'] * 100:.1f} % (#{sweep[pt]['trial']}, {sweep[pt]['accuracy']:.4f}, "
                f"{_f(sweep[pt]['latency_ms'], '.4f')})" for pt in SWEEP_POINTS) + " |")
    add("")

    # Section 2
    add("## 2. Hypervolume per sampler")
    add("")
    add(f"Objectives: accuracy (maximise; .tflite validation accuracy, a fraction) and energy / E_int8 (minimise; "
        f"`energy_mj` of the trial over `energy_mj` of the same search's int8 seed trial). Fixed reference point: "
        f"accuracy {HV_REF_ACCURACY:g}, energy {HV_REF_ENERGY_X_INT8:g} × E_int8. Exact 2-D hypervolume "
        "(`results.pareto.hypervolume`); the largest possible value is 2.0 (accuracy 1 at zero energy). "
        "\"After k trials\" = the first k finished trials in trial-number order, the two seed trials included. "
        "\"not run\" = fewer than k trials were run.")
    add("")
    checkpoints = sorted(set(args.checkpoints))
    add("| sampler | " + " | ".join(f"HV after {k} (mean ± sd over seeds)" for k in checkpoints) + " |")
    add("|---|" + "---|" * len(checkpoints))
    for sampler in args.samplers:
        cells = []
        for k in checkpoints:
            values = [r["section2"].get(k) for r in runs if r["sampler"] == sampler]
            cells.append(_mean_sd([v for v in values if v is not None]))
        add(f"| {sampler} | " + " | ".join(cells) + " |")
    add("")
    shared = shared_prefixes(runs)
    if shared:
        add("Samplers that have not diverged yet: with the same seed, these searches proposed the very same "
            "candidates, in the same order, for their first trials (Optuna's TPE starts with random trials and "
            "NSGA-II's first generation is random, both drawn from a random sampler seeded like `random`), so "
            "differences at checkpoints up to that many trials are not differences between the samplers:")
        add("")
        for seed, a, b, n in shared:
            add(f"- seed {seed}: {a} and {b} identical for the first {n} trials")
        add("")
    add("Per search:")
    add("")
    add("| sampler | seed | " + " | ".join(f"HV@{k}" for k in checkpoints) + " | E_int8 (mJ) |")
    add("|---|---|" + "---|" * len(checkpoints) + "---|")
    for run in runs:
        cells = [_f(run["section2"].get(k), ".4f", "not run") for k in checkpoints]
        e8 = run["section1"].get("int8_energy_mj")
        add(f"| {run['sampler']} | {run['seed']} | " + " | ".join(cells) + f" | {_f(e8)} |")
    add("")

    # Section 3
    add("## 3. Seconds per trial, and the harness's overhead")
    add("")
    add("Stage seconds are the records' `time_<stage>_s`, averaged over the trials that were evaluated "
        "(duplicates the harness reused from an earlier trial cost nothing and are not in the mean). "
        "`measure` is the timed window only (model load and warm-up are outside it). Wall = "
        "`SearchRun.run()` timed with `time.perf_counter`; setup (loading data and the reference, training the "
        "reference on first use) is the separate `setup` column and in neither share.")
    add("")
    add("- **Overhead share (as specified)** = (wall − Σ of the five stage seconds of all the search's records) / "
        "wall. The five stage timers are *not* disjoint: a training batch, conversion or verification that finds a "
        "`local` measurement holding the host CPU waits for it inside its own timer (the host CPU gate), so that "
        "wait is counted in `train`/`convert`/`verify` and again in `measure`. This share is therefore biased low "
        "and can be negative.")
    add("- **Main-thread overhead share (instrumented)** = (wall − Σ build/train/convert/verify − the main thread's "
        "time blocked waiting for measurements) / wall: the search loop's own time (Optuna ask/tell, the results "
        "store, candidate bookkeeping, process start-up of each stage). The bench measures the two waits by "
        "wrapping, in its own process, the gate's `begin_work` (`gate wait`: host stages stalled by a measurement) "
        "and the `concurrent.futures.wait` the loop blocks in (`device wait`).")
    add("")
    add("| sampler | seed | finished | evaluated | reused | failed | " + " | ".join(STAGES)
        + " | Σ stages / trial | wall / finished trial | setup (s) | wall (s) | gate wait (s) | device wait (s) "
        "| overhead share (as specified) | main-thread overhead share |")
    add("|---|---|---|---|---|---|" + "---|" * len(STAGES) + "---|---|---|---|---|---|---|---|")

    def pct(value: float) -> str:
        return _f(value * 100 if not math.isnan(value) else math.nan, ".1f") + " %"

    totals = {st: 0.0 for st in STAGES}
    agg = {"evaluated": 0, "finished": 0, "run_s": 0.0, "gate": 0.0, "device": 0.0}
    all_timed = all_instrumented = True
    for run in runs:
        s = run["section3"]
        for stage in STAGES:
            totals[stage] += s["sums"][stage]
        agg["evaluated"] += s["evaluated"]
        agg["finished"] += s["finished"]
        all_timed &= s["timing_complete"]
        all_instrumented &= not math.isnan(s["device_wait_s"])
        if s["timing_complete"]:
            agg["run_s"] += s["run_s"]
        if not math.isnan(s["device_wait_s"]):
            agg["gate"] += s["gate_wait_s"]
            agg["device"] += s["device_wait_s"]
        per = s["per_trial"]
        wall_per_trial = s["run_s"] / s["finished"] if s["finished"] else math.nan
        add(f"| {run['sampler']} | {run['seed']} | {s['finished']} | {s['evaluated']} | {s['reused']} | "
            f"{s['failed']} | "
            + " | ".join(_f(per[st], ".3f") for st in STAGES)
            + f" | {_f(sum(per.values()), '.3f')} | {_f(wall_per_trial, '.3f')} | "
            f"{_f(s['init_s'], '.1f')} | {_f(s['run_s'], '.1f')} | {_f(s['gate_wait_s'], '.1f')} | "
            f"{_f(s['device_wait_s'], '.1f')} | {pct(s['overhead_share'])} | {pct(s['main_overhead_share'])} |"
            + ("" if s["timing_complete"] else " (a segment was interrupted: wall unknown)"))
    if runs and agg["evaluated"]:
        stage_sum = sum(totals.values())
        host_sum = stage_sum - totals["measure"]
        wall = agg["run_s"] if all_timed else math.nan
        share = (wall - stage_sum) / wall if all_timed and wall else math.nan
        main_share = (wall - host_sum - agg["device"]) / wall if all_timed and all_instrumented and wall else math.nan
        add(f"| **all** | | {agg['finished']} | {agg['evaluated']} | | | "
            + " | ".join(f"{totals[st] / agg['evaluated']:.3f}" for st in STAGES)
            + f" | {stage_sum / agg['evaluated']:.3f} | "
            f"{_f(wall / agg['finished'] if all_timed else math.nan, '.3f')} | | "
            f"{_f(wall, '.1f')} | {_f(agg['gate'] if all_instrumented else math.nan, '.1f')} | "
            f"{_f(agg['device'] if all_instrumented else math.nan, '.1f')} | {pct(share)} | {pct(main_share)} |")
    add("")
    tuned_runs = [r for r in runs if r.get("section4")]
    if tuned_runs:
        write_finetune_section(add, tuned_runs, config)
    errors = [(r, e) for r in runs for e in r.get("errors", [])]
    if errors:
        add("## Errors")
        add("")
        for run, error in errors:
            add(f"- {run['sampler']} seed {run['seed']}: `{error}`")
        add("")
    add("Run directories (git-ignored, resumable):")
    add("")
    for r in runs:
        where = Path(r["dir"])
        shown = where.relative_to(REPO_ROOT) if where.is_relative_to(REPO_ROOT) else where
        loads = ", ".join(f"{_f(a, '.2f')} → {_f(b, '.2f')}" for a, b in r.get("loads", []))
        add(f"- `{shown}`: first started {r.get('started') or 'unknown'}, {r['section3']['segments']} invocation(s); "
            f"1-min load average at start → end of each: {loads or 'unknown'}; code of the search: "
            f"{', '.join(r['codes']['search']) or 'not recorded'}; of the fine-tune: "
            f"{', '.join(r['codes']['finetune']) or 'not recorded'}")
    add("")
    write_section(args.output, "search-bench", "\n".join(lines))  # other benchmarks keep their sections


def add_reduction_summary(add, reductions: dict[str, list[float]], title: str) -> None:
    """Per sampler: the mean reduction over its seeds and the best one."""
    add(f"| sampler | {title} | best |")
    add("|---|---|---|")
    for sampler, values in reductions.items():
        add(f"| {sampler} | {np.mean(values) * 100:.1f} % (n={len(values)}) | {max(values) * 100:.1f} % |")


def write_finetune_section(add, runs: list[dict], config: dict | None) -> None:
    """Section 4: section 1 again, after `harness finetune` trained the chosen candidates."""
    f = (config or {}).get("finetune", {})
    add("## 4. After fine-tuning the chosen candidates on the whole training split")
    add("")
    add(f"`harness finetune` after each search: its Pareto candidates and its int8 and float seed trials, each "
        f"continued from its trained .keras for {f.get('epochs')} epoch(s) on {f.get('data_fraction', 1) * 100:g} % "
        f"of the training split (batch {f.get('batch_size')}, Adam from {f.get('learning_rate')} with a "
        f"{f.get('lr_schedule')} schedule), then lowered, verified and measured again. The pick is section 1's "
        "rule over the fine-tuned set, against the fine-tuned int8 seed: both baselines get the same training "
        "as the candidates. \"proxy\" is the accuracy the search saw.")
    add("")
    add("| sampler | seed | fine-tuned | int8 acc (proxy → tuned) | best trial | its acc (proxy → tuned) | "
        "Δacc (pts) | energy reduction | latency ms (best / int8) | train s / model | wall (s) |")
    add("|---|---|---|---|---|---|---|---|---|---|---|")
    reductions: dict[str, list[float]] = {}
    for run in runs:
        r = run["section4"]
        if "error" in r:
            add(f"| {run['sampler']} | {run['seed']} | {r['error']} |" + " |" * 8)
            continue
        reductions.setdefault(run["sampler"], []).append(r["reduction"])
        add(f"| {run['sampler']} | {run['seed']} | {r['n_tuned']}"
            + (f" ({r['n_failed']} failed)" if r["n_failed"] else "")
            + f" | {_f(r['int8_proxy_accuracy'], '.4f')} → {r['int8_accuracy']:.4f} | {r['trial']} | "
            f"{_f(r['proxy_accuracy'], '.4f')} → {r['accuracy']:.4f} | "
            f"{(r['accuracy'] - r['int8_accuracy']) * 100:+.2f} | "
            f"**{r['reduction'] * 100:.1f} %** | {_f(r['latency_ms'], '.4f')} / {_f(r['int8_latency_ms'], '.4f')} | "
            f"{_f(r['train_s_per_model'], '.1f')} | {_f(r['wall_s'], '.0f')} |")
    add("")
    if reductions:
        add_reduction_summary(add, reductions, "energy reduction after fine-tuning, mean over seeds")
        add("")
        add("Other accuracy-loss allowances after fine-tuning, reduction (trial, accuracy):")
        add("")
        add("| sampler | seed | " + " | ".join(f"≤ {pt} pt" for pt in SWEEP_POINTS) + " |")
        add("|---|---|" + "---|" * len(SWEEP_POINTS))
        for run in runs:
            sweep = run["section4"].get("by_tolerance")
            if sweep:
                add(f"| {run['sampler']} | {run['seed']} | " + " | ".join(
                    f"{sweep[pt]['reduction'] * 100:.1f} % (#{sweep[pt]['trial']}, {sweep[pt]['accuracy']:.4f})"
                    for pt in SWEEP_POINTS) + " |")
        add("")


# --- main ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    import results
    from harness.config import config_from_mapping
    from harness.finetune import finetuned_study

    started = _dt.datetime.now().isoformat(timespec="seconds")
    load_start = os.getloadavg()[0]
    t0 = time.perf_counter()
    machine = machine_info(("tensorflow-cpu", "keras", "optuna", "ai-edge-litert", "qkeras"))
    args.code = machine["commit"]
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    runs: list[dict] = []
    # Seeds outer: an interrupted benchmark has compared every sampler on its first seeds.
    for seed in args.seeds:
        for sampler in args.samplers:
            key = RunKey(args.dataset, sampler, seed)
            probe = config_from_mapping(build_mapping(args, key, "probe", Path("probe")), where="bench")
            study = key.name(settings_tag(probe))
            results_dir = args.runs_dir / study
            config = config_from_mapping(build_mapping(args, key, study, results_dir), where="bench")
            if args.report_only:
                timing = _read_json(results_dir / "bench_timing.json", {"segments": []})
            else:
                timing = run_one(args, key, config, study, results_dir)
            try:
                frame = results.load(study, results_dir=results_dir)
            except results.ResultsError as e:
                log.warning("%s: no results (%s); left out of the report", study, e)
                continue
            section4, tuned_timing = None, {"segments": []}
            if args.finetune_epochs:
                tuned_timing = (_read_json(results_dir / "bench_finetune.json", {"segments": []}) if args.report_only
                                else finetune_one(args, config, study, results_dir))
                try:
                    tuned = results.load(finetuned_study(study), results_dir=results_dir)
                except results.ResultsError:
                    section4 = {"error": "not fine-tuned"}
                else:
                    section4 = finetuned_reduction(frame, tuned, tuned_timing)
            runs.append({
                "sampler": sampler, "seed": seed, "study": study, "dir": str(results_dir.resolve()),
                "config": _config_dict(config),
                "section1": best_reduction(frame, upto=args.trials),
                "section2": {k: hypervolume_at(frame, k) for k in args.checkpoints if k <= args.trials},
                "section3": stage_times(frame, timing),
                "section4": section4,
                "errors": [seg["error"] for seg in timing.get("segments", []) if seg.get("error")],
                "keys": list(ordered_finished(frame)["candidate_key"]),
                "started": next((seg.get("started") for seg in timing.get("segments", [])), None),
                "loads": [(seg.get("loadavg_start", math.nan), seg.get("loadavg_end", math.nan))
                          for seg in timing.get("segments", [])],
                # the commit each invocation ran (recorded since the fine-tune section was added)
                "codes": {"search": _codes(timing), "finetune": _codes(tuned_timing)},
            })
            # Rewrite after every search, so a long benchmark leaves a usable report at each step.
            write_report(args, runs, machine, started, time.perf_counter() - t0, (load_start, os.getloadavg()[0]))
            log.info("report updated: %s", args.output)
    if not runs:
        log.error("no run produced results")
        return 1
    write_report(args, runs, machine, started, time.perf_counter() - t0, (load_start, os.getloadavg()[0]))
    log.info("wrote %s", args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
