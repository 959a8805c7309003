"""Binary cross-entropy over independent sigmoid labels (P0's BCE baseline)."""

from __future__ import annotations

import torch
from torch import nn

from ._common import check_reduction, negative_term, positive_term, prepare, reduce


def bce_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Functional form of :class:`BCELoss`."""
    x, y = prepare(logits, targets)
    return reduce(y * positive_term(x) + (1 - y) * negative_term(x), reduction)


class BCELoss(nn.Module):
    """Binary cross-entropy on logits, per label:

    ``L = -[y log p + (1 - y) log(1 - p)]``,  ``p = sigmoid(x)``

    the same numbers as ``F.binary_cross_entropy_with_logits`` and, with the default
    ``reduction="mean"`` (mean over batch x labels), ``nn.MultiLabelSoftMarginLoss``,
    which P0 trains its BCE baseline with.
    """

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = check_reduction(reduction)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return bce_loss(logits, targets, self.reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"
