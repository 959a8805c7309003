"""Batches drawn on the training device from the uint8 image cache.

Each batch is a gather of its rows, a per-sample random-resized-crop and flip done on the
device as one affine ``grid_sample``, and a normalisation, so the loader never decodes a
JPEG and never waits on workers. The rows come from one of two places:

- streamed (the default for a split too large for :func:`fits_in_memory`): a background
  thread reads each batch's rows from the memory-mapped cache, in file order, into pinned
  host memory a few batches ahead, and the batch goes to the device with a non-blocking
  copy; memory stays a few batches whatever the split's size;
- resident: the whole split copied to the device once, and each batch an index gather there.

Both give the same batches bitwise. Random draws come from a CPU generator seeded by
(seed, epoch): the same batches on any device, and a resumed run replays exactly the epochs
it has not done.
"""

from __future__ import annotations

import hashlib
import math
import mmap
import os
import queue
import threading
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .samplers import Shuffled

# A split stays resident when its uint8 images take at most this share of the free memory of
# the device (CUDA) or of the available RAM (CPU); the rest is left to the model, its
# activations and the other splits.
RESIDENT_FRACTION = 0.25
PREFETCH = 3  # batches read ahead of the one being trained on
_LOAD_BYTES = 1 << 28  # a resident split goes to the device in blocks of this size


