"""Training: one ``fit`` for every paper, tasks, and whole runs from a config."""

from .config import TrainConfig
from .loop import NonFiniteLossError, fit, predict, resolve_device
from .run import evaluate_scores, run_annotation
from .tasks import MultiLabelTask

__all__ = ["MultiLabelTask", "NonFiniteLossError", "TrainConfig", "evaluate_scores", "fit", "predict",
           "resolve_device", "run_annotation"]
