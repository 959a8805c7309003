"""P2's sentiment constraints (Yang et al., AAAI 2018) and the plain triplet baseline, on a
``B x D`` embedding (the sentiment vector, SV) and single-label emotion ids ``y`` (``B``).

With ``D(i, j) = ||SV_i - SV_j||^2`` and ``D*(i, j) = theta(i, j) D(i, j)``, for an anchor
``a``, a positive ``p`` (same emotion), a related ``r`` (same polarity, other emotion) and a
negative ``n`` (other polarity):

``E_sml = sum [D*(a,p) - D*(a,r) + alpha1]_+ + sum [D*(a,r) - D*(a,n) + alpha2]_+``

and the multi-task objective is ``E = (1 - w) E_cls + w E_sml``, ``E_cls`` the softmax
cross-entropy. Emotions are given by two tensors over the ``K`` categories: ``polarity``
(``K``, any integer code; equal codes mean the same polarity) and ``wheel_distance``
(``K x K``, P2's ``dis(y_i, y_j) = 1 + steps between the emotions on Mikels' wheel``).

Everything is computed in float32 (float64 stays float64, for gradient checks) with autocast
off, and without Python loops: triplets are ``B x B x B`` masks, fine up to ``B ~ 256``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..data.emotions import EMOTIONS, category_polarity
from ..data.emotions import wheel_distance as emotion_wheel_distance

SAMPLINGS = ("semi-hard", "all")
METRICS = ("sentiment", "triplet")
def _float(x: torch.Tensor) -> torch.Tensor:
    # At least float32: bf16 distances between unit vectors lose the small differences that
    # the margins compare; float64 stays float64 so gradcheck and the loop references work.
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _check_labels(
    category_ids: torch.Tensor, num_classes: int | None, batch: int | None = None
) -> None:
    """1-D integer ids, ``batch`` of them if given, in ``[0, num_classes)`` if given."""
    if category_ids.dim() != 1 or category_ids.dtype.is_floating_point:
        raise ValueError(f"category_ids must be a 1-D integer tensor, got "
                         f"{category_ids.dtype} of shape {tuple(category_ids.shape)}")
    if batch is not None and category_ids.numel() != batch:
        raise ValueError(f"category_ids has {category_ids.numel()} entries for {batch} embeddings")
    # An id out of range would otherwise be an opaque indexing error (a device assert on CUDA).
    if (num_classes is not None and category_ids.numel()
            and (category_ids.min() < 0 or category_ids.max() >= num_classes)):
        raise ValueError(f"category_ids must lie in [0, {num_classes}), got "
                         f"[{int(category_ids.min())}, {int(category_ids.max())}]")


def _check_embeddings(embeddings: torch.Tensor) -> None:
    if embeddings.dim() != 2 or not embeddings.dtype.is_floating_point:
        raise ValueError(f"embeddings must be a B x D float tensor, got "
                         f"{embeddings.dtype} of shape {tuple(embeddings.shape)}")


def _check_emotions(polarity: torch.Tensor, wheel_distance: torch.Tensor) -> int:
    """The number of categories ``K`` that ``polarity`` and ``wheel_distance`` describe."""
    if polarity.dim() != 1 or polarity.dtype.is_floating_point:
        raise ValueError(f"polarity must be a 1-D integer tensor over the K categories, got "
                         f"{polarity.dtype} of shape {tuple(polarity.shape)}")
    k = polarity.numel()
    if wheel_distance.shape != (k, k):
        raise ValueError(f"wheel_distance must be K x K = {k} x {k} like polarity, got "
                         f"{tuple(wheel_distance.shape)}")
    if not (wheel_distance > 0).all():
        raise ValueError("wheel_distance must be > 0 everywhere (theta = 1 / dis)")
    return k


def _check_margin(name: str, value: float) -> float:
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def squared_distances(embeddings: torch.Tensor) -> torch.Tensor:
    """``B x B``: ``D(i, j) = ||e_i - e_j||^2``, as ``|e_i|^2 + |e_j|^2 - 2 e_i . e_j``
    clamped at 0 (a ``B x B x D`` difference tensor would not fit for an 8k-wide SV)."""
    sq = embeddings.pow(2).sum(1)
    return (sq[:, None] + sq[None, :] - 2 * embeddings @ embeddings.T).clamp(min=0)


def wheel_weights(category_ids: torch.Tensor, wheel_distance: torch.Tensor) -> torch.Tensor:
    """``B x B``: ``theta(i, j) = 1 / dis(y_i, y_j)``.

    P2 only says ``theta ∝ 1 / dis``; we take the constant 1, so ``theta = 1`` for two
    images of the same emotion (``dis = 1``): positive pairs keep their plain distance and
    the margins are in units of ``D`` (on unit-norm SVs, ``D`` lies in [0, 4]).
    """
    return 1.0 / wheel_distance[category_ids[:, None], category_ids[None, :]]


def _relation_masks(
    category_ids: torch.Tensor, polarity: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``B x B`` bool masks (positive, related, negative) of ``j`` relative to anchor ``i``;
    a positive is never the anchor itself."""
    same = category_ids[:, None] == category_ids[None, :]
    pol = polarity[category_ids]
    same_polarity = pol[:, None] == pol[None, :]
    eye = torch.eye(len(category_ids), dtype=torch.bool, device=category_ids.device)
    return same & ~eye, same_polarity & ~same, ~same_polarity


