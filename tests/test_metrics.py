"""annotlib.metrics against scikit-learn, the independent reference."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    matthews_corrcoef,
    precision_score,
    recall_score,
)

from annotlib.metrics import (
    annotation_metrics,
    average_precision_per_class,
    default_threshold_grid,
    mean_average_precision,
    per_class_f1,
    per_class_precision,
    per_class_recall,
    tune_thresholds,
)

GRID = [round(0.05 * k, 2) for k in range(1, 15)]
SEEDS = [0, 1, 2]


def make_case(seed: int, n: int = 300, c: int = 40, quantise: bool = False,
              dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Informative scores and long-tailed targets, with the edge cases every test needs.

    Label 0 has no positive, label 1 only positives, labels 2-4 one positive each; label 5
    is never predicted at 0.5, label 6 always; label 7 has scores exactly 0.5; labels 8-15
    have scores rounded to 1 decimal (all labels when ``quantise``), so that scores and MCC
    values tie.
    """
    g = torch.Generator().manual_seed(seed)
    rate = torch.logspace(np.log10(0.4), np.log10(0.01), c)
    targets = (torch.rand(n, c, generator=g) < rate).long()
    targets[:, 0] = 0
    targets[:, 1] = 1
    targets[:, 2:5] = 0
    targets[torch.randint(n, (3,), generator=g), torch.arange(2, 5)] = 1
    scores = (0.65 * torch.rand(n, c, generator=g, dtype=torch.float64)
              + 0.35 * targets * torch.rand(n, c, generator=g, dtype=torch.float64))
    scores[:, 5] *= 0.4
    scores[:, 6] = 0.5 + 0.5 * scores[:, 6]
    scores[::3, 7] = 0.5
    scores[:, 8:16] = (scores[:, 8:16] * 10).round() / 10
    if quantise:
        scores = (scores * 10).round() / 10
    return scores.to(dtype), targets


def sklearn_annotation_metrics(scores, targets, thresholds, ignore_empty=False):
    y = targets.numpy()
    pred = (scores.numpy() >= np.asarray(thresholds, dtype=scores.numpy().dtype)).astype(int)
    labels = np.flatnonzero(y.sum(0) > 0) if ignore_empty else None
    kw = {"zero_division": 0}
    cp = precision_score(y, pred, average="macro", labels=labels, **kw)
    cr = recall_score(y, pred, average="macro", labels=labels, **kw)
    return {
        "CP": cp,
        "CR": cr,
        "CF1": 2 * cp * cr / (cp + cr) if cp + cr else 0.0,
        "OP": precision_score(y, pred, average="micro", **kw),
        "OR": recall_score(y, pred, average="micro", **kw),
        "OF1": f1_score(y, pred, average="micro", **kw),
        "N+": int(((pred == 1) & (y == 1)).any(0).sum()),
    }


def assert_metrics_equal(ours: dict, ref: dict) -> None:
    assert list(ours) == ["CP", "CR", "CF1", "OP", "OR", "OF1", "N+"]
    assert ours["N+"] == ref["N+"]
    for key in ["CP", "CR", "CF1", "OP", "OR", "OF1"]:
        assert ours[key] == pytest.approx(ref[key], rel=1e-12, abs=1e-15), key


# --- annotation_metrics and the per-class building blocks -------------------------------

@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ignore_empty", [False, True])
def test_annotation_metrics_match_sklearn_at_one_threshold(seed, ignore_empty):
    scores, targets = make_case(seed)
    ours = annotation_metrics(scores, targets, 0.5, ignore_empty=ignore_empty)
    assert_metrics_equal(ours, sklearn_annotation_metrics(scores, targets, 0.5, ignore_empty))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_annotation_metrics_match_sklearn_with_per_label_thresholds(seed, dtype):
    scores, targets = make_case(seed, dtype=dtype)
    g = torch.Generator().manual_seed(seed + 100)
    thresholds = torch.tensor(GRID, dtype=torch.float64)[torch.randint(14, (40,), generator=g)]
    ours = annotation_metrics(scores, targets, thresholds)
    assert_metrics_equal(ours, sklearn_annotation_metrics(scores, targets, thresholds.numpy()))


