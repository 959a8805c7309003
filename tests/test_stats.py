"""annotlib.stats against slow references: materialised resamples, scikit-learn, hand values."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from annotlib.metrics import annotation_metrics, mean_average_precision
from annotlib.stats import (
    ANNOTATION_METRICS,
    Accuracy,
    AnnotationMetric,
    ImageMean,
    MeanAveragePrecision,
    SeedMean,
    bootstrap_indices,
    format_mean_std,
    mean_std,
    multiplicities,
    paired_bootstrap,
    verdict,
)

N_IMAGES, N_LABELS = 60, 12


def make_case(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scores of two methods and shared targets (1 / 0 / -1 unknown) with the edge cases.

    Label 0 has no positive, label 1 only positives, label 2 one positive, label 3 is
    unknown everywhere; labels 4-7 have scores rounded to 1 decimal, so that positives tie
    with each other and with negatives; label 8 has -inf and +inf scores. The other labels
    are positive with decreasing frequency, and about 15% of all entries are unknown.
    """
    g = torch.Generator().manual_seed(seed)
    rate = torch.linspace(0.5, 0.1, N_LABELS)
    targets = (torch.rand(N_IMAGES, N_LABELS, generator=g) < rate).long()
    targets[torch.rand(N_IMAGES, N_LABELS, generator=g) < 0.15] = -1
    targets[:, 0] = 0
    targets[:, 1] = 1
    targets[:, 2] = 0
    targets[5, 2] = 1
    targets[:, 3] = -1
    methods = []
    for strength in (0.4, 0.3):
        scores = 0.6 * torch.rand(N_IMAGES, N_LABELS, generator=g) + strength * (targets == 1) * (
            torch.rand(N_IMAGES, N_LABELS, generator=g)
        )
        scores[:, 4:8] = (scores[:, 4:8] * 10).round() / 10
        scores[:3, 8], scores[3:6, 8] = -torch.inf, torch.inf
        methods.append(scores)
    thresholds = torch.linspace(0.3, 0.6, N_LABELS)
    return methods[0], methods[1], targets, thresholds


def unweighted(name: str, scores: torch.Tensor, targets: torch.Tensor,
               thresholds: torch.Tensor) -> float:
    """The existing unweighted metric ``name`` of one (materialised) test set."""
    if name == "mAP":
        return mean_average_precision(scores, targets)
    if name == "mAP0":
        return mean_average_precision(scores, targets, ignore_empty=False)
    return float(annotation_metrics(scores, targets, thresholds)[name])


def weighted(name: str, scores: torch.Tensor, targets: torch.Tensor, thresholds: torch.Tensor):
    if name == "mAP":
        return MeanAveragePrecision(scores, targets)
    if name == "mAP0":
        return MeanAveragePrecision(scores, targets, ignore_empty=False)
    return AnnotationMetric(scores, targets, thresholds, name)


ALL_METRICS = ["mAP", "mAP0", *ANNOTATION_METRICS]


def slow_paired_bootstrap(name, scores_a, scores_b, targets, thresholds, n_resamples, seed):
    """Differences on each materialised resample (a Python loop), the percentile interval
    by numpy, and the std with n - 1."""
    indices = bootstrap_indices(len(targets), n_resamples, seed)
    differences = np.array([
        unweighted(name, scores_a[i], targets[i], thresholds)
        - unweighted(name, scores_b[i], targets[i], thresholds)
        for i in indices
    ])
    low, high = np.percentile(differences, [2.5, 97.5])
    return differences, low, high, differences.std(ddof=1)


# -- weighted metrics --------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", ALL_METRICS)
def test_unit_weights_equal_the_unweighted_metric_exactly(name, seed):
    scores, _, targets, thresholds = make_case(seed)
    ones = torch.ones(1, N_IMAGES, dtype=torch.int64)
    value = weighted(name, scores, targets, thresholds)(ones)
    assert value.shape == (1,) and value.dtype == torch.float64
    assert value.item() == unweighted(name, scores, targets, thresholds)


@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_unit_weights_exact_with_one_float_threshold(threshold):
    scores, _, targets, _ = make_case(2)
    ones = torch.ones(1, N_IMAGES, dtype=torch.int64)
    reference = annotation_metrics(scores, targets, threshold)
    for name in ANNOTATION_METRICS:
        assert AnnotationMetric(scores, targets, threshold, name)(ones).item() == reference[name]


