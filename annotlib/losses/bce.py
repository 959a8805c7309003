"""Binary cross-entropy over independent sigmoid labels (P0's BCE baseline), and P3's
two partial-label baselines: BCE on the known labels only, and unknown labels as negatives."""

from __future__ import annotations

import torch
from torch import nn

from ._common import check_reduction, check_unknown, negative_term, positive_term, prepare, reduce


def bce_loss(
    logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean", unknown: str = "ignore"
) -> torch.Tensor:
    """Functional form of :class:`BCELoss`."""
    x, y, known = prepare(logits, targets, unknown)
    return reduce(y * positive_term(x) + (1 - y) * negative_term(x), known, reduction)


class BCELoss(nn.Module):
    """Binary cross-entropy on logits, per label:

    ``L = -[y log p + (1 - y) log(1 - p)]``,  ``p = sigmoid(x)``

    the same numbers as ``F.binary_cross_entropy_with_logits`` and, with the default
    ``reduction="mean"`` (mean over batch x labels), ``nn.MultiLabelSoftMarginLoss``,
    which P0 trains its BCE baseline with.

    Partial targets (1 positive, 0 negative, -1 unknown): ``unknown="ignore"`` (default)
    gives unknown entries a loss of 0 and takes the mean over the known entries only
    (P3's "known labels only" baseline, :class:`KnownLabelsBCELoss`);
    ``unknown="negative"`` treats them as negatives and takes the mean over all N x C
    entries (P3's "unknown as negative" baseline, :class:`UnknownAsNegativeBCELoss`).
    Both equal plain BCE on fully labelled targets.
    """

    def __init__(self, reduction: str = "mean", unknown: str = "ignore") -> None:
        super().__init__()
        self.reduction = check_reduction(reduction)
        self.unknown = check_unknown(unknown)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return bce_loss(logits, targets, self.reduction, self.unknown)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, unknown={self.unknown!r}"


class KnownLabelsBCELoss(BCELoss):
    """P3's baseline "BCE on known labels": :class:`BCELoss` with ``unknown="ignore"``."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__(reduction, unknown="ignore")


class UnknownAsNegativeBCELoss(BCELoss):
    """P3's baseline "unknown labels are negatives": :class:`BCELoss` with
    ``unknown="negative"``."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__(reduction, unknown="negative")