@pytest.mark.parametrize("seed", SEEDS)
def test_per_class_metrics_match_sklearn(seed):
    scores, targets = make_case(seed)
    y, pred = targets.numpy(), (scores.numpy() >= 0.5).astype(int)
    for ours, ref in [
        (per_class_precision, precision_score),
        (per_class_recall, recall_score),
        (per_class_f1, f1_score),
    ]:
        expected = torch.from_numpy(ref(y, pred, average=None, zero_division=0))
        torch.testing.assert_close(ours(scores, targets, 0.5), expected, rtol=1e-15, atol=0)


def test_edge_labels_of_the_test_case_behave():
    scores, targets = make_case(0)
    precision = per_class_precision(scores, targets)
    recall = per_class_recall(scores, targets)
    assert recall[0] == 0 and precision[0] == 0  # no positive
    assert precision[5] == 0  # never predicted
    assert recall[6] == 1  # everything predicted


def test_all_zero_targets():
    scores = torch.rand(50, 7, generator=torch.Generator().manual_seed(0))
    targets = torch.zeros(50, 7, dtype=torch.long)
    expected = sklearn_annotation_metrics(scores, targets, 0.5)
    assert_metrics_equal(annotation_metrics(scores, targets), expected)
    assert all(v == 0 for v in expected.values())
    assert all(v == 0 for v in annotation_metrics(scores, targets, ignore_empty=True).values())


def test_a_score_equal_to_the_threshold_is_predicted():
    scores = torch.tensor([[0.3, 0.7]], dtype=torch.float32)
    targets = torch.tensor([[1, 1]])
    # float64 thresholds are compared in float32, so that 0.3 meets 0.3
    thresholds = torch.tensor([0.3, 0.7], dtype=torch.float64)
    assert annotation_metrics(scores, targets, thresholds)["N+"] == 2
    assert annotation_metrics(scores, targets, 0.3)["N+"] == 2


def test_cf1_is_the_harmonic_mean_of_cp_and_cr_not_the_mean_of_f1():
    # Label 0: 1 of 4 positives found, no false positive: P = 1, R = 1/4, F1 = 0.4.
    # Label 1: its 1 positive found among 4 predictions:  P = 1/4, R = 1, F1 = 0.4.
    scores = torch.tensor([[0.9, 0.9], [0.1, 0.9], [0.1, 0.9], [0.1, 0.9]])
    targets = torch.tensor([[1, 1], [1, 0], [1, 0], [1, 0]])
    m = annotation_metrics(scores, targets)
    assert [m["CP"], m["CR"], m["CF1"]] == pytest.approx([0.625, 0.625, 0.625])
    assert per_class_f1(scores, targets).mean().item() == pytest.approx(0.4)
    assert [m["OP"], m["OR"], m["OF1"]] == pytest.approx([0.4, 0.4, 0.4])
    assert m["N+"] == 2


def test_ignore_empty_changes_only_the_per_class_averages():
    scores, targets = make_case(3)
    every, nonempty = annotation_metrics(scores, targets), annotation_metrics(
        scores, targets, ignore_empty=True)
    assert nonempty["CR"] > every["CR"]
    assert {k: every[k] for k in ["OP", "OR", "OF1", "N+"]} == {
        k: nonempty[k] for k in ["OP", "OR", "OF1", "N+"]}


