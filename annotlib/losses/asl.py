"""Asymmetric Loss (ASL; Ridnik et al., ICCV 2021), P0's ASL baseline."""

from __future__ import annotations

import torch
from torch import nn

from ._common import check_reduction, negative_term, positive_term, prepare, reduce


def asymmetric_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    gamma_neg: float = 4.0,
    gamma_pos: float = 0.0,
    clip: float = 0.05,
    detach_focal_weight: bool = True,
    reduction: str = "mean",
) -> torch.Tensor:
    """Functional form of :class:`AsymmetricLoss`."""
    x, y, known = prepare(logits, targets)
    loss = (y * positive_term(x, gamma_pos, detach_focal_weight)
            + (1 - y) * negative_term(x, gamma_neg, clip, detach_focal_weight))
    return reduce(loss, known, reduction)


class AsymmetricLoss(nn.Module):
    """Asymmetric Loss per label, with ``p = sigmoid(x)`` and the shifted probability
    ``p_m = max(p - m, 0)`` (``m`` is ``clip``):

    ``L+ = (1 - p)^gamma_pos log p``,  ``L- = p_m^gamma_neg log(1 - p_m)``,
    ``L = -y L+ - (1 - y) L-``

    Defaults are P0's ASL baseline (and ASL's own multi-label setting): ``gamma_neg=4``,
    ``gamma_pos=0``, ``m=0.05``. Negatives with ``p <= m`` contribute nothing (hard
    thresholding of easy negatives); all gammas and ``m`` at 0 give BCE.

    ``detach_focal_weight``: as in ASL's reference training (its
    ``disable_torch_grad_focal_loss=True``), the weights ``(1 - p)^gamma_pos`` and
    ``p_m^gamma_neg`` are treated as constants, so only ``log p`` and ``log(1 - p_m)`` are
    differentiated. ``False`` differentiates the whole expression, as P0's own code does.

    Unknown targets (-1) add 0 and the mean is over the known entries (see
    :mod:`annotlib.losses`).
    """

    def __init__(
        self,
        gamma_neg: float = 4.0,
        gamma_pos: float = 0.0,
        clip: float = 0.05,
        detach_focal_weight: bool = True,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        if clip < 0:
            raise ValueError(f"clip must be >= 0, got {clip}")
        self.gamma_neg = gamma_neg
        self.gamma_pos = gamma_pos
        self.clip = clip
        self.detach_focal_weight = detach_focal_weight
        self.reduction = check_reduction(reduction)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return asymmetric_loss(logits, targets, self.gamma_neg, self.gamma_pos, self.clip,
                               self.detach_focal_weight, self.reduction)

    def extra_repr(self) -> str:
        return (f"gamma_neg={self.gamma_neg}, gamma_pos={self.gamma_pos}, clip={self.clip}, "
                f"detach_focal_weight={self.detach_focal_weight}, reduction={self.reduction!r}")
