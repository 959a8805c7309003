"""Elementwise positive / negative terms shared by the sigmoid multi-label losses.

With ``p = sigmoid(x)`` every family here is ``y * positive + (1 - y) * negative``;
the families differ only in the focusing exponents and margins they pass in.

Targets are N x C: 1 positive, 0 negative, -1 (any negative value) unknown, i.e. a
missing label of P3's partial-label protocol or VOC's difficult-only class. P3 writes
-1 negative / 0 unknown; we keep 0 negative so fully labelled 0/1 targets are valid as
they are. :func:`prepare` returns the mask of known entries and :func:`reduce` zeroes the
unknown ones and averages over the known ones, so every family accepts partial targets
without code of its own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

REDUCTIONS = ("none", "mean", "sum")
UNKNOWN_HANDLING = ("ignore", "negative")


def check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def check_unknown(unknown: str) -> str:
    if unknown not in UNKNOWN_HANDLING:
        raise ValueError(f"unknown must be one of {UNKNOWN_HANDLING}, got {unknown!r}")
    return unknown


def prepare(
    logits: torch.Tensor, targets: torch.Tensor, unknown: str = "ignore"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x, y, known)``: logits in at least float32 (bf16/fp16 logs lose the small terms;
    float64 stays float64 so gradcheck works), targets in the same float dtype with unknown
    entries set to 0, and the bool mask of known entries (targets >= 0).

    ``unknown="negative"`` turns unknown entries into known negatives instead (P3's
    "unknown as negative" baseline); ``"ignore"`` leaves them to be masked by :func:`reduce`.
    """
    if logits.shape != targets.shape:
        # Broadcasting N x C against C or N x 1 would silently compute the wrong loss.
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ")
    check_unknown(unknown)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    targets = targets.to(logits.dtype)
    known = targets >= 0
    if unknown == "negative":
        known = torch.ones_like(known)
    return logits, targets.clamp(min=0), known


def reduce(loss: torch.Tensor, known: torch.Tensor, reduction: str) -> torch.Tensor:
    """Elementwise ``loss`` with unknown entries set to 0, then ``"none"``, ``"sum"`` or
    ``"mean"`` over the known entries (0 if there is none)."""
    check_reduction(reduction)
    # where, not a product: the unknown entries' values never reach the result or the gradient.
    loss = torch.where(known, loss, 0.0)
    if reduction == "mean":
        # mean() times numel / known rather than sum() / known: with every entry known the
        # factor is exactly 1, so fully labelled targets give loss.mean() bit for bit, on
        # every device (CUDA's mean multiplies by 1 / numel, which a division can miss by an ulp).
        n_known = known.sum().clamp(min=1).to(loss.dtype)
        return loss.mean() * (known.numel() / n_known)
    if reduction == "sum":
        return loss.sum()
    return loss


def positive_term(x: torch.Tensor, gamma: float = 0.0, detach_weight: bool = False) -> torch.Tensor:
    """``-(1 - p)^gamma * log p``; gamma 0 is exactly BCE's ``-log p``."""
    log_p = F.logsigmoid(x)
    if gamma == 0:
        return -log_p
    # exp(gamma * log(1 - p)) rather than (1 - p)**gamma: pow's gradient is infinite at a
    # base of 0 (saturated logits) for gamma < 1, and 0 * inf would poison the backward.
    weight = torch.exp(gamma * F.logsigmoid(-x))
    if detach_weight:
        weight = weight.detach()
    return -weight * log_p


def negative_term(
    x: torch.Tensor, gamma: float = 0.0, margin: float = 0.0, detach_weight: bool = False
) -> torch.Tensor:
    """``-p_m^gamma * log(1 - p_m)`` with the shifted probability ``p_m = max(p - margin, 0)``."""
    if margin < 0:
        raise ValueError(f"the probability margin must be >= 0, got {margin}")
    if margin == 0:
        # p^gamma log(1 - p) is the positive term of -x; this keeps margin 0 exactly BCE.
        return positive_term(-x, gamma, detach_weight)
    shifted = torch.sigmoid(x) - margin
    active = shifted > 0
    # 1 - p_m = sigmoid(-x) + margin: no cancellation in 1 - sigmoid(x) as p -> 1, and
    # the log's argument stays >= margin, so value and gradient are finite.
    log_one_minus = torch.log(torch.sigmoid(-x) + margin)
    # p_m^gamma with a base of 1 where p_m = 0 (those terms are masked below): pow's slope
    # at 0 is infinite for gamma < 1, and 0 * inf is nan in the backward pass.
    weight = torch.where(active, shifted, 1.0).pow(gamma)
    if detach_weight:
        weight = weight.detach()
    # Where p <= margin the term is 0 (p_m = 0, and log(1 - p_m) = 0 even for gamma 0).
    return torch.where(active, -weight * log_one_minus, 0.0)
