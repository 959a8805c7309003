"""Training: one ``fit`` for every paper, and whole runs from a config."""

from .config import TrainConfig, config_from, parse_overrides
from .loop import NonFiniteLossError, fit, predict, resolve_device
from .run import AnnotationRun, load_run, prepare_run, run_annotation

__all__ = [
           "AnnotationRun",
           "NonFiniteLossError",
           "TrainConfig",
           "config_from",
           "fit",
           "load_run",
           "parse_overrides",
           "predict",
           "prepare_run",
           "resolve_device",
           "run_annotation",
]
