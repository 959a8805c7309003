"""Paired bootstrap intervals for the difference of two methods' metrics, and run summaries.

Two methods evaluated on the SAME test images are compared by resampling the images with
replacement, the same resample for both, and recomputing ``metric(A) - metric(B)`` on each
resample. A resample is a row of per-image multiplicities (how many times each image was
drawn), so every metric here is a weighted metric: called on a ``[B, N]`` count matrix it
returns the B metric values at once, as weighted sums instead of materialised test sets::

    a = MeanAveragePrecision(scores_a, targets)
    b = MeanAveragePrecision(scores_b, targets)
    result = paired_bootstrap(a, b, n_resamples=1000, seed=0)
    verdict((result.low, result.high), claimed_direction=+1)

On a row of ones every weighted metric equals its unweighted counterpart in
:mod:`annotlib.metrics.annotation` exactly (same float operations in the same order), and on
any row it equals that metric on the test set with each image repeated its multiplicity
times (to float rounding). Tensors are expected on the CPU.

A finished run keeps what these metrics need of its test predictions in
``test_outputs.npz`` (:func:`write_test_outputs`); :func:`weighted_metric` rebuilds a
column's weighted metric from it, so two runs of a reports folder can be compared later.
"""

from __future__ import annotations

import hashlib
import math
import statistics
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from .io import CorruptFileError, atomic_save_npz

ANNOTATION_METRICS = ("CP", "CR", "CF1", "OP", "OR", "OF1", "N+")

# Weighted counts are sums of integer multiplicities no larger than the number of images
# (or of known (image, label) pairs): float32 adds such integers exactly below 2**24, in any
# order, so the fast float32 matmul gives exact counts there.
_EXACT_FLOAT32 = 2**24


class WeightedMetric(Protocol):
    """A metric of a fixed test set, evaluated under per-image multiplicities."""

    name: str
    n_images: int

    def __call__(self, counts: Tensor) -> Tensor:
        """Metric values (float64, B) of the ``[B, n_images]`` multiplicities ``counts``."""
        ...


def _count_dtype(total: int) -> torch.dtype:
    return torch.float32 if total < _EXACT_FLOAT32 else torch.float64


def _check_counts(counts: Tensor, n_images: int) -> None:
    if counts.dim() != 2 or counts.shape[1] != n_images:
        raise ValueError(
            f"counts must be [B resamples, {n_images} images], got shape {tuple(counts.shape)}"
        )


def _check_scores_targets(scores: Tensor, targets: Tensor) -> None:
    if scores.dim() != 2 or scores.shape != targets.shape:
        raise ValueError(
            f"scores and targets must be [N images, C labels] of one shape, got "
            f"{tuple(scores.shape)} and {tuple(targets.shape)}"
        )
    if not scores.is_floating_point():
        raise ValueError(f"scores must be floating point, got {scores.dtype}")


