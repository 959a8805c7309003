"""The eight Mikels emotions of P2 as data: wheel order, polarity and wheel distances.

The wheel order is an assumption of docs/PAPERS.md (P2), kept as a parameter everywhere:
amusement, contentment, awe, excitement, fear, sadness, disgust, anger, cyclic, so that
anger neighbours amusement. The four positive emotions come first, the four negative ones
after.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch

EMOTIONS: tuple[str, ...] = ("amusement", "contentment", "awe", "excitement",
                             "fear", "sadness", "disgust", "anger")
POSITIVE: frozenset[str] = frozenset({"amusement", "awe", "contentment", "excitement"})
NEGATIVE: frozenset[str] = frozenset({"anger", "disgust", "fear", "sadness"})


def _check_known(categories: Sequence[str], known: Collection[str], argument: str) -> None:
    unknown = [name for name in categories if name not in known]
    if unknown:
        raise ValueError(f"categories {unknown} are not in {argument} ({sorted(known)})")


def category_polarity(categories: Sequence[str], positive: Collection[str] = POSITIVE,
                      negative: Collection[str] = NEGATIVE) -> torch.Tensor:
    """``(K,)`` int64: 1 where ``categories[k]`` is in ``positive``, 0 where it is in ``negative``;
    a category in neither is an error."""
    _check_known(categories, set(positive) | set(negative), "positive or negative")
    return torch.tensor([int(name in positive) for name in categories], dtype=torch.int64)


def polarity(category_ids: torch.Tensor, categories: Sequence[str],
             positive: Collection[str] = POSITIVE,
             negative: Collection[str] = NEGATIVE) -> torch.Tensor:
    """Per sample, 1 if its category (``categories[category_ids[i]]``) is positive, 0 if
    negative; same shape and device as ``category_ids``."""
    table = category_polarity(categories, positive, negative).to(category_ids.device)
    return table[category_ids]


def wheel_distance(categories: Sequence[str], wheel: Sequence[str] = EMOTIONS) -> torch.Tensor:
    """``(K, K)`` int64 ``dis(i, j) = 1 + s(i, j)``, ``s`` the fewest steps between the two
    emotions on the cyclic ``wheel`` (``min(|p_i - p_j|, L - |p_i - p_j|)``, ``p`` the
    positions, ``L = len(wheel)``): 1 on the diagonal, at most ``1 + L // 2``."""
    _check_known(categories, wheel, "the wheel")
    position = torch.tensor([list(wheel).index(name) for name in categories])
    steps = (position[:, None] - position[None, :]).abs()
    return 1 + torch.minimum(steps, len(wheel) - steps)


def graded_relevance(categories: Sequence[str], positive: Collection[str] = POSITIVE,
                     negative: Collection[str] = NEGATIVE, same: float = 2.0,
                     related: float = 1.0, other: float = 0.0) -> torch.Tensor:
    """``(K, K)`` float32 gains for graded retrieval (nDCG): ``G[i, j]`` is ``same`` where
    ``i == j`` (same emotion), ``related`` where the two emotions share a polarity, ``other``
    where the polarities differ (P2's positive / related / negative)."""
    sign = category_polarity(categories, positive, negative)
    gains = torch.where(sign[:, None] == sign[None, :], related, other).float()
    return gains.fill_diagonal_(same)
