"""Class activation maps: where in the image a label's score comes from."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from contextlib import contextmanager

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize

from .embeddings import to_numpy


@contextmanager
def _evaluating(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode inside (dropout and batch-norm statistics must not change the maps), every
    submodule's own mode back after, even one that differed from its parent's."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _upsample_and_normalise(maps: torch.Tensor, size) -> torch.Tensor:
    """``maps [B, K, h, w]`` upsampled bilinearly to ``size`` and min-max normalised one by
    one (a constant map becomes all 0): float32 on the CPU."""
    maps = maps.float()
    # A constant map is told apart before upsampling, where rounding cannot blur it.
    flat = maps.amax((2, 3)) == maps.amin((2, 3))
    heat = F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)
    low, high = heat.amin((2, 3), keepdim=True), heat.amax((2, 3), keepdim=True)
    heat = (heat - low) / (high - low).clamp_min(torch.finfo(heat.dtype).tiny)
    heat[flat] = 0.0
    return heat.cpu()


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
    with _evaluating(model):
        maps = model.cam(images.to(device))
    num_classes = maps.shape[1]
    if class_ids.numel() and (class_ids.min() < 0 or class_ids.max() >= num_classes):
        raise ValueError(f"class_ids must lie in [0, {num_classes}), got "
                         f"{class_ids.min().item()}..{class_ids.max().item()}")
    h, w = maps.shape[2:]
    index = class_ids.to(maps.device)[:, :, None, None].expand(-1, -1, h, w)
    return _upsample_and_normalise(maps.gather(1, index), images.shape[2:])


def decoded_step_cams(model: torch.nn.Module, images,
                      sequences) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM of each decoded label at the step that emitted it, for a ``CNNRNN``.

    ``images [B, 3, H, W]`` are normalised as the model expects; ``sequences [B, T]`` are
    decoded label sequences (``model.decode(...).sequences``: labels ``0 .. C-1``, then PAD;
    END is accepted too). Step ``t`` of image ``b`` holds a label when it and every step
    before it do: whatever follows the first END or PAD is ignored, as the teacher-forced
    history of a later step would no longer be the decoded prefix.

    For such a step, the target is the step-``t`` logit of the label emitted there, from the
    teacher-forced ``model(x, sequence)`` along the decoded path, so that the step's input
    history is the decoded prefix. With ``F`` the backbone's last feature map
    (``model.features``), the map is ``ReLU(sum_c w_c F_c)``, ``w_c`` the mean over the grid
    of ``d logit / d F_c`` (Grad-CAM), upsampled and normalised as in
    :func:`class_activation_maps`. The features are computed once and detached, so only
    they receive gradients: one ``torch.autograd.grad`` per step index, over the whole batch
    (images do not interact in eval mode), and no ``.grad`` is left on the model. Runs in
    eval mode and puts every submodule back in the mode it was in.

    Returns float32 maps ``[B, T, H, W]`` on the CPU (0 where a step holds no label) and the
    ``[B, T]`` bool mask of the steps that hold one.
    """
    images = torch.as_tensor(images)
    sequences = torch.as_tensor(sequences)
    if images.ndim != 4:
        raise ValueError(f"images must be [B, 3, H, W], got shape {tuple(images.shape)}")
    if (sequences.ndim != 2 or sequences.shape[0] != images.shape[0]
            or sequences.dtype.is_floating_point or sequences.dtype == torch.bool):
        raise ValueError(f"sequences must be integer [B={images.shape[0]}, T], "
                         f"got {sequences.dtype} of shape {tuple(sequences.shape)}")
    num_classes = model.head.num_classes
    sequences = sequences.long()
    if sequences.numel() and (sequences.min() < -1 or sequences.max() > num_classes):
        raise ValueError(f"sequences must lie in [-1 (PAD), {num_classes} (END)], got "
                         f"{sequences.min().item()}..{sequences.max().item()}")
    batch, steps = sequences.shape
    mask = ((sequences >= 0) & (sequences < num_classes)).long().cumprod(dim=1).bool()
    device = next((p.device for p in model.parameters()), images.device)
    images, on_device = images.to(device), sequences.to(device)
    with _evaluating(model), torch.enable_grad():
        # Only the feature map is differentiated: the backbone's graph is not needed.
        with torch.no_grad():
            features = model.features(images)
        if features.ndim != 4:
            raise ValueError(f"Grad-CAM needs a [B, C, h, w] feature map, got shape "
                             f"{tuple(features.shape)} from model.features")
        features = features.detach().requires_grad_()
        pooled = model.pool(features)
        # The head as CNNRNN.forward runs it: fp32, outside any autocast.
        with torch.autocast(device.type, enabled=False):
            logits = model.head(pooled, on_device)
        emitted = logits.gather(2, on_device.clamp(min=0)[..., None])[..., 0]
        grid = features.float().detach()
        low_res = grid.new_zeros(batch, steps, *grid.shape[2:])
        active = [t for t in range(steps) if mask[:, t].any()]
        for i, t in enumerate(active):
            # A sum over images: each image's logit depends on its own features alone.
            target = emitted[:, t][mask[:, t].to(device)].sum()
            (grad,) = torch.autograd.grad(target, features, retain_graph=i < len(active) - 1)
            weights = grad.float().mean((2, 3), keepdim=True)
            low_res[:, t] = (weights * grid).sum(1).relu()
    low_res[~mask.to(device)] = 0.0
    return _upsample_and_normalise(low_res, images.shape[2:]), mask


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


def plot_cams(images, heats, titles: list[list[str]], alpha: float = 0.5,
              truth: list[list[str]] | None = None, cmap: str = "jet"):
    """A ``B x (K + 1)`` grid: each image, then its ``K`` heat maps overlaid, titled
    ``titles[b][k]``, and one colour bar for the maps. ``images`` uint8 ``[B, H, W, 3]``,
    ``heats [B, K, H, W]`` (from :func:`class_activation_maps`). ``truth[b]``, the image's
    ground-truth labels, titles the image, so that each map reads against what is there.
    Returns the Figure."""
    images, heats = to_numpy(images), to_numpy(heats)
    if heats.ndim != 4 or len(heats) != len(images):
        raise ValueError(f"heats must be [B={len(images)}, K, H, W], got shape {heats.shape}")
    b, k = heats.shape[:2]
    if len(titles) != b or any(len(row) != k for row in titles):
        raise ValueError(f"titles must be {b} lists of {k} names, one per heat map")
    if truth is not None and len(truth) != b:
        raise ValueError(f"truth must be {b} lists of label names, one per image, got {len(truth)}")
    fig, axes = plt.subplots(b, k + 1, figsize=(2.2 * (k + 1) + 0.8, 2.4 * b), squeeze=False,
                             layout="constrained")
    for row in range(b):
        axes[row, 0].imshow(images[row])
        if truth is not None:
            names = textwrap.fill(", ".join(truth[row]) or "(no label)", 28)
            axes[row, 0].set_title(f"true: {names}", fontsize="small")
        for col in range(k):
            axes[row, col + 1].imshow(overlay(images[row], heats[row, col], alpha, cmap))
            axes[row, col + 1].set_title(titles[row][col], fontsize="small")
    for ax in axes.flat:
        ax.axis("off")
    colours = ScalarMappable(Normalize(0.0, 1.0), cmap)
    fig.colorbar(colours, ax=axes, shrink=min(1.0, 0.9 / b ** 0.5), fraction=0.04,
                 label="activation (each map scaled to 0-1)")
    return fig
