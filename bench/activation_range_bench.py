"""Paired benchmark: the same candidates trained with calibrated and with M/2 activation ranges.

What it answers: does calibrating each ``fixed(M)`` activation's range on the reference
(``[search] activation_range = "calibrated"``, :mod:`search.activation_ranges`) change the
accuracy a candidate reaches under the search's proxy training, and by how much? A search
benchmark cannot say: two searches with different settings propose different candidates, and
one seed's best pick moves by points from noise alone. ``--activation binary01 ternary`` (any
activation schemes) asks the same of the power-of-two scale calibrated for ``binary``,
``binary01`` and ``ternary`` activations against qkeras' scale of 1; such a run has its own
pairs and its own section of RESULTS.md.

For each seed, a random sampler (seeded) proposes candidates from the harness's default search
space around the document-000 reference trained with that seed; each candidate is built,
proxy-trained, lowered and verified twice through the harness's own
:class:`harness.evaluate.CandidateEvaluator`, once as sampled (M/2 integer bits, scale 1) and
once with the calibrated ranges, with the same weights, data order and seed. Candidates without
a calibrated activation are the same either way and are counted, not trained. Nothing is
measured on a device: accuracy is the point, and the energy estimate does not depend on the
range.

    .venv/bin/python -m bench.activation_range_bench                 # 3 seeds x 16 candidates
    .venv/bin/python -m bench.activation_range_bench --seeds 1 --candidates 4   # smoke
    .venv/bin/python -m bench.activation_range_bench --report-only
    .venv/bin/python -m bench.activation_range_bench --activation binary binary01 ternary

Each pair is appended to ``bench/_runs/activation-range-bench/pairs.jsonl`` as soon as it is
trained (a killed run resumes after the last pair); the section between
``<!-- activation-range-bench:start -->`` and ``<!-- activation-range-bench:end -->`` of
``bench/RESULTS.md`` is rewritten from that file.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import math
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.machine import machine_info  # noqa: E402
from bench.results_file import write_section  # noqa: E402
from bench.search_bench import FASHION_PATH  # noqa: E402 - the search bench's data, the same split

log = logging.getLogger("activation_range_bench")
SECTION = "activation-range-bench"
# Energy buckets (candidate energy / uniform-int8 energy) for the breakdown table.
BUCKETS = ((0.0, 0.5, "< 0.5x int8"), (0.5, 1.5, "0.5-1.5x"), (1.5, math.inf, "> 1.5x"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--candidates", type=int, default=16, help="sampled candidates per seed")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--epochs", type=int, default=1, help="proxy-QAT epochs (the search bench's)")
    p.add_argument("--data-fraction", type=float, default=0.1, help="the search bench's")
    p.add_argument("--runs-dir", type=Path, default=BENCH_DIR / "_runs" / "activation-range-bench")
    p.add_argument("--output", type=Path, default=BENCH_DIR / "RESULTS.md")
    p.add_argument("--report-only", action="store_true", help="train nothing; report the stored pairs")
    p.add_argument("--activation", nargs="+", default=None,
                   help="the space's activation schemes (default: the harness's)")
    return p.parse_args(argv)


def mapping_for(args: argparse.Namespace, seed: int) -> dict:
    data = {"dataset": args.dataset}
    if args.dataset == "fashion-mnist" and Path(FASHION_PATH).is_dir():
        data["path"] = FASHION_PATH
    search = {"study": f"pairs-s{seed}", "seed": seed, "results_dir": str(run_dir_of(args, seed))}
    if args.activation:
        search["activation"] = list(args.activation)
    return {
        "reference": {"model": "example"},
        "data": data,
        "search": search,
        "training": {"epochs": args.epochs, "data_fraction": args.data_fraction},
        "measure": {"devices": ["local"]},
    }


def settings_of(args: argparse.Namespace) -> dict:
    settings = {"dataset": args.dataset, "epochs": args.epochs, "data_fraction": args.data_fraction}
    if args.activation:  # (absent for the default space: pairs stored before the option stay valid)
        settings["activation"] = list(args.activation)
    return settings


def _activation_tag(args: argparse.Namespace) -> str:
    """"" for the default space, else e.g. "-binary01-ternary": the run's section and directories."""
    return "" if not args.activation else "-" + "-".join(args.activation)