def _ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / denominator`` in float64, 0 where the denominator is 0."""
    return torch.where(
        denominator > 0, numerator.double() / denominator.clamp(min=1).double(), 0.0
    )


def _harmonic_mean(a: Tensor, b: Tensor) -> Tensor:
    return torch.where(a + b > 0, 2 * a * b / (a + b), 0.0)


class AnnotationMetric:
    """One of CP, CR, CF1, OP, OR, OF1, N+ of ``scores >= thresholds``, weighted.

    The definitions, the handling of unknown (-1) targets and the cast of ``thresholds`` to
    the dtype of ``scores`` are those of :func:`annotlib.metrics.annotation_metrics` with its
    default ``ignore_empty=False``. With multiplicities ``w``, ``TP_c = sum_i w_i [i is a
    predicted known positive of c]``, and so on for ``Pred_c`` and ``GT_c``: one matmul.
    """

    def __init__(
        self, scores: Tensor, targets: Tensor, thresholds: float | Tensor = 0.5, name: str = "CF1"
    ) -> None:
        _check_scores_targets(scores, targets)
        if name not in ANNOTATION_METRICS:
            raise ValueError(f"name must be one of {ANNOTATION_METRICS}, got {name!r}")
        thresholds = torch.as_tensor(thresholds, dtype=scores.dtype, device=scores.device)
        if thresholds.dim() > 1 or (thresholds.dim() == 1 and len(thresholds) != scores.shape[1]):
            raise ValueError(
                f"thresholds must be a float or {scores.shape[1]} per-label values, "
                f"got shape {tuple(thresholds.shape)}"
            )
        self.name, self.n_images = name, scores.shape[0]
        self._dtype = _count_dtype(self.n_images)
        predicted = (scores >= thresholds) & (targets >= 0)
        positive = targets == 1
        # [TP | Pred | GT] indicators side by side: the three counts are one matmul.
        self._indicators = torch.cat([predicted & positive, predicted, positive], 1).to(self._dtype)

    def __call__(self, counts: Tensor) -> Tensor:
        _check_counts(counts, self.n_images)
        tp, n_predicted, n_true = (counts.to(self._dtype) @ self._indicators).double().chunk(3, 1)
        if self.name == "N+":
            return (tp > 0).sum(1).double()
        if self.name in ("CP", "CR", "CF1"):
            cp, cr = _ratio(tp, n_predicted).mean(1), _ratio(tp, n_true).mean(1)
            return {"CP": cp, "CR": cr, "CF1": _harmonic_mean(cp, cr)}[self.name]
        op, or_ = _ratio(tp.sum(1), n_predicted.sum(1)), _ratio(tp.sum(1), n_true.sum(1))
        return {"OP": op, "OR": or_, "OF1": _harmonic_mean(op, or_)}[self.name]


class MeanAveragePrecision:
    """:func:`annotlib.metrics.mean_average_precision`, weighted.

    With multiplicities ``w``, for label c and a positive image p of score ``s_p``::

        AP_c = 1/GT_c * sum_p w_p * TP(score >= s_p) / #(score >= s_p)

    where ``GT_c``, ``TP`` and ``#`` are weighted counts over the images where c is known,
    as :func:`annotlib.metrics.average_precision_per_class` counts them (ties share one
    threshold, unknown entries are left out). A label whose resample has no positive has no
    AP: left out of the mean with ``ignore_empty=True`` (NaN if no label is left), counted
    as 0 otherwise, as :func:`~annotlib.metrics.mean_average_precision` does.

    Each label's positive scores are sorted once, here. The distinct positive scores of a
    label cut its known images into groups: an image joins the group of the highest
    positive score at or below its own. ``#(score >= s)`` is then a reverse cumulative sum
    of weighted group sizes, and all groups of all labels are one sparse matrix product.
    """

    name = "mAP"

    def __init__(self, scores: Tensor, targets: Tensor, *, ignore_empty: bool = True) -> None:
        _check_scores_targets(scores, targets)
        if torch.isnan(scores).any():
            raise ValueError("scores contain NaN")
        self.n_images, n_labels = scores.shape
        self.ignore_empty = ignore_empty
        known, positive = targets >= 0, targets == 1

        # Positives ordered by label, then by increasing score: the order in which
        # average_precision_per_class adds their precisions, so that sums round alike.
        pos_label, pos_image = positive.T.nonzero().unbind(1)
        pos_score = scores[pos_image, pos_label]
        order = torch.sort(pos_score, stable=True).indices
        order = order[torch.sort(pos_label[order], stable=True).indices]
        pos_label, pos_image, pos_score = pos_label[order], pos_image[order], pos_score[order]
        new_group = torch.ones_like(pos_label, dtype=torch.bool)
        new_group[1:] = (pos_label[1:] != pos_label[:-1]) | (pos_score[1:] != pos_score[:-1])
        self._pos_group = new_group.cumsum(0) - 1
        group_label, group_score = pos_label[new_group], pos_score[new_group]
        n_groups = len(group_label)
        groups_per_label = torch.bincount(group_label, minlength=n_labels)
        end_group = groups_per_label.cumsum(0)
        first_group = end_group - groups_per_label
        # Prefix-sum indices (see __call__) of, per group then per label, the end of the
        # label's groups among the known sizes [0, G) and among the positive sizes [G, 2G).
        ends = end_group[group_label]
        self._to_end = torch.cat([ends, n_groups + ends])
        self._label_first, self._label_end = n_groups + first_group, n_groups + end_group

        # Group of every known (image, label): the count of the label's positive scores
        # <= its score, found in a [C, max groups] table padded with +inf.
        width = max(int(groups_per_label.max()), 1)
        table = torch.full((n_labels, width), torch.inf, dtype=scores.dtype)
        table[group_label, torch.arange(n_groups) - first_group[group_label]] = group_score
        at_or_below = torch.searchsorted(table, scores.T.contiguous(), right=True)
        at_or_below = torch.minimum(at_or_below, groups_per_label[:, None])  # +inf scores
        member = known.T & (at_or_below > 0)
        label, image = member.nonzero().unbind(1)
        group = first_group[label] + at_or_below[label, image] - 1

        # Rows [0, G): every known image of a group; rows [G, 2G): its positive images only.
        rows = torch.cat([group, n_groups + self._pos_group])
        cols = torch.cat([image, pos_image])
        rows, by_row = torch.sort(rows, stable=True)
        # The prefix sums of __call__ reach at most N per label for each half.
        self._dtype = _count_dtype(2 * n_labels * self.n_images)
        crow = torch.zeros(2 * n_groups + 1, dtype=torch.int64)
        crow[1:] = torch.bincount(rows, minlength=2 * n_groups).cumsum(0)
        with warnings.catch_warnings():
            # torch warns that sparse CSR support is in beta; the product used here is stable.
            warnings.simplefilter("ignore", UserWarning)
            self._groups = torch.sparse_csr_tensor(
                crow, cols[by_row], torch.ones(len(rows), dtype=self._dtype),
                size=(2 * n_groups, self.n_images), check_invariants=False,
            )
        self._pos_label, self._pos_image, self._n_labels = pos_label, pos_image, n_labels

    def __call__(self, counts: Tensor) -> Tensor:
        _check_counts(counts, self.n_images)
        n_resamples = counts.shape[0]
        # Weighted sizes [2G, B] of the groups, over their known, then their positive images.
        sizes = self._groups @ counts.T.to(self._dtype)
        # A label's sum from a group to its last one is a difference of prefix sums over all
        # groups, exact in self._dtype. The prefix sums run along dim 1 of a [B, 2G] result,
        # which torch's cumsum runs much faster than dim 0.
        before = sizes.new_zeros(n_resamples, sizes.shape[0] + 1)
        torch.cumsum(sizes.T, 1, out=before[:, 1:])
        from_group = (before.index_select(1, self._to_end) - before[:, :-1]).double()
        at_or_above, tp_at_or_above = from_group.chunk(2, 1)
        # A group at or above which nothing was drawn has no drawn positive: 0 / 1.
        precision = (tp_at_or_above / at_or_above.clamp(min=1)).index_select(1, self._pos_group)
        n_positive = (before.index_select(1, self._label_end)
                      - before.index_select(1, self._label_first)).double()

        weight = counts.index_select(1, self._pos_image).double()
        precision_sum = n_positive.new_zeros(n_resamples, self._n_labels).scatter_add_(
            1, self._pos_label.expand(n_resamples, -1), weight * precision
        )
        ap = torch.where(n_positive > 0, precision_sum / n_positive.clamp(min=1), torch.nan)
        return ap.nanmean(1) if self.ignore_empty else ap.nan_to_num(nan=0.0).mean(1)


class Accuracy:
    """The fraction of correctly classified images of a single-label task, weighted:
    ``sum_i w_i [predicted_i == labels_i] / sum_i w_i``."""

    name = "accuracy"

    def __init__(self, predicted: Tensor, labels: Tensor) -> None:
        if predicted.dim() != 1 or predicted.shape != labels.shape:
            raise ValueError(
                f"predicted and labels must be class ids [N] of one shape, got "
                f"{tuple(predicted.shape)} and {tuple(labels.shape)}"
            )
        self.n_images = len(labels)
        self._dtype = _count_dtype(self.n_images)
        self._correct = (predicted == labels).to(self._dtype)

    def __call__(self, counts: Tensor) -> Tensor:
        _check_counts(counts, self.n_images)
        counts = counts.to(self._dtype)
        return (counts @ self._correct).double() / counts.sum(1).double()


class ImageMean:
    """The mean over images of a per-image value whose mean is the metric (1/0 for a correct
    class, a query's retrieval AP, a pointing-game hit), weighted: ``sum_i w_i v_i / sum_i w_i``
    over the images with a value; NaN values (a query without a relevant item) are left out,
    as the unweighted metric leaves them out. NaN where no drawn image has a value."""

    def __init__(self, values: Tensor, name: str) -> None:
        if values.dim() != 1 or not values.is_floating_point():
            raise ValueError(f"{name}: per-image values must be a float vector [N], got shape "
                             f"{tuple(values.shape)} {values.dtype}")
        self.name, self.n_images = name, len(values)
        defined = ~torch.isnan(values)
        self._values = torch.where(defined, values.double(), 0.0)
        self._defined = defined.double()

    def __call__(self, counts: Tensor) -> Tensor:
        _check_counts(counts, self.n_images)
        counts = counts.double()
        return (counts @ self._values) / (counts @ self._defined)


class SeedMean:
    """The mean of one metric over several runs (seeds) tested on the same images, each
    under the same multiplicities: resampling the test images once for every seed pairs the
    seeds' differences, whose mean is then bootstrapped (:func:`paired_bootstrap`)."""

    def __init__(self, metrics: Sequence[WeightedMetric]) -> None:
        if not metrics:
            raise ValueError("SeedMean needs at least one metric")
        if len({(m.name, m.n_images) for m in metrics}) != 1:
            raise ValueError("SeedMean's metrics must be one metric on the same number of images, "
                             f"got {sorted({(m.name, m.n_images) for m in metrics})}")
        self.name, self.n_images, self._metrics = metrics[0].name, metrics[0].n_images, metrics

    def __call__(self, counts: Tensor) -> Tensor:
        return torch.stack([metric(counts) for metric in self._metrics]).mean(0)


def bootstrap_indices(n_images: int, n_resamples: int, seed: int = 0) -> Tensor:
    """``[n_resamples, n_images]`` image indices drawn uniformly with replacement (int64).

    Resample b is the test set ``images[indices[b]]``; the draw depends on ``seed`` only.
    """
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(n_images, (n_resamples, n_images), generator=generator)


def multiplicities(indices: Tensor, n_images: int) -> Tensor:
    """How many times each image occurs in each row of ``indices``: ``[B, n_images]`` int64."""
    counts = torch.zeros(len(indices), n_images, dtype=torch.int64)
    return counts.scatter_add_(1, indices, torch.ones(1, 1, dtype=torch.int64).expand_as(indices))


@dataclass(frozen=True)
class BootstrapResult:
    """``observed = metric(A) - metric(B)`` on the test set; ``[low, high]`` its percentile
    interval at ``confidence``; ``std`` the sample standard deviation (n - 1) of the
    resampled ``differences``."""

    observed: float
    low: float
    high: float
    std: float
    confidence: float
    differences: Tensor

    @property
    def interval(self) -> tuple[float, float]:
        return self.low, self.high


def paired_bootstrap(
    metric_a: WeightedMetric,
    metric_b: WeightedMetric,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    chunk_size: int = 100,
) -> BootstrapResult:
    """Paired bootstrap of ``metric_a - metric_b`` over the images both were evaluated on.

    Resample b draws the images ``bootstrap_indices(n_images, n_resamples, seed)[b]``, the
    same for both methods, which must therefore score the same images in the same order.
    The interval is the percentile interval: the ``(1 - confidence) / 2`` and
    ``(1 + confidence) / 2`` quantiles of the resampled differences, linearly interpolated
    (``torch.quantile``'s default). It is NaN if a resampled difference is (mAP of a
    resample without any positive). Resamples are evaluated ``chunk_size`` at a time, which
    bounds memory and leaves the result unchanged.
    """
    if metric_a.n_images != metric_b.n_images:
        raise ValueError(
            f"metric_a and metric_b must cover the same images, got {metric_a.n_images} and "
            f"{metric_b.n_images}"
        )
    if metric_a.name != metric_b.name:
        raise ValueError(
            f"metric_a and metric_b must be the same metric, got {metric_a.name!r} and "
            f"{metric_b.name!r}"
        )
    if n_resamples < 2:
        raise ValueError(f"n_resamples must be >= 2 for a spread, got {n_resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")

    n_images = metric_a.n_images
    indices = bootstrap_indices(n_images, n_resamples, seed)
    differences = []
    for chunk in indices.split(chunk_size):
        counts = multiplicities(chunk, n_images)
        differences.append(metric_a(counts) - metric_b(counts))
    differences = torch.cat(differences)
    ones = torch.ones(1, n_images, dtype=torch.int64)
    observed = (metric_a(ones) - metric_b(ones)).item()
    alpha = 1 - confidence
    low, high = torch.quantile(differences, torch.tensor([alpha / 2, 1 - alpha / 2],
                                                         dtype=differences.dtype)).tolist()
    return BootstrapResult(observed, low, high, differences.std().item(), confidence,
                           differences)


def verdict(interval: tuple[float, float], claimed_direction: int = +1) -> str:
    """Whether an interval of ``A - B`` confirms a claim that A beats B (``+1``) or loses (``-1``).

    ``"reproduced"`` when the whole interval is strictly on the claimed side of 0,
    ``"not reproduced"`` when it is strictly on the other side, ``"inconclusive"`` when it
    contains 0. The interval is closed: an endpoint exactly at 0 counts as containing 0, so
    ``(0.0, 0.2)`` is inconclusive.
    """
    if claimed_direction not in (1, -1):
        raise ValueError(f"claimed_direction must be +1 or -1, got {claimed_direction}")
    low, high = interval
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise ValueError(f"interval must be finite (low, high) with low <= high, got {interval}")
    low, high = sorted((claimed_direction * low, claimed_direction * high))
    if low > 0:
        return "reproduced"
    if high < 0:
        return "not reproduced"
    return "inconclusive"


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n - 1) of ``values``; the std is None for one."""
    if len(values) == 0:
        raise ValueError("values must not be empty")
    if len(values) == 1:
        return float(values[0]), None
    return statistics.fmean(values), statistics.stdev(values)


def format_mean_std(values: Sequence[float], digits: int = 3) -> str:
    """``"0.412 ± 0.013 (n=3)"``, or ``"0.412 (n=1)"`` for one value."""
    if digits < 0:
        raise ValueError(f"digits must be >= 0, got {digits}")
    mean, std = mean_std(values)
    if std is None:
        return f"{mean:.{digits}f} (n=1)"
    return f"{mean:.{digits}f} ± {std:.{digits}f} (n={len(values)})"


# -- per-image test outputs ----------------------------------------------------------------

TEST_OUTPUTS = "test_outputs.npz"
IMAGES_KEY = "images"  # a digest of the test images' names in order: the pairing check


def image_digest(image_paths: Sequence) -> str:
    """SHA-256 of the test images' file names in order: two runs with the same digest scored
    the same images in the same order, so their outputs can be resampled together."""
    return hashlib.sha256("\n".join(Path(p).name for p in image_paths).encode()).hexdigest()


def multilabel_outputs(scores: Tensor, targets: Tensor,
                       decisions: dict[str, tuple[Tensor, float | Tensor]],
                       strict: bool = False) -> dict[str, np.ndarray]:
    """What :func:`weighted_metric` needs of a multi-label test split: ``scores`` (float32,
    N x C: mAP), ``targets`` (int8, 1 / 0 / -1 unknown) and, per qualifier ``q`` of
    ``decisions`` = ``{q: (values, thresholds)}``, the labels predicted at ``q``: ``values >=
    thresholds`` (``>`` with ``strict``), bit-packed per image as ``predicted@q``. They are
    taken at full precision, the thresholds cast to the values' dtype as
    :func:`annotlib.metrics.annotation_metrics` casts them, so CP .. N+@q are exact.

    The scores stay float32, so mAP is exact too: float16 makes sigmoid scores above
    1 - 2**-12 tie at 1.0, which moved the mAP of a simulated COCO-sized test set by 0.009.
    A COCO-sized test set (40,504 images x 80 labels, two qualifiers) takes 12.5 MB,
    nearly all of it scores: the targets (3.2 MB raw) and each qualifier's decisions (0.4 MB
    raw) compress to almost nothing.
    """
    _check_scores_targets(scores, targets)
    arrays = {"scores": scores.detach().cpu().to(torch.float32).numpy(),
              "targets": targets.detach().cpu().to(torch.int8).numpy()}
    for qualifier, (values, thresholds) in decisions.items():
        _check_scores_targets(values, targets)
        values = values.detach().cpu()
        thresholds = torch.as_tensor(thresholds, dtype=values.dtype).cpu()
        predicted = values > thresholds if strict else values >= thresholds
        arrays[f"predicted@{qualifier}"] = np.packbits(predicted.numpy(), axis=1)
    return arrays


def image_values(**values: Tensor) -> dict[str, np.ndarray]:
    """Per metric name, its per-image values (float32 N, NaN where an image does not count)
    for :class:`ImageMean`: at most 4 bytes per image and metric (0.16 MB for 40,504 images)."""
    return {name: v.detach().cpu().to(torch.float32).numpy() for name, v in values.items()}


def write_test_outputs(path: str | Path, arrays: dict[str, np.ndarray], image_paths: Sequence) -> None:
    """``arrays`` (from :func:`multilabel_outputs`, :func:`image_values`) and the test images'
    digest, atomically, as a compressed ``.npz``; nothing to keep removes an older file."""
    path = Path(path)
    if not arrays:
        path.unlink(missing_ok=True)
        return
    atomic_save_npz(path, {IMAGES_KEY: np.array(image_digest(image_paths)), **arrays})


def read_test_outputs(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a ``test_outputs.npz``; a damaged file is a :class:`CorruptFileError`
    naming it."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (zipfile.BadZipFile, ValueError, EOFError, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise CorruptFileError(f"{path} cannot be read ({type(e).__name__}: {e}); delete it and "
                               "metrics.json beside it to evaluate that run again") from e
    if IMAGES_KEY not in arrays:
        raise CorruptFileError(f"{path}: no '{IMAGES_KEY}' entry (not a test_outputs file)")
    return arrays


def weighted_metric(outputs: dict[str, np.ndarray], column: str) -> WeightedMetric | None:
    """The weighted metric of a results column (``mAP``, ``CF1@tuned``, ``accuracy``) from a
    run's test outputs, or None where they do not keep what it needs. Per-image values
    named as the column come first (P2's retrieval mAP is a mean over queries), then
    labels' mAP from scores, then the annotation metrics from ``predicted@<qualifier>``."""
    if column in outputs and outputs[column].ndim == 1:
        return ImageMean(torch.from_numpy(outputs[column]), column)
    if "targets" not in outputs:
        return None
    targets = torch.from_numpy(outputs["targets"]).long()
    if column == "mAP" and "scores" in outputs:
        return MeanAveragePrecision(torch.from_numpy(outputs["scores"]), targets)
    name, _, qualifier = column.partition("@")
    packed = outputs.get(f"predicted@{qualifier}")
    if name not in ANNOTATION_METRICS or packed is None:
        return None
    decisions = np.unpackbits(packed, axis=1, count=targets.shape[1]).astype(np.float32)
    return AnnotationMetric(torch.from_numpy(decisions), targets, 0.5, name)
