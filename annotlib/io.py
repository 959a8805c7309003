"""Atomic writes: a file is either its old complete self or its new complete self.

A write that fails (a full disk, an interrupt) leaves the old file and no temporary file
behind; a damaged file is an error that names it and says what to do.
"""

from __future__ import annotations

import errno
import glob
import json
import math
import os
import re
from collections.abc import Callable
from pathlib import Path

import torch

RESTART = "delete it to restart that run"  # the remedy for a damaged checkpoint
FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}  # out of space, out of quota


class DiskFullError(OSError):
    """A write ran out of space (ENOSPC) or quota (EDQUOT); the message names the file."""


class CorruptFileError(ValueError):
    """A file that cannot be read back (cut short or damaged); the message names it."""


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def _alive(pid: int) -> bool:
    if os.name != "posix":  # elsewhere os.kill does not probe; keep what may be a live writer's
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process; or no pid at all: keep it
        return True
    return True


def _remove_stale_tmps(path: Path) -> None:
    """Remove the temporary files of ``path`` left by writers that were killed.

    Only those of processes no longer alive: another live process may be writing the same file
    (two runs started on one folder), and removing its temporary file would fail its rename. A
    dead writer's pid taken by an unrelated process keeps its leftover until that one ends.
    """
    pattern = re.compile(rf"\.{re.escape(path.name)}\.tmp(\d+)")
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.tmp*"):
        match = pattern.fullmatch(tmp.name)
        if match and int(match[1]) != os.getpid() and not _alive(int(match[1])):
            tmp.unlink(missing_ok=True)


def _atomic(path: str | Path, write: Callable[[Path], None], size: int | None = None) -> None:
    """``write(tmp)`` then rename ``tmp`` to ``path``; ``size``: the bytes the write needs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmps(path)
    tmp = _tmp(path)
    try:
        write(tmp)
        os.replace(tmp, path)
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
    _atomic(path, lambda tmp: tmp.write_bytes(data), len(data))


def atomic_torch_save(obj, path: str | Path) -> None:
    def save(tmp: Path) -> None:
        # Through a Python file, so a full disk is an OSError with its errno (torch's own
        # writer turns it into a RuntimeError without one).
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    _atomic(path, save)


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