@pytest.mark.parametrize("name", ALL_METRICS)
def test_weighted_metric_equals_the_metric_of_the_materialised_resample(name):
    scores, _, targets, thresholds = make_case(3)
    indices = bootstrap_indices(N_IMAGES, 40, seed=3)
    values = weighted(name, scores, targets, thresholds)(multiplicities(indices, N_IMAGES))
    reference = [unweighted(name, scores[i], targets[i], thresholds) for i in indices]
    np.testing.assert_allclose(values.numpy(), reference, rtol=0, atol=1e-12)


def test_weighted_ap_matches_sklearn_sample_weight():
    """Per label, AP with multiplicities as scikit-learn's ``sample_weight``, over the known
    images; mAP is the mean over labels with a weighted positive."""
    scores, _, targets, _ = make_case(4)
    counts = torch.randint(0, 4, (3, N_IMAGES), generator=torch.Generator().manual_seed(4))
    counts[0, targets[:, 2] == 1] = 0  # label 2 loses its only positive in resample 0
    values = MeanAveragePrecision(scores, targets)(counts)
    for b in range(len(counts)):
        aps = []
        for c in range(N_LABELS):
            keep = (targets[:, c] >= 0) & (counts[b] > 0)
            y, w = targets[keep, c].numpy() == 1, counts[b, keep].numpy()
            if y.any():
                # sklearn rejects infinite scores: an order-preserving finite stand-in.
                s = scores[keep, c].double().clamp(-10, 10).numpy()
                aps.append(average_precision_score(y, s, sample_weight=w))
        assert values[b].item() == pytest.approx(np.mean(aps), abs=1e-12)


def test_map_of_a_resample_without_any_positive_is_nan():
    scores = torch.rand(4, 3, generator=torch.Generator().manual_seed(5))
    targets = torch.tensor([[1, 0, -1], [0, 1, 0], [0, 0, 0], [0, -1, 1]])
    counts = torch.tensor([[0, 0, 3, 0], [2, 0, 1, 1]])  # image 2 alone has no positive
    assert math.isnan(MeanAveragePrecision(scores, targets)(counts)[0].item())
    assert MeanAveragePrecision(scores, targets, ignore_empty=False)(counts)[0].item() == 0.0
    kept = [0, 0, 2, 3]
    assert MeanAveragePrecision(scores, targets)(counts)[1].item() == pytest.approx(
        mean_average_precision(scores[kept], targets[kept]), abs=1e-15
    )


def test_weighted_accuracy_against_a_loop():
    g = torch.Generator().manual_seed(6)
    labels = torch.randint(0, 5, (N_IMAGES,), generator=g)
    predicted = torch.where(torch.rand(N_IMAGES, generator=g) < 0.7, labels, 0)
    metric = Accuracy(predicted, labels)
    ones = torch.ones(1, N_IMAGES, dtype=torch.int64)
    assert metric(ones).item() == (predicted == labels).double().mean().item()
    indices = bootstrap_indices(N_IMAGES, 30, seed=6)
    values = metric(multiplicities(indices, N_IMAGES))
    reference = [sum(int(predicted[i] == labels[i]) for i in row) / N_IMAGES for row in indices]
    np.testing.assert_allclose(values.numpy(), reference, rtol=0, atol=1e-15)


def test_image_mean_against_a_loop_leaving_out_undefined_images():
    values = torch.rand(N_IMAGES, generator=torch.Generator().manual_seed(14))
    values[::7] = torch.nan  # e.g. queries without a relevant item
    metric = ImageMean(values, "mAP")
    defined = values[~values.isnan()].double()
    assert metric(torch.ones(1, N_IMAGES, dtype=torch.int64)).item() == pytest.approx(defined.mean().item(),
                                                                                      abs=1e-15)
    indices = bootstrap_indices(N_IMAGES, 30, seed=14)
    reference = [np.nanmean(values[i].double().numpy()) for i in indices]
    np.testing.assert_allclose(metric(multiplicities(indices, N_IMAGES)).numpy(), reference, rtol=0, atol=1e-12)
    only_undefined = torch.zeros(1, N_IMAGES, dtype=torch.int64)
    only_undefined[0, 0] = 2
    assert math.isnan(metric(only_undefined).item())
    with pytest.raises(ValueError, match="mAP: per-image values must be a float vector"):
        ImageMean(values[:, None], "mAP")


