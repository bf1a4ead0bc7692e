"""The ``harness`` command: search, measure, report, and the built-in example.

Exit codes: 0 success; 2 bad input (usage, config, model, data) with a one-line message naming
what is wrong; 1 a runtime failure (a device, a trial loop that keeps failing).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported anywhere

from harness.errors import HarnessError, InputError

if TYPE_CHECKING:  # the module imports TensorFlow: only commands that need it load it
    from harness.report import StudyReport

__all__ = ["main", "cli"]


class _Harness(click.Group):
    """Turns the project's errors, and click's usage errors, into one-line messages and exit codes."""

    def main(self, *args: object, **kwargs: object) -> None:  # type: ignore[override]
        # Click's own handler prints a usage block and a hint over several lines; a bad flag is
        # an input error like any other: one line, exit 2.
        kwargs.pop("standalone_mode", None)
        try:
            returned = super().main(*args, standalone_mode=False, **kwargs)  # type: ignore[arg-type]
        except click.exceptions.NoArgsIsHelpError as e:  # bare `harness`: the help, as click shows it
            e.show()
            sys.exit(e.exit_code)
        except click.UsageError as e:
            where = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
            click.echo(f"error: {_one_line(e.format_message())}{where}", err=True)
            sys.exit(2)
        except click.ClickException as e:
            click.echo(f"error: {_one_line(e.format_message())}", err=True)
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(1)
        sys.exit(returned if isinstance(returned, int) else 0)

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except InputError as e:
            click.echo(f"error: {_one_line(e)}", err=True)
            sys.exit(2)
        except HarnessError as e:
            click.echo(f"error: {_one_line(e)}", err=True)
            sys.exit(1)
        except Exception as e:
            from devices.base import DeviceError
            from results.records import ResultsError

            if isinstance(e, (DeviceError, ResultsError)):
                click.echo(f"error: {_one_line(e)}", err=True)
                sys.exit(1)
            raise


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


@click.group(cls=_Harness)
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """Search quantized, resized TFLite candidates of a Keras model and measure them."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if verbose < 2:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # Every candidate is a new model, so TensorFlow's "triggered tf.function retracing"
        # advice fires in every search and has nothing for the user to act on.
        logging.getLogger("tensorflow").setLevel(logging.ERROR)


@cli.command()
@click.argument("config_path", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--trials", type=click.IntRange(min=1), help="Total trials of the study.")
@click.option("--sampler", type=click.Choice(["tpe", "nsga2", "nsga3", "gp", "random"]))
@click.option("--study", help="Study name (resumes when it exists).")
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--device", "devices", multiple=True,
              help="Device name or tag:TAG to measure on (repeatable; replaces [measure] devices).")
