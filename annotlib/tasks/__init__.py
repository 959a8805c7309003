"""Tasks by name: one per kind of training target. A config names its task (``task``) and
options (``task_kwargs``); register a new one in :data:`TASKS`."""

from __future__ import annotations

from ..losses import create_loss
from .base import Outputs, Task
from .captioning import CaptioningTask
from .label_sequence import LabelSequenceTask
from .metric_learning import MetricLearningTask
from .multilabel import MultiLabelTask

TASKS: dict[str, type[Task]] = {
    "multilabel": MultiLabelTask,
    "label_sequence": LabelSequenceTask,
    "metric_learning": MetricLearningTask,
    "captioning": CaptioningTask,
}


def create_task(name: str, loss: str, loss_kwargs: dict | None = None, **task_kwargs) -> Task:
    """The task ``name`` with the loss ``loss`` (built by :func:`~annotlib.losses.create_loss`)."""
    try:
        cls = TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}") from None
    try:
        return cls(create_loss(loss, **(loss_kwargs or {})), **task_kwargs)
    except TypeError as err:
        raise ValueError(f"task {name!r} or loss {loss!r}: {err}") from None


__all__ = ["TASKS", "CaptioningTask", "LabelSequenceTask", "MetricLearningTask", "MultiLabelTask", "Outputs", "Task", "create_task"]
