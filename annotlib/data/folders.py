"""Readers for the single-label emotion sets of P2: FI, IAPSa, ArtPhoto and Abstract.

Every reader returns a :class:`Split` with ``categories == classes`` in the order given
(the emotion wheel order, :data:`~annotlib.data.emotions.EMOTIONS`, by default),
``category_ids`` and the matching one-hot ``labels``. Images are the files ending in
``.jpg``, ``.jpeg``, ``.png``, ``.bmp`` or ``.gif`` (any case); other files (``ReadMe.rtf``,
``Thumbs.db``) and hidden entries are ignored. Layouts, by dataset name::

    fi        <root>/<emotion>/<emotion>_NNNN.jpg, one folder per emotion (as torchvision's
              ImageFolder), and <root>/{train,val,test}.txt listing "<emotion>/<file>"
              paths: our copy's seeded 80/5/15 split (FI has no official one)
    iapsa     <root>/<emotion>/<IAPS id>.jpg, one folder per emotion, no split lists: the
              IAPS pictures are licensed and named by their IAPS number, so the folder per
              category of Mikels et al. (2005) is the layout we assume
    artphoto  <root>/<emotion>_<n>.jpg, one flat folder (the content of Machajdik &
              Hanbury's testImages_artphoto.zip); the emotion is the file name's prefix
              before the first "_", "sad" meaning sadness
    abstract  <root>/*.jpg and <root>/ABSTRACT_groundTruth.csv (testImages_abstract.zip):
              a header row (a first column, then one column per emotion, names in single
              quotes, "Content" and "Sad" for contentment and sadness) and, per painting,
              its quoted file name and the votes each emotion got. A painting's category is
              the emotion with the most votes; a painting whose top votes tie is dropped
              (about 228 of the 280 paintings remain, the count the literature uses)

A folder-per-class set with ``train.txt`` / ``val.txt`` / ``test.txt`` reads ``split`` from
its list. Without lists (IAPSa, ArtPhoto and Abstract have no official split), ``"train"``
and ``"test"`` are our seeded stratified 80/20 split, :func:`seeded_holdout`.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import numpy as np
import torch

from .emotions import EMOTIONS
from .labels import DataError, Split

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
SPLIT_LISTS = ("train", "val", "test")
ALIASES = {"sad": "sadness", "content": "contentment"}  # ArtPhoto's and Abstract's spellings
ABSTRACT_VOTES = "ABSTRACT_groundTruth.csv"


def _is_image(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") \
        and path.suffix.lower() in IMAGE_SUFFIXES


def _root_dir(root: Path, dataset: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: {dataset} folder not found")
    return root


def _emotion(name: str) -> str:
    name = name.strip().strip("'\"").strip().lower()
    return ALIASES.get(name, name)


def seeded_holdout(names: Sequence[str], category_ids: Sequence[int], test_fraction: float = 0.2,
                   seed: int = 0) -> np.ndarray:
    """Our stratified train / test split where a dataset has none: a boolean mask, True for test.

    Per class (in class-id order), its samples in file name order are shuffled by one
    ``numpy`` generator seeded with ``seed`` and the first ``round(test_fraction * n_c)`` go
    to test, so the split depends only on the file names, their classes and the seed.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    ids = np.asarray(category_ids)
    by_name = np.argsort(np.asarray(names, dtype=str), kind="stable")
    rng, test = np.random.default_rng(seed), np.zeros(len(ids), dtype=bool)
    for category in np.unique(ids):
        members = by_name[ids[by_name] == category]
        test[rng.permutation(members)[:round(test_fraction * len(members))]] = True
    return test


def _single_label_split(dataset: str, split: str, root: Path, classes: Sequence[str],
                        paths: list[Path], ids: list[int], info: dict) -> Split:
    category_ids = torch.tensor(ids, dtype=torch.int64)
    labels = torch.nn.functional.one_hot(category_ids, len(classes)).to(torch.int8)
    counts = torch.bincount(category_ids, minlength=len(classes)).tolist()
    return Split(dataset=dataset, split=split, classes=list(classes), image_paths=paths,
                 labels=labels, categories=list(classes), category_ids=category_ids, root=root,
                 info={**info, "class_counts": dict(zip(classes, counts))})