def test_unknown_targets_are_neither_positive_nor_negative():
    # One label: positive 0.9, negative 0.8, negative 0.2, unknown 0.95, unknown 0.1.
    scores = torch.tensor([[0.9], [0.8], [0.2], [0.95], [0.1]])
    targets = torch.tensor([[1], [0], [0], [-1], [-1]])
    m = annotation_metrics(scores, targets)  # predicted: 0.9, 0.8 (the unknown 0.95 is not counted)
    assert [m["CP"], m["CR"], m["OP"], m["OR"], m["N+"]] == [0.5, 1.0, 0.5, 1.0, 1]
    assert per_class_precision(scores, targets).item() == 0.5
    # AP: the unknown 0.95 above the positive is not a false positive.
    assert mean_average_precision(scores, targets) == 1.0
    # Counted as negatives, they would be.
    assert annotation_metrics(scores, targets.clamp(min=0))["CP"] == pytest.approx(1 / 3)
    assert mean_average_precision(scores, targets.clamp(min=0)) == 0.5


def test_bad_thresholds_raise():
    scores, targets = make_case(0)
    with pytest.raises(ValueError, match="thresholds"):
        annotation_metrics(scores, targets, torch.full((39,), 0.5))
    with pytest.raises(ValueError, match="thresholds"):
        annotation_metrics(scores, targets, torch.full((2, 40), 0.5))


# --- average precision -------------------------------------------------------------------

