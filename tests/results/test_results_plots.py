from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from results import ResultsError, pareto_figure, plot_pareto, to_frame
from tests.results._results_factories import make_record

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _frame(energy_source: str = "measured"):  # type: ignore[no-untyped-def]
    return to_frame(
        [
            make_record(
                0, label="reference", energy_mj=9.0, accuracy=0.95, energy_source=energy_source
            ),
            make_record(1, label="int8", energy_mj=3.0, accuracy=0.93),
            make_record(2, energy_mj=2.0, accuracy=0.90),
            make_record(3, energy_mj=5.0, accuracy=0.91),  # dominated by 1
            make_record(4, energy_mj=1.0, accuracy=0.99, state="failed"),
        ]
    )


def test_plot_writes_valid_png(tmp_path: Path) -> None:
    out = plot_pareto(_frame(), "energy_mj", "accuracy", tmp_path / "plots" / "pareto.png", dpi=50)
    assert out == tmp_path / "plots" / "pareto.png"
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000
    with Image.open(out) as image:
        image.verify()
    with Image.open(out) as image:
        assert image.size == (350, 250)  # 7 x 5 inches at 50 dpi
    assert [p.name for p in out.parent.iterdir()] == ["pareto.png"]  # no temporary left
    assert plt.get_fignums() == []  # never went through pyplot


def test_figure_labels_units_front_and_annotations() -> None:
    fig = pareto_figure(_frame(energy_source="simulated"), "energy_mj", "accuracy")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "energy_mj [mJ]" and ax.get_ylabel() == "accuracy [fraction]"
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["reference (float)", "uniform int8"]
    (front_line,) = ax.get_lines()
    assert np.asarray(front_line.get_xdata()).tolist() == [2.0, 3.0, 9.0]
    assert np.asarray(front_line.get_ydata()).tolist() == [0.90, 0.93, 0.95]
    assert "energy_mj: some values simulated, not measured" in fig.get_supxlabel()
    assert ax.get_title() == "study-a"


def test_explicit_units_override() -> None:
    fig = pareto_figure(_frame(), "energy_mj", "accuracy", x_unit="J", title="t")
    assert fig.axes[0].get_xlabel() == "energy_mj [J]"


def test_mixed_units_refused() -> None:
    frame = _frame()
    frame.loc[1, "energy_mj_unit"] = "J"
    with pytest.raises(ResultsError, match=r"mixes units \['J', 'mJ'\]"):
        pareto_figure(frame, "energy_mj", "accuracy")


def test_nothing_to_plot(tmp_path: Path) -> None:
    frame = to_frame([make_record(0, state="failed")])
    with pytest.raises(ResultsError, match="nothing to plot"):
        plot_pareto(frame, "energy_mj", "accuracy", tmp_path / "p.png")
    assert not (tmp_path / "p.png").exists()


def test_missing_column(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match="'latency_ms'"):
        plot_pareto(_frame(), "latency_ms", "accuracy", tmp_path / "p.png")