def test_seed_mean_bootstrap_equals_the_slow_loop_over_seed_averaged_differences():
    """Two seeds per side on the same images: each resample draws the same images for both
    seeds, and the interval is of the mean over seeds of the differences."""
    scores_a, scores_b, targets, thresholds = make_case(15)
    g = torch.Generator().manual_seed(15)
    seeds = [(scores_a, scores_b), (scores_a + 0.2 * torch.rand(scores_a.shape, generator=g),
                                    scores_b + 0.2 * torch.rand(scores_b.shape, generator=g))]
    sides = [SeedMean([weighted("CF1", pair[k], targets, thresholds) for pair in seeds]) for k in (0, 1)]
    result = paired_bootstrap(*sides, n_resamples=50, seed=15)
    differences = [np.mean([unweighted("CF1", a[i], targets[i], thresholds)
                            - unweighted("CF1", b[i], targets[i], thresholds) for a, b in seeds])
                   for i in bootstrap_indices(N_IMAGES, 50, seed=15)]
    np.testing.assert_allclose(result.differences.numpy(), differences, rtol=0, atol=1e-12)
    assert result.interval == pytest.approx(tuple(np.percentile(differences, [2.5, 97.5])), abs=1e-12)
    with pytest.raises(ValueError, match="one metric on the same number of images"):
        SeedMean([weighted("CF1", scores_a, targets, thresholds), MeanAveragePrecision(scores_a, targets)])


def test_multiplicities_count_each_row():
    indices = bootstrap_indices(7, 20, seed=7)
    counts = multiplicities(indices, 7)
    reference = np.stack([np.bincount(row, minlength=7) for row in indices.numpy()])
    np.testing.assert_array_equal(counts.numpy(), reference)
    assert torch.equal(indices, bootstrap_indices(7, 20, seed=7))
    assert not torch.equal(indices, bootstrap_indices(7, 20, seed=8))


# -- paired bootstrap --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mAP", "CF1", "OF1", "N+"])
def test_paired_bootstrap_equals_the_slow_loop(name):
    scores_a, scores_b, targets, thresholds = make_case(8)
    result = paired_bootstrap(weighted(name, scores_a, targets, thresholds),
                              weighted(name, scores_b, targets, thresholds),
                              n_resamples=60, seed=8, chunk_size=25)
    differences, low, high, std = slow_paired_bootstrap(
        name, scores_a, scores_b, targets, thresholds, n_resamples=60, seed=8
    )
    np.testing.assert_allclose(result.differences.numpy(), differences, rtol=0, atol=1e-12)
    assert result.observed == (unweighted(name, scores_a, targets, thresholds)
                               - unweighted(name, scores_b, targets, thresholds))
    assert result.interval == pytest.approx((low, high), abs=1e-12)
    assert result.std == pytest.approx(std, abs=1e-12)
    assert result.confidence == 0.95


def test_paired_bootstrap_accuracy_and_confidence():
    g = torch.Generator().manual_seed(9)
    labels = torch.randint(0, 3, (N_IMAGES,), generator=g)
    guesses = [torch.where(torch.rand(N_IMAGES, generator=g) < p, labels, (labels + 1) % 3)
               for p in (0.8, 0.6)]
    result = paired_bootstrap(Accuracy(guesses[0], labels), Accuracy(guesses[1], labels),
                              n_resamples=80, seed=9, confidence=0.8)
    correct = [(guess == labels).double() for guess in guesses]
    differences = np.array([(correct[0][i].mean() - correct[1][i].mean()).item()
                            for i in bootstrap_indices(N_IMAGES, 80, seed=9)])
    assert result.interval == pytest.approx(tuple(np.percentile(differences, [10, 90])),
                                            abs=1e-12)
    assert result.observed == pytest.approx((correct[0].mean() - correct[1].mean()).item(),
                                            abs=1e-15)


def test_paired_bootstrap_does_not_depend_on_chunk_size():
    scores_a, scores_b, targets, _ = make_case(10)
    results = [paired_bootstrap(MeanAveragePrecision(scores_a, targets),
                                MeanAveragePrecision(scores_b, targets),
                                n_resamples=30, seed=10, chunk_size=size) for size in (1, 7, 100)]
    for result in results[1:]:
        assert torch.equal(result.differences, results[0].differences)


def test_paired_bootstrap_of_a_method_against_itself_is_zero():
    scores, _, targets, thresholds = make_case(11)
    metric = AnnotationMetric(scores, targets, thresholds, "CF1")
    result = paired_bootstrap(metric, metric, n_resamples=20)
    assert result.interval == (0.0, 0.0) and result.std == 0.0 and result.observed == 0.0


