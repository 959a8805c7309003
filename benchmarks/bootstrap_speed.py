"""Seconds of a 1,000-resample paired bootstrap of mAP and CF1 on a 5,000 x 300 test set.

The test set is random with long-tailed label frequencies, as in annotation data (label k
positive with probability 0.3 / k, about 1.9 labels per image, the rarest label on ~5
images), and two methods whose scores separate positives slightly differently. Prints the
seconds of each bootstrap (building the weighted metrics included) and the largest gap,
on a few resamples, between the vectorized differences and a slow reference that
materialises each resampled test set and calls the unweighted metrics::

    python benchmarks/bootstrap_speed.py [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from annotlib.metrics import annotation_metrics, mean_average_precision
from annotlib.stats import (
    AnnotationMetric,
    MeanAveragePrecision,
    bootstrap_indices,
    paired_bootstrap,
)


def long_tailed_case(n: int, c: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Targets ``[n, c]`` with label frequency 0.3 / k, and float32 scores of methods A, B."""
    g = torch.Generator().manual_seed(seed)
    rate = 0.3 / torch.arange(1, c + 1)
    targets = (torch.rand(n, c, generator=g) < rate).long()
    noise = torch.rand(n, c, generator=g)
    scores_a = (0.6 * noise + 0.40 * targets * torch.rand(n, c, generator=g)).float()
    scores_b = (0.6 * noise + 0.35 * targets * torch.rand(n, c, generator=g)).float()
    return scores_a, scores_b, targets


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Run the benchmark; returns per metric its seconds and its largest gap to the loop."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--labels", type=int, default=300)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--checked", type=int, default=5, help="resamples checked by the loop")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    scores_a, scores_b, targets = long_tailed_case(args.images, args.labels, seed=0)
    thresholds = torch.full((args.labels,), 0.5)
    print(f"{args.images} images x {args.labels} labels, {targets.sum() / args.images:.2f} "
          f"labels per image, {args.resamples} resamples, {torch.get_num_threads()} threads")
    metrics = {
        "mAP": (lambda s: MeanAveragePrecision(s, targets),
                lambda s, t: mean_average_precision(s, t)),
        "CF1": (lambda s: AnnotationMetric(s, targets, thresholds, "CF1"),
                lambda s, t: annotation_metrics(s, t, thresholds)["CF1"]),
    }
    indices = bootstrap_indices(args.images, args.resamples, seed=0)[:args.checked]
    report = {}
    for name, (weighted, unweighted) in metrics.items():
        start = time.perf_counter()
        result = paired_bootstrap(weighted(scores_a), weighted(scores_b), args.resamples, seed=0)
        seconds = time.perf_counter() - start
        reference = torch.tensor([unweighted(scores_a[i], targets[i])
                                  - unweighted(scores_b[i], targets[i]) for i in indices],
                                 dtype=torch.float64)
        gap = (result.differences[:args.checked] - reference).abs().max().item()
        print(f"{name}: {seconds:.2f} s; A - B = {result.observed:+.4f}, "
              f"95% interval [{result.low:+.4f}, {result.high:+.4f}], std {result.std:.4f}; "
              f"max |vectorized - loop| over {args.checked} resamples = {gap:.1e}")
        report[name] = {"seconds": seconds, "max_gap": gap}
    return report


if __name__ == "__main__":
    main()
