"""Class activation maps: where in the image a label's score comes from."""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from .embeddings import to_numpy


@torch.no_grad()
def class_activation_maps(model: torch.nn.Module, images, class_ids) -> torch.Tensor:
    """Heat maps ``[B, K, H, W]`` in [0, 1] of the classes ``class_ids [B, K]`` of each image.

    ``images [B, 3, H, W]`` are normalised as the model expects. The maps are
    ``model.cam(images)`` (``B x C x h x w``) at the requested classes, upsampled bilinearly
    to the image size and min-max normalised one by one, so that each shows where, not how
    strongly, its class is seen; a constant map becomes all 0. Runs in eval mode (dropout
    and batch-norm statistics must not change the maps) and puts every submodule back in
    the mode it was in. Returns float32 maps on the CPU, for plotting.
    """
    images = torch.as_tensor(images)
    class_ids = torch.as_tensor(class_ids, dtype=torch.long)
    if images.ndim != 4:
        raise ValueError(f"images must be [B, 3, H, W], got shape {tuple(images.shape)}")
    if class_ids.ndim != 2 or class_ids.shape[0] != images.shape[0]:
        raise ValueError(f"class_ids must be [B={images.shape[0]}, K], "
                         f"got shape {tuple(class_ids.shape)}")
    device = next((p.device for p in model.parameters()), images.device)
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        maps = model.cam(images.to(device))
    finally:
        for module, training in modes:
            module.training = training
    num_classes = maps.shape[1]
    if class_ids.numel() and (class_ids.min() < 0 or class_ids.max() >= num_classes):
        raise ValueError(f"class_ids must lie in [0, {num_classes}), got "
                         f"{class_ids.min().item()}..{class_ids.max().item()}")
    h, w = maps.shape[2:]
    index = class_ids.to(maps.device)[:, :, None, None].expand(-1, -1, h, w)
    picked = maps.gather(1, index).float()
    # A constant map is told apart before upsampling, where rounding cannot blur it.
    flat = picked.amax((2, 3)) == picked.amin((2, 3))
    heat = F.interpolate(picked, size=images.shape[2:], mode="bilinear", align_corners=False)
    low, high = heat.amin((2, 3), keepdim=True), heat.amax((2, 3), keepdim=True)
    heat = (heat - low) / (high - low).clamp_min(torch.finfo(heat.dtype).tiny)
    heat[flat] = 0.0
    return heat.cpu()


def overlay(image, heat, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """``(1 - alpha) * image / 255 + alpha * cmap(heat)``: float ``[H, W, 3]`` in [0, 1].

    ``image`` is uint8 ``[H, W, 3]``, ``heat`` ``[H, W]`` in [0, 1]; alpha 0 gives the image,
    alpha 1 the coloured heat map.
    """
    image, heat = to_numpy(image), to_numpy(heat)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
    if heat.shape != image.shape[:2]:
        raise ValueError(f"heat must be [H, W] = {image.shape[:2]}, got {heat.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    colours = matplotlib.colormaps[cmap](heat.astype(np.float64))[..., :3]
    return (1.0 - alpha) * (image / 255.0) + alpha * colours


def plot_cams(images, heats, titles: list[list[str]], alpha: float = 0.5):
    """A ``B x (K + 1)`` grid: each image, then its ``K`` heat maps overlaid, titled
    ``titles[b][k]``. ``images`` uint8 ``[B, H, W, 3]``, ``heats [B, K, H, W]`` (from
    :func:`class_activation_maps`). Returns the Figure."""
    images, heats = to_numpy(images), to_numpy(heats)
    if heats.ndim != 4 or len(heats) != len(images):
        raise ValueError(f"heats must be [B={len(images)}, K, H, W], got shape {heats.shape}")
    b, k = heats.shape[:2]
    if len(titles) != b or any(len(row) != k for row in titles):
        raise ValueError(f"titles must be {b} lists of {k} names, one per heat map")
    fig, axes = plt.subplots(b, k + 1, figsize=(2.2 * (k + 1), 2.2 * b), squeeze=False)
    for row in range(b):
        axes[row, 0].imshow(images[row])
        for col in range(k):
            axes[row, col + 1].imshow(overlay(images[row], heats[row, col], alpha))
            axes[row, col + 1].set_title(titles[row][col], fontsize="small")
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    return fig
