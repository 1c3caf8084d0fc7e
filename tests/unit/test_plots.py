"""The figures: a colour bar says which colour is which layer; the collapse alarm has its line."""

from __future__ import annotations

import matplotlib

from genlora_pl.adapters import GenLoRALayer
from genlora_pl.plots import plot_diagnostics, plot_spectra

matplotlib.use("Agg")


def history() -> list[dict]:
    layers = {f"l{i}": {"singular_values": [3.0, 1.0, 0.1], "effective_rank": 1.5 + i} for i in range(3)}
    drift = {
        f"l{i}": {side: {stat: 0.05 * (i + 1) for stat in GenLoRALayer.diagnostics_summary} for side in "AB"}
        for i in range(3)
    }
    return [{"step": s, "layers": layers, "diagnostics": drift} for s in (0, 5)]


def test_spectra_figure_has_a_colour_bar_over_the_layers():
    fig = plot_spectra(history())
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 1 and "layer" in bars[0].get_ylabel()


def test_drift_figure_draws_the_collapse_threshold():
    fig = plot_diagnostics(history(), GenLoRALayer.diagnostics_summary, GenLoRALayer.diagnostics_alarms)
    assert len(fig.axes) == len(GenLoRALayer.diagnostics_summary)
    value, meaning = GenLoRALayer.diagnostics_alarms["center_twins"]
    lines = [line for ax in fig.axes for line in ax.get_lines() if line.get_label() == meaning]
    assert len(lines) == 1 and list(lines[0].get_ydata()) == [value, value]
