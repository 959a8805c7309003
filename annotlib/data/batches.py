"""Batches drawn on the training device from a resident uint8 image array.

The cached images live on the device once; each batch is an index gather, a
per-sample random-resized-crop and flip done as one affine ``grid_sample``, and a
normalisation, so the loader never decodes a JPEG and never waits on workers.
Random draws come from a CPU generator seeded by (seed, epoch): the same batches on
any device, and a resumed run replays exactly the epochs it has not done.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .samplers import Shuffled


def random_resized_crop_boxes(n: int, size: int, scale: tuple[float, float], ratio: tuple[float, float],
                              generator: torch.Generator, tries: int = 10) -> torch.Tensor:
    """``n`` crop boxes ``(top, left, height, width)`` in pixels, drawn as torchvision's
    ``RandomResizedCrop.get_params`` draws them on a ``size x size`` image: up to ``tries``
    area/aspect proposals, the first that fits wins, else a ratio-clamped centre crop."""
    area = size * size
    log_ratio = torch.log(torch.tensor(ratio, dtype=torch.float64))
    target = area * torch.empty(n, tries, dtype=torch.float64).uniform_(*scale, generator=generator)
    aspect = torch.exp(torch.empty(n, tries, dtype=torch.float64)
                       .uniform_(log_ratio[0].item(), log_ratio[1].item(), generator=generator))
    w = torch.sqrt(target * aspect).round().long()
    h = torch.sqrt(target / aspect).round().long()
    fits = (w > 0) & (w <= size) & (h > 0) & (h <= size)
    first = torch.where(fits.any(1), fits.int().argmax(1), -1)
    pick = first.clamp(min=0)[:, None]
    h = torch.gather(h, 1, pick)[:, 0]
    w = torch.gather(w, 1, pick)[:, 0]
    u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    top = (u[:, 0] * (size - h + 1)).floor().long()
    left = (u[:, 1] * (size - w + 1)).floor().long()
    # The input is square, so torchvision's fallback centre crop is the whole image
    # unless the aspect range excludes 1.
    fallback_h = round(size / ratio[0]) if ratio[0] > 1 else size
    fallback_w = round(size * ratio[1]) if ratio[1] < 1 else size
    none = first < 0
    h = torch.where(none, fallback_h, h)
    w = torch.where(none, fallback_w, w)
    top = torch.where(none, (size - h) // 2, top)
    left = torch.where(none, (size - w) // 2, left)
    return torch.stack([top, left, h, w], 1)


def crop_flip_theta(boxes: torch.Tensor, size: int, flip_x: torch.Tensor, flip_y: torch.Tensor) -> torch.Tensor:
    """Affine matrices (``affine_grid``, ``align_corners=False``) that resample each box,
    mirrored where ``flip_x`` / ``flip_y``, onto the full output grid."""
    top, left, h, w = boxes.double().unbind(1)
    sx = w / size * torch.where(flip_x, -1.0, 1.0).double()
    sy = h / size * torch.where(flip_y, -1.0, 1.0).double()
    cx = (2 * left + w) / size - 1
    cy = (2 * top + h) / size - 1
    zero = torch.zeros_like(sx)
    return torch.stack([torch.stack([sx, zero, cx], 1), torch.stack([zero, sy, cy], 1)], 1).float()


class DeviceBatches:
    """Iterate dict batches of a split on ``device``: ``image`` (normalised, augmented when
    training), ``index`` (the samples' positions in the split, on the CPU) and every
    per-sample tensor of ``fields`` (``labels``, ``category_ids``, ``tokens``, ...) at those rows.

    ``images``: ``N x S x S x 3`` uint8 (e.g. from :func:`cached_images`). With
    ``train=True`` the order is the ``sampler``'s (default: shuffled) per epoch and the
    augmentations are applied; otherwise batches are in order, unaugmented.
    ``rank``/``world_size`` shard the samples for distributed training.
    """

    def __init__(self, images: np.ndarray, fields: dict[str, torch.Tensor], *, batch_size: int,
                 device: str | torch.device = "cpu", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                 train: bool = False, sampler: Callable[[torch.Generator], torch.Tensor] | None = None,
                 out_size: int | None = None, hflip: bool = False, vflip: bool = False,
                 crop_scale: tuple[float, float] | None = None, crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 channels_last: bool = False, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.device = torch.device(device)
        self.images = torch.from_numpy(np.array(images, dtype=np.uint8)).to(self.device)
        if self.images.ndim != 4 or self.images.shape[1] != self.images.shape[2] or self.images.shape[3] != 3:
            raise ValueError(f"images must be N x S x S x 3, got {tuple(self.images.shape)}")
        for name, value in fields.items():
            if len(value) != len(self.images):
                raise ValueError(f"{name}: {len(value)} rows for {len(self.images)} images")
        self.fields = {name: value.to(self.device) for name, value in fields.items()}
        self.size = self.images.shape[1]
        self.out_size = out_size or self.size
        self.batch_size, self.train, self.seed = batch_size, train, seed
        self.sampler = sampler or Shuffled(len(self.images))
        self.hflip, self.vflip, self.crop_scale, self.crop_ratio = hflip, vflip, crop_scale, crop_ratio
        self.channels_last = channels_last
        self.rank, self.world_size = rank, world_size
        shape = (1, 3, 1, 1)
        self.mean = torch.tensor(mean, device=self.device).view(shape) * 255
        self.std = torch.tensor(std, device=self.device).view(shape) * 255
        self.epoch = 0
        self._length = len(self._order(torch.Generator().manual_seed(0)))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self, generator: torch.Generator) -> torch.Tensor:
        order = self.sampler(generator) if self.train else torch.arange(len(self.images))
        if self.world_size > 1:
            # Every rank gets the same number of samples (padding by wrapping around), as DistributedSampler does.
            n = len(order)
            per_rank = math.ceil(n / self.world_size)
            order = order.repeat(math.ceil(per_rank * self.world_size / n))[:per_rank * self.world_size]
            order = order[self.rank::self.world_size]
        return order

    def __len__(self) -> int:
        n = self._length
        # Training drops a last partial batch so every step sees a full batch (OneCycle counts on it).
        return n // self.batch_size if self.train and n >= self.batch_size else math.ceil(n / self.batch_size)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = self._order(generator)
        # The epoch's order and augmentation parameters go to the device in one copy each, so
        # the batch loop never waits on a host-to-device transfer.
        on_device = order.to(self.device)
        theta, flips = self._augmentation(len(order), generator)
        for b in range(len(self)):
            at = slice(b * self.batch_size, (b + 1) * self.batch_size)
            idx = on_device[at]
            image = self._images(idx, None if theta is None else theta[at], None if flips is None else flips[at])
            yield {"image": image, "index": order[at], **{name: value[idx] for name, value in self.fields.items()}}

    def _augmentation(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Per-position crop-and-flip matrices (with a crop) or flip flags (without), on the device."""
        if not self.train:
            return None, None
        if self.crop_scale is not None:
            boxes = random_resized_crop_boxes(n, self.size, self.crop_scale, self.crop_ratio, generator)
            flips = torch.rand(n, 2, generator=generator) < 0.5
            theta = crop_flip_theta(boxes, self.size, flips[:, 0] & self.hflip, flips[:, 1] & self.vflip)
            return theta.to(self.device), None
        if self.hflip or self.vflip:
            flips = torch.rand(n, 2, generator=generator) < 0.5
            flips &= torch.tensor([self.hflip, self.vflip])
            return None, flips.to(self.device)
        return None, None

    def _images(self, idx: torch.Tensor, theta: torch.Tensor | None, flips: torch.Tensor | None) -> torch.Tensor:
        x = self.images[idx].permute(0, 3, 1, 2).float()
        if theta is not None:
            grid = F.affine_grid(theta, [len(idx), 3, self.out_size, self.out_size], align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        else:
            if flips is not None:
                x = torch.where(flips[:, 0, None, None, None], x.flip(3), x)
                x = torch.where(flips[:, 1, None, None, None], x.flip(2), x)
            if self.out_size != self.size:
                x = F.interpolate(x, size=(self.out_size, self.out_size), mode="bilinear",
                                  align_corners=False, antialias=True)
        x = (x - self.mean) / self.std
        # The cache is N x H x W x C, so without this the batch would be channels-last in memory.
        return x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
