"""Reader for the AIA JSON release of Corel-5k, ESP Game and IAPR TC-12.

Layout (Salar & Ahmadi's release)::

    <root>/train.json, <root>/test.json, <root>/images/<image_name>

    {"samples": [{"image_name": "1000.jpeg", "image_labels": ["sky", "water"]}, ...],
     "labels": ["sky", "water", ...]}

``labels`` fixes the label order. A label outside it is an error naming the file;
an image without any label is kept (Corel-5k has 7 in train) and counted in ``info``.
"""

from __future__ import annotations

from pathlib import Path

from .labels import DataError, Split, multi_hot, read_annotation_json


def read_aia_json(path: Path) -> tuple[list[dict], list[str]]:
    """The ``samples`` and ``labels`` of one AIA JSON file, validated."""
    doc = read_annotation_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("samples"), list) \
            or not isinstance(doc.get("labels"), list):
        raise DataError(f'{path}: expected an object with a "samples" list and a "labels" list')
    for i, sample in enumerate(doc["samples"]):
        if not isinstance(sample, dict) or not isinstance(sample.get("image_name"), str) \
                or not isinstance(sample.get("image_labels"), list):
            raise DataError(f'{path}: sample {i} lacks "image_name" (string) or "image_labels" (list)')
    if len(set(doc["labels"])) != len(doc["labels"]):
        raise DataError(f"{path}: the label list has duplicates")
    return doc["samples"], [str(name) for name in doc["labels"]]


def read_aia(root: Path, split: str, dataset: str = "aia") -> Split:
    """``split`` ("train" or "test") of an AIA-format dataset under ``root``."""
    root = Path(root)
    path = root / f"{split}.json"
    samples, classes = read_aia_json(path)
    labels = multi_hot([s["image_labels"] for s in samples], classes, path)
    return Split(
        dataset=dataset,
        split=split,
        classes=classes,
        image_paths=[root / "images" / s["image_name"] for s in samples],
        labels=labels,
        root=root,
        info={"annotation_file": str(path), "images_without_labels": int((labels.sum(1) == 0).sum())},
    )