def sklearn_ap_per_class(scores, targets):
    y, s = targets.numpy(), scores.numpy()
    return np.array([
        average_precision_score(y[:, c], s[:, c]) if y[:, c].any() else np.nan
        for c in range(y.shape[1])
    ])


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("quantise", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_average_precision_matches_sklearn(seed, quantise, dtype):
    scores, targets = make_case(seed, quantise=quantise, dtype=dtype)
    expected = sklearn_ap_per_class(scores, targets)
    ours = average_precision_per_class(scores, targets)
    assert ours.dtype == torch.float64
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-12, atol=1e-15)
    assert mean_average_precision(scores, targets) == pytest.approx(
        np.nanmean(expected), rel=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about label 0, which has no positive
        macro = average_precision_score(targets.numpy(), scores.numpy(), average="macro")
    assert mean_average_precision(scores, targets, ignore_empty=False) == pytest.approx(
        macro, rel=1e-12)


def test_average_precision_counts_tied_scores_as_one_step():
    scores = torch.tensor([[0.5], [0.5], [0.2]])
    targets = torch.tensor([[1], [0], [1]])
    # Threshold 0.5: P = 1/2, R = 1/2. Threshold 0.2: P = 2/3, R = 1.
    expected = 0.5 * 0.5 + 0.5 * 2 / 3
    assert average_precision_score([1, 0, 1], [0.5, 0.5, 0.2]) == pytest.approx(expected)
    for order in ([0, 1, 2], [1, 0, 2]):
        assert mean_average_precision(scores[order], targets[order]) == pytest.approx(expected)


def test_average_precision_of_labels_without_positives():
    scores = torch.rand(20, 3, generator=torch.Generator().manual_seed(0))
    targets = torch.zeros(20, 3, dtype=torch.long)
    assert average_precision_per_class(scores, targets).isnan().all()
    assert np.isnan(mean_average_precision(scores, targets))
    assert mean_average_precision(scores, targets, ignore_empty=False) == 0.0


def test_average_precision_rejects_nan_scores():
    scores, targets = make_case(0)
    scores[3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        mean_average_precision(scores, targets)


# --- tune_thresholds ---------------------------------------------------------------------

def sklearn_tuned_thresholds(scores, targets, metric, grid=GRID):
    """The reference loop: per label, up the grid, keep the first maximum."""
    s, y = scores.numpy(), targets.numpy()
    chosen, nontrivial_ties = [], 0
    for c in range(s.shape[1]):
        values = [metric(y[:, c], s[:, c] >= s.dtype.type(t)) for t in grid]
        best = max(values)
        chosen.append(grid[values.index(best)])
        nontrivial_ties += best > 0 and values.count(best) > 1
    return torch.tensor(chosen, dtype=torch.float64), nontrivial_ties


def sklearn_f1(y, pred):
    return f1_score(y, pred, zero_division=0)


# sklearn warns when a label's targets and predictions are all 0, where MCC is 0.
@pytest.mark.filterwarnings("ignore:A single label was found")
@pytest.mark.parametrize("seed, criterion, metric", [
    *[(seed, "mcc", matthews_corrcoef) for seed in SEEDS],
    (0, "f1", sklearn_f1),
])
def test_tune_thresholds_equals_the_sklearn_loop(seed, criterion, metric):
    scores, targets = make_case(seed)
    expected, nontrivial_ties = sklearn_tuned_thresholds(scores, targets, metric)
    assert nontrivial_ties > 0, "the data must tie at a maximum, or the tie rule goes untested"
    assert torch.equal(tune_thresholds(scores, targets, criterion=criterion), expected)


@pytest.mark.filterwarnings("ignore:A single label was found")
def test_tune_thresholds_with_float64_scores_and_an_unsorted_grid():
    scores, targets = make_case(5, quantise=True, dtype=torch.float64)
    grid = [0.6, 0.2, 0.4, 0.3, 0.1]
    expected, _ = sklearn_tuned_thresholds(scores, targets, matthews_corrcoef, sorted(grid))
    assert torch.equal(tune_thresholds(scores, targets, grid), expected)


def test_tune_thresholds_of_constant_labels_is_the_smallest_threshold():
    scores, targets = make_case(0)
    chosen = tune_thresholds(scores, targets)
    # No positive / only positives: MCC is 0 at every threshold, so the first one wins.
    assert chosen[0] == chosen[1] == 0.05


def test_default_grid_is_exact():
    assert default_threshold_grid().tolist() == [k / 20 for k in range(1, 15)]


def test_tune_thresholds_rejects_bad_arguments():
    scores, targets = make_case(0)
    with pytest.raises(ValueError, match="criterion"):
        tune_thresholds(scores, targets, criterion="accuracy")
    with pytest.raises(ValueError, match="grid"):
        tune_thresholds(scores, targets, grid=[])
    with pytest.raises(ValueError, match="grid"):
        tune_thresholds(scores, targets, grid=[[0.1, 0.2]])


# --- partial labels: -1 is unknown, left out of every count and ranking ---------------------

def make_partial_case(seed: int, fraction: float = 0.3, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`make_case` with a ``fraction`` of the entries unknown (-1), and more edges:
    label 9 has every positive unknown, label 10 every entry unknown, label 11 every
    negative unknown. Labels 8-15 have quantised scores, so unknown entries tie with known
    ones."""
    scores, targets = make_case(seed, **kw)
    g = torch.Generator().manual_seed(seed + 1000)
    targets = torch.where(torch.rand(targets.shape, generator=g) < fraction, -1, targets)
    targets[:, 9] = torch.where(targets[:, 9] == 1, -1, targets[:, 9])
    targets[:, 10] = -1
    targets[:, 11] = torch.where(targets[:, 11] == 0, -1, targets[:, 11])
    return scores, targets


def known_columns(scores, targets):
    """Per label, the (targets, scores) numpy columns of its known rows."""
    y, s = targets.numpy(), scores.numpy()
    return [(y[y[:, c] >= 0, c], s[y[:, c] >= 0, c]) for c in range(y.shape[1])]


def sklearn_annotation_metrics_on_known(scores, targets, thresholds, ignore_empty=False):
    """scikit-learn per label on its known rows; micro averages over all known entries."""
    thresholds = np.broadcast_to(np.asarray(thresholds, dtype=scores.numpy().dtype),
                                 (scores.shape[1],))
    kw = {"zero_division": 0}
    columns = [(y, (s >= t).astype(int))
               for (y, s), t in zip(known_columns(scores, targets), thresholds)]
    keep = [c for c, (y, _) in enumerate(columns) if y.any() or not ignore_empty]
    precision = [precision_score(*columns[c], **kw) if len(columns[c][0]) else 0.0 for c in keep]
    recall = [recall_score(*columns[c], **kw) if len(columns[c][0]) else 0.0 for c in keep]
    cp = float(np.mean(precision)) if keep else 0.0
    cr = float(np.mean(recall)) if keep else 0.0
    y_all = np.concatenate([y for y, _ in columns])
    pred_all = np.concatenate([p for _, p in columns])
    return {
        "CP": cp,
        "CR": cr,
        "CF1": 2 * cp * cr / (cp + cr) if cp + cr else 0.0,
        "OP": precision_score(y_all, pred_all, **kw),
        "OR": recall_score(y_all, pred_all, **kw),
        "OF1": f1_score(y_all, pred_all, **kw),
        "N+": sum(bool(((p == 1) & (y == 1)).any()) for y, p in columns),
    }


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ignore_empty", [False, True])
@pytest.mark.parametrize("per_label", [False, True])
def test_annotation_metrics_with_unknown_targets_match_sklearn_on_known_entries(
        seed, ignore_empty, per_label):
    scores, targets = make_partial_case(seed)
    assert 0.25 < (targets < 0).double().mean() < 0.35
    thresholds = 0.5
    if per_label:
        g = torch.Generator().manual_seed(seed + 100)
        thresholds = torch.tensor(GRID, dtype=torch.float64)[torch.randint(14, (40,), generator=g)]
    ours = annotation_metrics(scores, targets, thresholds, ignore_empty=ignore_empty)
    expected = sklearn_annotation_metrics_on_known(
        scores, targets, np.asarray(thresholds), ignore_empty)
    assert_metrics_equal(ours, expected)


@pytest.mark.parametrize("seed", SEEDS)
def test_per_class_metrics_with_unknown_targets_match_sklearn_on_known_rows(seed):
    scores, targets = make_partial_case(seed)
    columns = known_columns(scores, targets)
    for ours, ref in [
        (per_class_precision, precision_score),
        (per_class_recall, recall_score),
        (per_class_f1, f1_score),
    ]:
        expected = torch.tensor([ref(y, (s >= 0.5).astype(int), zero_division=0) if len(y) else 0.0
                                 for y, s in columns], dtype=torch.float64)
        torch.testing.assert_close(ours(scores, targets, 0.5), expected, rtol=1e-15, atol=0)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("quantise", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_average_precision_with_unknown_targets_matches_sklearn_on_known_rows(
        seed, quantise, dtype):
    scores, targets = make_partial_case(seed, quantise=quantise, dtype=dtype)
    expected = np.array([average_precision_score(y, s) if y.any() else np.nan
                         for y, s in known_columns(scores, targets)])
    assert np.isnan(expected[[0, 9, 10]]).all() and not np.isnan(expected[11])
    ours = average_precision_per_class(scores, targets)
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-12, atol=1e-15)
    assert mean_average_precision(scores, targets) == pytest.approx(np.nanmean(expected), rel=1e-12)
    assert mean_average_precision(scores, targets, ignore_empty=False) == pytest.approx(
        np.nan_to_num(expected).mean(), rel=1e-12)


def test_average_precision_with_infinite_scores_and_unknown_targets():
    """Unknown entries are ranked at -inf inside; a positive scored -inf must still not count
    them at or above itself, nor miss a real -inf negative."""
    inf = float("inf")
    scores = torch.tensor([-inf, -inf, 0.3, -inf, -inf, inf, 0.3])[:, None]
    targets = torch.tensor([1, -1, 0, 0, -1, -1, 1])[:, None]
    # Known rows: 0.3 pos, 0.3 neg (tie: P = 1/2 at R = 1/2), then -inf pos, -inf neg (P = 2/4).
    want = 0.5 * 0.5 + 0.5 * 2 / 4
    finite = torch.where(scores.isinf(), scores.sign() * 10, scores)  # sklearn rejects inf
    y, s = (targets >= 0).squeeze(1), finite.squeeze(1)
    assert average_precision_score(targets[y, 0].numpy(), s[y].numpy()) == pytest.approx(want)
    for order in ([0, 1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1, 0], [1, 4, 3, 0, 6, 2, 5]):
        assert average_precision_per_class(scores[order], targets[order]).item() == pytest.approx(
            want, rel=1e-15)


@pytest.mark.filterwarnings("ignore:A single label was found")
@pytest.mark.parametrize("seed, criterion, metric", [
    *[(seed, "mcc", matthews_corrcoef) for seed in SEEDS],
    (0, "f1", sklearn_f1),
])
def test_tune_thresholds_with_unknown_targets_equals_the_sklearn_loop_on_known_rows(
        seed, criterion, metric):
    scores, targets = make_partial_case(seed)
    expected = []
    for y, s in known_columns(scores, targets):
        values = [metric(y, s >= s.dtype.type(t)) if len(y) else 0.0 for t in GRID]
        expected.append(GRID[values.index(max(values))])
    assert torch.equal(tune_thresholds(scores, targets, criterion=criterion),
                       torch.tensor(expected, dtype=torch.float64))


@pytest.mark.filterwarnings("ignore:A single label was found")
def test_images_with_every_label_unknown_change_no_metric_by_a_bit():
    """Appending images whose labels are all unknown, with scores that tie with and beat the
    real ones, leaves every metric bit for bit as on the fully labelled targets alone."""
    scores, targets = make_case(6)
    g = torch.Generator().manual_seed(6)
    extra = torch.cat([scores[:50], torch.rand(50, 40, generator=g),
                       torch.full((5, 40), -torch.inf)])
    more_scores = torch.cat([scores, extra])
    more_targets = torch.cat([targets, -torch.ones(len(extra), 40, dtype=targets.dtype)])
    thresholds = tune_thresholds(scores, targets)
    assert torch.equal(tune_thresholds(more_scores, more_targets), thresholds)
    assert annotation_metrics(more_scores, more_targets, thresholds) == annotation_metrics(
        scores, targets, thresholds)
    for function in (per_class_precision, per_class_recall, per_class_f1):
        assert torch.equal(function(more_scores, more_targets), function(scores, targets))
    torch.testing.assert_close(average_precision_per_class(more_scores, more_targets),
                               average_precision_per_class(scores, targets),
                               rtol=0, atol=0, equal_nan=True)


# --- input validation and devices --------------------------------------------------------

ALL_FUNCTIONS = [
    annotation_metrics,
    per_class_precision,
    per_class_recall,
    per_class_f1,
    average_precision_per_class,
    mean_average_precision,
    tune_thresholds,
]


@pytest.mark.parametrize("function", ALL_FUNCTIONS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("scores, targets", [
    (torch.rand(10), torch.ones(10)),
    (torch.rand(2, 5, 3), torch.ones(2, 5, 3)),
    (torch.rand(10, 4), torch.ones(10, 5)),
    (torch.rand(10, 4), torch.ones(4, 10)),
    (torch.ones(10, 4, dtype=torch.long), torch.ones(10, 4)),
], ids=["1-D", "3-D", "labels differ", "transposed", "integer scores"])
def test_bad_inputs_raise_value_error(function, scores, targets):
    with pytest.raises(ValueError):
        function(scores, targets)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("case", [make_case, make_partial_case])
def test_cuda_matches_cpu(case):
    scores, targets = case(0, n=2000, c=100)
    gpu_scores, gpu_targets = scores.cuda(), targets.cuda()
    assert annotation_metrics(gpu_scores, gpu_targets) == pytest.approx(
        annotation_metrics(scores, targets), rel=1e-12)
    thresholds = tune_thresholds(gpu_scores, gpu_targets)
    assert thresholds.device.type == "cuda"
    assert torch.equal(thresholds.cpu(), tune_thresholds(scores, targets))
    ap = average_precision_per_class(gpu_scores, gpu_targets)
    assert ap.device.type == "cuda"
    torch.testing.assert_close(ap.cpu(), average_precision_per_class(scores, targets),
                               equal_nan=True, rtol=1e-12, atol=1e-15)
