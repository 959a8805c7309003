"""Annotation metrics: per-class / overall precision, recall and F1, mAP, threshold tuning."""

from .annotation import (
    annotation_metrics,
    average_precision_per_class,
    mean_average_precision,
    per_class_f1,
    per_class_precision,
    per_class_recall,
)
from .thresholds import default_threshold_grid, tune_thresholds

__all__ = [
    "annotation_metrics",
    "average_precision_per_class",
    "default_threshold_grid",
    "mean_average_precision",
    "per_class_f1",
    "per_class_precision",
    "per_class_recall",
    "tune_thresholds",
]
