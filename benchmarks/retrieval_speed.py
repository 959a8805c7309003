"""Time ``retrieval_scores`` (every item queries the rest) against a per-query scikit-learn loop.

Random embeddings (128-d by default) with 8 categories and the wheel's graded relevance;
the vectorized metrics run on all queries, the scikit-learn loop (``average_precision_score``,
``ndcg_score`` and precision@K from a NumPy ranking by float64 distance, ties by index)
on a subset of them, and the largest absolute difference on that subset is printed::

    python benchmarks/retrieval_speed.py [--items 10000] [--dim 128] [--subset 200] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.metrics import average_precision_score, ndcg_score

from annotlib.data.emotions import EMOTIONS, graded_relevance
from annotlib.metrics.retrieval import retrieval_scores

KS = (5, 10, 20)


def sklearn_loop(x: np.ndarray, cats: np.ndarray, gains: np.ndarray,
                 queries: np.ndarray) -> dict[str, np.ndarray]:
    """Per query in ``queries``: AP, P@K and nDCG from scikit-learn on a tie-free ranking."""
    out = {name: [] for name in ("AP", *(f"P@{k}" for k in KS), "nDCG")}
    for q in queries:
        others = np.delete(np.arange(len(x)), q)
        dist = ((x[others] - x[q]) ** 2).sum(1)
        order = np.lexsort((others, dist))
        score = np.empty(len(others))
        score[order] = -np.arange(len(others))  # rank-based scores: ties broken by index
        relevant = cats[others] == cats[q]
        out["AP"].append(average_precision_score(relevant, score))
        for k in KS:
            out[f"P@{k}"].append(relevant[order[:k]].mean())
        out["nDCG"].append(ndcg_score(gains[cats[q], cats[others]][None], score[None]))
    return {name: np.asarray(values) for name, values in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--subset", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    g = torch.Generator().manual_seed(0)
    cats = torch.randint(0, len(EMOTIONS), (args.items,), generator=g)
    # category means plus noise, so the rankings are informative rather than random
    centres = torch.randn(len(EMOTIONS), args.dim, generator=g)
    x = centres[cats] + 2.0 * torch.randn(args.items, args.dim, generator=g)
    gains = graded_relevance(EMOTIONS)
    xd, cd = x.to(args.device), cats.to(args.device)

    retrieval_scores(xd[:1000], cd[:1000], gains)  # warm-up
    times = []
    for _ in range(args.repeats):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        scores = retrieval_scores(xd, cd, gains, KS)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    print(f"vectorized, {args.items:,} queries x {args.items - 1:,} items, {args.dim}-d, "
          f"{args.device}, {torch.get_num_threads()} threads: best {min(times):.2f} s "
          f"of {args.repeats} (all: {', '.join(f'{t:.2f}' for t in times)})")

    queries = np.random.default_rng(0).choice(args.items, args.subset, replace=False)
    start = time.perf_counter()
    reference = sklearn_loop(x.double().numpy(), cats.numpy(), gains.double().numpy(), queries)
    loop = time.perf_counter() - start
    print(f"scikit-learn loop, {args.subset} queries: {loop:.2f} s "
          f"({loop / args.subset * args.items:.0f} s extrapolated to {args.items:,} queries)")
    for name, values in reference.items():
        diff = np.abs(scores[name][queries].cpu().double().numpy() - values).max()
        print(f"  {name:5s} mean {values.mean():.4f}  max |vectorized - scikit-learn| {diff:.2e}")


if __name__ == "__main__":
    main()
