"""Reader for PASCAL VOC in its VOCdevkit layout (VOC2007, VOC2012).

Layout (one year's folder, e.g. ``VOCdevkit/VOC2007``)::

    <root>/JPEGImages/<id>.jpg
    <root>/Annotations/<id>.xml              objects: <name>, <difficult>, <bndbox>
    <root>/ImageSets/Main/<split>.txt        one image id per line
    <root>/ImageSets/Main/<class>_<split>.txt   "<id> <value>", value 1 / 0 / -1

Image labels come from the official per-class lists, not from the XML, so they are
exactly the labels VOC evaluates against. VOC's list values map to annotlib's as::

    VOC  1 (present)         -> 1 (positive)
    VOC -1 (absent)          -> 0 (negative)
    VOC  0 (difficult only)  -> -1 (unknown: ignored by evaluation, as VOC does),
                                or 1 with ``count_difficult=True``

Boxes come from the XML as ``(class, x0, y0, x1, y1)`` in pixels, 0-based with x1 and
y1 exclusive like every annotlib box: VOC's 1-based inclusive ``xmin..xmax`` becomes
``xmin - 1 .. xmax``. ``info["difficult"]`` maps each image id to one flag per kept box
(keyed by id, so it stays valid for any subset of the split). An object without a
``<bndbox>`` is skipped and counted in ``info["objects_without_box"]``; positive image
labels with no box of their class are counted in ``info["positives_without_box"]``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import torch

from .labels import DataError, Split

VOC_CLASSES = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
]
VOC_SPLITS = ("train", "val", "trainval", "test")


def _read_lines(path: Path) -> list[str]:
    try:
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except FileNotFoundError:
        raise DataError(f"{path}: list file not found") from None


def read_split_ids(path: Path) -> list[str]:
    """The image ids of ``ImageSets/Main/<split>.txt``; a duplicate is an error."""
    ids = [line.split()[0] for line in _read_lines(path)]
    if len(set(ids)) != len(ids):
        raise DataError(f"{path}: an image id is listed more than once")
    return ids


def read_class_list(path: Path, ids: list[str]) -> list[int]:
    """The values (1, 0 or -1) of ``<class>_<split>.txt`` in the order of ``ids``."""
    values, lines = {}, _read_lines(path)
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if len(fields) != 2 or fields[1] not in ("1", "0", "-1"):
            raise DataError(f"{path}: line {number} is {line!r}, expected '<id> <1, 0 or -1>'")
        values[fields[0]] = int(fields[1])
    if len(lines) != len(ids) or values.keys() != set(ids):
        missing = [i for i in ids if i not in values]
        extra = sorted(values.keys() - set(ids))
        raise DataError(f"{path}: its image ids disagree with the split list ({len(lines)} lines "
                        f"for {len(ids)} ids; missing {missing[:3]}, extra {extra[:3]})")
    return [values[i] for i in ids]


def read_objects(path: Path, classes: list[str]) -> tuple[list[tuple], list[bool], int]:
    """(boxes, difficult flags, objects without a box) of one annotation XML."""
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise DataError(f"{path}: annotation file not found") from None
    except ET.ParseError as err:
        raise DataError(f"{path}: malformed XML ({err})") from None
    boxes, difficult, without_box = [], [], 0
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in classes:
            raise DataError(f"{path}: object {name!r} is not a VOC class")
        box = obj.find("bndbox")
        if box is None:
            without_box += 1
            continue
        try:
            x0, y0, x1, y1 = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            flag = int(obj.findtext("difficult") or 0) == 1
        except (TypeError, ValueError):
            raise DataError(f"{path}: object {name!r} has a missing or non-numeric box field") \
                from None
        boxes.append((classes.index(name), x0 - 1, y0 - 1, x1, y1))
        difficult.append(flag)
    return boxes, difficult, without_box


def read_voc(root: Path, split: str, count_difficult: bool = False, dataset: str = "voc") -> Split:
    """``split`` (train, val, trainval or test) of a VOCdevkit year folder ``root``.

    ``count_difficult=True`` counts a difficult-only class (VOC value 0) as positive
    instead of unknown; see the module docstring for the full label mapping.
    """
    root = Path(root)
    lists = root / "ImageSets" / "Main"
    ids = read_split_ids(lists / f"{split}.txt")
    images = [root / "JPEGImages" / f"{i}.jpg" for i in ids]
    for path in images:
        if not path.is_file():
            raise DataError(f"{path}: image listed in {lists / f'{split}.txt'} not found")

    voc_values = torch.tensor([read_class_list(lists / f"{name}_{split}.txt", ids)
                               for name in VOC_CLASSES], dtype=torch.int8).T.contiguous()
    labels = torch.zeros_like(voc_values)
    labels[voc_values == 1] = 1
    labels[voc_values == 0] = 1 if count_difficult else -1

    boxes, difficult, without_box = [], {}, 0
    for i in ids:
        image_boxes, flags, skipped = read_objects(root / "Annotations" / f"{i}.xml", VOC_CLASSES)
        boxes.append(image_boxes)
        difficult[i] = flags
        without_box += skipped
    has_box = torch.zeros_like(labels, dtype=torch.bool)
    for row, image_boxes in enumerate(boxes):
        has_box[row, [b[0] for b in image_boxes]] = True

    return Split(
        dataset=dataset,
        split=split,
        classes=list(VOC_CLASSES),
        image_paths=images,
        labels=labels,
        boxes=boxes,
        root=root,
        info={
            "count_difficult": count_difficult,
            "difficult_only_labels": int((voc_values == 0).sum()),
            "difficult": difficult,
            "objects_without_box": without_box,
            "positives_without_box": int(((voc_values == 1) & ~has_box).sum()),
        },
    )
