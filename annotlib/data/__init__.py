"""Datasets: one reader per on-disk format, one entry point, :func:`load_split`."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from .aia import read_aia
from .batches import DeviceBatches
from .cache import cached_images, channel_stats
from .captions import read_cub, read_flickr8k, read_flickr8k_concepts, read_flowers
from .coco import read_coco
from .folders import FOLDER_DATASETS
from .labels import DataError, Split, carve_validation
from .nuswide import read_nuswide
from .voc import VOC_SPLITS, read_voc


@dataclass(frozen=True)
class DatasetInfo:
    folder: str  # its folder under the data root
    read: Callable[..., Split]  # (root, official split name, **reader options) -> Split
    official_splits: tuple[str, ...] = ("train", "test")  # read as-is; may add names like trainval


def _synthetic(root: Path, split: str) -> Split:
    from .synthetic import default_synthetic_root, generate_synthetic, read_synthetic
    if not (root / "train.json").exists():  # generated once, with the default parameters
        if not root.parent.is_dir() and root != default_synthetic_root():
            raise DataError(f"{root}: no such folder, nor its parent {root.parent} (a mistyped "
                            "data_root?); give the folder of a synthetic set, or a new one to generate "
                            "it in, inside an existing folder")
        generate_synthetic(root)  # logs a warning naming the folder
    return read_synthetic(root, split)


def _aia(name: str) -> Callable[[Path, str], Split]:
    return lambda root, split: read_aia(root, split, name)


DATASETS: dict[str, DatasetInfo] = {
    "synthetic": DatasetInfo("synthetic", _synthetic),
    "corel-5k": DatasetInfo("Corel-5k", _aia("corel-5k")),
    "esp-game": DatasetInfo("ESP-Game", _aia("esp-game")),
    "iapr-tc-12": DatasetInfo("IAPR-TC-12", _aia("iapr-tc-12")),
    "voc2007": DatasetInfo("VOC2007", partial(read_voc, dataset="voc2007"), VOC_SPLITS),
    "coco2014": DatasetInfo("COCO2014", partial(read_coco, dataset="coco2014")),
    "nus-wide": DatasetInfo("NUS-WIDE", partial(read_nuswide, dataset="nus-wide")),
}
# P4's caption sets. Flickr8k's official dev list is "val"; flickr8k-concepts mines its
# concept classes from the official training captions whichever split is read; CUB has no
# official validation split, so "val" is carved from its training images.
DATASETS.update({
    "flickr8k": DatasetInfo("Flickr8k", partial(read_flickr8k, dataset="flickr8k"), ("train", "val", "test")),
    "flickr8k-concepts": DatasetInfo("Flickr8k", partial(read_flickr8k_concepts, dataset="flickr8k-concepts"),
                                     ("train", "val", "test")),
    "cub": DatasetInfo("CUB_200_2011", partial(read_cub, dataset="cub")),
    "flowers": DatasetInfo("Flowers102", partial(read_flowers, dataset="flowers"), ("train", "val", "test")),
})
# the affective sets of P2, one folder per emotion
DATASETS.update({name: DatasetInfo(*entry) for name, entry in FOLDER_DATASETS.items()})


def dataset_root(dataset: str, root: str | Path | None = None) -> Path:
    """``root`` if given, else ``$ANNOTLIB_DATA_ROOT/<the dataset's folder>``; the synthetic
    set defaults to its generated copy in the cache."""
    if root is not None:
        return Path(root)
    if dataset == "synthetic":
        from .synthetic import default_synthetic_root
        return default_synthetic_root()
    if "ANNOTLIB_DATA_ROOT" not in os.environ:
        raise DataError(f"{dataset}: no root given and ANNOTLIB_DATA_ROOT is not set "
                        f"(expected the dataset under $ANNOTLIB_DATA_ROOT/{DATASETS[dataset].folder})")
    return Path(os.environ["ANNOTLIB_DATA_ROOT"]) / DATASETS[dataset].folder


def load_split(dataset: str, split: str, root: str | Path | None = None, *,
               val_fraction: float = 0.1, val_seed: int = 0, **options) -> Split:
    """``split`` ("train", "val", "test" or another official split) of a known ``dataset``.

    Where the dataset has no official validation split, "val" is a seeded
    ``val_fraction`` of the official training split and "train" is the rest.
    ``options`` go to the dataset's reader (e.g. ``count_difficult=True`` for VOC).
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    info = DATASETS[dataset]
    known = tuple(dict.fromkeys(("train", "val", "test", *info.official_splits)))
    if split not in known:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(known)}")
    path = dataset_root(dataset, root)
    if split in info.official_splits:
        data = info.read(path, split, **options)
        if split != "train" or "val" in info.official_splits:
            return data
    else:
        data = info.read(path, "train", **options)
    train, val = carve_validation(data, val_fraction, val_seed)
    return train if split == "train" else val


__all__ = ["DATASETS", "DataError", "DeviceBatches", "Split", "cached_images", "channel_stats",
           "dataset_root", "load_split"]