def available_memory(device: torch.device) -> int:
    """Free bytes of ``device``: CUDA's free memory, or the RAM Linux counts as available
    (free plus reclaimable page cache; free pages elsewhere)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def fits_in_memory(nbytes: int, device: torch.device) -> bool:
    """Whether a split of ``nbytes`` is kept whole on ``device``: at most
    :data:`RESIDENT_FRACTION` of :func:`available_memory`."""
    return nbytes <= RESIDENT_FRACTION * available_memory(device)


def rank_seed(seed: int, rank: int) -> int:
    """The seed of ``rank``'s own random stream: ``seed`` itself on rank 0 (so one process
    draws what it always drew), a hash of (seed, rank) elsewhere: distinct per rank, and the
    whole run still follows from its seed."""
    if rank == 0:
        return seed
    return int.from_bytes(hashlib.sha256(f"{seed}/{rank}".encode()).digest()[:7], "big")


def release_pages(images: np.ndarray) -> None:
    """Drop the pages of ``images``' memory map from this process's resident set: a later read
    faults them in again from the page cache. Only for a map shared with its file (not an
    array in memory, nor a copy-on-write map, whose changes live in those pages alone)."""
    mapping = getattr(images, "_mmap", None)  # np.memmap's, shared by its views
    if (isinstance(mapping, mmap.mmap) and getattr(images, "mode", "c") != "c"
            and hasattr(mapping, "madvise") and hasattr(mmap, "MADV_DONTNEED")):
        mapping.madvise(mmap.MADV_DONTNEED)


class Prefetcher:
    """``read(0)``, ``read(1)``, ... ``read(count - 1)`` computed by a background thread, up to
    ``depth`` ahead of :meth:`get`. An error in ``read`` is raised by the :meth:`get` that
    would have returned its result; :meth:`close` (also on leaving a ``with``) stops the
    thread and waits for it, whether or not every result was taken."""

    def __init__(self, read: Callable[[int], object], count: int, depth: int = PREFETCH):
        self._queue: queue.Queue = queue.Queue(depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(read, count), name="annotlib-prefetch",
                                        daemon=True)
        self._thread.start()

    def _run(self, read, count: int) -> None:
        try:
            for b in range(count):
                if not self._put((read(b), None)):
                    return
        except BaseException as err:  # noqa: BLE001 - every error goes to the reader, who never waits on a dead thread
            self._put((None, err))

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                pass
        return False

    def get(self):
        value, err = self._queue.get()
        if err is not None:
            raise err
        return value

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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

    ``images``: ``N x S x S x 3`` uint8 (e.g. the memory map of :func:`cached_images`).
    ``resident``: keep the whole split on the device (True) or stream it batch by batch
    (False); None: resident when it :func:`fits_in_memory`. With ``train=True`` the order is
    the ``sampler``'s (default: shuffled) per epoch and the augmentations are applied;
    otherwise batches are in order, unaugmented. ``rank``/``world_size`` shard the samples
    for distributed training or evaluation; each rank draws its own augmentations
    (:func:`rank_seed`).
    """

    def __init__(self, images: np.ndarray, fields: dict[str, torch.Tensor], *, batch_size: int,
                 device: str | torch.device = "cpu", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                 train: bool = False, sampler: Callable[[torch.Generator], torch.Tensor] | None = None,
                 out_size: int | None = None, hflip: bool = False, vflip: bool = False,
                 crop_scale: tuple[float, float] | None = None, crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 channels_last: bool = False, seed: int = 0, rank: int = 0, world_size: int = 1,
                 resident: bool | None = None):
        self.device = torch.device(device)
        shape = tuple(images.shape)
        if len(shape) != 4 or shape[1] != shape[2] or shape[3] != 3 or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 N x S x S x 3, got {images.dtype} {shape}")
        for name, value in fields.items():
            if len(value) != shape[0]:
                raise ValueError(f"{name}: {len(value)} rows for {shape[0]} images")
        self.resident = fits_in_memory(images.nbytes, self.device) if resident is None else resident
        self.images = self._load(images) if self.resident else images
        self.num_samples = shape[0]
        self.fields = {name: value.to(self.device) for name, value in fields.items()}
        self.size = shape[1]
        self.out_size = out_size or self.size
        self.batch_size, self.train, self.seed = batch_size, train, seed
        self.sampler = sampler or Shuffled(self.num_samples)
        self.hflip, self.vflip, self.crop_scale, self.crop_ratio = hflip, vflip, crop_scale, crop_ratio
        self.channels_last = channels_last
        self.rank, self.world_size = rank, world_size
        stats = (1, 3, 1, 1)
        self.mean = torch.tensor(mean, device=self.device).view(stats) * 255
        self.std = torch.tensor(std, device=self.device).view(stats) * 255
        self.epoch = 0
        self._length = len(self._order(torch.Generator().manual_seed(0)))

    def _load(self, images: np.ndarray) -> torch.Tensor:
        """The whole split on the device, copied over in blocks, so that no second whole copy
        is ever made in host memory on the way to a GPU."""
        out = torch.empty(images.shape, dtype=torch.uint8, device=self.device)
        rows = max(1, _LOAD_BYTES // math.prod(images.shape[1:]))
        for start in range(0, len(out), rows):
            out[start:start + rows] = torch.from_numpy(np.array(images[start:start + rows]))
            release_pages(images)
        return out

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self, generator: torch.Generator) -> torch.Tensor:
        order = self.sampler(generator) if self.train else torch.arange(self.num_samples)
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
        order = self._order(generator)  # the same on every rank: each takes its shard of one order
        if self.rank:
            generator = torch.Generator().manual_seed(rank_seed(self.seed * 100_003 + self.epoch, self.rank))
        # The epoch's order and augmentation parameters go to the device in one copy each, so
        # the batch loop never waits on a host-to-device transfer for them.
        on_device = order.to(self.device)
        theta, flips = self._augmentation(len(order), generator)
        spans = [slice(b * self.batch_size, (b + 1) * self.batch_size) for b in range(len(self))]
        if self.resident:
            yield from self._batches(order, on_device, spans, theta, flips,
                                     (self.images[on_device[at]] for at in spans))
            return
        with Prefetcher(lambda b: self._read(order[spans[b]].numpy()), len(spans)) as rows:
            fetched = (rows.get().to(self.device, non_blocking=True) for _ in spans)
            yield from self._batches(order, on_device, spans, theta, flips, fetched)

    def _batches(self, order, on_device, spans, theta, flips, rows):
        for at, x in zip(spans, rows):
            idx = on_device[at]
            image = self._images(x, None if theta is None else theta[at], None if flips is None else flips[at])
            yield {"image": image, "index": order[at], **{name: value[idx] for name, value in self.fields.items()}}

    def _read(self, rows: np.ndarray) -> torch.Tensor:
        """The uint8 images at ``rows``, in that order, read from the cache in file order
        (cheaper on a disk than a random order), in pinned memory when going to a GPU."""
        out = torch.empty((len(rows), self.size, self.size, 3), dtype=torch.uint8,
                          pin_memory=self.device.type == "cuda")
        buffer = out.numpy()
        for k in np.argsort(rows, kind="stable"):
            buffer[k] = self.images[rows[k]]
        # Pages of a memory map count in the process's resident set once read, and the kernel
        # maps whole page-cache folios around each read (measured: about 3x the bytes read);
        # dropping them after every batch keeps that to one batch's worth.
        release_pages(self.images)
        return out

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

    def _images(self, x: torch.Tensor, theta: torch.Tensor | None, flips: torch.Tensor | None) -> torch.Tensor:
        """The batch's uint8 ``B x S x S x 3`` rows on the device, augmented and normalised."""
        x = x.permute(0, 3, 1, 2)
        if theta is not None:
            grid = F.affine_grid(theta, [len(x), 3, self.out_size, self.out_size], align_corners=False)
            x = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
        else:
            if flips is not None:  # on the uint8 pixels: exact, and a quarter of the bytes to move
                x = torch.where(flips[:, 0, None, None, None], x.flip(3), x)
                x = torch.where(flips[:, 1, None, None, None], x.flip(2), x)
            if self.out_size != self.size:
                x = F.interpolate(x.float(), size=(self.out_size, self.out_size), mode="bilinear",
                                  align_corners=False, antialias=True)
        # The cache is N x H x W x C, so without the layout asked for here the batch would be
        # channels-last in memory. One float copy in that layout, normalised in place: x is
        # always a fresh tensor here, never the cache's.
        x = x.to(torch.float32, memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        return x.sub_(self.mean).div_(self.std)