def _holdout(dataset: str, split: str, root: Path, classes: Sequence[str], paths: list[Path],
             ids: list[int], info: dict, test_fraction: float, seed: int) -> Split:
    """The ``split`` ("train" or "test") of our seeded holdout over all of a dataset's images."""
    if split not in ("train", "test"):
        raise ValueError(f"{dataset}: {root} has no split lists, so split must be 'train' or "
                         f"'test' (our seeded {1 - test_fraction:.0%}/{test_fraction:.0%} "
                         f"split), got {split!r}")
    test = seeded_holdout([p.relative_to(root).as_posix() for p in paths], ids, test_fraction,
                          seed)
    keep = np.flatnonzero(test == (split == "test"))
    info = {**info, "split_source": f"seeded stratified holdout (ours): test_fraction "
                                    f"{test_fraction}, seed {seed}"}
    return _single_label_split(dataset, split, root, classes, [paths[i] for i in keep],
                               [ids[i] for i in keep], info)


def _read_split_list(path: Path, root: Path, index: dict[str, int]) -> tuple[list[Path], list[int]]:
    """The ``<class>/<file>`` lines of one split list, each checked against the folders."""
    paths, ids, seen = [], [], set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = PurePosixPath(line.strip()).parts
        if len(parts) != 2:
            raise DataError(f"{path}: line {number} is {line!r}, expected '<class>/<file>'")
        if parts[0] not in index:
            raise DataError(f"{path}: line {number} names class {parts[0]!r}, "
                            f"which is not one of {list(index)}")
        image = root / parts[0] / parts[1]
        if not image.is_file():
            raise DataError(f"{path}: line {number}: image {image} not found")
        if image in seen:
            raise DataError(f"{path}: line {number}: {line.strip()!r} is listed twice")
        seen.add(image)
        paths.append(image)
        ids.append(index[parts[0]])
    return paths, ids


def read_image_folder(root: Path, split: str, dataset: str = "image-folder",
                      classes: Sequence[str] = EMOTIONS, test_fraction: float = 0.2,
                      seed: int = 0) -> Split:
    """``split`` of a folder-per-class dataset (``<root>/<class>/<file>``, see the module
    docstring), categories in the order of ``classes``.

    A class folder not in ``classes`` is an error naming it. With split lists
    (``<root>/{train,val,test}.txt``), ``split`` is read from ``<root>/<split>.txt``; a line
    whose image does not exist is an error naming the list and line. Without them,
    ``"train"`` / ``"test"`` are our seeded holdout (``test_fraction``, ``seed``).
    """
    root = _root_dir(root, dataset)
    index = {name: i for i, name in enumerate(classes)}
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    for folder in folders:
        if folder.name not in index:
            raise DataError(f"{folder}: class folder {folder.name!r} is not one of {list(classes)}")
    if any((root / f"{name}.txt").exists() for name in SPLIT_LISTS):
        path = root / f"{split}.txt"
        if not path.is_file():
            raise DataError(f"{path}: split list not found")
        paths, ids = _read_split_list(path, root, index)
        return _single_label_split(dataset, split, root, classes, paths, ids,
                                   {"split_source": str(path)})
    paths, ids = [], []
    for folder in folders:
        images = sorted(p for p in folder.iterdir() if _is_image(p))
        paths += images
        ids += [index[folder.name]] * len(images)
    return _holdout(dataset, split, root, classes, paths, ids, {}, test_fraction, seed)


