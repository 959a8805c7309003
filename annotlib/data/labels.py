"""The common sample table every reader returns, label order and splits."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch


class DataError(ValueError):
    """A dataset file is missing, malformed or inconsistent; the message names the file."""


PER_SAMPLE = ("image_paths", "labels", "category_ids", "captions", "boxes")


# The mark (in ``Split.info``) of a validation carve of fraction 0: the one split that may be
# empty (P0's published protocol trains on all of train); a reader's empty split is an error.
EMPTY_CARVE = "empty_carve"


@dataclass(frozen=True)
class Split:
    """One split of a dataset, in a reader-independent form: per-sample fields, each of
    length N, of which a task reads the ones it trains on. ``None`` where the dataset does
    not have a field.

    - ``labels``: multi-label targets, ``N x C`` int8 over ``classes``: 1 positive, 0
      negative, -1 unknown (partial labels).
    - ``category_ids``: one category per image, ``N`` int64 indices into ``categories``
      (an emotion, a bird species). A single-label reader also fills ``labels`` with the
      one-hot rows over ``classes == categories``, so multi-label tasks run on it too.
    - ``captions``: per image, its reference sentences.
    - ``boxes``: per image, ``(class, x0, y0, x1, y1)`` in pixels, ``class`` indexing ``classes``.
    """

    dataset: str
    split: str
    classes: list[str]
    image_paths: list[Path]
    labels: torch.Tensor | None = None
    categories: list[str] | None = None
    category_ids: torch.Tensor | None = None
    captions: list[list[str]] | None = None
    boxes: list[list[tuple[int, float, float, float, float]]] | None = None
    root: Path | None = None
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        n, name = len(self.image_paths), f"{self.dataset}/{self.split}"
        if n == 0 and not self.info.get(EMPTY_CARVE):
            raise DataError(f"{name}: the split is empty (root {self.root})")
        for field_name in PER_SAMPLE[1:]:
            value = getattr(self, field_name)
            if value is not None and len(value) != n:
                raise DataError(f"{name}: {field_name} has {len(value)} entries for {n} images")
        if self.labels is not None and tuple(self.labels.shape) != (n, len(self.classes)):
            raise DataError(f"{name}: labels have shape {tuple(self.labels.shape)}, "
                            f"expected ({n}, {len(self.classes)})")
        if (self.category_ids is None) != (self.categories is None):
            raise DataError(f"{name}: category_ids and categories come together")
        if self.category_ids is not None and len(self.category_ids) and not (
                0 <= int(self.category_ids.min()) and int(self.category_ids.max()) < len(self.categories)):
            raise DataError(f"{name}: category_ids outside 0..{len(self.categories) - 1}")

    def __len__(self) -> int:
        return len(self.image_paths)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def require(self, field_name: str, task: str) -> object:
        """The per-sample ``field_name``, or a :class:`DataError` saying that ``task`` needs it."""
        value = getattr(self, field_name)
        if value is None:
            raise DataError(f"{self.dataset}/{self.split}: the {task} task needs {field_name}, "
                            f"which this dataset does not have")
        return value

    def subset(self, indices, split: str | None = None, info: dict | None = None) -> Split:
        """The rows ``indices`` of this split, every per-sample field kept aligned (``info``
        replaces the split's own)."""
        idx = np.asarray(indices, dtype=np.int64)
        rows = torch.from_numpy(idx)

        def pick(value):
            if value is None:
                return None
            return value[rows] if isinstance(value, torch.Tensor) else [value[i] for i in idx]
        return dataclasses.replace(self, split=split or self.split, info=self.info if info is None else info,
                                   **{name: pick(getattr(self, name)) for name in PER_SAMPLE})


def read_annotation_json(path: Path):
    """A JSON annotation file, parsed; a missing or malformed file is a :class:`DataError` naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: annotation file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: malformed JSON ({err})") from None


def multi_hot(label_lists: list[list[str]], classes: list[str], source: Path | str) -> torch.Tensor:
    """Encode per-image label names against ``classes``; an unknown name is an error naming ``source``."""
    index = {name: i for i, name in enumerate(classes)}
    out = torch.zeros(len(label_lists), len(classes), dtype=torch.int8)
    for row, names in enumerate(label_lists):
        for name in names:
            if name not in index:
                raise DataError(f"{source}: sample {row} has label {name!r}, which is not in the vocabulary")
            out[row, index[name]] = 1
    return out


def carve_validation(train: Split, fraction: float = 0.1, seed: int = 0) -> tuple[Split, Split]:
    """Split ``train`` into (train, val) with a seeded random ``fraction`` held out for validation;
    ``fraction`` 0 holds out nothing (an empty val: P0's published protocol trains on all of train)."""
    if not 0 <= fraction < 1:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    order = np.random.default_rng(seed).permutation(len(train))
    n_val = max(1, round(fraction * len(train))) if fraction else 0
    val_info = train.info if n_val else {**train.info, EMPTY_CARVE: True}
    return train.subset(np.sort(order[n_val:]), "train"), train.subset(np.sort(order[:n_val]), "val", val_info)


def keep_label_proportion(labels: torch.Tensor, proportion: float, seed: int) -> torch.Tensor:
    """P3's partial-label protocol: keep a random ``proportion`` of every image's labels and
    mark the others unknown (-1).

    ``labels`` is N x C (1 positive, 0 negative, -1 already unknown). For each image,
    ``k = max(1, round(proportion * C))`` (Python's round, half to even) of its C label
    positions are drawn uniformly at random without replacement, independently per image;
    every other entry becomes -1.
    Every image thus keeps exactly k labels when it starts fully labelled; an entry that is
    already -1 stays -1 whether drawn or not, so the draw depends only on (seed, N, C) and
    never on the label values. The draw uses its own ``numpy`` generator seeded with
    ``seed``: reproducible, and independent of (and leaving untouched) torch's global RNG.
    ``proportion = 1`` returns an unchanged copy. The result has the dtype and device of
    ``labels``, which must be signed to hold -1.
    """
    if labels.dim() != 2:
        raise ValueError(f"labels must be N x C, got shape {tuple(labels.shape)}")
    if labels.dtype == torch.bool or not (labels.is_floating_point() or labels.is_signed()):
        raise ValueError(f"labels of dtype {labels.dtype} cannot hold -1 (unknown)")
    if not 0 < proportion <= 1:
        raise ValueError(f"proportion must be in (0, 1], got {proportion}")
    n, c = labels.shape
    kept_per_image = max(1, round(proportion * c))
    if kept_per_image >= c:
        return labels.clone()
    order = np.random.default_rng(seed).permuted(np.tile(np.arange(c), (n, 1)), axis=1)
    kept = np.zeros((n, c), dtype=bool)
    np.put_along_axis(kept, order[:, :kept_per_image], True, axis=1)
    return labels.masked_fill(~torch.from_numpy(kept).to(labels.device), -1)


def pseudo_label(scores: torch.Tensor, targets: torch.Tensor, *, threshold: float | None = None,
                 proportion: float | None = None) -> torch.Tensor:
    """P3's curriculum labelling: fill some unknown (-1) entries of ``targets`` from ``scores``
    (probabilities, N x C), known entries unchanged.

    ``threshold`` (in (0.5, 1)): an unknown entry becomes 1 where its score is >= threshold
    and 0 where it is <= 1 - threshold (the score threshold strategy). ``proportion`` (in
    (0, 1]): instead, the most confident ``proportion`` of the unknown entries, confidence
    being ``max(s, 1 - s)``, each labelled by ``s >= 0.5`` (the top-proportion strategy).
    Give exactly one of the two.
    """
    if (threshold is None) == (proportion is None):
        raise ValueError("give exactly one of threshold and proportion")
    if scores.shape != targets.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and targets {tuple(targets.shape)} differ")
    unknown = targets < 0
    if threshold is not None:
        if not 0.5 < threshold < 1:
            raise ValueError(f"threshold must be in (0.5, 1), got {threshold}")
        confident = unknown & ((scores >= threshold) | (scores <= 1 - threshold))
    else:
        if not 0 < proportion <= 1:
            raise ValueError(f"proportion must be in (0, 1], got {proportion}")
        confidence = torch.where(unknown, torch.maximum(scores, 1 - scores), -1.0)
        count = round(proportion * int(unknown.sum()))
        confident = torch.zeros_like(unknown)
        confident.view(-1)[confidence.view(-1).topk(count).indices] = True
    return torch.where(confident, (scores >= 0.5).to(targets.dtype), targets)
