"""Plots of results and data: embeddings (t-SNE/UMAP), class activation maps, training
curves, dataset overviews.

Every plot draws with matplotlib into the given ``ax`` (or a new figure) and returns the
Axes, or the Figure for multi-panel plots; nothing is shown or saved here. Inputs may be
torch tensors or numpy arrays. This package reads results and never imports
``annotlib.train``.
"""

from .cam import class_activation_maps, decoded_step_cams, overlay, plot_cams
from .curves import plot_f1_vs_frequency, plot_history, plot_metric_vs_proportion
from .datasets import (
    dataset_summary,
    plot_cooccurrence,
    plot_image_grid,
    plot_label_frequency,
    positive_names,
)
from .embeddings import plot_embedding, project_2d

__all__ = [
    "class_activation_maps",
    "dataset_summary",
    "decoded_step_cams",
    "overlay",
    "plot_cams",
    "plot_cooccurrence",
    "plot_embedding",
    "plot_f1_vs_frequency",
    "plot_history",
    "plot_image_grid",
    "plot_label_frequency",
    "plot_metric_vs_proportion",
    "positive_names",
    "project_2d",
]
