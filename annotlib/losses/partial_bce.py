"""P3's partial-BCE (Durand, Mehrasa & Mori, CVPR 2019): BCE over the known labels,
reweighted by the proportion of labels known for the image."""

from __future__ import annotations

import torch
from torch import nn

from ._common import check_reduction, negative_term, positive_term, prepare


def partial_bce_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = -4.45,
    beta: float = 5.45,
    gamma: float = 1.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Functional form of :class:`PartialBCELoss`."""
    check_reduction(reduction)
    x, y, known = prepare(logits, targets)
    num_labels = x.shape[-1]
    terms = torch.where(known, y * positive_term(x) + (1 - y) * negative_term(x), 0.0)
    known_proportion = known.sum(-1, dtype=x.dtype) / num_labels
    weight = (alpha * known_proportion.pow(gamma) + beta) / num_labels
    loss = terms * weight.unsqueeze(-1)
    if reduction == "mean":
        return loss.sum(-1).mean()
    if reduction == "sum":
        return loss.sum()
    return loss


class PartialBCELoss(nn.Module):
    """P3's partial-BCE, per image of C labels:

    ``l(x, y) = -(g(p_y) / C) sum_c [ 1[y_c = 1] log p_c + 1[y_c = 0] log(1 - p_c) ]``

    with ``p_c = sigmoid(x_c)``, ``p_y`` the proportion of the image's labels that are
    known, and ``g(p) = alpha p^gamma + beta``. Targets are 1 positive, 0 negative,
    -1 unknown (P3 writes -1 negative, 0 unknown; annotlib keeps 0 negative so that fully
    labelled targets are valid as they are). Unknown labels add nothing; the normalisation
    ``g(p_y) / C`` instead of ``1 / #known`` gives images with few known labels a loss of
    the same scale as fully labelled ones.

    Defaults are P3's, ``gamma = 1``, ``alpha = -4.45``, ``beta = 5.45``, chosen so that
    ``g(1) = 1`` (fully labelled images get plain BCE, mean over labels) and
    ``g(0.1) = 5`` (5.005 with the rounded constants).

    ``reduction``: ``"mean"`` (default) is the mean of ``l`` over the images, ``"sum"`` its
    sum, and ``"none"`` the N x C terms already multiplied by ``g(p_y) / C`` (0 where
    unknown), so that ``none.sum(1)`` is ``l`` per image. An image without any known label
    contributes 0.
    """

    def __init__(
        self, alpha: float = -4.45, beta: float = 5.45, gamma: float = 1.0, reduction: str = "mean"
    ) -> None:
        super().__init__()
        self.alpha = alpha
        self.beta = beta
        self.gamma = gamma
        self.reduction = check_reduction(reduction)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return partial_bce_loss(logits, targets, self.alpha, self.beta, self.gamma, self.reduction)

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, beta={self.beta}, gamma={self.gamma}, "
                f"reduction={self.reduction!r}")
