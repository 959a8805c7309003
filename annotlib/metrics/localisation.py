"""Localisation of heat maps (CAM, attention) against ground-truth boxes: the pointing game
(Zhang et al., ECCV 2016) and the energy inside the box (Wang et al., Score-CAM 2020).

Each query is one (image, class) pair: a map ``h x w`` over the image, the class, and the
image's boxes ``n x 5`` as ``(class, x0, y0, x1, y1)`` in pixels of the ``S x S`` image the
network saw. The map is upsampled to ``S x S`` (bilinear by default, as CAMs are shown) and
both metrics are computed on pixels: pixel ``(r, c)`` has its centre at ``(c + 0.5, r + 0.5)``
and lies in a box if ``x0 <= c + 0.5 <= x1`` and ``y0 <= r + 0.5 <= y1``. A query whose image
has no box of its class scores NaN: ``torch.nanmean`` over the queries skips it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F

MODES = ("bilinear", "nearest")


def _prepare(maps: torch.Tensor, classes: torch.Tensor, boxes: Sequence[torch.Tensor],
             image_size: int, mode: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(heat B x S x S, box B x n x 4, present B x n)``: the upsampled maps, the boxes padded
    to the most any query has, and which of them are real boxes of the query's class."""
    if maps.ndim != 3:
        raise ValueError(f"maps must be B x h x w, got shape {tuple(maps.shape)}")
    batch = maps.shape[0]
    if classes.shape != (batch,) or classes.is_floating_point():
        raise ValueError(f"classes must be {batch} integer class ids, "
                         f"got {classes.dtype} of shape {tuple(classes.shape)}")
    if len(boxes) != batch:
        raise ValueError(f"boxes must hold one n x 5 tensor per map ({batch}), got {len(boxes)}")
    for b, image_boxes in enumerate(boxes):
        if image_boxes.ndim != 2 or image_boxes.shape[1] != 5:
            raise ValueError(f"boxes[{b}] must be n x 5 (class, x0, y0, x1, y1), "
                             f"got shape {tuple(image_boxes.shape)}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")

    heat = F.interpolate(maps[:, None].float(), size=(image_size, image_size), mode=mode,
                         **({"align_corners": False} if mode == "bilinear" else {}))[:, 0]
    most = max((len(image_boxes) for image_boxes in boxes), default=0)
    padded = torch.full((batch, most, 5), -1.0, device=maps.device)
    for b, image_boxes in enumerate(boxes):
        padded[b, :len(image_boxes)] = image_boxes.to(padded)
    present = padded[..., 0] == classes[:, None].to(padded)  # padding's class -1 never matches
    return heat, padded[..., 1:], present


def pointing_game(maps: torch.Tensor, classes: torch.Tensor, boxes: Sequence[torch.Tensor],
                  image_size: int, mode: str = "bilinear", tolerance: float = 0.0) -> torch.Tensor:
    """``B`` float: 1 where the maximum of the upsampled map lies in a box of the class
    (within ``tolerance`` pixels of it; Zhang et al. use 15, we assume 0), 0 where it does
    not, NaN where the image has no box of the class. Of equal maxima the first in row-major
    order counts (``argmax``). The accuracy is ``torch.nanmean`` of the result.
    """
    if not tolerance >= 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance!r}")
    heat, box, present = _prepare(maps, classes, boxes, image_size, mode)
    peak = heat.flatten(1).argmax(dim=1)
    x = (peak % image_size).float()[:, None] + 0.5
    y = torch.div(peak, image_size, rounding_mode="floor").float()[:, None] + 0.5
    x0, y0, x1, y1 = box.unbind(-1)
    inside = ((x0 - tolerance <= x) & (x <= x1 + tolerance)
              & (y0 - tolerance <= y) & (y <= y1 + tolerance))
    hit = (inside & present).any(dim=1).float()
    return torch.where(present.any(dim=1), hit, torch.nan)


def energy_in_box(maps: torch.Tensor, classes: torch.Tensor, boxes: Sequence[torch.Tensor],
                  image_size: int, mode: str = "bilinear") -> torch.Tensor:
    """``B`` float: ``sum_{p in U} max(m_p, 0) / sum_p max(m_p, 0)`` over the pixels ``p`` of the
    upsampled map, ``U`` the union of the class's boxes; 0 for a map with no positive mass
    (no evidence anywhere is none in the box), NaN where the image has no box of the class.
    """
    heat, box, present = _prepare(maps, classes, boxes, image_size, mode)
    centre = torch.arange(image_size, device=heat.device, dtype=torch.float32) + 0.5
    x0, y0, x1, y1 = (coordinate[..., None] for coordinate in box.unbind(-1))
    in_x = (x0 <= centre) & (centre <= x1) & present[..., None]  # B x n x S
    in_y = (y0 <= centre) & (centre <= y1) & present[..., None]
    union = torch.zeros_like(heat, dtype=torch.bool)
    # One box slot at a time over all images: B x S x S memory, not B x n x S x S.
    for j in range(box.shape[1]):
        union |= in_y[:, j, :, None] & in_x[:, j, None, :]
    positive = heat.clamp_min(0).flatten(1)
    total = positive.sum(dim=1)
    inside = (positive * union.flatten(1)).sum(dim=1)
    energy = torch.where(total > 0, inside / torch.where(total > 0, total, 1.0), 0.0)
    return torch.where(present.any(dim=1), energy, torch.nan)