def test_paired_bootstrap_rejects_bad_arguments():
    scores_a, scores_b, targets, thresholds = make_case(12)
    a = MeanAveragePrecision(scores_a, targets)
    b = MeanAveragePrecision(scores_b, targets)
    with pytest.raises(ValueError, match="same metric"):
        paired_bootstrap(a, AnnotationMetric(scores_b, targets, thresholds))
    with pytest.raises(ValueError, match="same images"):
        paired_bootstrap(a, MeanAveragePrecision(scores_b[:-1], targets[:-1]))
    with pytest.raises(ValueError, match="n_resamples"):
        paired_bootstrap(a, b, n_resamples=1)
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap(a, b, confidence=1.0)
    with pytest.raises(ValueError, match="chunk_size"):
        paired_bootstrap(a, b, chunk_size=0)


def test_metrics_reject_bad_arguments():
    scores, _, targets, _ = make_case(13)
    with pytest.raises(ValueError, match="name"):
        AnnotationMetric(scores, targets, 0.5, "F1")
    with pytest.raises(ValueError, match="thresholds"):
        AnnotationMetric(scores, targets, torch.full((N_LABELS + 1,), 0.5))
    with pytest.raises(ValueError, match="scores and targets"):
        MeanAveragePrecision(scores, targets[:, :-1])
    with pytest.raises(ValueError, match="floating point"):
        MeanAveragePrecision(targets, targets)
    with pytest.raises(ValueError, match="NaN"):
        MeanAveragePrecision(torch.full_like(scores, torch.nan), targets)
    with pytest.raises(ValueError, match="predicted and labels"):
        Accuracy(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="counts"):
        MeanAveragePrecision(scores, targets)(torch.ones(2, N_IMAGES + 1, dtype=torch.int64))
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_indices(5, 0)


def test_speed_benchmark_agrees_with_its_loop(capsys):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bootstrap_speed.py"
    spec = importlib.util.spec_from_file_location("bootstrap_speed", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    report = bench.main(["--images", "300", "--labels", "20", "--resamples", "40"])
    assert set(report) == {"mAP", "CF1"}
    assert all(row["max_gap"] < 1e-12 and row["seconds"] > 0 for row in report.values())
    assert "mAP:" in capsys.readouterr().out


# -- verdict and summaries ---------------------------------------------------------------


@pytest.mark.parametrize(("interval", "direction", "expected"), [
    ((0.01, 0.30), +1, "reproduced"),
    ((-0.30, -0.01), +1, "not reproduced"),
    ((-0.10, 0.20), +1, "inconclusive"),
    ((0.0, 0.20), +1, "inconclusive"),  # an endpoint at 0 is inside the closed interval
    ((-0.20, 0.0), +1, "inconclusive"),
    ((0.0, 0.0), +1, "inconclusive"),
    ((-0.30, -0.01), -1, "reproduced"),
    ((0.01, 0.30), -1, "not reproduced"),
    ((-0.10, 0.20), -1, "inconclusive"),
    ((-0.20, 0.0), -1, "inconclusive"),
])
def test_verdict(interval, direction, expected):
    assert verdict(interval, claimed_direction=direction) == expected


def test_verdict_rejects_bad_arguments():
    with pytest.raises(ValueError, match="claimed_direction"):
        verdict((0.1, 0.2), claimed_direction=0)
    with pytest.raises(ValueError, match="interval"):
        verdict((0.2, 0.1))
    with pytest.raises(ValueError, match="interval"):
        verdict((math.nan, 0.1))


def test_mean_std_by_hand():
    mean, std = mean_std([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    assert std == pytest.approx(math.sqrt((1.5**2 + 0.5**2 + 0.5**2 + 1.5**2) / 3))
    assert mean_std([0.4]) == (0.4, None)
    with pytest.raises(ValueError, match="values"):
        mean_std([])


def test_format_mean_std():
    # mean 0.412, std sqrt((0.012**2 + 0 + 0.012**2) / 2) = 0.012
    assert format_mean_std([0.400, 0.412, 0.424]) == "0.412 ± 0.012 (n=3)"
    assert format_mean_std([0.412]) == "0.412 (n=1)"
    assert format_mean_std([0.4123, 0.4125], digits=4) == "0.4124 ± 0.0001 (n=2)"
    with pytest.raises(ValueError, match="digits"):
        format_mean_std([0.4], digits=-1)
