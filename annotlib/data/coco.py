"""Reader for MS-COCO 2014 instances annotations, as image-level multi-label data.

Layout (the official download)::

    <root>/annotations/instances_train2014.json, <root>/annotations/instances_val2014.json
    <root>/train2014/<file_name>, <root>/val2014/<file_name>

    {"images": [{"id", "file_name", ...}], "categories": [{"id", "name", ...}],
     "annotations": [{"image_id", "category_id", "bbox": [x, y, w, h], "iscrowd", ...}]}

The usual multi-label protocol: "train" is train2014 and "test" is val2014. The labels
are the category names sorted by category id (80 for COCO, whose ids run 1..90 with
gaps). An image's labels are the categories of all its annotations, crowd ones included;
images without any annotation are kept with no label and counted in ``info``. Boxes are
``bbox`` as ``(class, x, y, x + w, y + h)`` in pixels; an annotation without a usable
``bbox`` still labels its image and is counted in ``info["annotations_without_box"]``.
Images keep the order of the JSON file.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .labels import DataError, Split, read_annotation_json

COCO_SPLITS = {"train": "train2014", "test": "val2014"}


def read_instances_json(path: Path) -> dict:
    """The parsed instances file, with the three lists it must have."""
    doc = read_annotation_json(path)
    if not isinstance(doc, dict) or not all(
            isinstance(doc.get(key), list) for key in ("images", "annotations", "categories")):
        raise DataError(f'{path}: expected an object with "images", "annotations" and "categories"'
                        " lists")
    return doc


def read_coco(root: Path, split: str, dataset: str = "coco") -> Split:
    """``split`` ("train" = train2014, "test" = val2014) of the COCO 2014 folder ``root``."""
    if split not in COCO_SPLITS:
        raise ValueError(f"unknown COCO split {split!r}; expected train or test")
    root, folder = Path(root), COCO_SPLITS[split]
    path = root / "annotations" / f"instances_{folder}.json"
    doc = read_instances_json(path)
    try:
        categories = sorted((c["id"], c["name"]) for c in doc["categories"])
        rows = {image["id"]: row for row, image in enumerate(doc["images"])}
        image_paths = [root / folder / image["file_name"] for image in doc["images"]]
    except (KeyError, TypeError) as err:
        raise DataError(f"{path}: an image or category lacks its id, name or file_name ({err})") \
            from None
    classes = [name for _, name in categories]
    column = {category_id: col for col, (category_id, _) in enumerate(categories)}
    if len(set(classes)) != len(classes) or len(column) != len(classes) \
            or len(rows) != len(image_paths):
        raise DataError(f"{path}: duplicate category ids or names, or duplicate image ids")

    hits: list[tuple[int, int]] = []  # (row, column) pairs, set in one go: 600k in train2014
    boxes: list[list[tuple]] = [[] for _ in image_paths]
    without_box = crowd = 0
    for number, ann in enumerate(doc["annotations"]):
        image_id, category_id = ann.get("image_id"), ann.get("category_id")
        if image_id not in rows or category_id not in column:
            raise DataError(f"{path}: annotation {number} refers to an unknown image id "
                            f"{image_id!r} or category id {category_id!r}")
        row, col = rows[image_id], column[category_id]
        hits.append((row, col))
        crowd += bool(ann.get("iscrowd", 0))
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4):
            without_box += 1
            continue
        try:
            x, y, w, h = (float(v) for v in bbox)
        except (TypeError, ValueError):
            raise DataError(f"{path}: annotation {number} has a non-numeric bbox {bbox!r}") \
                from None
        boxes[row].append((col, x, y, x + w, y + h))
    labels = torch.zeros(len(image_paths), len(classes), dtype=torch.int8)
    if hits:
        labels[tuple(torch.tensor(hits).T)] = 1

    return Split(
        dataset=dataset,
        split=split,
        classes=classes,
        image_paths=image_paths,
        labels=labels,
        boxes=boxes,
        root=root,
        info={
            "annotation_file": str(path),
            "category_ids": [category_id for category_id, _ in categories],
            "images_without_labels": int((labels.sum(1) == 0).sum()),
            "crowd_annotations": crowd,
            "annotations_without_box": without_box,
        },
    )