def section_of(args: argparse.Namespace) -> str:
    """RESULTS.md section: one per activation set, so a binary-scale run keeps the fixed one."""
    return SECTION + _activation_tag(args)


def run_dir_of(args: argparse.Namespace, seed: int) -> Path:
    return args.runs_dir / f"s{seed}{_activation_tag(args)}"


def _provenance(pairs: list[dict]) -> str:
    """When, and at which commit, the reported pairs were trained (older pairs recorded neither)."""
    stamps = sorted(p["trained_at"] for p in pairs if "trained_at" in p)
    if not stamps:
        return "; the pairs carry no training time (trained before it was recorded)" if pairs else ""
    text = f"; pairs trained {stamps[0]} … {stamps[-1]}"
    codes = sorted({p["code"] for p in pairs if "code" in p})
    if codes:
        text += f" at commit {', '.join(codes)}"
    if len(stamps) < len(pairs):
        text += f" ({len(pairs) - len(stamps)} earlier pairs carry no time)"
    return text


def load_pairs(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    pairs = []
    for line in path.read_text().splitlines():
        try:
            pairs.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s: skipping a line cut short by a kill", path)
    return pairs


def run_seed(args: argparse.Namespace, seed: int, done: set[tuple[int, int]], pairs_file: Path) -> None:
    import optuna

    from harness.config import config_from_mapping
    from harness.search_loop import SearchRun

    config = config_from_mapping(mapping_for(args, seed), where="activation_range_bench")
    search = SearchRun(config, progress=False)
    evaluator, ranges, space = search.evaluator, search.activation_ranges, search.space
    int8_energy = evaluator.build(ranges.resolve(space.int8_spec()))[1].energy_pj
    sampler = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1000 + seed),
                                  directions=["maximize", "minimize"])
    for index in range(args.candidates):
        trial = sampler.ask()
        sampled = space.suggest(trial)
        sampler.tell(trial, [0.0, 0.0])
        if (seed, index) in done:
            continue
        calibrated = ranges.resolve(sampled)
        row = {"seed": seed, "index": index, "settings": settings_of(args), "code": args.code,
               "trained_at": _dt.datetime.now().isoformat(timespec="seconds"), "spec": sampled.summary(),
               "calibrated_spec": calibrated.summary(), "changed": calibrated.key != sampled.key}
        for mode, spec in (("half", sampled), ("calibrated", calibrated)):
            if mode == "calibrated" and not row["changed"]:
                row[mode] = row["half"]
                continue
            model, cost, _ = evaluator.build(spec)
            started = time.perf_counter()
            outcome = evaluator.train_and_lower(spec, model, cost, run_dir_of(args, seed) / f"{index:03d}-{mode}")
            row[mode] = {"keras": outcome.keras_accuracy, "tflite": outcome.tflite_accuracy,
                         "seconds": round(time.perf_counter() - started, 2)}
            row["energy_x_int8"] = cost.energy_pj / int8_energy
        with pairs_file.open("a") as handle:  # one line per pair, flushed: a kill loses at most one
            handle.write(json.dumps(row) + "\n")
        log.info("seed %d candidate %d: tflite %.4f -> %.4f", seed, index,
                 row["half"]["tflite"], row["calibrated"]["tflite"])


def _summary(diffs: list[float]) -> str:
    if not diffs:
        return "– | – | – | –"
    mean = statistics.fmean(diffs)
    half_width = 1.96 * statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.nan
    wins = sum(d > 0 for d in diffs)
    losses = sum(d < 0 for d in diffs)
    return (f"{100 * mean:+.2f} ± {100 * half_width:.2f} | {100 * statistics.median(diffs):+.2f} | "
            f"{wins} / {losses} | {100 * min(diffs):+.2f} … {100 * max(diffs):+.2f}")


