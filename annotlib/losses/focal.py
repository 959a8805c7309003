"""Sigmoid focal loss with separate exponents for positives and negatives (P0's baseline)."""

from __future__ import annotations

import torch
from torch import nn

from ._common import check_reduction, negative_term, positive_term, prepare, reduce


def focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    gamma_pos: float = 3.0,
    gamma_neg: float = 3.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Functional form of :class:`FocalLoss`."""
    x, y, known = prepare(logits, targets)
    loss = y * positive_term(x, gamma_pos) + (1 - y) * negative_term(x, gamma_neg)
    return reduce(loss, known, reduction)


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017) per label, without the alpha balance:

    ``L = -y (1 - p)^gamma_pos log p - (1 - y) p^gamma_neg log(1 - p)``,  ``p = sigmoid(x)``

    Defaults are P0's focal baseline, ``gamma_pos = gamma_neg = 3``; both 0 give BCE.
    Gradients flow through the focal weights, as in P0's code. Unknown targets (-1) add 0
    and the mean is over the known entries (see :mod:`annotlib.losses`).
    """

    def __init__(self, gamma_pos: float = 3.0, gamma_neg: float = 3.0, reduction: str = "mean") -> None:
        super().__init__()
        self.gamma_pos = gamma_pos
        self.gamma_neg = gamma_neg
        self.reduction = check_reduction(reduction)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return focal_loss(logits, targets, self.gamma_pos, self.gamma_neg, self.reduction)

    def extra_repr(self) -> str:
        return f"gamma_pos={self.gamma_pos}, gamma_neg={self.gamma_neg}, reduction={self.reduction!r}"
