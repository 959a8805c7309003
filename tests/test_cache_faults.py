"""The image cache under faults: a full disk, killed builds, killed parents, damaged files."""

import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest

from annotlib.data import cache
from annotlib.data.cache import cache_key, cached_images, channel_stats, decode_image

from .conftest import FIXTURES, REPO

IMAGES = sorted((FIXTURES / "aia" / "images").glob("*.jpeg"))
SIZE = 16


def fresh_decode(paths=IMAGES, size=SIZE):
    return np.stack([decode_image(p, size) for p in paths])


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_full_disk_is_an_error_before_decoding_and_leaves_nothing(tmp_path, monkeypatch):
    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    decoded = []
    real_decode = cache.decode_image
    monkeypatch.setattr(cache, "decode_image", lambda p, s: decoded.append(p) or real_decode(p, s))
    with monkeypatch.context() as patch:
        patch.setattr(os, "posix_fallocate", no_space)
        with pytest.raises(OSError) as raised:
            cached_images(IMAGES, SIZE, workers=1, root=tmp_path)
    message = str(raised.value)
    target = tmp_path / "images" / f"{cache_key(IMAGES, SIZE)}.npy"
    assert raised.value.errno == errno.ENOSPC
    assert str(target) in message and "filesystem is full" in message
    assert "ANNOTLIB_CACHE_DIR" in message
    assert decoded == []  # refused up front, not after the decoding
    assert files_in(tmp_path / "images") == []  # nothing half-written
    images = cached_images(IMAGES, SIZE, workers=1, root=tmp_path)  # space is back
    assert np.array_equal(images, fresh_decode())
    assert f"needs {target.stat().st_size} bytes" in message


@pytest.mark.parametrize("unsupported", ["missing", "EOPNOTSUPP"])
def test_without_fallocate_the_file_is_zero_filled_first(tmp_path, monkeypatch, unsupported):
    if unsupported == "missing":
        monkeypatch.delattr(os, "posix_fallocate", raising=False)
    else:
        def refuse(fd, offset, length):
            raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
        monkeypatch.setattr(os, "posix_fallocate", refuse)
    sizes = []
    real_allocate = cache._allocate

    def allocate(file, total):  # the file has its full size before it is mapped
        real_allocate(file, total)
        sizes.append(os.fstat(file.fileno()).st_size)

    monkeypatch.setattr(cache, "_allocate", allocate)
    images = cached_images(IMAGES, SIZE, workers=1, root=tmp_path)
    assert sizes == [os.path.getsize(images.filename)]
    assert np.array_equal(images, fresh_decode())


def test_zero_fill_on_a_full_disk_is_the_same_clear_error(tmp_path, monkeypatch):
    monkeypatch.delattr(os, "posix_fallocate", raising=False)

    class FullFile:  # a file whose writes fail as on a full disk
        def __init__(self, file):
            self.file = file

        def __getattr__(self, name):
            return getattr(self.file, name)

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    real_allocate = cache._allocate
    monkeypatch.setattr(cache, "_allocate", lambda file, total: real_allocate(FullFile(file), total))
    with pytest.raises(OSError, match="filesystem is full.*ANNOTLIB_CACHE_DIR"):
        cached_images(IMAGES, SIZE, workers=1, root=tmp_path)
    assert files_in(tmp_path / "images") == []


