"""Host side of ``litert_runner.py``: its command line and its one JSON object, read strictly."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from devices.base import Measurement, MeasureSettings
from devices.runners.errors import RunnerOutputError, shorten

__all__ = ["RUNNER_SCRIPT", "RunnerOutput", "runner_argv", "parse_runner_output"]

RUNNER_SCRIPT = Path(__file__).with_name("litert_runner.py")
"""The file a transport pushes to the board."""


@dataclass(frozen=True)
class RunnerOutput:
    """What the runner measured, as :class:`~devices.base.Measurement` fields. Units in names."""

    latency_ms_median: float
    latency_ms_p90: float
    n_inferences: int
    window_s: float
    threads: int
    output_checksum: str
    fingerprint: Mapping[str, str] = field(default_factory=dict)

    def to_measurement(self, device: str, **energy: object) -> Measurement:
        """A :class:`Measurement` for ``device``; ``energy`` adds the meter's fields, notes..."""
        return Measurement(device=device, latency_ms_median=self.latency_ms_median,
                           latency_ms_p90=self.latency_ms_p90, n_inferences=self.n_inferences,
                           window_s=self.window_s, threads=self.threads,
                           output_checksum=self.output_checksum,
                           fingerprint=dict(self.fingerprint), **energy)  # type: ignore[arg-type]


def runner_argv(
    python: str, script: str, model: str, settings: MeasureSettings, probe: str | None = None
) -> list[str]:
    """The runner's command for paths as seen on the board, unquoted (quoting is the transport's)."""
    argv = [python, script, model, "--threads", str(settings.threads),
            "--warmup-runs", str(settings.warmup_runs), "--min-seconds", repr(float(settings.min_seconds)),
            "--min-runs", str(settings.min_runs)]
    return argv + (["--probe", probe] if probe is not None else [])


def parse_runner_output(stdout: str) -> RunnerOutput:
    """Read the runner's stdout: one JSON object (a last JSON line after stray chatter is accepted).

    Raises:
        RunnerOutputError: stdout holds no JSON object, a required field is missing or of the
            wrong type, or the runner reported an ``error`` (kept in ``runner_error``).
    """
    data = _load(stdout)
    if "error" in data:
        message = str(data["error"])
        kind = data.get("error_kind", "unknown")
        raise RunnerOutputError(f"litert_runner failed ({kind}): {message}", runner_error=message)
    fingerprint = data.get("fingerprint", {})
    if not isinstance(fingerprint, dict) or not all(isinstance(v, str) for v in fingerprint.values()):
        raise RunnerOutputError(f"litert_runner output: fingerprint {shorten(repr(fingerprint))} is "
                                "not an object of strings")
    checksum = data.get("output_checksum")
    if not isinstance(checksum, str) or ":" not in checksum:
        raise RunnerOutputError(f"litert_runner output: output_checksum {checksum!r} is not a "
                                "'v1:<hex>' digest")
    return RunnerOutput(
        latency_ms_median=_float(data, "latency_ms_median"),
        latency_ms_p90=_float(data, "latency_ms_p90"),
        n_inferences=_int(data, "n_inferences"),
        window_s=_float(data, "window_s"),
        threads=_int(data, "threads"),
        output_checksum=checksum,
        fingerprint=dict(fingerprint),
    )


def _load(stdout: str) -> dict[str, object]:
    text = stdout.strip()
    candidates = [text] + [line.strip() for line in reversed(text.splitlines()) if line.strip()][:1]
    for candidate in candidates:
        try:
            data = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(data, dict):
            return data
    raise RunnerOutputError(f"litert_runner output is not one JSON object: {shorten(text)!r}; "
                            "expected the runner's single JSON line (is the board's python running "
                            "the right script?)")


def _float(data: Mapping[str, object], key: str) -> float:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < 0:
        raise RunnerOutputError(f"litert_runner output: {key} is {value!r}: expected a finite "
                                "number >= 0")
    return float(value)


def _int(data: Mapping[str, object], key: str) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RunnerOutputError(f"litert_runner output: {key} is {value!r}: expected a whole number >= 1")
    return value
