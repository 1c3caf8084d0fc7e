"""Figures of what the adapters learn, drawn from the callback's history (matplotlib, no display)."""

from __future__ import annotations

from typing import Any


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_spectra(history: list[dict[str, Any]]) -> Any:
    """Left: normalised singular values of every layer's ``dW`` at the last measurement.
    Right: effective rank per layer (thin) and its mean (thick) over training."""
    if not history or not history[-1]["layers"]:
        return None
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    last = history[-1]
    cmap = plt.get_cmap("viridis")
    names = list(last["layers"])
    for i, name in enumerate(names):
        sigma = last["layers"][name]["singular_values"]
        if sigma and sigma[0] > 0:
            left.semilogy(
                range(1, len(sigma) + 1), [s / sigma[0] for s in sigma], color=cmap(i / max(1, len(names) - 1)), lw=0.8
            )
    left.set(
        title=f"spectrum of dW per layer, step {last['step']} (colour: layer order)",
        xlabel="index i",
        ylabel="sigma_i / sigma_1",
    )
    steps = [h["step"] for h in history]
    for i, name in enumerate(names):
        right.plot(
            steps,
            [h["layers"][name]["effective_rank"] for h in history],
            color=cmap(i / max(1, len(names) - 1)),
            lw=0.6,
            alpha=0.6,
        )
    mean = [sum(v["effective_rank"] for v in h["layers"].values()) / len(h["layers"]) for h in history]
    right.plot(steps, mean, color="black", lw=2.2, label="mean over layers")
    right.set(title="entropy effective rank of dW", xlabel="optimizer step", ylabel="effective rank")
    right.legend(loc="best")
    fig.tight_layout()
    return fig


def plot_drift(history: list[dict[str, Any]]) -> Any:
    """RBF centre drift (mean over layers) and the smallest centre distance (collapse alarm)."""
    if not history or not history[-1].get("drift"):
        return None
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    steps = [h["step"] for h in history]
    for side, color in (("A", "tab:blue"), ("B", "tab:orange")):
        mean = [sum(d[side]["center_drift_mean"] for d in h["drift"].values()) / len(h["drift"]) for h in history]
        worst = [max(d[side]["center_drift_max"] for d in h["drift"].values()) for h in history]
        closest = [min(d[side]["center_min_distance"] for d in h["drift"].values()) for h in history]
        left.plot(steps, mean, color=color, label=f"{side}: mean")
        left.plot(steps, worst, color=color, ls="--", label=f"{side}: max")
        right.plot(steps, closest, color=color, label=side)
    left.set(title="RBF centre drift ||c(t) - c(0)||", xlabel="optimizer step", ylabel="distance")
    right.set(title="smallest distance between two centres", xlabel="optimizer step", ylabel="distance")
    left.legend(loc="best")
    right.legend(loc="best")
    fig.tight_layout()
    return fig
