"""P0's unsymmetrical loss (Salar & Ahmadi 2023, ``proposedLoss`` in the official code)."""

from __future__ import annotations

import torch
from torch import nn

from ._common import check_reduction, negative_term, positive_term, prepare, reduce


def unsymmetric_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    gamma_neg: float = 4.0,
    margin_neg: float = 0.05,
    gamma_pos: float = 3.0,
    margin_pos: float = 1.1,
    tau: float = 0.25,
    reduction: str = "mean",
) -> torch.Tensor:
    """Functional form of :class:`UnsymmetricLoss`."""
    x, y, known = prepare(logits, targets)
    z = x - margin_pos
    # Hard positives (q < tau) get the focal weight so they are not drowned by the many
    # easy ones; above tau plain BCE keeps pushing q towards 1 instead of fading out.
    # The switch compares q itself, as P0's code does, so ties at tau go to BCE.
    positive = torch.where(torch.sigmoid(z) >= tau, positive_term(z), positive_term(z, gamma_pos))
    loss = y * positive + (1 - y) * negative_term(x, gamma_neg, margin_neg)
    return reduce(loss, known, reduction)


class UnsymmetricLoss(nn.Module):
    """P0's loss per label, ``p = sigmoid(x)``:

    negatives (ASL's probability shifting), ``p_m = max(p - m_neg, 0)``:
        ``L- = -(1 - y) p_m^gamma_neg log(1 - p_m)``
    positives (logit margin), ``q = sigmoid(x - m_pos)``:
        ``L+ = -y log q``                       where ``q >= tau``
        ``L+ = -y (1 - q)^gamma_pos log q``     where ``q < tau``

    then the mean over batch x labels. Defaults are P0's: ``gamma_neg=4``,
    ``margin_neg=0.05``, ``gamma_pos=3``, ``margin_pos=1.1``, ``tau=0.25``. Unlike ASL's
    default, gradients flow through the focal weights (P0's code does not detach them).
    All gammas and margins at 0 give BCE. Unknown targets (-1) add 0 and the mean is over
    the known entries (see :mod:`annotlib.losses`).
    """

    def __init__(
        self,
        gamma_neg: float = 4.0,
        margin_neg: float = 0.05,
        gamma_pos: float = 3.0,
        margin_pos: float = 1.1,
        tau: float = 0.25,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        if margin_neg < 0:
            raise ValueError(f"margin_neg must be >= 0, got {margin_neg}")
        self.gamma_neg = gamma_neg
        self.margin_neg = margin_neg
        self.gamma_pos = gamma_pos
        self.margin_pos = margin_pos
        self.tau = tau
        self.reduction = check_reduction(reduction)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return unsymmetric_loss(logits, targets, self.gamma_neg, self.margin_neg, self.gamma_pos,
                                self.margin_pos, self.tau, self.reduction)

    def extra_repr(self) -> str:
        return (f"gamma_neg={self.gamma_neg}, margin_neg={self.margin_neg}, "
                f"gamma_pos={self.gamma_pos}, margin_pos={self.margin_pos}, tau={self.tau}, "
                f"reduction={self.reduction!r}")
