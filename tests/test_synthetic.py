"""The embedded synthetic dataset: determinism, reader consistency, long tail, atomicity, emotions."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from annotlib.data.labels import DataError
from annotlib.data.synthetic import (
    EMOTIONS,
    LABELS,
    OBJECTS,
    default_synthetic_root,
    generate_synthetic,
    read_synthetic,
)

N, SIZE = 400, 64


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return generate_synthetic(tmp_path_factory.mktemp("synthetic") / "set", num_images=N, image_size=SIZE)


@pytest.fixture(scope="module")
def both(root):
    return read_synthetic(root, "train"), read_synthetic(root, "test")


def digest(folder) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def test_same_seed_gives_identical_files(tmp_path):
    a = generate_synthetic(tmp_path / "a", num_images=30, image_size=SIZE, seed=3)
    b = generate_synthetic(tmp_path / "b", num_images=30, image_size=SIZE, seed=3)
    c = generate_synthetic(tmp_path / "c", num_images=30, image_size=SIZE, seed=4)
    assert digest(a) == digest(b) != digest(c)


def test_default_root_names_the_parameters(monkeypatch, tmp_path):
    monkeypatch.setenv("ANNOTLIB_CACHE_DIR", str(tmp_path))
    assert default_synthetic_root(500, 64, 7) == tmp_path / "synthetic-v1-n500-s64-seed7"


def test_reader_returns_a_consistent_split(both):
    train, test = both
    assert (len(train), len(test)) == (N * 4 // 5, N // 5)
    for split in both:
        n = len(split)
        assert split.classes == list(LABELS) and split.labels.shape == (n, len(LABELS))
        assert len(split.boxes) == len(split.captions) == n
        assert split.category_ids.dtype == torch.int64 and split.category_ids.shape == (n,)
        assert 0 <= int(split.category_ids.min()) and int(split.category_ids.max()) < len(EMOTIONS)
        assert split.categories == list(EMOTIONS)
        for labels, boxes, captions in zip(split.labels, split.boxes, split.captions):
            positive = set(labels.nonzero().flatten().tolist())
            for c, x0, y0, x1, y1 in boxes:
                assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE
            # every object label has a box, and every box is a positive object label
            assert {b[0] for b in boxes} == {i for i in positive if LABELS[i] in OBJECTS}
            assert 2 <= len(captions) <= 5 and all(isinstance(t, str) and t for t in captions)
        for path in split.image_paths:
            with Image.open(path) as img:
                assert img.mode == "RGB" and img.size == (SIZE, SIZE)


def test_labels_are_long_tailed_and_co_occur(both):
    labels = torch.cat([s.labels for s in both]).double()
    per_image = labels.sum(1)
    assert per_image.min() >= 1 and per_image.max() <= 6
    freq = labels.mean(0)
    assert freq.min() > 0  # every label occurs
    # Zipf-like: the most frequent label is in at least 5x as many images as the median one.
    assert freq.max() >= 5 * freq.median()
    # Real co-occurrence: crescents are at least 3x likelier at night than overall.
    night, crescent = LABELS.index("night"), LABELS.index("crescent")
    at_night = labels[labels[:, night] == 1]
    assert at_night[:, crescent].mean() >= 3 * freq[crescent]


def test_emotions_follow_the_wheel(both):
    """Mean colour statistics: each emotion is closer to its wheel neighbours than to
    its opposite, and the positive half is brighter than the negative half."""
    stats, emotions = [], []
    for split in both:
        for path in split.image_paths:
            pixels = np.asarray(Image.open(path), dtype=np.float64) / 255
            stats.append([*pixels.mean((0, 1)), (pixels.max(2) - pixels.min(2)).mean()])
        emotions.append(split.category_ids.numpy())
    stats, emotions = np.array(stats), np.concatenate(emotions)
    centre = np.stack([stats[emotions == k].mean(0) for k in range(8)])
    dist = lambda a, b: np.linalg.norm(centre[a % 8] - centre[b % 8])
    for k in range(8):
        assert max(dist(k, k - 1), dist(k, k + 1)) < dist(k, k + 4), EMOTIONS[k]
    brightness = stats[:, :3].mean(1)
    assert brightness[emotions < 4].mean() > brightness[emotions >= 4].mean() + 0.05


def test_second_call_does_not_rewrite(root):
    before = {p: p.stat().st_mtime_ns for p in (root, root / "train.json", root / "images" / "00000.png")}
    assert generate_synthetic(root, num_images=N, image_size=SIZE) == root
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_leftover_temporary_folders(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = tmp_path / f".set.partial-{dead}"  # a killed generation, half written
    live = tmp_path / f".set.partial-{os.getppid()}"  # one still running elsewhere
    for folder in (stale, live):
        (folder / "images").mkdir(parents=True)
        (folder / "train.json").write_text("{}")
    root = generate_synthetic(tmp_path / "set", num_images=20, image_size=SIZE)
    assert len(read_synthetic(root, "train")) == 16
    assert not stale.exists() and live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "set"])


def test_root_holding_something_else_is_refused(tmp_path):
    root = generate_synthetic(tmp_path / "set", num_images=20, image_size=SIZE)
    with pytest.raises(DataError, match="not a synthetic set"):
        generate_synthetic(root, num_images=25, image_size=SIZE)
    (tmp_path / "empty").mkdir()  # an empty folder is filled
    assert len(read_synthetic(generate_synthetic(tmp_path / "empty", num_images=10, image_size=SIZE),
                              "test")) == 2


def test_reader_errors(root, tmp_path):
    with pytest.raises(ValueError, match="unknown split"):
        read_synthetic(root, "val")
    broken = tmp_path / "broken"
    broken.mkdir()
    doc = json.loads((root / "test.json").read_text())
    del doc["samples"][3]["emotion"]
    (broken / "test.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match="sample 3"):
        read_synthetic(broken, "test")
