"""What a dataset looks like: summary table, long tail, label co-occurrence, sample images."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from .embeddings import to_numpy

if TYPE_CHECKING:
    from annotlib.data import Split


def _positives(labels, classes) -> np.ndarray:
    """``labels == 1`` as a bool ``[N, C]`` array (unknown -1 labels count as not positive)."""
    positive = to_numpy(labels) == 1
    if positive.ndim != 2 or positive.shape[1] != len(classes):
        raise ValueError(f"labels must be [N, C={len(classes)}], got shape {positive.shape}")
    return positive


def positive_names(labels, classes: list[str]) -> list[list[str]]:
    """The names of each image's positive labels (multi-hot ``[N, C]``), in vocabulary order."""
    return [[classes[c] for c in np.flatnonzero(row)] for row in _positives(labels, classes)]


def dataset_summary(splits: dict[str, Split]) -> pd.DataFrame:
    """One row per split (indexed by its name): images, labels (the vocabulary size), mean /
    min / max positive labels per image, images without a positive label and labels without
    a positive image."""
    rows = {}
    for name, split in splits.items():
        positive = _positives(split.labels, split.classes)
        per_image = positive.sum(1)
        rows[name] = {
            "images": positive.shape[0],
            "labels": positive.shape[1],
            "mean labels per image": per_image.mean(),
            "min labels per image": int(per_image.min()),
            "max labels per image": int(per_image.max()),
            "images without labels": int((per_image == 0).sum()),
            "labels without positives": int((positive.sum(0) == 0).sum()),
        }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("split")


def plot_label_frequency(labels, classes: list[str], ax=None):
    """Positive images per label, most frequent first, on a log scale: the long tail.
    Labels are named on the x axis when there are at most 40. Returns the Axes."""
    counts = _positives(labels, classes).sum(0)
    order = np.argsort(-counts, kind="stable")
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 3.5))
    ax.bar(np.arange(len(order)), counts[order], width=1.0 if len(order) > 40 else 0.8)
    ax.set_yscale("log")
    ax.set(ylabel="positive images", title=f"label frequency ({len(classes)} labels)")
    if len(order) <= 40:
        ax.set_xticks(np.arange(len(order)), [classes[c] for c in order], rotation=90,
                      fontsize="small")
    ax.set_xlabel("labels, most frequent first")
    return ax


def plot_cooccurrence(labels, classes: list[str], top: int = 15, ax=None):
    """Heat map of P(column label | row label) over the images, among the ``top`` most
    frequent labels (those with at least one positive); the diagonal is 1. Returns the Axes."""
    positive = _positives(labels, classes)
    counts = positive.sum(0)
    chosen = np.argsort(-counts, kind="stable")[:top]
    chosen = chosen[counts[chosen] > 0]
    picked = positive[:, chosen].astype(np.float64)
    conditional = (picked.T @ picked) / counts[chosen][:, None]
    if ax is None:
        size = 2.0 + 0.4 * len(chosen)
        _, ax = plt.subplots(figsize=(size + 1.5, size))
    names = [classes[c] for c in chosen]
    sns.heatmap(conditional, vmin=0.0, vmax=1.0, cmap="viridis", square=True, ax=ax,
                xticklabels=names, yticklabels=names, annot=len(chosen) <= 10, fmt=".2f",
                cbar_kws={"label": "P(column | row)"})
    ax.set(title="label co-occurrence", xlabel="column label", ylabel="row label (given)")
    return ax


def plot_image_grid(images, titles: list[str], ncols: int = 4):
    """``images`` uint8 ``[N, H, W, 3]`` in rows of ``ncols``, each titled. Returns the Figure."""
    images = to_numpy(images)
    if images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"images must be [N, H, W, 3], got shape {images.shape}")
    if len(titles) != len(images):
        raise ValueError(f"{len(titles)} titles for {len(images)} images")
    nrows = max(1, math.ceil(len(images) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.5 * ncols, 2.7 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, titles):
        ax.imshow(image)
        ax.set_title(title, fontsize="small")
    fig.tight_layout()
    return fig