def test_temporary_files_of_killed_builds_are_removed_and_live_ones_kept(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    key = cache_key(IMAGES, SIZE)
    stale = [folder / f"{key}.tmp999999-0badf00d.npy", folder / f"{'0' * 20}.tmp1-deadbeef.npy"]
    for path in stale:  # no process holds their lock: their writers are gone
        path.write_bytes(b"\x93NUMPY half written")
    stale.append(folder / f"{key}.tmp999999-0badf00d.json")
    stale[-1].write_text("{}")
    live = folder / f"{key}.tmp{os.getpid()}-feedface.npy"
    with open(live, "wb") as writer:  # a build still writing: it holds the lock
        fcntl.flock(writer, fcntl.LOCK_EX)
        images = cached_images(IMAGES, SIZE, workers=1, root=tmp_path)
        assert not any(path.exists() for path in stale)
        assert live.exists()
    assert files_in(folder) == sorted([f"{key}.json", f"{key}.npy", live.name])
    assert np.array_equal(images, fresh_decode())


CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from annotlib.data import cache

    started, root, *paths = sys.argv[1:]
    real_decode = cache.decode_image

    def slow_decode(path, size):
        Path(started).touch()
        time.sleep(1.0)
        return real_decode(path, size)

    cache.decode_image = slow_decode  # forked workers inherit it
    cache._CHUNK = 2
    cache.cached_images(paths, 8, workers=2, root=Path(root))
""")


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name, or None when gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None if fields[0] in "ZX" else fields


def _children(pid: int) -> dict[int, str]:
    """Live children of ``pid`` and their start times (to tell a reused pid apart)."""
    found = {}
    for entry in Path("/proc").iterdir():
        fields = _proc_stat(int(entry.name)) if entry.name.isdigit() else None
        if fields and fields[1] == str(pid):
            found[int(entry.name)] = fields[19]
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_decode_workers_end_when_the_parent_is_killed(tmp_path):
    started = tmp_path / "started"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(started), str(tmp_path / "cache"),
                              *map(str, IMAGES[:8])], env=env)
    workers = {}
    try:
        deadline = time.monotonic() + 30
        while not (started.exists() and len(workers) >= 2):
            assert child.poll() is None, "the child ended before decoding"
            assert time.monotonic() < deadline, "the child's workers never started decoding"
            time.sleep(0.05)
            workers = _children(child.pid)
        child.send_signal(signal.SIGKILL)
        child.wait()
        deadline = time.monotonic() + 5
        alive = workers
        while alive and time.monotonic() < deadline:
            time.sleep(0.05)
            alive = {pid: t for pid, t in workers.items() if (f := _proc_stat(pid)) and f[19] == t}
        assert not alive, f"decode workers {sorted(alive)} outlived their killed parent"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        for pid, start in workers.items():  # leave nothing behind if the assertion failed
            if (fields := _proc_stat(pid)) and fields[19] == start:
                os.kill(pid, signal.SIGKILL)


def _truncate(target: Path) -> None:
    os.truncate(target, target.stat().st_size - 100)


def _zero_block(target: Path) -> None:
    with open(target, "r+b") as file:
        file.seek(target.stat().st_size // 2)
        file.write(bytes(256))


def _overwrite(target: Path) -> None:  # another array of the same shape and dtype
    np.save(target, 255 - np.load(target))


def _delete_sidecar(target: Path) -> None:
    target.with_suffix(".json").unlink()


def _other_key_sidecar(target: Path) -> None:
    side = target.with_suffix(".json")
    meta = json.loads(side.read_text())
    side.write_text(json.dumps({**meta, "key": "0" * 20}))


def _garbled_sidecar(target: Path) -> None:
    target.with_suffix(".json").write_text('{"version": 1, "key":')


@pytest.mark.parametrize("damage, reason", [
    (_truncate, "truncated"), (_zero_block, "CRC-32"), (_overwrite, "CRC-32"),
    (_delete_sidecar, "missing"), (_other_key_sidecar, "key"), (_garbled_sidecar, "unreadable"),
])
def test_a_damaged_cache_is_rebuilt_with_a_warning(tmp_path, damage, reason):
    expected = fresh_decode()
    target = Path(cached_images(IMAGES, SIZE, workers=1, root=tmp_path).filename)
    before = target.read_bytes()
    damage(target)
    if damage not in (_delete_sidecar, _other_key_sidecar, _garbled_sidecar):
        assert target.read_bytes() != before  # the damage is real
    with pytest.warns(UserWarning, match=rf"{target.name}.*damaged.*{reason}") as caught:
        images = cached_images(IMAGES, SIZE, workers=1, root=tmp_path)
    assert str(target) in str(caught[0].message)
    assert np.array_equal(images, expected)
    assert target.read_bytes() == before
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # whole again: used without a warning
        again = cached_images(IMAGES, SIZE, workers=1, root=tmp_path)
    assert np.array_equal(again, expected)


def test_sidecar_describes_the_complete_file(tmp_path):
    images = cached_images(IMAGES, SIZE, workers=2, root=tmp_path)
    target = Path(images.filename)
    meta = json.loads(target.with_suffix(".json").read_text())
    assert meta["key"] == target.stem == cache_key(IMAGES, SIZE)
    assert meta["shape"] == [len(IMAGES), SIZE, SIZE, 3] and meta["dtype"] == "uint8"
    assert meta["bytes"] == target.stat().st_size
    assert meta["crc32"] == cache._file_crc(target)
    assert np.array_equal(images, fresh_decode())


@pytest.mark.parametrize("shape, max_images", [((37, 9, 9, 3), 10), ((5, 4, 4, 3), 2000)])
def test_channel_stats_matches_numpy(shape, max_images, monkeypatch):
    monkeypatch.setattr(cache, "_STATS_PIXELS", 100)  # many blocks, a partial last one
    images = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    sample = images[::max(1, len(images) // max_images)].astype(np.float64) / 255
    mean, std = channel_stats(images, max_images=max_images)
    np.testing.assert_allclose(mean, sample.mean(axis=(0, 1, 2)), rtol=1e-12, atol=0)
    np.testing.assert_allclose(std, sample.std(axis=(0, 1, 2)), rtol=1e-12, atol=0)


def test_channel_stats_of_a_constant_image_has_zero_std():
    mean, std = channel_stats(np.full((3, 5, 5, 3), 7, np.uint8))
    assert mean == pytest.approx([7 / 255] * 3, rel=1e-15) and std == [0.0, 0.0, 0.0]


def test_channel_stats_streams_in_bounded_memory(monkeypatch):
    images = np.random.default_rng(1).integers(0, 256, (300, 32, 32, 3), dtype=np.uint8)
    monkeypatch.setattr(cache, "_STATS_PIXELS", 32 * 32 * 4)  # 4 images per block
    tracemalloc.start()
    try:
        channel_stats(images, max_images=1000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < images.nbytes  # a float64 copy of all of them would be 8x their size
