"""The book's standard figures. Each function draws on an optional `ax` and returns it."""

from __future__ import annotations

from typing import Sequence


def _axes(ax):
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(5, 3.5))
    return ax


def training_curves(history: Sequence[dict], keys: Sequence[str] = ("loss",), ax=None, label: str = ""):
    """Plot logged metrics against the optimizer step."""
    ax = _axes(ax)
    steps = [h["step"] for h in history]
    for key in keys:
        ax.plot(steps, [h[key] for h in history], label=f"{label} {key}".strip())
    ax.set_xlabel("optimizer step")
    ax.legend(frameon=False)
    return ax


def metric_with_ci(xs: Sequence[float], means: Sequence[float], cis: Sequence[float], ax=None, label: str = "",
                   xlabel: str = "", ylabel: str = "", logx: bool = False):
    """Plot a metric with its 95% interval as a band."""
    ax = _axes(ax)
    lo = [m - c for m, c in zip(means, cis)]
    hi = [m + c for m, c in zip(means, cis)]
    ax.plot(xs, means, marker="o", label=label)
    ax.fill_between(xs, lo, hi, alpha=0.2)
    if logx:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if label:
        ax.legend(frameon=False)
    return ax


def reward_vs_kl(kls: Sequence[float], rewards: Sequence[float], labels: Sequence[str] | None = None, ax=None,
                 marker: str = "o", series: str = ""):
    """Plot the reward–KL frontier: gold reward (y) against KL(π‖π_ref) in nats (x)."""
    ax = _axes(ax)
    ax.plot(kls, rewards, marker=marker, label=series or None)
    for x, y, text in zip(kls, rewards, labels or []):
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("KL(π ‖ π_ref)  [nats]")
    ax.set_ylabel("gold reward")
    if series:
        ax.legend(frameon=False)
    return ax
