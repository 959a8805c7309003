"""Decode and resize every image once into a memory-mapped uint8 array.

The reference loops decode and resize each JPEG every epoch; here the work is done
once per (image set, size) and the result, ``N x S x S x 3`` uint8, is reused by
every epoch, run and notebook. The cache key covers each file's path, size and
modification time, so an edited image is decoded again.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from .labels import DataError

CACHE_VERSION = 1  # bump when the decode/resize recipe changes


def cache_dir() -> Path:
    return Path(os.environ.get("ANNOTLIB_CACHE_DIR", Path.home() / ".cache" / "annotlib"))


def decode_image(path: Path, size: int) -> np.ndarray:
    """One image as ``size x size x 3`` uint8: RGB, squashed to a square (P0's resize)."""
    try:
        with Image.open(path) as img:
            img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale when it is large
            img = img.convert("RGB").resize((size, size), Image.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{path}: cannot decode image ({err})") from None


def _decode_chunk(args: tuple[list[str], int]) -> np.ndarray:
    paths, size = args
    return np.stack([decode_image(Path(p), size) for p in paths])


def cache_key(paths: list[Path], size: int) -> str:
    digest = hashlib.sha1(f"v{CACHE_VERSION}:{size}".encode())
    for path in paths:
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            raise DataError(f"{path}: image file not found") from None
        digest.update(f"\n{path}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:20]


def cached_images(paths: list[Path], size: int, *, workers: int | None = None,
                  root: Path | None = None, progress: bool = False) -> np.ndarray:
    """All ``paths`` decoded to an ``N x size x size x 3`` uint8 array, memory-mapped from the cache.

    A missing or undecodable image raises :class:`DataError` naming it; nothing is
    written to the cache then. The cache file appears only when complete (atomic rename).
    """
    paths = [Path(p) for p in paths]
    target = (root or cache_dir()) / "images" / f"{cache_key(paths, size)}.npy"
    if target.exists():
        return np.load(target, mmap_mode="r")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".tmp{os.getpid()}.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), size, size, 3))
    chunk = 64
    jobs = [([str(p) for p in paths[i:i + chunk]], size) for i in range(0, len(paths), chunk)]
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    try:
        if workers > 1:
            with ProcessPoolExecutor(workers) as pool:
                results = pool.map(_decode_chunk, jobs)
                _fill(out, results, chunk, progress, len(jobs))
        else:
            _fill(out, map(_decode_chunk, jobs), chunk, progress, len(jobs))
        out.flush()
        del out
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return np.load(target, mmap_mode="r")


def _fill(out: np.ndarray, results, chunk: int, progress: bool, total: int) -> None:
    if progress:
        from tqdm.auto import tqdm
        results = tqdm(results, total=total, desc=f"decoding {len(out)} images", unit="chunk")
    for i, block in enumerate(results):
        out[i * chunk:i * chunk + len(block)] = block


def channel_stats(images: np.ndarray, max_images: int = 2000) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] of (an evenly spaced subset of) ``images``."""
    step = max(1, len(images) // max_images)
    sample = np.asarray(images[::step], dtype=np.float64) / 255.0
    return sample.mean(axis=(0, 1, 2)).tolist(), sample.std(axis=(0, 1, 2)).tolist()
