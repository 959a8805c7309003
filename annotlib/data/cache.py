"""Decode and resize every image once into a memory-mapped uint8 array.

The reference loops decode and resize each JPEG every epoch; here the work is done
once per (image set, size) and the result, ``N x S x S x 3`` uint8, is reused by
every epoch, run and notebook. The cache key covers each file's path, size and
modification time, so an edited image is decoded again.

Each ``<key>.npy`` has a sidecar ``<key>.json`` (key, shape, dtype, byte size, CRC-32 of
the file) written once the data are complete; a cache file whose sidecar is missing or
does not match is decoded again with a warning, never used as it is.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import math
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import time
import warnings
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from ..io import locked_temp, remove_unlocked
from .batches import release_pages
from .labels import DataError

CACHE_VERSION = 1  # bump when the decode/resize recipe changes
_CHUNK = 64  # images per decode job
_BLOCK = 1 << 24  # bytes per read or write when checksumming or zero-filling a cache file
_STATS_PIXELS = 1 << 21  # pixels per block in channel_stats (48 MiB of float64)
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


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


def _worker_init(parent: int) -> None:
    """Make a decode worker end with its parent, however the parent dies (SIGKILL too).

    Without this a worker blocked on the job queue never sees the queue close (its
    siblings hold it open) and lives on, holding its memory.
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not a handler inherited from the parent
    # Linux: the kernel sends SIGTERM when the thread that forked us exits (cached_images
    # keeps that thread inside its pool's lifetime). Elsewhere, or if refused: poll the parent.
    linux = sys.platform.startswith("linux")
    if not (linux and ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0):
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    if os.getppid() != parent:  # the parent died before the above took effect
        os._exit(1)


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1)
    os._exit(1)


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
    A full disk raises ``OSError`` (ENOSPC) naming the cache and the bytes it needs,
    before any image is decoded. A damaged cache file is decoded again, with a warning.
    """
    paths = [Path(p) for p in paths]
    key = cache_key(paths, size)
    shape = (len(paths), size, size, 3)
    target = (root or cache_dir()) / "images" / f"{key}.npy"
    if target.exists():
        images, problem = _open_checked(target, key, shape)
        if images is not None:
            return images
        warnings.warn(f"{target}: damaged image cache, decoding the images again: {problem}",
                      stacklevel=2)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(target.parent)
    _build(target, key, shape, paths, workers, progress)
    return np.load(target, mmap_mode="r")


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def _file_crc(path: Path) -> int:
    # A full CRC-32 of the file rather than of a sample of rows, so that any damaged block is
    # found. Measured on 2000 Corel-5k images: 0.59 s for the 1.2 GB cache at 448 px (2 GB/s)
    # against 11.6 s to decode them on one core (5 %), and every open copies the whole array
    # to the device anyway.
    crc, buf = 0, bytearray(_BLOCK)
    with open(path, "rb", buffering=0) as file:
        while n := file.readinto(buf):
            crc = zlib.crc32(memoryview(buf)[:n], crc)
    return crc


def _open_checked(target: Path, key: str, shape: tuple) -> tuple[np.ndarray | None, str]:
    """The cache file memory-mapped, or ``None`` and what is wrong with it."""
    side = _sidecar(target)
    try:
        meta = json.loads(side.read_text())
    except FileNotFoundError:
        return None, f"its sidecar {side.name} is missing"
    except (OSError, ValueError) as err:
        return None, f"its sidecar {side.name} is unreadable ({err})"
    if not isinstance(meta, dict):
        return None, f"its sidecar {side.name} is not a JSON object"
    expected = {"version": CACHE_VERSION, "key": key, "shape": list(shape), "dtype": "uint8"}
    wrong = [f"{name} {meta.get(name)!r}, expected {value!r}"
             for name, value in expected.items() if meta.get(name) != value]
    if wrong:
        return None, f"its sidecar {side.name} records " + "; ".join(wrong)
    try:
        nbytes = target.stat().st_size
        if nbytes != meta.get("bytes"):
            return None, f"it has {nbytes} bytes, its sidecar says {meta.get('bytes')} (truncated?)"
        if _file_crc(target) != meta.get("crc32"):
            return None, "its CRC-32 differs from its sidecar's (damaged or overwritten)"
        images = np.load(target, mmap_mode="r")
    except (OSError, ValueError) as err:
        return None, f"it cannot be read ({err})"
    if images.shape != shape or images.dtype != np.uint8:
        return None, f"it holds {images.dtype} {images.shape}, expected uint8 {shape}"
    return images, ""


def _remove_stale_temps(folder: Path) -> None:
    """Remove the temporary files (and their sidecars) of builds that were killed, of any key.

    A build holds its temporary file locked (:func:`~annotlib.io.locked_temp`) until it is
    renamed, so one whose lock can be taken has no live writer and never is a live build's.
    """
    for tmp in remove_unlocked(folder.glob("*.tmp*.npy")):
        _sidecar(tmp).unlink(missing_ok=True)


def _build(target: Path, key: str, shape: tuple, paths: list[Path], workers: int | None,
           progress: bool) -> None:
    tmp = target.with_name(f"{key}.tmp{os.getpid()}-{os.urandom(4).hex()}.npy")
    try:
        with locked_temp(tmp) as file:
            np.lib.format.write_array_header_1_0(file, {"descr": "|u1", "fortran_order": False,
                                                        "shape": shape})
            file.flush()
            offset = file.tell()
            total = offset + math.prod(shape)
            _reserve(file, total, target)
            out = np.memmap(file, dtype=np.uint8, mode="r+", offset=offset, shape=shape)
            _decode_into(out, paths, workers, progress)
            out.flush()
            del out
            # The sidecar is renamed into place before the data, so a reader never finds the
            # data without it; a sidecar left alone by a kill before the second rename is harmless.
            meta = {"version": CACHE_VERSION, "key": key, "shape": list(shape), "dtype": "uint8",
                    "bytes": total, "crc32": _file_crc(tmp)}
            _sidecar(tmp).write_text(json.dumps(meta))
            os.replace(_sidecar(tmp), _sidecar(target))
            os.replace(tmp, target)
    finally:
        _sidecar(tmp).unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)


def _decode_into(out: np.ndarray, paths: list[Path], workers: int | None, progress: bool) -> None:
    size = out.shape[1]
    jobs = [([str(p) for p in paths[i:i + _CHUNK]], size) for i in range(0, len(paths), _CHUNK)]
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    if workers > 1:
        # Forked on Linux, so that this process is the workers' parent, as _worker_init expects
        # (a forkserver would be their parent otherwise).
        context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else None)
        pool = ProcessPoolExecutor(workers, context, initializer=_worker_init,
                                   initargs=(os.getpid(),))
        try:
            _fill(out, pool.map(_decode_chunk, jobs), _CHUNK, progress, len(jobs))
        finally:
            pool.shutdown(cancel_futures=True)  # on an error, start no further chunk
    else:
        _fill(out, map(_decode_chunk, jobs), _CHUNK, progress, len(jobs))


def _reserve(file, total: int, target: Path) -> None:
    """Allocate the whole file on disk before it is mapped.

    On a full disk, writing a page of a sparse memory map kills the process with SIGBUS
    and no message; allocating first turns that into an ENOSPC here, before any decoding.
    """
    try:
        _allocate(file, total)
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        free = shutil.disk_usage(target.parent).free
        raise OSError(err.errno, f"{target}: the filesystem is full ({err.strerror}): the image "
                      f"cache needs {total} bytes ({total / 2**30:.2f} GiB), {free} bytes are "
                      f"free; free some space, or set ANNOTLIB_CACHE_DIR to a folder on a disk "
                      f"with room") from None


def _allocate(file, total: int) -> None:
    if hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(file.fileno(), 0, total)
            return
        except OSError as err:
            if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
    # No fallocate here (macOS, some filesystems): write the zeros, so that a full disk fails
    # a write() with ENOSPC instead of a page of the map.
    file.seek(0, os.SEEK_END)
    zeros = memoryview(bytes(_BLOCK))
    for left in range(total - file.tell(), 0, -_BLOCK):
        file.write(zeros[:min(left, _BLOCK)])
    file.flush()


def _fill(out: np.ndarray, results, chunk: int, progress: bool, total: int) -> None:
    # Plain lines, not a bar (readable in a log and in an executed notebook): one every 10 s
    # of a long decode, and one at the end.
    started = shown = time.perf_counter()
    for i, block in enumerate(results):
        out[i * chunk:i * chunk + len(block)] = block
        now = time.perf_counter()
        if progress and (now - shown >= 10 or i + 1 == total):
            shown = now
            print(f"decoding {len(out)} images: {min((i + 1) * chunk, len(out))} done in "
                  f"{now - started:.0f} s", flush=True)


def channel_stats(images: np.ndarray, max_images: int = 2000) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] of (an evenly spaced subset of) ``images``.

    One pass over blocks of the subset: memory stays bounded for any number of images.
    A block's sums of values and of squared values are integers below 2**53, so exact in
    float64; they add up in int64 and the variance is formed in Python integers, so no
    rounding accumulates and nothing cancels.
    """
    step = max(1, len(images) // max_images)
    count = len(range(0, len(images), step)) * math.prod(images.shape[1:3])
    if count == 0:
        raise ValueError("channel_stats: no images")
    rows = max(1, _STATS_PIXELS // math.prod(images.shape[1:3])) * step
    sums, squares = np.zeros(3, np.int64), np.zeros(3, np.int64)
    for start in range(0, len(images), rows):
        block = np.asarray(images[start:start + rows:step], dtype=np.float64).reshape(-1, 3)
        sums += block.sum(0).astype(np.int64)
        squares += np.einsum("ij,ij->j", block, block).astype(np.int64)
        del block  # before the next one is made, so only one block is alive
        release_pages(images)  # and the map's pages read so far leave the resident set
    sums, squares = [int(s) for s in sums], [int(q) for q in squares]
    mean = [s / count / 255 for s in sums]
    std = [math.sqrt(count * q - s * s) / count / 255 for s, q in zip(sums, squares)]
    return mean, std
