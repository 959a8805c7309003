"""Atomic writes: a file is either its old complete self or its new complete self.

A write that fails (a full disk, an interrupt) leaves the old file and no temporary file
behind; the temporary file of a writer that was killed goes at the next write of that file
(:func:`remove_unlocked`, the image cache's rule too); a damaged file is an error that names
it and says what to do.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import json
import math
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

import torch

RESTART = "delete it to restart that run"  # the remedy for a damaged checkpoint
FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}  # out of space, out of quota


class DiskFullError(OSError):
    """A write ran out of space (ENOSPC) or quota (EDQUOT); the message names the file."""


class CorruptFileError(ValueError):
    """A file that cannot be read back (cut short or damaged); the message names it."""


@contextlib.contextmanager
def locked_temp(tmp: Path):
    """``tmp`` created (it must not exist) and opened ``w+b``, exclusively ``flock``-ed while open.

    The lock is how :func:`remove_unlocked` tells a live writer's temporary file from a dead
    one's: the kernel drops it when its holder dies, however it dies.
    """
    while True:
        with open(tmp, "x+b") as file:
            fcntl.flock(file, fcntl.LOCK_EX)
            if os.fstat(file.fileno()).st_nlink:
                yield file
                return
        # Removed as stale by another process in the instant before it was locked: create it again.


def remove_unlocked(paths: Iterable[Path]) -> list[Path]:
    """Remove those of ``paths`` (temporary files of :func:`locked_temp`) whose lock can be
    taken, i.e. whose writer is gone; returns them.

    No clock or pid guess: a pid is reused (a dead writer's pid may belong to a live process)
    and differs across containers sharing a folder; a live writer's file is never removed.
    """
    removed = []
    for tmp in paths:
        try:
            fd = os.open(tmp, os.O_RDWR)  # NFS grants an exclusive lock only to a writable file
        except OSError:
            continue  # removed meanwhile, or not ours to touch
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a live writer
        else:
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
        finally:
            os.close(fd)
    return removed


def _tmp_pattern(path: Path) -> re.Pattern:
    # ".<name>.tmp<pid>-<hex>"; also the bare ".<name>.tmp<pid>" of earlier versions, never locked
    return re.compile(rf"\.{re.escape(path.name)}\.tmp\d+(-[0-9a-f]{{8}})?")


def _atomic(path: str | Path, write: Callable[[BinaryIO], None], size: int | None = None) -> None:
    """``write(file)`` into a locked temporary file, then rename it to ``path``; ``size``: the
    bytes the write needs. A killed writer's temporary file goes at the next write of ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pattern = _tmp_pattern(path)  # only this file's: another live file's writer may be slow
    remove_unlocked(p for p in path.parent.glob(f".{glob.escape(path.name)}.tmp*")
                    if pattern.fullmatch(p.name))
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}-{os.urandom(4).hex()}")
    try:
        with locked_temp(tmp) as file:
            write(file)
            file.flush()
            os.replace(tmp, path)  # while still locked, so the file is never taken for stale
    except BaseException as e:  # an interrupt too: nothing half-written stays behind
        written = tmp.stat().st_size if tmp.exists() else 0
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in FULL:
            need = f"{size} bytes" if size is not None else f"more than the {written} bytes written"
            reason = os.strerror(e.errno)
            raise DiskFullError(e.errno, f"{path}: the filesystem is full ({reason}); the write "
                                f"needed {need}; free space and run again") from e
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    data = text.encode("utf-8")
    _atomic(path, lambda file: file.write(data), len(data))


def atomic_torch_save(obj, path: str | Path) -> None:
    # Into a Python file, so a full disk is an OSError with its errno (torch's own writer,
    # given a path, turns it into a RuntimeError without one).
    _atomic(path, lambda file: torch.save(obj, file))


def atomic_save_npz(path: str | Path, arrays: dict) -> None:
    """``arrays`` (name -> numpy array) as a compressed ``.npz`` at ``path``, atomically."""
    import numpy as np

    # A file object: given a name, numpy would add ".npz" to the temporary file's.
    _atomic(path, lambda file: np.savez_compressed(file, **arrays))


def json_safe(obj):
    """``obj`` with every non-finite float (nan, inf) as None, as :func:`write_json` writes it."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [json_safe(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(json_safe(v) for v in obj)
    return obj


def write_json(path: str | Path, obj) -> None:
    """``obj`` as strict JSON (RFC 8259): a non-finite float (nan, inf) is written as ``null``,
    never as the bare ``NaN`` or ``Infinity`` that other JSON readers refuse. Why a number is
    undefined is the caller's to record beside it; ``metrics.json`` keeps one ``undefined``
    dict, ``{split: {metric: reason}}``."""
    text = json.dumps(json_safe(obj), indent=2, sort_keys=False, allow_nan=False)
    atomic_write_text(path, text + "\n")


def read_json(path: str | Path, remedy: str = "delete or restore it"):
    """The JSON in ``path``; a file that is not valid JSON is a :class:`CorruptFileError`
    naming it, with ``remedy`` (e.g. :data:`RESTART`) as what to do."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptFileError(f"{path} is not valid JSON ({e}); it was cut short or damaged: "
                               f"{remedy}") from e


def torch_load(path: str | Path, map_location=None, remedy: str = RESTART):
    """``torch.load(path, weights_only=True)``; a file that cannot be read back (cut short,
    damaged) is a :class:`CorruptFileError` naming it, with ``remedy`` as what to do."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (FileNotFoundError, IsADirectoryError, PermissionError):  # their messages name the file
        raise
    except Exception as e:  # a damaged file is one of many types (a cut zip: OSError EINVAL)
        lines = str(e).strip().splitlines()
        reason = f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
        raise CorruptFileError(f"{path} cannot be loaded ({reason}): it is cut short, damaged or "
                               f"not a checkpoint of this library; {remedy}") from e
