"""Single-label classification metrics of P2: accuracy, polarity accuracy, confusion matrix."""

from __future__ import annotations

import torch


def _predicted_ids(logits_or_ids: torch.Tensor, category_ids: torch.Tensor) -> torch.Tensor:
    """Class ids: the argmax of ``N x C`` logits (first maximum), or ``N`` ids as given."""
    if logits_or_ids.dim() == 2:
        pred = logits_or_ids.argmax(1)
    elif logits_or_ids.dim() == 1 and not logits_or_ids.is_floating_point():
        pred = logits_or_ids
    else:
        raise ValueError(f"predictions must be N x C logits or N integer ids, "
                         f"got shape {tuple(logits_or_ids.shape)} {logits_or_ids.dtype}")
    if category_ids.shape != pred.shape or category_ids.is_floating_point():
        raise ValueError(f"category_ids must be {len(pred)} integer ids, "
                         f"got shape {tuple(category_ids.shape)} {category_ids.dtype}")
    if len(pred) == 0:
        raise ValueError("no samples")
    return pred.to(category_ids.device)


def accuracy(logits_or_ids: torch.Tensor, category_ids: torch.Tensor) -> float:
    """``mean_i [pred_i == y_i]``, ``pred`` the argmax of the logits or the given ids."""
    pred = _predicted_ids(logits_or_ids, category_ids)
    return float((pred == category_ids).float().mean())


def polarity_accuracy(pred_ids: torch.Tensor, category_ids: torch.Tensor,
                      polarity_of_category: torch.Tensor) -> float:
    """``mean_i [s(pred_i) == s(y_i)]``, ``s = polarity_of_category`` (``(K,)``, e.g. 1
    positive, 0 negative: :func:`annotlib.data.emotions.category_polarity`). ``pred_ids``
    may also be ``N x K`` logits."""
    pred = _predicted_ids(pred_ids, category_ids)
    table = polarity_of_category.to(category_ids.device)
    if table.dim() != 1 or int(max(pred.max(), category_ids.max())) >= len(table) \
            or int(min(pred.min(), category_ids.min())) < 0:
        raise ValueError(f"polarity_of_category ({tuple(table.shape)}) must give one polarity "
                         f"per class id")
    return float((table[pred] == table[category_ids]).float().mean())


def confusion_matrix(pred_ids: torch.Tensor, category_ids: torch.Tensor,
                     num_classes: int) -> torch.Tensor:
    """``(K, K)`` int64 counts, ``M[t, p]`` = samples of true class ``t`` predicted ``p``
    (scikit-learn's layout: rows true, columns predicted). ``pred_ids`` may also be logits."""
    pred = _predicted_ids(pred_ids, category_ids)
    if int(min(pred.min(), category_ids.min())) < 0 \
            or int(max(pred.max(), category_ids.max())) >= num_classes:
        raise ValueError(f"class ids must lie in 0..{num_classes - 1} (num_classes)")
    flat = category_ids.long() * num_classes + pred.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)
