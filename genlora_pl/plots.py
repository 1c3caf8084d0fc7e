"""Figures of what the adapters learn, drawn from the monitor's history (matplotlib, no display).

matplotlib is imported when a figure is drawn, not with the package: most commands draw none.
"""

from __future__ import annotations

from typing import Any


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_spectra(history: list[dict[str, Any]]) -> Any:
    """Left: normalised singular values of every layer's ``dW`` at the last measurement.
    Right: effective rank per layer (thin) and its mean (thick) over training. Colour is the layer's
    depth in the model, read off the colour bar."""
    if not history or not history[-1]["layers"]:
        return None
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2), layout="constrained")
    last = history[-1]
    names = list(last["layers"])
    cmap = plt.get_cmap("viridis")
    norm = plt.Normalize(0, max(1, len(names) - 1))
    for i, name in enumerate(names):
        sigma = last["layers"][name]["singular_values"]
        if sigma and sigma[0] > 0:
            left.semilogy(range(1, len(sigma) + 1), [s / sigma[0] for s in sigma], color=cmap(norm(i)), lw=0.8)
    left.set(title=f"spectrum of dW per layer, step {last['step']}", xlabel="index i", ylabel="sigma_i / sigma_1")
    steps = [h["step"] for h in history]
    for i, name in enumerate(names):
        ranks = [h["layers"][name]["effective_rank"] for h in history]
        right.plot(steps, ranks, color=cmap(norm(i)), lw=0.6, alpha=0.6)
    mean = [sum(v["effective_rank"] for v in h["layers"].values()) / len(h["layers"]) for h in history]
    right.plot(steps, mean, color="black", lw=2.2, label="mean over layers")
    right.set(title="entropy effective rank of dW", xlabel="optimizer step", ylabel="effective rank")
    right.legend(loc="best")
    bar = fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=right, pad=0.01)
    bar.set_label(f"adapted layer, input (0) to output ({len(names) - 1})")
    return fig


def plot_diagnostics(
    history: list[dict[str, Any]],
    summary: dict[str, tuple[str, str]],
    alarms: dict[str, tuple[float, str]] | None = None,
) -> Any:
    """One panel per summarised diagnostic (GenLoRA: centre drift, closest centres, latent drift):
    per group (``A``, ``B``) the reduction over layers the method declares (solid) and, for means,
    the largest layer (dashed); a method's alarm thresholds are drawn as red lines."""
    alarms = alarms or {}
    if not history or not history[-1].get("diagnostics") or not summary:
        return None
    plt = _pyplot()
    stats = list(summary)
    fig, axes = plt.subplots(1, len(stats), figsize=(4.2 * len(stats), 3.8), squeeze=False)
    steps = [h["step"] for h in history]
    groups = list(dict.fromkeys(g for d in history[-1]["diagnostics"].values() for g in d))
    reduce = {"mean": lambda v: sum(v) / len(v), "min": min, "max": max}
    for ax, stat in zip(axes[0], stats, strict=True):
        label, how = summary[stat]
        for group, color in zip(groups, plt.get_cmap("tab10").colors, strict=False):
            rows = [[d[group][stat] for d in h["diagnostics"].values() if group in d] for h in history]
            ax.plot(steps, [reduce[how](r) for r in rows], color=color, label=f"{group}: {how}")
            if how == "mean":
                ax.plot(steps, [max(r) for r in rows], color=color, ls="--", lw=0.8, label=f"{group}: max")
        if stat in alarms:
            value, meaning = alarms[stat]
            ax.axhline(value, color="tab:red", lw=1.2, ls=":", label=meaning)
            ax.set_ylim(bottom=0)
        ax.set(title=label.replace("_", " "), xlabel="optimizer step")
        ax.legend(loc="best", fontsize=7)
    fig.tight_layout()
    return fig
