"""Tasks: the paper-specific part of training (how a batch becomes a loss and scores)."""

from __future__ import annotations

import torch
from torch import nn

from ..metrics import annotation_metrics, mean_average_precision


class MultiLabelTask:
    """Multi-label annotation: the model's logits, an elementwise loss, sigmoid scores."""

    def __init__(self, loss_fn: nn.Module, name: str | None = None):
        self.loss_fn = loss_fn
        self.name = name or type(loss_fn).__name__

    def forward(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return model(x)

    def loss(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(outputs.float(), y.float())

    @staticmethod
    def scores(outputs: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(outputs.float())

    def validation_metrics(self, outputs: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        scores = self.scores(outputs)
        at_half = annotation_metrics(scores, y)
        return {"mAP": mean_average_precision(scores, y), "CF1": at_half["CF1"], "OF1": at_half["OF1"]}
