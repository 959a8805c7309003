"""Reader for NUS-WIDE in its official file layout, with the 81 ground-truth concepts.

Layout (as distributed by NUS)::

    <root>/Concepts81.txt                                  one concept name per line
    <root>/ImageList/TrainImagelist.txt, TestImagelist.txt  e.g. "actor\\0001_2124494179.jpg"
    <root>/TrainTestLabels/Labels_<concept>_Train.txt, ..._Test.txt   one 0/1 per line
    <root>/Flickr/<subfolder>/<file>                        the images

The image lists hold Windows-style relative paths under ``Flickr/``; line ``i`` of every
label file belongs to line ``i`` of its image list. The label order is that of
``Concepts81.txt``. Images without any of the 81 concepts are kept (many protocols drop
them; that is a choice for the caller) and counted in ``info["images_without_labels"]``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .labels import DataError, Split

NUSWIDE_SPLITS = {"train": "Train", "test": "Test"}


def _read_lines(path: Path, what: str) -> list[str]:
    try:
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip()]
    except FileNotFoundError:
        raise DataError(f"{path}: {what} not found") from None


def read_label_column(path: Path, n_images: int) -> np.ndarray:
    """One concept's 0/1 column; its length must match the image list."""
    try:
        lines = path.read_text(encoding="utf-8").rstrip().splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: label file not found") from None
    values = np.array([line.strip() for line in lines])  # the release pads lines with spaces
    if len(values) != n_images:
        raise DataError(f"{path}: {len(values)} labels for an image list of {n_images} images")
    valid = (values == "0") | (values == "1")
    if not valid.all():
        bad = int(np.flatnonzero(~valid)[0])
        raise DataError(f"{path}: line {bad + 1} is {lines[bad]!r}, expected 0 or 1")
    return values == "1"


def read_nuswide(root: Path, split: str, dataset: str = "nus-wide") -> Split:
    """``split`` ("train" or "test") of the NUS-WIDE folder ``root``."""
    if split not in NUSWIDE_SPLITS:
        raise ValueError(f"unknown NUS-WIDE split {split!r}; expected train or test")
    root, part = Path(root), NUSWIDE_SPLITS[split]
    concepts_file = root / "Concepts81.txt"
    classes = _read_lines(concepts_file, "concept list")
    if not classes or len(set(classes)) != len(classes):
        raise DataError(f"{concepts_file}: the concept list is empty or has duplicates")
    image_list = root / "ImageList" / f"{part}Imagelist.txt"
    names = _read_lines(image_list, "image list")
    image_paths = [root / "Flickr" / name.replace("\\", "/") for name in names]
    columns = [read_label_column(root / "TrainTestLabels" / f"Labels_{c}_{part}.txt", len(names))
               for c in classes]
    labels = torch.from_numpy(np.stack(columns, axis=1).astype(np.int8))
    return Split(
        dataset=dataset,
        split=split,
        classes=classes,
        image_paths=image_paths,
        labels=labels,
        root=root,
        info={"image_list": str(image_list),
              "images_without_labels": int((labels.sum(1) == 0).sum())},
    )
