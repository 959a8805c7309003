"""P4's CAM-based disagreement loss (Yoon et al., ETRI Journal 2020), in our reading of the
abstract: the caption decoder's attention and the classifier's class activation map (CAM)
of the true class, each a distribution over the ``H x W`` grid, should agree.

``L = L_cls + lambda_cap * L_cap + lambda_dis * L_dis`` with ``L_dis = KL(A || CAM)`` by
default (symmetric KL and Jensen-Shannon as options). Grid cells are flattened row-major.
"""

from __future__ import annotations

import torch
from torch import nn

DIVERGENCES = ("kl", "symmetric_kl", "js")
DIRECTIONS = ("attention||cam", "cam||attention")
CAM_NORMALISATIONS = ("softmax", "relu")


def step_attention(attention: torch.Tensor,
                   step_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``B x N``: the mean of the attention maps ``B x T x N`` over the selected steps.

    ``step_mask`` (``B x T`` bool) selects the steps: the non-PAD steps of a caption
    (``tokens[:, 1:] != PAD``), or those that emit a word of the image's class
    (``torch.isin(tokens[:, 1:], class_word_ids)``); None selects every step. As each map sums
    to 1, the mean (the sum divided by the number of selected steps) is a distribution. A row
    with no selected step is all 0: :func:`disagreement_loss` gives it 0 and leaves it out of
    its mean.
    """
    if attention.ndim != 3:
        raise ValueError(f"attention must be B x T x N, got shape {tuple(attention.shape)}")
    if step_mask is None:
        return attention.mean(dim=1)
    if step_mask.shape != attention.shape[:2] or step_mask.dtype != torch.bool:
        raise ValueError(f"step_mask must be bool of shape {tuple(attention.shape[:2])}, "
                         f"got {step_mask.dtype} of shape {tuple(step_mask.shape)}")
    total = (attention * step_mask[..., None]).sum(dim=1)
    return total / step_mask.sum(dim=1, keepdim=True).clamp(min=1)


def class_shares(classes: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``B x K`` float32: each image's weight on each class in the mean of its classes' maps.

    ``classes`` is either ``B`` class ids (one-hot rows) or a ``B x K`` multi-hot (positives
    > 0; 0 negative, -1 unknown): each positive class gets ``1 / (number of positives)``; an
    image with no positive class gets an all-0 row.
    """
    is_ids = not classes.is_floating_point() and classes.dtype != torch.bool
    if classes.ndim == 1 and is_ids:
        if classes.numel() and not ((classes >= 0) & (classes < num_classes)).all():
            raise ValueError(f"classes must lie in [0, {num_classes}), got "
                             f"[{int(classes.min())}, {int(classes.max())}]")
        return nn.functional.one_hot(classes, num_classes).float()
    if classes.ndim == 2 and classes.shape[1] == num_classes:
        positive = (classes > 0).float()
        return positive / positive.sum(dim=1, keepdim=True).clamp(min=1)
    raise ValueError(f"classes must be class ids or a B x {num_classes} multi-hot, "
                     f"got {classes.dtype} of shape {tuple(classes.shape)}")


def class_activation_map(features: torch.Tensor, weight: torch.Tensor, classes: torch.Tensor,
                         bias: torch.Tensor | None = None) -> torch.Tensor:
    """``B x H x W``: ``CAM_c = sum_k w_ck F_k`` (Zhou et al. 2016) of each image's class.

    ``features`` is the CNN's last map ``F`` (``B x D x H x W``) read by a global-average-pool +
    linear classifier of ``weight`` (``K x D``). ``classes`` is either ``B`` class ids or a
    ``B x K`` multi-hot (positives > 0; 0 negative, -1 unknown): then the map is the mean of
    the positive classes' CAMs (:func:`class_shares`), which by linearity is the CAM of their
    mean weight; an image with no positive class gets an all-0 map (leave it out of
    :func:`disagreement_loss` by zeroing its attention row). ``bias`` (``K``), None by default
    as in Zhou et al., adds ``b_c`` to every cell so that the map's mean over the grid is the
    class logit.
    """
    if features.ndim != 4:
        raise ValueError(f"features must be B x D x H x W, got shape {tuple(features.shape)}")
    batch, dim = features.shape[:2]
    if weight.ndim != 2 or weight.shape[1] != dim:
        raise ValueError(f"weight must be K x {dim}, got shape {tuple(weight.shape)}")
    num_classes = weight.shape[0]
    if bias is not None and bias.shape != (num_classes,):
        raise ValueError(f"bias must have shape ({num_classes},), got {tuple(bias.shape)}")
    if classes.shape[:1] != (batch,):
        raise ValueError(f"classes must be {batch} class ids or a {batch} x {num_classes} "
                         f"multi-hot, got {classes.dtype} of shape {tuple(classes.shape)}")
    share = class_shares(classes, num_classes).to(weight.dtype)
    cam = torch.einsum("bd,bdhw->bhw", share @ weight, features)
    if bias is not None:
        cam = cam + (share @ bias)[:, None, None]
    return cam


def mean_class_map(cams: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """``B x H x W``: the mean of the maps of each image's classes (:func:`class_shares`),
    from every class's map ``cams`` (``B x K x H x W``); equal to :func:`class_activation_map`
    of the same classes where ``cams`` are the per-class CAMs of its features and weight."""
    if cams.ndim != 4 or classes.shape[:1] != cams.shape[:1]:
        raise ValueError(f"cams must be B x K x H x W with one row of classes per image, got cams "
                         f"{tuple(cams.shape)} and classes {tuple(classes.shape)}")
    return torch.einsum("bk,bkhw->bhw", class_shares(classes, cams.shape[1]).to(cams.dtype), cams)


def _kl(p: torch.Tensor, q: torch.Tensor, eps: float) -> torch.Tensor:
    """``sum_i p_i (log max(p_i, eps) - log max(q_i, eps))`` per row: exact where both are
    >= eps; the clamps keep value and gradient finite at zeros (``0 log 0 = 0``)."""
    return (p * (p.clamp_min(eps).log() - q.clamp_min(eps).log())).sum(dim=-1)


def _check_options(divergence: str, direction: str, cam_normalisation: str, eps: float) -> None:
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if cam_normalisation not in CAM_NORMALISATIONS:
        raise ValueError(f"cam_normalisation must be one of {CAM_NORMALISATIONS}, "
                         f"got {cam_normalisation!r}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")


def disagreement_loss(attention: torch.Tensor, cam: torch.Tensor, divergence: str = "kl",
                      direction: str = "attention||cam", cam_normalisation: str = "softmax",
                      eps: float = 1e-8) -> torch.Tensor:
    """``L_dis``: the mean over images of a divergence between attention ``A`` and CAM ``C``.

    ``attention`` (``B x N`` or ``B x H x W``, from :func:`step_attention`) is divided by its sum,
    a no-op on a distribution; ``cam`` (``B x H x W``, from :func:`class_activation_map`) is
    made one by ``cam_normalisation``: "softmax" over the grid (default, assumed: every cell
    keeps some mass; it depends on the CAM's scale), or "relu" (``max(C, 0) / sum max(C, 0)``:
    the positive evidence only, as CAM displays show it). Divergences, in at least float32:

    - "kl": ``KL(A || C)`` (``direction="attention||cam"``, default) or ``KL(C || A)``;
    - "symmetric_kl": ``(KL(A || C) + KL(C || A)) / 2``;
    - "js": ``(KL(A || M) + KL(C || M)) / 2`` with ``M = (A + C) / 2``;

    with ``KL(p || q) = sum_i p_i (log max(p_i, eps) - log max(q_i, eps))``. ``direction`` only
    matters for "kl". Images whose attention is all 0 (no selected step) or, with "relu",
    whose CAM has no positive cell give 0 and are left out of the mean (0 if none is left).
    Gradients reach both maps; detach one to train only the other.
    """
    _check_options(divergence, direction, cam_normalisation, eps)
    if cam.ndim != 3:
        raise ValueError(f"cam must be B x H x W, got shape {tuple(cam.shape)}")
    if attention.shape not in (cam.shape, (cam.shape[0], cam.shape[1] * cam.shape[2])):
        raise ValueError(f"attention must be B x N or B x H x W for cam {tuple(cam.shape)}, "
                         f"got shape {tuple(attention.shape)}")
    dtype = torch.promote_types(torch.promote_types(attention.dtype, cam.dtype), torch.float32)
    attention = attention.to(dtype).flatten(1)
    cam = cam.to(dtype).flatten(1)

    mass = attention.sum(dim=1, keepdim=True)
    valid = mass[:, 0] > 0
    a = attention / torch.where(mass > 0, mass, 1.0)
    if cam_normalisation == "softmax":
        c = cam.softmax(dim=1)
    else:
        positive = cam.clamp_min(0)
        cam_mass = positive.sum(dim=1, keepdim=True)
        valid = valid & (cam_mass[:, 0] > 0)
        c = positive / torch.where(cam_mass > 0, cam_mass, 1.0)

    if divergence == "kl":
        per_image = _kl(a, c, eps) if direction == "attention||cam" else _kl(c, a, eps)
    elif divergence == "symmetric_kl":
        per_image = (_kl(a, c, eps) + _kl(c, a, eps)) / 2
    else:
        m = (a + c) / 2
        per_image = (_kl(a, m, eps) + _kl(c, m, eps)) / 2
    # where, not a product: an excluded row's value never reaches the result or the gradient.
    per_image = torch.where(valid, per_image, 0.0)
    return per_image.sum() / valid.sum().clamp(min=1)


class JointCaptionLoss(nn.Module):
    """P4's total loss ``L = lambda_cls * L_cls + lambda_cap * L_cap + lambda_dis * L_dis``.

    ``L_cls`` and ``L_cap`` come computed (e.g. cross-entropy and
    :meth:`AttentionCaptioner.caption_loss`); ``L_dis`` is :func:`disagreement_loss` of the
    pooled attention and the CAM, with this module's options. ``lambda_cap=1.0`` and
    ``lambda_dis=0.1`` are assumed (docs/PAPERS.md, P4); ``lambda_cls=1.0`` is P4's sum, and 0
    gives the captioner-only baseline (with ``lambda_dis=0``), as ``lambda_cap=0,
    lambda_dis=0`` gives the classifier-only one. A term of weight 0 is still computed and
    multiplied by 0, so that every parameter gets a (zero) gradient, as
    DistributedDataParallel requires.
    """

    def __init__(self, lambda_cap: float = 1.0, lambda_dis: float = 0.1, *,
                 lambda_cls: float = 1.0, divergence: str = "kl",
                 direction: str = "attention||cam", cam_normalisation: str = "softmax",
                 eps: float = 1e-8):
        super().__init__()
        for name, value in (("lambda_cls", lambda_cls), ("lambda_cap", lambda_cap),
                            ("lambda_dis", lambda_dis)):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        self.lambda_cls, self.lambda_cap, self.lambda_dis = lambda_cls, lambda_cap, lambda_dis
        # Bad options fail here, not at the first training step.
        _check_options(divergence, direction, cam_normalisation, eps)
        self.options = {"divergence": divergence, "direction": direction,
                        "cam_normalisation": cam_normalisation, "eps": eps}

    def forward(self, cls_loss: torch.Tensor, caption_loss: torch.Tensor,
                attention: torch.Tensor, cam: torch.Tensor) -> torch.Tensor:
        """``attention`` ``B x N`` (or ``B x H x W``) and ``cam`` ``B x H x W``."""
        dis = disagreement_loss(attention, cam, **self.options)
        return (self.lambda_cls * cls_loss.float() + self.lambda_cap * caption_loss.float()
                + self.lambda_dis * dis)
