"""Training curves and per-label results."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from .embeddings import to_numpy


def plot_history(history):
    """Two panels from a training history: the losses; the metrics of the split scored each
    epoch (validation, or the test split of a run that selects on test: ``selection_split``).

    ``history`` is a DataFrame or the path of a ``history.csv`` written by ``fit``, with
    columns ``epoch``, ``train_loss`` and ``<split>_<metric>`` (e.g. ``val_mAP``,
    ``test_CF1``), each metric drawn under its name without the prefix. Returns the Figure.
    """
    source = history
    if not isinstance(history, pd.DataFrame):
        history = pd.read_csv(history)
    scored = "test" if any(c.startswith("test_") for c in history) else "val"
    losses = [c for c in ("train_loss", f"{scored}_loss") if c in history]
    metrics = [c for c in history if c.startswith(f"{scored}_") and c != f"{scored}_loss"]
    if "epoch" not in history or not losses + metrics:
        where = f"{source}: " if isinstance(source, (str, Path)) else ""
        raise ValueError(f"{where}a history needs an epoch column and loss or val_<metric> "
                         f"columns, got {list(history.columns)}")
    name = "validation" if scored == "val" else "test (selection split)"
    fig, (loss_ax, metric_ax) = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    for column in losses:
        loss_ax.plot(history["epoch"], history[column], marker="o", ms=3,
                     label=column.removesuffix("_loss"))
    for column in metrics:
        metric_ax.plot(history["epoch"], history[column], marker="o", ms=3,
                       label=column.removeprefix(f"{scored}_"))
    loss_ax.set(title="loss", xlabel="epoch", ylabel="loss (mean over the epoch)")
    metric_ax.set(title=name, xlabel="epoch", ylabel=f"{name} metric")
    for ax in (loss_ax, metric_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small")
    return fig


def plot_f1_vs_frequency(f1, frequency, ax=None, classes: list[str] | None = None,
                         annotate: int = 5):
    """Per-label F1 (e.g. ``per_class_f1``) against ``frequency``, the label's number of
    positive training images (a count, not a share), on a log axis: how the long tail is
    served. The ``annotate`` most frequent labels are named when ``classes`` is given. Labels
    without training positives have no place on a log axis; their number is given in the
    title. Returns the Axes."""
    f1, frequency = to_numpy(f1).astype(np.float64), to_numpy(frequency).astype(np.float64)
    if f1.ndim != 1 or f1.shape != frequency.shape:
        raise ValueError(f"f1 and frequency must be 1-D of one length (C), got shapes "
                         f"{f1.shape} and {frequency.shape}")
    if classes is not None and len(classes) != len(f1):
        raise ValueError(f"{len(classes)} class names for {len(f1)} labels")
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    seen = frequency > 0
    ax.scatter(frequency[seen], f1[seen], s=12, alpha=0.7)
    ax.set_xscale("log")
    # Plain numbers at 1-2-5 steps over a short range, powers of ten over a long one; the
    # minor ticks stay unlabelled, where matplotlib would otherwise crowd a short range.
    span = frequency[seen].max() / frequency[seen].min() if seen.any() else 1.0
    subs = (1.0,) if span > 300 else (1.0, 2.0, 5.0) if span > 10 else (1.0, 2.0, 3.0, 5.0)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.xaxis.set_major_formatter(FuncFormatter(
        lambda value, _: f"{value:g}" if value < 1000 else f"{value / 1000:g}k"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set(xlabel="positive training images per label (count, log scale)", ylabel="F1")
    unseen = int((~seen).sum())
    ax.set_title("F1 by label frequency"
                 + (f" ({unseen} without training positives not shown)" if unseen else ""))
    if classes is not None:
        for c in np.argsort(-frequency, kind="stable")[:annotate]:
            if seen[c]:
                ax.annotate(classes[c], (frequency[c], f1[c]), xytext=(3, 3),
                            textcoords="offset points", fontsize="small")
    ax.grid(alpha=0.3)
    return ax


def plot_metric_vs_proportion(results: pd.DataFrame, metric: str = "mAP", ax=None):
    """``metric`` against the proportion of known training labels, one curve per method (P3's
    figure). ``results`` has one row per run with columns ``proportion``, ``method`` and
    ``metric``; where a (proportion, method) has several rows (seeds), the curve is their mean
    with sample-std error bars. Methods keep their order of first appearance. Returns the Axes."""
    missing = [c for c in ("proportion", "method", metric) if c not in results]
    if missing:
        raise ValueError(f"results need the columns proportion, method and {metric}; "
                         f"missing {', '.join(missing)}")
    if results.empty:
        raise ValueError("no results to plot")
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    for method, group in results.groupby("method", sort=False):
        stats = group.groupby("proportion")[metric].agg(["mean", "std"]).sort_index()
        spread = stats["std"].notna().any()  # a single seed has no spread: no zero-length bars
        ax.errorbar(stats.index, stats["mean"], yerr=stats["std"] if spread else None, marker="o",
                    ms=4, capsize=3, label=str(method))
    ax.set(xlabel="proportion of known training labels p", ylabel=metric,
           title=f"{metric} against p")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return ax
