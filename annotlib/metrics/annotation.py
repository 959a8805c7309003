"""Annotation metrics of the automatic image annotation (AIA) literature, on tensors.

Every function takes ``scores[N, C]`` (floating point) and ``targets[N, C]`` for N images
and C labels, works on the device of ``scores`` and returns python floats or tensors on that
device. Targets are 1 positive, -1 (any negative value) unknown, anything else negative:
annotlib's partial-label convention (P3 writes -1 negative / 0 unknown; we keep 0
negative so fully labelled 0/1 targets are valid as they are). An unknown (image, label)
pair is left out of that label's evaluation, as VOC leaves out its "difficult" objects:
it is neither a positive nor a negative, a prediction on it is not counted, and it does
not enter the label's ranking for AP. To count unknown labels as negatives instead, pass
``targets.clamp(min=0)``.

A label is predicted when ``score >= threshold``, or with ``strict=True`` when
``score > threshold`` (P0's evaluation code, ``torch.gt``); the threshold is cast to the dtype
of ``scores`` first, as ``scores >= 0.3`` does in torch and numpy, so that a score stored as
0.3 meets a threshold of 0.3.

Counts per label c, over the images where the label is known: ``TP_c`` (predicted and
positive), ``Pred_c`` (predicted) and ``GT_c`` (positive). A ratio with a zero denominator
is 0, as in scikit-learn with ``zero_division=0``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _check_scores_targets(scores: Tensor, targets: Tensor) -> None:
    """Raise unless ``scores`` (floating point) and ``targets`` are [N, C] tensors of one shape."""
    if not isinstance(scores, Tensor) or not isinstance(targets, Tensor):
        raise TypeError("scores and targets must be torch tensors")
    if scores.dim() != 2 or targets.dim() != 2:
        raise ValueError(
            f"scores and targets must be 2-D [N images, C labels], got shapes "
            f"{tuple(scores.shape)} and {tuple(targets.shape)}"
        )
    if scores.shape != targets.shape:
        raise ValueError(
            f"scores and targets differ in shape: {tuple(scores.shape)} vs {tuple(targets.shape)}"
        )
    if not scores.is_floating_point():
        raise ValueError(f"scores must be floating point, got {scores.dtype}")


def _positives(targets: Tensor) -> Tensor:
    """``targets == 1`` as a bool tensor (a positive is always known)."""
    return targets == 1


def _known(targets: Tensor) -> Tensor:
    """``targets >= 0`` as a bool tensor: False where the label is unknown (-1)."""
    return targets >= 0


def _predictions(scores: Tensor, thresholds: float | Tensor, strict: bool = False) -> Tensor:
    thresholds = torch.as_tensor(thresholds, dtype=scores.dtype, device=scores.device)
    if thresholds.dim() > 1 or (thresholds.dim() == 1 and thresholds.numel() != scores.shape[1]):
        raise ValueError(
            f"thresholds must be a float or a tensor of {scores.shape[1]} per-label values, "
            f"got shape {tuple(thresholds.shape)}"
        )
    return scores > thresholds if strict else scores >= thresholds


def _confusion_counts(
    scores: Tensor, targets: Tensor, thresholds: float | Tensor, strict: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """``(TP_c, Pred_c, GT_c)``, int64 tensors of C, over the known entries."""
    _check_scores_targets(scores, targets)
    predicted = _predictions(scores, thresholds, strict) & _known(targets)
    positive = _positives(targets)
    return (predicted & positive).sum(0), predicted.sum(0), positive.sum(0)


def _ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / denominator`` in float64, 0 where the denominator is 0."""
    return torch.where(
        denominator > 0, numerator.double() / denominator.clamp(min=1).double(), 0.0
    )


def _harmonic_mean(a: float, b: float) -> float:
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


def per_class_precision(scores: Tensor, targets: Tensor, thresholds: float | Tensor = 0.5, *,
                        strict: bool = False) -> Tensor:
    """``TP_c / Pred_c`` for every label (float64, C); 0 for a label never predicted."""
    tp, n_predicted, _ = _confusion_counts(scores, targets, thresholds, strict)
    return _ratio(tp, n_predicted)


def per_class_recall(scores: Tensor, targets: Tensor, thresholds: float | Tensor = 0.5, *,
                     strict: bool = False) -> Tensor:
    """``TP_c / GT_c`` for every label (float64, C); 0 for a label without positives."""
    tp, _, n_true = _confusion_counts(scores, targets, thresholds, strict)
    return _ratio(tp, n_true)


def per_class_f1(scores: Tensor, targets: Tensor, thresholds: float | Tensor = 0.5, *,
                 strict: bool = False) -> Tensor:
    """``2 TP_c / (Pred_c + GT_c)`` for every label (float64, C); 0 where both are 0."""
    tp, n_predicted, n_true = _confusion_counts(scores, targets, thresholds, strict)
    return _ratio(2 * tp, n_predicted + n_true)


