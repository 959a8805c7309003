"""Retrieval metrics of P2: every test image queries the rest of the test split.

For a query ``q`` the other ``N - 1`` items are ranked by squared Euclidean distance
``||e_q - e_j||^2``, nearest first, ties broken by item index (lower first). The distances
are computed in float32 as ``||e_q||^2 + ||e_j||^2 - 2 e_q . e_j`` (negative rounding
results count as 0), so distances equal in float32 are ties. Per query, with ``r_j`` the
rank (1-based) of item ``j``:

- relevance for AP and precision: ``j`` has the query's category; ``R`` relevant items.
- ``AP = (1 / R) sum_{m=1..R} m / r_(m)``, ``r_(m)`` the rank of the m-th relevant item
  (the uninterpolated AP of scikit-learn's ``average_precision_score`` on tie-free scores).
- ``P@K = |relevant items with r_j <= K| / K``.
- ``nDCG = DCG / IDCG`` over the full ranking, scikit-learn's ``ndcg_score`` conventions:
  linear gain ``G[c_q, c_j]`` (the ``graded_relevance`` matrix; binary same-category
  relevance when it is None), discount ``1 / log2(1 + r_j)``, ``IDCG`` the DCG of the
  same gains sorted in decreasing order, and nDCG 0 where IDCG is 0.

Unlike scikit-learn, which averages over tied scores, ties here are ordered by index.
The means in :func:`retrieval_metrics` are over the queries with at least one relevant
item.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

_CODE_BITS = 8  # the low byte of every sort key holds the item's category
if sys.byteorder != "little":  # that byte is read back as byte 0 of each int64 key
    raise ImportError("annotlib.metrics.retrieval assumes a little-endian machine")


def _sorted_keys(bits: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    """Per row, the int64 keys ``bits << 32 | low``, sorted (all distinct, so stability is moot)."""
    if bits.device.type == "cpu":
        # NumPy builds and sorts them about 2x and 4x faster than torch on CPU, but on one
        # thread: row blocks go to torch's thread count (NumPy releases the GIL meanwhile)
        high, keys = bits.numpy(), np.empty(tuple(bits.shape), np.int64)

        def fill(rows: slice) -> None:
            np.left_shift(high[rows], 32, out=keys[rows], dtype=np.int64)
            np.bitwise_or(keys[rows], low.numpy(), out=keys[rows])
            keys[rows].sort(axis=1)

        bounds = np.linspace(0, len(keys), min(torch.get_num_threads(), len(keys)) + 1).astype(int)
        with ThreadPoolExecutor(len(bounds) - 1) as pool:
            list(pool.map(fill, [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]))
        return torch.from_numpy(keys)
    return (bits.long() << 32 | low).sort(dim=1).values


def _check(embeddings: torch.Tensor, category_ids: torch.Tensor,
           graded_relevance: torch.Tensor | None, ks: Sequence[int]) -> int:
    """The number of categories, after checking every argument."""
    if embeddings.dim() != 2 or len(embeddings) < 2:
        raise ValueError(f"embeddings must be N x D with N >= 2, got {tuple(embeddings.shape)}")
    if not torch.isfinite(embeddings).all():
        raise ValueError("embeddings contain NaN or infinite values")
    if category_ids.shape != (len(embeddings),) or category_ids.is_floating_point():
        raise ValueError(f"category_ids must be {len(embeddings)} integers, "
                         f"got shape {tuple(category_ids.shape)} {category_ids.dtype}")
    if int(category_ids.min()) < 0:
        raise ValueError("category_ids must be non-negative")
    k = int(category_ids.max()) + 1
    if graded_relevance is not None:
        if graded_relevance.dim() != 2 or graded_relevance.shape[0] != graded_relevance.shape[1] \
                or graded_relevance.shape[0] < k:
            raise ValueError(f"graded_relevance must be K x K with K > {k - 1} (the largest "
                             f"category id), got {tuple(graded_relevance.shape)}")
        if (graded_relevance < 0).any():
            raise ValueError("graded_relevance must be non-negative (nDCG gains)")
        k = graded_relevance.shape[0]
    if k > 1 << _CODE_BITS or len(embeddings) >= 1 << (32 - _CODE_BITS):
        raise ValueError(f"at most {1 << _CODE_BITS} categories and {1 << (32 - _CODE_BITS)} "
                         f"items, got {k} and {len(embeddings)}")
    if not ks or any(int(x) != x or not 1 <= x <= len(embeddings) - 1 for x in ks):
        raise ValueError(f"ks must be integers in 1..{len(embeddings) - 1} (N - 1), got {ks}")
    return k


@torch.no_grad()
def retrieval_scores(embeddings: torch.Tensor, category_ids: torch.Tensor,
                     graded_relevance: torch.Tensor | None = None,
                     ks: Sequence[int] = (5, 10, 20),
                     chunk_elements: int = 1 << 23) -> dict[str, torch.Tensor]:
    """Per query, on the device of ``embeddings``: ``"AP"`` (NaN where the query has no
    relevant item), ``"P@K"`` for each K in ``ks`` and ``"nDCG"``, each ``(N,)`` float32;
    definitions in the module docstring.

    Queries are processed by category, in chunks of ``chunk_elements // N`` queries, which
    bounds the memory to a few ``chunk_elements``-sized tensors.
    """
    k = _check(embeddings, category_ids, graded_relevance, ks)
    device, n = embeddings.device, len(embeddings)
    x = embeddings.float()
    cats = category_ids.to(device, torch.int64)
    gains = (torch.eye(k, device=device) if graded_relevance is None
             else graded_relevance.to(device, torch.float32))
    squared_norms = (x * x).sum(1, keepdim=True)
    ones = torch.ones_like(squared_norms)
    # one matmul gives ||q||^2 + ||x||^2 - 2 q.x: [q, ||q||^2, 1] . [-2x, 1, ||x||^2]
    query_side, item_side = torch.cat([x, squared_norms, ones], 1), torch.cat(
        [-2 * x, ones, squared_norms], 1)
    # sort key: float32 distance bits (monotonic for non-negative floats) above the item
    # index, so one integer sort ranks by distance with ties by index; the low byte is the
    # item's category, read back after sorting without a gather
    low = torch.arange(n, device=device) << _CODE_BITS | cats
    discount = 1 / torch.log2(torch.arange(2, n + 1, device=device, dtype=torch.float32))
    counts = torch.bincount(cats, minlength=k)
    rows = max(1, chunk_elements // n)
    out = {"AP": torch.full((n,), float("nan"), device=device),
           **{f"P@{kk}": torch.zeros(n, device=device) for kk in ks},
           "nDCG": torch.zeros(n, device=device)}
    for c in torch.unique(cats).tolist():
        others = counts.clone()
        others[c] -= 1
        ideal = gains[c].repeat_interleave(others).sort(descending=True).values
        idcg = (ideal * discount).sum()
        relevant = int(others[c])
        for queries in (cats == c).nonzero().flatten().split(rows):
            b, row = len(queries), torch.arange(len(queries), device=device)
            bits = (query_side[queries] @ item_side.T).view(torch.int32).clamp_min_(0)
            bits[row, queries] = 0x7F800000  # +inf: the query itself sorts last
            keys = _sorted_keys(bits, low)
            # little-endian: byte 0 of each int64 key is its low byte, the category
            code = keys.view(torch.uint8)[:, 0:8 * (n - 1):8]
            per_category = torch.zeros(b, 1 << _CODE_BITS, device=device)
            per_category.scatter_add_(1, code.long(), discount.expand(b, -1))
            dcg = per_category[:, :k] @ gains[c]
            out["nDCG"][queries] = torch.where(idcg > 0, dcg / idcg, 0.0)
            if relevant:
                # every row holds the same `relevant` count, so nonzero's columns reshape
                rank = (code == c).nonzero()[:, 1].view(b, relevant) + 1
                m = torch.arange(1, relevant + 1, device=device)
                out["AP"][queries] = (m / rank).mean(1)
                cutoffs = torch.tensor(list(ks), device=device).expand(b, -1).contiguous()
                hits = torch.searchsorted(rank, cutoffs, right=True)  # rank is sorted per row
                for column, kk in enumerate(ks):
                    out[f"P@{kk}"][queries] = hits[:, column] / kk
    return out


def retrieval_metrics(embeddings: torch.Tensor, category_ids: torch.Tensor,
                      graded_relevance: torch.Tensor | None = None,
                      ks: Sequence[int] = (5, 10, 20),
                      chunk_elements: int = 1 << 23) -> dict[str, float]:
    """``mAP``, ``P@K`` for each K and ``nDCG``, averaged over the queries with at least one
    relevant item (their number in ``"queries"``); see :func:`retrieval_scores`."""
    scores = retrieval_scores(embeddings, category_ids, graded_relevance, ks, chunk_elements)
    valid = ~scores["AP"].isnan()
    if not valid.any():
        raise ValueError("no query has a relevant item (every category has a single member)")
    means = {("mAP" if name == "AP" else name): float(value[valid].mean())
             for name, value in scores.items()}
    return {**means, "queries": int(valid.sum())}