@click.option("--inventory", "inventory", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Device inventory TOML (repeatable; default: devices/*.toml here).")
@click.option("--seed", type=int)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def search(
    config_path: Path | None, trials, sampler, study, results_dir, devices, inventory, seed, no_progress
) -> None:
    """Run (or resume) a search from CONFIG_PATH (TOML; defaults: the built-in example on digits)."""
    from harness.config import SearchConfig, load_config

    # The config is read and checked before TensorFlow loads: a mistake in it is reported at once.
    config = load_config(config_path) if config_path is not None else SearchConfig()
    config = config.with_overrides(
        trials=trials, sampler=sampler, study=study, seed=seed,
        results_dir=None if results_dir is None else str(results_dir),
        devices=tuple(devices) or None, inventory=tuple(str(p) for p in inventory) or None,
    )
    from harness.report import build_report
    from harness.search_loop import SearchRun

    summary = SearchRun(config, progress=not no_progress).run()
    report = build_report(config.results_dir, config.study)
    counts = ", ".join(f"{n} {state}" for state, n in sorted(summary.counts.items()))
    click.echo(f"study {config.study}: {counts}")
    _print_report(report)
    click.echo(f"Pareto models: {report.csv_path.parent / 'pareto'} ({len(report.kept)} files)")


@cli.command()
@click.argument("model_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--device", "device_name", default="local", show_default=True, help="A device of the inventory.")
@click.option("--inventory", "inventory", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Device inventory TOML (repeatable; default: devices/*.toml here).")
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("results"),
              show_default=True, help="Where the fleet's leases and device health are kept.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--warmup-runs", type=click.IntRange(min=0), default=5, show_default=True)
@click.option("--min-seconds", type=click.FloatRange(min=0), default=1.0, show_default=True)
@click.option("--min-runs", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--energy-window-s", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              help="Devices with a meter: the minimum measured (differenced) window per repeat.")
@click.option("--energy-repeats", type=click.IntRange(min=3), default=3, show_default=True,
              help="Devices with a meter: repeats of the energy protocol (median and MAD).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def measure(model_path: Path, device_name: str, inventory, results_dir: Path, threads, warmup_runs,
            min_seconds, min_runs, energy_window_s, energy_repeats, as_json) -> None:
    """Measure MODEL_PATH (.tflite) on one device (leased, health-checked, like a search does)."""
    from devices.base import MeasureSettings
    from devices.energy_protocol import EnergyProtocol
    from harness.config import MeasureConfig
    from harness.fleet_setup import inventory_from, open_devices, open_fleet

    if not model_path.is_file():
        raise InputError(f"model {model_path}: no such file")
    with open(model_path, "rb") as handle:
        if handle.read(8)[4:8] != b"TFL3":  # the flatbuffer file identifier of every .tflite
            raise InputError(f"model {model_path}: not a .tflite file (no TFL3 identifier)")
    if device_name.startswith("tag:"):
        raise InputError(f"--device {device_name}: name one device, not a tag")
    energy = EnergyProtocol(min_window_s=energy_window_s, repeats=energy_repeats)
    devices = open_devices([device_name], inventory_from(inventory), energy=energy)
    settings = MeasureSettings(threads=threads, warmup_runs=warmup_runs, min_seconds=min_seconds, min_runs=min_runs)
    # no retry: the user asked for this device, and a failure should say so at once
    fleet, store = open_fleet(devices, results_dir, MeasureConfig(retries=0))
    try:
        outcome = fleet.measure(model_path, settings)
    finally:
        fleet.close()
        store.close()
    if not outcome.ok:
        from devices.base import DeviceError

        raise DeviceError("; ".join(line for lines in outcome.errors.values() for line in lines))
    (result,) = outcome.measurements.values()
    data = result.to_dict()
    if as_json:
        click.echo(json.dumps(data, sort_keys=True))
        return
    energy = ("n/a (no power meter)" if result.energy_mj_median is None
              else f"{result.energy_mj_median:.4g} mJ ({result.energy_source})")
    click.echo(
        f"{result.device}: latency median {result.latency_ms_median:.4g} ms, p90 {result.latency_ms_p90:.4g} ms "
        f"over {result.n_inferences} inferences in {result.window_s:.2f} s; energy {energy}"
    )


@cli.command()
@click.argument("config_path", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--study", help="The searched study (default: the config's).")
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--trial", "trials", multiple=True, type=click.IntRange(min=0),
              help="A trial to fine-tune (repeatable; default: the Pareto front and the reference and int8 seeds).")
@click.option("--accuracy-margin", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Also the trials at most this many accuracy points behind the front (1 = 0.01).")
@click.option("--epochs", type=click.IntRange(min=1), help="Replaces [finetune] epochs.")
@click.option("--data-fraction", type=click.FloatRange(0, 1, min_open=True), help="Replaces [finetune] data_fraction.")
@click.option("--device", "devices", multiple=True,
              help="Device name or tag:TAG to measure on (repeatable; replaces [measure] devices).")
@click.option("--inventory", "inventory", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Device inventory TOML (repeatable; default: devices/*.toml here).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def finetune(
    config_path: Path | None, study, results_dir, trials, accuracy_margin, epochs, data_fraction, devices,
    inventory, no_progress,
) -> None:
    """Train a search's chosen candidates on the real task ([finetune]) and measure them again.

    Reads the same CONFIG_PATH as the search; writes the study STUDY-finetuned.
    """
    from dataclasses import replace

    from harness.config import SearchConfig, load_config

    config = load_config(config_path) if config_path is not None else SearchConfig()
    config = config.with_overrides(
        study=study, results_dir=None if results_dir is None else str(results_dir),
        devices=tuple(devices) or None, inventory=tuple(str(p) for p in inventory) or None,
    )
    tuned = {k: v for k, v in (("epochs", epochs), ("data_fraction", data_fraction)) if v is not None}
    config = replace(config, finetune=replace(config.finetune, **tuned))
    from harness.finetune import FinetuneRun, raise_for_failures
    from harness.report import build_report

    if trials and accuracy_margin:
        raise InputError("--accuracy-margin chooses trials from the front; it cannot be combined with --trial")
    summary = FinetuneRun(config, trials=trials, accuracy_margin=accuracy_margin / 100,
                          progress=not no_progress).run()
    click.echo(f"study {summary.study}: {len(summary.done)} fine-tuned, {len(summary.reused)} done before, "
               f"{len(summary.failed)} failed ({config.finetune.epochs} epoch(s) on "
               f"{config.finetune.data_fraction * 100:g} % of the training split)")
    report = build_report(config.results_dir, summary.study, objectives_of=config.study)
    _print_report(report)
    click.echo(f"Pareto models: {report.csv_path.parent / 'pareto'} ({len(report.kept)} files)")
    raise_for_failures(summary)


@cli.command()
@click.argument("study")
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("results"),
              show_default=True)
def report(study: str, results_dir: Path) -> None:
    """Export STUDY's trials and print its Pareto front."""
    from harness.report import build_report

    _print_report(build_report(results_dir, study))


def _print_report(report: StudyReport) -> None:
    """The Pareto table, where the exports went, and the estimate-vs-measurement section."""
    click.echo(f"Pareto front ({', '.join(f'{k} {v[:3]}' for k, v in report.objectives.items())}):")
    click.echo(report.table)
    click.echo(f"trials: {report.csv_path} and {report.parquet_path.name}")
    if report.plot_path is not None:
        click.echo(f"plot: {report.plot_path}")
    if report.calibration_text:
        click.echo(report.calibration_text)
    if report.calibration_plot_path is not None:
        click.echo(f"estimate vs measurement: {report.calibration_plot_path}")


@cli.group()
def example() -> None:
    """The built-in document-000 reference model."""


@example.command("train")
@click.option("--dataset", default="digits", show_default=True, help="digits, fashion-mnist or module:function")
@click.option("--epochs", type=click.IntRange(min=1))
def example_train(dataset: str, epochs: int | None) -> None:
    """Train the example reference on DATASET and cache it (a cached one is reused)."""
    from harness.example import train_example

    path = train_example(dataset, epochs)
    click.echo(str(path))


from harness.device_commands import devices  # noqa: E402  (the devices group lives in its own module)

cli.add_command(devices)


def main() -> None:
    if os.environ.get("HARNESS_NATIVE_LOGS") != "1":  # set it to see TensorFlow's native logs
        from harness.native_noise import filter_native_stderr

        filter_native_stderr()
    cli(prog_name="harness")


if __name__ == "__main__":
    main()
