"""Time ``tune_thresholds`` against the scikit-learn loop it replaces, and time mAP.

The reference picks, for every label and every grid threshold, the ``matthews_corrcoef``
of ``scores >= t``, keeping the first maximum going up the grid. The data are random:
informative scores and long-tailed sparse targets, about 5 positives per image, by default
at the size of the IAPR TC-12 training set (17,665 images, 291 labels)::

    python benchmarks/tune_thresholds.py [--images 17665] [--labels 291] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

import torch
from sklearn.metrics import matthews_corrcoef

from annotlib.metrics import default_threshold_grid, mean_average_precision, tune_thresholds


def make_data(images: int, labels: int, seed: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores in (0, 1) and 0/1 targets whose label frequencies follow Zipf's law."""
    g = torch.Generator().manual_seed(seed)
    frequency = 1.0 / torch.arange(1, labels + 1, dtype=torch.float64)
    frequency = (frequency * 5.0 / frequency.sum()).clamp(max=0.5)
    targets = (torch.rand(images, labels, generator=g, dtype=torch.float64) < frequency).long()
    logits = 1.5 * torch.randn(images, labels, generator=g) + 3.0 * targets - 3.0
    return torch.sigmoid(logits).to(device), targets.to(device)


def sklearn_loop(scores: torch.Tensor, targets: torch.Tensor, grid: list[float]) -> torch.Tensor:
    s, y = scores.cpu().numpy(), targets.cpu().numpy()
    chosen = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "A single label was found": MCC 0, as intended
        for label in range(s.shape[1]):
            best, best_threshold = -float("inf"), None
            for threshold in grid:
                mcc = matthews_corrcoef(y[:, label], s[:, label] >= s.dtype.type(threshold))
                if mcc > best:
                    best, best_threshold = mcc, threshold
            chosen.append(best_threshold)
    return torch.tensor(chosen, dtype=torch.float64)


def seconds(function, repeats: int, device: str) -> list[float]:
    """Wall times of ``repeats`` calls after one warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        function()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def describe(times: list[float]) -> str:
    return (f"median {statistics.median(times) * 1e3:.1f} ms, min {min(times) * 1e3:.1f} ms "
            f"over {len(times)} runs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=17665)
    parser.add_argument("--labels", type=int, default=291)
    parser.add_argument("--big-images", type=int, default=20000)
    parser.add_argument("--big-labels", type=int, default=1000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    print(f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    grid = default_threshold_grid()
    scores, targets = make_data(args.images, args.labels, args.seed, args.device)
    print(f"{args.images} x {args.labels}: {targets.sum(1).double().mean():.2f} positives per "
          f"image, {int((targets.sum(0) == 0).sum())} labels without positives")

    start = time.perf_counter()
    expected = sklearn_loop(scores, targets, grid.tolist())
    reference = time.perf_counter() - start
    chosen = tune_thresholds(scores, targets).cpu()
    assert torch.equal(chosen, expected), "tune_thresholds differs from the sklearn loop"
    print(f"  sklearn loop ({args.labels} labels x {grid.numel()} thresholds): {reference:.2f} s")
    times = seconds(lambda: tune_thresholds(scores, targets), args.repeats, args.device)
    print(f"  tune_thresholds: {describe(times)}; thresholds identical")
    print(f"  speed-up: {reference / statistics.median(times):.0f}x (goal >= 100x)")

    scores, targets = make_data(args.big_images, args.big_labels, args.seed, args.device)
    print(f"{args.big_images} x {args.big_labels} (goal < 2 s each):")
    times = seconds(lambda: tune_thresholds(scores, targets), args.repeats, args.device)
    print(f"  tune_thresholds: {describe(times)}")
    times = seconds(lambda: mean_average_precision(scores, targets), args.repeats, args.device)
    print(f"  mean_average_precision: {describe(times)}")
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