def report(args: argparse.Namespace, pairs: list[dict], machine: dict, started: str, wall_s: float) -> str:
    pairs = [p for p in pairs if p.get("settings") == settings_of(args) and p["seed"] in args.seeds]
    changed = [p for p in pairs if p["changed"]]
    activations = "the harness's default" if not args.activation else ", ".join(f"`{a}`" for a in args.activation)
    title = ("Activation ranges: calibrated vs M/2 integer bits, paired" if not args.activation else
             f"Activation ranges and scales: calibrated vs uncalibrated, paired ({', '.join(args.activation)} "
             "activations)")  # fmt: skip
    lines = [
        f"## {title}",
        "",
        "Written by `bench/activation_range_bench.py`; do not edit by hand (rerun the script).",
        "",
        f"- Date: {started}; this invocation took {wall_s:.0f} s (pairs trained earlier are reused)"
        + _provenance(pairs),
        f"- Machine: nproc {machine['nproc']}, CPU {machine['cpu']}, memory {machine['memory']}, "
        f"Python {machine['python']}; code of this invocation: commit {machine['commit']}",
        f"- Packages: {', '.join(f'{k} {v}' for k, v in machine['versions'].items())}",
        f"- Command: `.venv/bin/python -m bench.activation_range_bench --seeds {' '.join(map(str, args.seeds))} "
        f"--candidates {args.candidates} --dataset {args.dataset} --epochs {args.epochs} "
        f"--data-fraction {args.data_fraction}"
        + ("" if not args.activation else f" --activation {' '.join(args.activation)}") + "`",
        "",
        f"Protocol: per seed, the document-000 reference trained on `{args.dataset}` with that seed (the "
        "search bench's references) and candidates proposed by Optuna's RandomSampler (seed 1000 + seed) "
        f"from the harness's default search space with {activations} activation schemes; each candidate "
        "proxy-trained "
        f"({args.epochs} epoch(s) on {100 * args.data_fraction:g} % of the training split, the search "
        "bench's budget) twice through the harness's evaluator, once as sampled (`fixed(M)` = M/2 integer "
        "bits; binary, binary01 and ternary at scale 1) and once with the ranges and scales calibrated on "
        "the reference, same weights, data order and seed. "
        "Accuracy on the validation split, in points (difference calibrated − uncalibrated; ± is a 95 % normal "
        "interval of the mean).",
        "",
        f"Pairs: {len(pairs)} candidates, {len(changed)} with at least one calibrated activation "
        f"(the others train identically and are left out below).",
        "",
        "| seed | pairs | .tflite Δ mean (pts) | median | better / worse | range "
        "| Keras Δ mean (pts) | median | better / worse | range |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    groups = [(str(seed), [p for p in changed if p["seed"] == seed]) for seed in args.seeds]
    groups.append(("**all**", changed))
    for label, group in groups:
        tflite = [p["calibrated"]["tflite"] - p["half"]["tflite"] for p in group]
        keras = [p["calibrated"]["keras"] - p["half"]["keras"] for p in group]
        lines.append(f"| {label} | {len(group)} | {_summary(tflite)} | {_summary(keras)} |")
    lines += ["", "By the candidate's estimated energy (all seeds):", "",
              "| energy / int8 | pairs | .tflite Δ mean (pts) | median | better / worse | range |",
              "|---|---|---|---|---|---|"]
    for low, high, label in BUCKETS:
        group = [p for p in changed if low <= p["energy_x_int8"] < high]
        lines.append(f"| {label} | {len(group)} | "
                     f"{_summary([p['calibrated']['tflite'] - p['half']['tflite'] for p in group])} |")
    raw = args.runs_dir.resolve() / "pairs.jsonl"
    shown = raw.relative_to(REPO_ROOT) if raw.is_relative_to(REPO_ROOT) else raw
    lines += ["", f"Raw pairs (specs, accuracies, seconds): `{shown}` (git-ignored)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    started = _dt.datetime.now().isoformat(timespec="seconds")
    t0 = time.perf_counter()
    machine = machine_info(("tensorflow-cpu", "keras", "qkeras-v3", "ai-edge-litert"))
    args.code = machine["commit"]  # stored with each pair: a later --report-only runs other code
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    pairs_file = args.runs_dir / "pairs.jsonl"
    if not args.report_only:
        for seed in args.seeds:
            done = {(p["seed"], p["index"]) for p in load_pairs(pairs_file) if p.get("settings") == settings_of(args)}
            run_seed(args, seed, done, pairs_file)
    pairs = load_pairs(pairs_file)
    if not pairs:
        log.error("no pairs in %s", pairs_file)
        return 1
    write_section(args.output, section_of(args), report(args, pairs, machine, started, time.perf_counter() - t0))
    log.info("wrote %s", args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