def read_artphoto(root: Path, split: str, dataset: str = "artphoto",
                  classes: Sequence[str] = EMOTIONS, test_fraction: float = 0.2,
                  seed: int = 0) -> Split:
    """``split`` ("train" or "test", our seeded holdout) of ArtPhoto's flat folder, each
    image's emotion the prefix of its name (``amusement_12.jpg``; ``sad_3.jpg`` is sadness).
    An image whose prefix is not in ``classes`` is an error naming it."""
    root = _root_dir(root, dataset)
    index = {name: i for i, name in enumerate(classes)}
    paths = sorted(p for p in root.iterdir() if _is_image(p))
    ids = []
    for path in paths:
        emotion = _emotion(path.name.split("_", 1)[0])
        if "_" not in path.name or emotion not in index:
            raise DataError(f"{path}: expected a name '<emotion>_<n>' with an emotion "
                            f"in {list(classes)}")
        ids.append(index[emotion])
    return _holdout(dataset, split, root, classes, paths, ids, {}, test_fraction, seed)


def read_abstract_votes(path: Path, classes: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """File names and ``(N, K)`` votes (columns in ``classes`` order) of ABSTRACT_groundTruth.csv."""
    try:
        rows = [(number, row) for number, row in
                enumerate(csv.reader(path.read_text(encoding="utf-8").splitlines()), 1) if row]
    except FileNotFoundError:
        raise DataError(f"{path}: vote file not found") from None
    if not rows:
        raise DataError(f"{path}: the vote file is empty")
    header = [_emotion(name) for name in rows[0][1][1:]]
    if sorted(header) != sorted(classes):
        raise DataError(f"{path}: the header's emotion columns {header} are not {list(classes)}")
    order = [header.index(name) for name in classes]
    names, votes = [], []
    for number, row in rows[1:]:
        try:
            counts = [int(value) for value in row[1:]]
        except ValueError:
            counts = []
        if len(counts) != len(header) or min(counts) < 0:
            raise DataError(f"{path}: line {number} is {','.join(row)!r}, expected a file name "
                            f"and {len(header)} non-negative vote counts")
        names.append(row[0].strip().strip("'\"").strip())
        votes.append([counts[i] for i in order])
    return names, np.asarray(votes, dtype=np.int64).reshape(-1, len(classes))


def read_abstract(root: Path, split: str, dataset: str = "abstract",
                  classes: Sequence[str] = EMOTIONS, test_fraction: float = 0.2,
                  seed: int = 0) -> Split:
    """``split`` ("train" or "test", our seeded holdout) of the Abstract paintings, each
    labelled with its most-voted emotion; paintings whose top votes tie are dropped and
    counted in ``info["ties_dropped"]``. A listed image that does not exist is an error."""
    root = _root_dir(root, dataset)
    path = root / ABSTRACT_VOTES
    names, votes = read_abstract_votes(path, classes)
    top = votes.max(axis=1, initial=0)
    unique_top = (votes == top[:, None]).sum(axis=1) == 1
    paths, ids = [], []
    for name, row, keep in zip(names, votes, unique_top):
        if not (root / name).is_file():
            raise DataError(f"{path}: image {root / name} not found")
        if keep:
            paths.append(root / name)
            ids.append(int(row.argmax()))
    info = {"ties_dropped": int((~unique_top).sum()), "vote_file": str(path)}
    return _holdout(dataset, split, root, classes, paths, ids, info, test_fraction, seed)


class FolderDataset(NamedTuple):
    """The fields of the core's ``DatasetInfo``, in its order."""

    folder: str  # under the data root
    read: Callable[[Path, str], Split]
    official_splits: tuple[str, ...]


FOLDER_DATASETS: dict[str, FolderDataset] = {
    "fi": FolderDataset("FI", partial(read_image_folder, dataset="fi"), SPLIT_LISTS),
    # no official split: "train" / "test" are our seeded holdout; load_split carves "val"
    "iapsa": FolderDataset("IAPSa", partial(read_image_folder, dataset="iapsa"),
                           ("train", "test")),
    "artphoto": FolderDataset("ArtPhoto", partial(read_artphoto, dataset="artphoto"),
                              ("train", "test")),
    "abstract": FolderDataset("Abstract", partial(read_abstract, dataset="abstract"),
                              ("train", "test")),
}
