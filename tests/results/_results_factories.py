"""Trial records with every field filled, shared by the results tests."""

from __future__ import annotations

from results import Artifact, Metric, TrialRecord


def make_record(
    trial_number: int = 0,
    *,
    study: str = "study-a",
    state: str = "complete",
    label: str = "",
    candidate_key: str | None = None,
    energy_mj: float | None = 1.5,
    accuracy: float | None = 0.9,
    energy_source: str = "measured",
) -> TrialRecord:
    """A record using every field type: nested params, layers, metrics, artifacts, timings."""
    return TrialRecord(
        study=study,
        trial_number=trial_number,
        candidate_key=candidate_key if candidate_key is not None else f"key-{trial_number}",
        state=state,  # type: ignore[arg-type]
        label=label,
        params={
            "width_mult": 0.5,
            "bits": 8,
            "scheme": "int8",
            "per_channel": True,
            "sizes": [8, 16],
        },
        layers={"conv1": {"kernel": "int4", "bias": "int8", "activation": "int8", "size": 16}},
        metrics={
            "energy_mj": Metric(energy_mj, "mJ", energy_source),  # type: ignore[arg-type]
            "accuracy": Metric(accuracy, "fraction", "measured"),
        },
        artifacts={"tflite": Artifact(f"/runs/{trial_number}/model.tflite", "ab" * 32)},
        timings_s={"build": 1.25, "measure": 10.0},
        measurements=[{"run": 0, "energy_mj": 1.4, "rail": "vdd"}, {"run": 1, "energy_mj": 1.6}],
        flags=["resumed", "thermal-warning"],
        error=None if state != "failed" else "device lost",
    )