def annotation_metrics(
    scores: Tensor,
    targets: Tensor,
    thresholds: float | Tensor = 0.5,
    *,
    ignore_empty: bool = False,
    strict: bool = False,
) -> dict[str, float]:
    """Per-class and overall precision, recall and F1 of ``scores >= thresholds`` (``>`` with
    ``strict=True``).

    ``thresholds`` is one float or a tensor of C per-label thresholds. With the counts of
    the module docstring::

        CP  = mean_c TP_c / Pred_c          CR  = mean_c TP_c / GT_c
        CF1 = 2 CP CR / (CP + CR)           (harmonic mean of the two means,
                                             not the mean of per-class F1)
        OP  = sum_c TP_c / sum_c Pred_c     OR  = sum_c TP_c / sum_c GT_c
        OF1 = 2 OP OR / (OP + OR)
        N+  = #{c : TP_c > 0}               (an int)

    The AIA literature averages CP and CR over all labels, which is the default; a label
    without positives then adds 0 to both (it can have no true positive).
    ``ignore_empty=True`` leaves labels without any positive in ``targets`` out of CP and
    CR only; OP, OR, OF1 and N+ are unchanged. If no label is left, CP = CR = CF1 = 0.
    """
    tp, n_predicted, n_true = _confusion_counts(scores, targets, thresholds, strict)
    precision, recall = _ratio(tp, n_predicted), _ratio(tp, n_true)
    if ignore_empty:
        precision, recall = precision[n_true > 0], recall[n_true > 0]
    cp = precision.mean().item() if precision.numel() else 0.0
    cr = recall.mean().item() if recall.numel() else 0.0
    op = _ratio(tp.sum(), n_predicted.sum()).item()
    or_ = _ratio(tp.sum(), n_true.sum()).item()
    return {
        "CP": cp,
        "CR": cr,
        "CF1": _harmonic_mean(cp, cr),
        "OP": op,
        "OR": or_,
        "OF1": _harmonic_mean(op, or_),
        "N+": int((tp > 0).sum().item()),
    }


def average_precision_per_class(scores: Tensor, targets: Tensor) -> Tensor:
    """Average precision of every label (float64, C), as ``sklearn.metrics.average_precision_score``.

    ``AP_c = sum_k (R_k - R_{k-1}) P_k`` over the distinct scores ``s_k`` of label c in
    decreasing order, with ``P_k`` and ``R_k`` the precision and recall of ``score >= s_k``
    and ``R_0 = 0``. Equal scores share one threshold, so ties count as one step. Summed per
    positive image i instead::

        AP_c = 1/GT_c * sum_{i positive} TP(score >= s_i) / #(score >= s_i)

    Images where label c is unknown are left out of its ranking, as if they were not
    there: the result is scikit-learn's on the known rows of the column.

    NaN for a label without (known) positives (scikit-learn warns and returns 0 there).
    Raises ValueError on NaN scores (scikit-learn rejects them too).
    """
    _check_scores_targets(scores, targets)
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN")
    n, c = scores.shape
    positive = _positives(targets)
    n_positive = positive.sum(0)
    # Unknown entries go to -inf, below every real score but a positive's own -inf, with
    # which they tie: such a positive subtracts them from its count at or above (below).
    unknown = ~_known(targets)
    n_unknown = unknown.sum(0)
    scores = scores.masked_fill(unknown, -torch.inf)
    # Labels as rows of contiguous [C, N] blocks: sorting and gathering along contiguous rows
    # is faster, and flat indices then run label by label, so that every per-label lookup
    # below is one searchsorted over a flat, sorted array.
    ascending, order = torch.sort(scores.T.contiguous(), dim=1)
    hit = positive.T.contiguous().gather(1, order).view(-1)
    starts_tie_group = torch.ones(c, n, dtype=torch.bool, device=scores.device)
    torch.ne(ascending[:, 1:], ascending[:, :-1], out=starts_tie_group[:, 1:])
    # Numbering tie groups over the flat array makes it sorted, so a group's first index
    # is a searchsorted away.
    tie_group = starts_tie_group.view(-1).cumsum(0)

    # Only positives add to AP. From the first index of a positive's tie group to the end
    # of its label's row, every score is >= the positive's score.
    hits = hit.nonzero().squeeze(1)
    label = hits // n
    label_start = label * n
    group_start = torch.searchsorted(tie_group, tie_group[hits])
    at_or_above = n - (group_start - label_start)
    at_or_above -= torch.where(ascending.view(-1)[hits] == -torch.inf, n_unknown[label], 0)
    positives_below = torch.searchsorted(hits, group_start) - torch.searchsorted(hits, label_start)
    positives_at_or_above = n_positive[label] - positives_below

    precision_sum = torch.zeros(c, dtype=torch.float64, device=scores.device)
    precision_sum.index_add_(0, label, positives_at_or_above.double() / at_or_above.double())
    return torch.where(n_positive > 0, precision_sum / n_positive.clamp(min=1), torch.nan)


def mean_average_precision(scores: Tensor, targets: Tensor, *, ignore_empty: bool = True) -> float:
    """``mean_c AP_c`` with AP_c from :func:`average_precision_per_class`.

    Labels without any positive have no defined AP and are skipped by default (NaN if no
    label has a positive). ``ignore_empty=False`` counts them as AP 0 instead, which is
    what ``average_precision_score(targets, scores, average="macro")`` returns.
    """
    ap = average_precision_per_class(scores, targets)
    if ignore_empty:
        return ap.nanmean().item()
    return ap.nan_to_num(nan=0.0).mean().item()
