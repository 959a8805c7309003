"""Per-label decision thresholds picked on a grid, for ``annotation_metrics``.

Tune on the training or validation split, then apply to the test split.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .annotation import _check_scores_targets, _known, _positives

# Scores per chunk of the bucket histogram; bounds the memory of the int32 keys.
_CHUNK_ELEMENTS = 1 << 22


def default_threshold_grid(device: torch.device | str | None = None) -> Tensor:
    """The 14 thresholds 0.05, 0.10, ..., 0.70 (float64), each the double nearest to k/20."""
    # Rounding undoes the error of k * 0.05 (3 * 0.05 is 0.15000000000000002).
    return (torch.arange(1, 15, dtype=torch.float64, device=device) * 0.05).round(decimals=2)


def _counts_at_thresholds(
    scores: Tensor, kind: Tensor, grid: Tensor
) -> tuple[Tensor, Tensor]:
    """``(TP, Pred)``, int64 [G, C]: true positives and predictions of ``scores >= grid[g]``
    among the known entries.

    ``kind`` is 0 (negative), 1 (positive) or 2 (unknown) per entry; ``grid`` is ascending
    and of the dtype of ``scores``. Each score is reduced to its bucket, the number of grid
    values it meets (``score >= grid[g]`` iff ``bucket > g``), then one histogram of
    (label, kind, bucket) gives every count at once; the unknown slot is then dropped.
    """
    n, c = scores.shape
    g = grid.numel()
    buckets = g + 1
    histogram = torch.zeros(c * 3 * buckets, dtype=torch.int64, device=scores.device)
    label_slot = 3 * torch.arange(c, dtype=torch.int32, device=scores.device)
    rows = max(1, _CHUNK_ELEMENTS // c)
    for start in range(0, n, rows):
        # right=True counts the grid values <= score: the thresholds the score meets.
        bucket = torch.bucketize(scores[start:start + rows], grid, right=True, out_int32=True)
        key = (label_slot + kind[start:start + rows]) * buckets + bucket
        histogram += torch.bincount(key.view(-1), minlength=histogram.numel())
    # Counts with bucket > g, for g = 0..G-1: a reversed cumulative sum over buckets.
    meets = histogram.view(c, 3, buckets).flip(-1).cumsum(-1).flip(-1)[..., 1:]
    return meets[:, 1].T, meets[:, :2].sum(1).T


def _mcc(tp: Tensor, n_predicted: Tensor, n_true: Tensor, n: Tensor) -> Tensor:
    """Matthews correlation coefficient, float64, bit-identical to sklearn's ``matthews_corrcoef``.

    ``MCC = (N TP - GT Pred) / sqrt(Pred (N - Pred) GT (N - GT))``, 0 when the root is 0;
    ``N`` is the number of known entries of each label (int64 [C]).
    sklearn computes the same with every covariance doubled; its covariances are exact
    integers in float64, and doubling commutes with IEEE rounding, so the float64 product,
    root and quotient here round exactly like sklearn's and its ties stay ties.
    """
    covariance = n * tp - n_true * n_predicted
    variance_product = (n_predicted * (n - n_predicted)).double() * (n_true * (n - n_true)).double()
    return torch.where(
        variance_product > 0, covariance.double() / variance_product.sqrt(), 0.0
    )


def _f1(tp: Tensor, n_predicted: Tensor, n_true: Tensor, n: Tensor) -> Tensor:
    """``2 TP / (GT + Pred)``, float64, 0 when both are 0 (sklearn ``zero_division=0``)."""
    denominator = n_true + n_predicted
    return torch.where(denominator > 0, (2 * tp).double() / denominator.clamp(min=1).double(), 0.0)


_CRITERIA = {"mcc": _mcc, "f1": _f1}


def tune_thresholds(
    scores: Tensor,
    targets: Tensor,
    grid: Tensor | Sequence[float] | None = None,
    criterion: str = "mcc",
) -> Tensor:
    """One threshold per label: the grid value whose ``scores >= t`` maximises ``criterion``.

    ``criterion`` is ``"mcc"`` (Matthews correlation coefficient, as
    ``sklearn.metrics.matthews_corrcoef``, 0 for constant predictions or targets) or
    ``"f1"`` (per-label F1, as ``sklearn.metrics.f1_score`` with ``zero_division=0``).
    ``grid`` defaults to :func:`default_threshold_grid`; it is sorted, and of equally good
    thresholds the smallest wins, as a loop going up the grid keeping the first maximum.
    Scores are compared in their own dtype (see :mod:`annotlib.metrics.annotation`), always
    with ``>=``: P0's code tunes with ``>=`` too, though it evaluates with ``>``
    (``annotation_metrics(..., strict=True)``); the two differ only for a score equal to a grid value.
    Unknown targets (-1) are left out: each label's criterion is computed on the images
    where that label is known, as ``annotation_metrics`` counts them.

    Returns the chosen thresholds as float64 [C] on the device of ``scores``.
    """
    _check_scores_targets(scores, targets)
    if criterion not in _CRITERIA:
        raise ValueError(f"criterion must be one of {sorted(_CRITERIA)}, got {criterion!r}")
    if grid is None:
        grid = default_threshold_grid(scores.device)
    grid = torch.as_tensor(grid, dtype=torch.float64, device=scores.device)
    if grid.dim() != 1 or grid.numel() == 0:
        raise ValueError(f"grid must be a non-empty 1-D sequence, got shape {tuple(grid.shape)}")
    grid = grid.sort().values

    positive, known = _positives(targets), _known(targets)
    kind = torch.where(known, positive.to(torch.int32), 2)
    tp, n_predicted = _counts_at_thresholds(scores, kind, grid.to(scores.dtype))
    quality = _CRITERIA[criterion](tp, n_predicted, positive.sum(0), known.sum(0))
    # argmax returns the first maximum: the smallest of tied thresholds.
    return grid[quality.argmax(0)]
