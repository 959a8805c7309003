"""Training: one ``fit`` for every paper, tasks, and whole runs from a config."""

from .config import TrainConfig, config_from, parse_overrides
from .loop import NonFiniteLossError, fit, predict, resolve_device
from .run import (
           AnnotationRun,
           evaluate_scores,
           load_run,
           load_thresholds,
           prepare_run,
           run_annotation,
)
from .tasks import MultiLabelTask

__all__ = [
           "AnnotationRun",
           "MultiLabelTask",
           "NonFiniteLossError",
           "TrainConfig",
           "config_from",
           "evaluate_scores",
           "fit",
           "load_run",
           "load_thresholds",
           "parse_overrides",
           "predict",
           "prepare_run",
           "resolve_device",
           "run_annotation",
]