def _draw(candidates: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """``B x B``: for every pair ``[a, p]`` an index drawn uniformly among ``candidates[a]``
    (the argmax of uniform noise over them: uniform, and no loop), -1 if ``a`` has none."""
    b = len(candidates)
    noise = torch.rand((b, b, b), generator=generator, device=candidates.device)
    pick = torch.where(candidates[:, None, :], noise, -1.0).argmax(-1)
    return torch.where(candidates.any(1)[:, None], pick, -1)


def sample_related_negative(
    category_ids: torch.Tensor, polarity: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """P2's "semi-hard" draws: ``(related, negative)``, two ``B x B`` long tensors where entry
    ``[a, p]`` is a batch index drawn uniformly among the anchor ``a``'s related images (same
    polarity, other emotion), resp. negative images (other polarity), independently for
    every pair ``(a, p)``; -1 where ``a`` has no such image in the batch.

    ``generator`` (on the tensors' device) makes the draws reproducible; None uses the
    global generator.
    """
    _check_labels(category_ids, polarity.numel())
    _, related, negative = _relation_masks(category_ids, polarity)
    return _draw(related, generator), _draw(negative, generator)


def _masked_mean(terms: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    # where, not a product: invalid entries' values never reach the result or the gradient;
    # an empty set gives 0 (still attached to the graph).
    return torch.where(valid, terms, 0.0).sum() / valid.sum().clamp(min=1)


def sentiment_constraint_loss(
    embeddings: torch.Tensor,
    category_ids: torch.Tensor,
    polarity: torch.Tensor,
    wheel_distance: torch.Tensor,
    alpha1: float = 0.2,
    alpha2: float = 0.2,
    sampling: str = "semi-hard",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """P2's ``E_sml`` on ``embeddings`` (``B x D``) with emotion ids ``category_ids`` (``B``):

    ``mean [D*(a,p) - D*(a,r) + alpha1]_+ + mean [D*(a,r) - D*(a,n) + alpha2]_+``,
    ``D* = theta D`` with ``theta = 1 / dis`` (:func:`wheel_weights`).

    Each sum of P2 is averaged over the triplets of its constraint that exist in the batch
    (0 if none), so both constraints keep the equal weight they have in P2's per-image sum,
    and the value does not grow with the batch.

    ``sampling``:

    - ``"semi-hard"`` (P2's choice, as its text describes it: every positive, random
      related/negative images from the mini-batch): each ordered pair ``(a, p)``, ``p != a``
      of the same emotion, with one related ``r`` and one negative ``n`` drawn at random
      (:func:`sample_related_negative`) gives ``(a, p, r)`` if ``r`` exists and ``(a, r, n)``
      if both exist. The draws are uniform among all candidates; P2 does not restrict them to
      constraint-violating ones, so neither do we.
    - ``"all"``: every valid ``(a, p, r)`` and every valid ``(a, r, n)`` of the batch.

    Defaults ``alpha1 = alpha2 = 0.2`` (on unit-norm SVs) are assumed (docs/PAPERS.md, P2).
    """
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    _check_margin("alpha1", alpha1)
    _check_margin("alpha2", alpha2)
    _check_embeddings(embeddings)
    _check_labels(category_ids, _check_emotions(polarity, wheel_distance), len(embeddings))
    with torch.autocast(embeddings.device.type, enabled=False):
        e = _float(embeddings)
        d = wheel_weights(category_ids, wheel_distance.to(e.dtype)) * squared_distances(e)
        positive, related, negative = _relation_masks(category_ids, polarity)
        if sampling == "all":
            # gap[a, j, k] = D*(a, j) - D*(a, k): j = p, k = r for the first constraint,
            # j = r, k = n for the second; the masks pick the valid triplets of each.
            gap = d[:, :, None] - d[:, None, :]
            return (_masked_mean(F.relu(gap + alpha1), positive[:, :, None] & related[:, None, :])
                    + _masked_mean(F.relu(gap + alpha2),
                                   related[:, :, None] & negative[:, None, :]))
        # Same draws as sample_related_negative (labels already checked above).
        r, n = _draw(related, generator), _draw(negative, generator)
        # d[a, p] is D*(a, p); the gathers give, at [a, p], D*(a, r) and D*(a, n) for the
        # images drawn for that pair (index 0 stands in for "none" and is masked out).
        d_ar = d.gather(1, r.clamp(min=0))
        d_an = d.gather(1, n.clamp(min=0))
        has_r = positive & (r >= 0)
        return (_masked_mean(F.relu(d - d_ar + alpha1), has_r)
                + _masked_mean(F.relu(d_ar - d_an + alpha2), has_r & (n >= 0)))


def triplet_loss(
    embeddings: torch.Tensor, category_ids: torch.Tensor, margin: float = 0.2
) -> torch.Tensor:
    """The plain triplet baseline (P2's "triplet" and, with softmax, "S+T"):

    ``mean [D(a,p) - D(a,n) + margin]_+`` over every valid triplet of the batch (``p != a``
    of the anchor's category, ``n`` of another), ``D(i, j) = ||e_i - e_j||^2``, no wheel
    weights. The mean is over all valid triplets, satisfied ones included (0 if none), as
    :func:`sentiment_constraint_loss` does. ``margin = 0.2`` matches its ``alpha1``.
    """
    _check_margin("margin", margin)
    _check_embeddings(embeddings)
    # Only equality of ids matters here, so any integer ids will do.
    _check_labels(category_ids, None, len(embeddings))
    with torch.autocast(embeddings.device.type, enabled=False):
        d = squared_distances(_float(embeddings))
        same = category_ids[:, None] == category_ids[None, :]
        eye = torch.eye(len(category_ids), dtype=torch.bool, device=category_ids.device)
        valid = (same & ~eye)[:, :, None] & ~same[:, None, :]
        return _masked_mean(F.relu(d[:, :, None] - d[:, None, :] + margin), valid)


class SentimentLoss(nn.Module):
    """P2's multi-task objective ``E = (1 - w) E_cls + w E_sml``, called
    ``loss(logits, embeddings, category_ids)``: ``E_cls`` the softmax cross-entropy of the
    ``B x K`` logits, ``E_sml`` :func:`sentiment_constraint_loss` on the ``B x D`` embeddings
    (``metric="triplet"``: :func:`triplet_loss` with margin ``alpha1`` instead, P2's "S+T").

    ``polarity`` (``K`` long) and ``wheel_distance`` (``K x K``) default to the eight Mikels
    emotions, category id ``k`` being the ``k``-th of :data:`~annotlib.data.emotions.EMOTIONS`
    (amusement, contentment, awe, excitement, fear, sadness, disgust, anger; cyclic),
    positive = amusement, awe, contentment, excitement, ``dis = 1 + steps``; a task sets
    them from its dataset's category names with :meth:`set_categories`. ``w = 0.5`` and
    ``alpha1 = alpha2 = 0.2`` are assumed (docs/PAPERS.md, P2); ``w = 0`` is softmax alone.
    """

    def __init__(
        self,
        polarity: torch.Tensor | None = None,
        wheel_distance: torch.Tensor | None = None,
        w: float = 0.5,
        alpha1: float = 0.2,
        alpha2: float = 0.2,
        sampling: str = "semi-hard",
        metric: str = "sentiment",
    ) -> None:
        super().__init__()
        if not 0 <= w <= 1:
            raise ValueError(f"w must lie in [0, 1], got {w}")
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        polarity = category_polarity(EMOTIONS) if polarity is None else polarity
        wheel_distance = emotion_wheel_distance(EMOTIONS) if wheel_distance is None else wheel_distance
        self.num_classes = _check_emotions(polarity, wheel_distance)
        # Buffers follow .to(device); not persistent, so checkpoints do not depend on them.
        self.register_buffer("polarity", polarity.long(), persistent=False)
        self.register_buffer("wheel_distance", wheel_distance.float(), persistent=False)
        self.w = w
        self.alpha1 = _check_margin("alpha1", alpha1)
        self.alpha2 = _check_margin("alpha2", alpha2)
        self.sampling = sampling
        self.metric = metric

    def set_categories(self, categories: list[str]) -> None:
        """Polarity and wheel distances of a dataset's ``categories`` (emotion names, in its
        category-id order). Other names (bird species) serve the softmax and triplet losses,
        which need neither; with the sentiment constraints they are an error naming them."""
        if not set(categories) <= set(EMOTIONS) and not (self.w > 0 and self.metric == "sentiment"):
            self.num_classes = len(categories)
            return
        self.polarity = category_polarity(categories).to(self.polarity.device)
        self.wheel_distance = emotion_wheel_distance(categories).float().to(self.wheel_distance.device)
        self.num_classes = len(categories)

    def forward(
        self,
        logits: torch.Tensor,
        embeddings: torch.Tensor,
        category_ids: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``generator`` drives the semi-hard draws (None: the global generator)."""
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must be B x {self.num_classes}, got {tuple(logits.shape)}")
        _check_labels(category_ids, self.num_classes, len(logits))
        with torch.autocast(logits.device.type, enabled=False):
            cls = F.cross_entropy(_float(logits), category_ids)
        if self.w == 0:
            # Softmax alone: skip the metric term, which would also consume random draws.
            return cls
        if self.metric == "triplet":
            sml = triplet_loss(embeddings, category_ids, self.alpha1)
        else:
            sml = sentiment_constraint_loss(embeddings, category_ids, self.polarity,
                                            self.wheel_distance, self.alpha1, self.alpha2,
                                            self.sampling, generator)
        return (1 - self.w) * cls + self.w * sml

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, w={self.w}, alpha1={self.alpha1}, "
                f"alpha2={self.alpha2}, sampling={self.sampling!r}, metric={self.metric!r}")
