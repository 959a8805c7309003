"""Caption datasets, caption tokenisation, concept labels mined from captions, and the word
vocabulary of a caption decoder.

Readers, each ``read_*(root, split) -> Split`` on the dataset's own public layout:

- :func:`read_flickr8k`: Flickr8k (Hodosh et al., JAIR 2013), five captions per image, no
  classes (``classes == []``, ``labels is None``); :func:`read_flickr8k_concepts` adds
  multi-label concept labels mined from the training captions.
- :func:`read_cub`: CUB-200-2011 with the Reed et al. (CVPR 2016) captions, ten per image;
  single-label (200 species) with one box per image.
- :func:`read_flowers`: Oxford-102 Flowers with the Reed et al. captions, ten per image;
  single-label (102 classes).

All captions are kept as written in the files. :func:`tokenize` is the one normalisation used
everywhere else (concept words, the decoder vocabulary): lower-case, every punctuation
character replaced by a space, split on whitespace.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from scipy.io import loadmat
from scipy.io.matlab import MatReadError

from .labels import DataError, Split

T = TypeVar("T")

_PUNCTUATION = re.compile(r"[^\w\s]|_")


def tokenize(caption: str) -> list[str]:
    """``caption`` lower-cased, each punctuation character replaced by a space, split on
    whitespace: ``"A dog's ball."`` -> ``["a", "dog", "s", "ball"]``."""
    return _PUNCTUATION.sub(" ", caption.lower()).split()


# ---------------------------------------------------------------- file helpers


def _numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, stripped line) of every non-blank line of a UTF-8 text file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err})") from None
    return ((number, line.strip()) for number, line in enumerate(text.splitlines(), 1)
            if line.strip())


def _image_list(path: Path) -> list[tuple[int, str]]:
    """(line number, name) of a one-name-per-line list; a repeated name is an error."""
    entries, seen = [], set()
    for number, line in _numbered_lines(path):
        if line in seen:
            raise DataError(f"{path}: line {number} repeats {line!r}")
        seen.add(line)
        entries.append((number, line))
    return entries


def _columns(count: int, convert: Callable[[str], T]) -> Callable[[list[str]], list[T]]:
    """A parser of ``count`` values after a line's id, each through ``convert``."""
    def parse(fields: list[str]) -> list[T]:
        if len(fields) != count:
            raise ValueError(f"expected {count} value(s) after the id, got {len(fields)}")
        return [convert(value) for value in fields]
    return parse


def _id_table(path: Path, parse: Callable[[list[str]], T]) -> dict[str, T]:
    """``<id> <values...>`` lines as ``{id: parse(values)}`` in file order; a malformed or
    repeated line is an error naming the file and line."""
    table: dict[str, T] = {}
    for number, line in _numbered_lines(path):
        key, *fields = line.split()
        try:
            value = parse(fields)
        except ValueError as err:
            raise DataError(f"{path}: line {number} is {line!r} ({err})") from None
        if key in table:
            raise DataError(f"{path}: line {number} repeats id {key}")
        table[key] = value
    return table


def _check_images(paths: Iterable[Path], listed_in: Path) -> None:
    """An error naming the first of ``paths`` that is not a file, and the list naming it."""
    for path in paths:
        if not path.is_file():
            raise DataError(f"{path}: image listed in {listed_in} not found")


def _one_hot(category_ids: torch.Tensor, count: int) -> torch.Tensor:
    """The ``labels`` of a single-label reader: ``N x count`` int8 one-hot rows."""
    return torch.nn.functional.one_hot(category_ids, count).to(torch.int8)


# ---------------------------------------------------------------- Flickr8k

FLICKR8K_SPLITS = {"train": "train", "val": "dev", "test": "test"}  # our name -> file name
FLICKR8K_CAPTIONS = 5


def read_flickr8k_tokens(path: Path) -> dict[str, list[str]]:
    """``{image name: captions in caption-number order}`` of ``Flickr8k.token.txt``, whose
    lines are ``<image name>#<i><TAB><caption>``."""
    numbered: dict[str, dict[int, str]] = {}
    for number, line in _numbered_lines(path):
        key, tab, caption = line.partition("\t")
        name, hash_sign, index = key.rpartition("#")
        if not tab or not hash_sign or not name or not index.isdigit() or not caption.strip():
            raise DataError(f"{path}: line {number} is {line!r}, "
                            f"expected '<image>#<i><TAB><caption>'")
        captions = numbered.setdefault(name, {})
        if int(index) in captions:
            raise DataError(f"{path}: line {number} repeats caption {key}")
        captions[int(index)] = caption.strip()
    return {name: [captions[i] for i in sorted(captions)] for name, captions in numbered.items()}


def read_flickr8k(root: Path, split: str, dataset: str = "flickr8k") -> Split:
    """``split`` ("train", "val" or "test") of Flickr8k in its official layout::

        <root>/Flicker8k_Dataset/<name>.jpg                (the folder name is misspelt so)
        <root>/Flickr8k_text/Flickr8k.token.txt            <name>#<i><TAB><caption>, i = 0..4
        <root>/Flickr8k_text/Flickr_8k.trainImages.txt     one image name per line
        <root>/Flickr8k_text/Flickr_8k.devImages.txt       our "val"
        <root>/Flickr8k_text/Flickr_8k.testImages.txt

    Every listed image must exist and have exactly five captions, else a :class:`DataError`
    names the list file and line. Token lines for unlisted images are ignored (the official
    token file has a few). No classes: ``classes == []`` and ``labels is None``.
    """
    if split not in FLICKR8K_SPLITS:
        raise ValueError(f"unknown Flickr8k split {split!r}; expected one of "
                         f"{', '.join(FLICKR8K_SPLITS)}")
    root = Path(root)
    token_path = root / "Flickr8k_text" / "Flickr8k.token.txt"
    list_path = root / "Flickr8k_text" / f"Flickr_8k.{FLICKR8K_SPLITS[split]}Images.txt"
    entries = _image_list(list_path)
    tokens = read_flickr8k_tokens(token_path)
    for number, name in entries:
        count = len(tokens.get(name, []))
        if count != FLICKR8K_CAPTIONS:
            raise DataError(f"{list_path}: line {number}: {name} has {count} captions in "
                            f"{token_path}, expected {FLICKR8K_CAPTIONS}")
    images = [root / "Flicker8k_Dataset" / name for _, name in entries]
    _check_images(images, list_path)
    return Split(dataset=dataset, split=split, classes=[], image_paths=images,
                 captions=[tokens[name] for _, name in entries], root=root,
                 info={"list_file": str(list_path), "captions_per_image": FLICKR8K_CAPTIONS})


# ---------------------------------------------------------------- concepts from captions

# Function words (articles, pronouns, prepositions, conjunctions, auxiliaries, the pieces
# "s" and "t" that tokenize() leaves of "dog's" and "don't") and generic words (numbers,
# "front", "side", "something", "background", "wearing", "looking", ...): none of them names
# something one sees.
CONCEPT_STOPWORDS = frozenset((
    "a", "an", "the", "this", "that", "these", "those", "some", "any", "each", "every", "all",
    "both", "another", "other", "others", "such",
    "i", "me", "my", "we", "our", "you", "your", "he", "him", "his", "she", "her", "it", "its",
    "they", "them", "their", "there", "here",
    "who", "whom", "whose", "which", "what", "where", "when", "while", "why", "how",
    "of", "in", "on", "at", "to", "from", "by", "for", "with", "without", "into", "onto", "over",
    "under", "above", "below", "near", "next",
    "through", "across", "along", "around", "behind", "beside", "besides", "between", "among",
    "against", "toward", "towards",
    "up", "down", "out", "off", "away", "back", "about", "after", "before", "during", "upon",
    "inside", "outside", "top", "front", "side",
    "and", "or", "but", "nor", "so", "than", "then", "as", "if", "because",
    "is", "are", "was", "were", "be", "been", "being", "am", "has", "have", "had", "having", "do",
    "does", "did", "doing",
    "will", "would", "can", "could", "may", "might", "shall", "should", "must",
    "not", "no", "very", "too", "also", "just", "only", "still", "even",
    "s", "t", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "many", "several", "few", "lot", "lots",
    "something", "someone", "somebody", "thing", "things", "area", "picture", "image", "photo",
    "view", "background", "together", "wearing", "look", "looks", "looking",
))
CONCEPT_SIZE = 100
CONCEPT_MIN_IMAGES = 10


def concept_vocabulary(captions_per_image: Sequence[Sequence[str]], size: int = CONCEPT_SIZE,
                       min_images: int = CONCEPT_MIN_IMAGES,
                       stopwords: Iterable[str] = CONCEPT_STOPWORDS) -> list[str]:
    """A multi-label concept vocabulary mined from the captions of the TRAINING images.

    Words are :func:`tokenize`'s; a word is a candidate unless it is in ``stopwords`` or is not
    alphabetic (numbers). Each candidate counts once per image however many of its captions
    use it; the words of at least ``min_images`` images are ranked by that image count, ties
    alphabetically, and the first ``size`` kept. The result is deterministic. No part-of-speech
    tagger is used, so frequent colours and actions ("black", "running") become concepts
    alongside nouns, and no stemming, so "dog" and "dogs" are two concepts.
    """
    stop = frozenset(stopwords)
    counts: Counter[str] = Counter()
    for captions in captions_per_image:
        counts.update({w for c in captions for w in tokenize(c) if w.isalpha() and w not in stop})
    ranked = sorted((w for w, n in counts.items() if n >= min_images), key=lambda w: (-counts[w], w))
    return ranked[:size]


def concept_labels(captions_per_image: Sequence[Sequence[str]],
                   concepts: Sequence[str]) -> torch.Tensor:
    """``N x C`` int8 multi-hot: image ``n`` has concept ``c`` if any of its captions contains
    the word (after :func:`tokenize`)."""
    index = {word: i for i, word in enumerate(concepts)}
    if len(index) != len(concepts):
        raise ValueError("the concept list has duplicates")
    labels = torch.zeros(len(captions_per_image), len(concepts), dtype=torch.int8)
    for row, captions in enumerate(captions_per_image):
        found = {index[w] for c in captions for w in tokenize(c) if w in index}
        labels[row, sorted(found)] = 1
    return labels


def read_flickr8k_concepts(root: Path, split: str, size: int = CONCEPT_SIZE,
                           min_images: int = CONCEPT_MIN_IMAGES,
                           dataset: str = "flickr8k-concepts") -> Split:
    """:func:`read_flickr8k`'s ``split`` with ``classes`` = the :func:`concept_vocabulary` of
    the official training captions (whatever ``split`` is) and ``labels`` = its
    :func:`concept_labels`."""
    concepts = concept_vocabulary(read_flickr8k(root, "train").captions, size, min_images)
    data = read_flickr8k(root, split, dataset)
    return dataclasses.replace(data, classes=concepts, labels=concept_labels(data.captions, concepts),
                               info={**data.info, "concepts": "flickr8k train captions"})


# ---------------------------------------------------------------- Reed et al. captions

REED_CAPTIONS = 10


def read_reed_captions(path: Path) -> list[str]:
    """The ten captions of one Reed et al. ``text_c10`` file, one per non-blank line."""
    captions = [line for _, line in _numbered_lines(path)]
    if len(captions) != REED_CAPTIONS:
        raise DataError(f"{path}: {len(captions)} captions, expected {REED_CAPTIONS}")
    return captions


# ---------------------------------------------------------------- CUB-200-2011


def _train_flag(value: str) -> int:
    """CUB's ``is_training_image`` column: 1 or 0."""
    if value not in ("0", "1"):
        raise ValueError("is_training_image must be 0 or 1")
    return int(value)


def _xywh(fields: list[str]) -> list[float]:
    """A ``bounding_boxes.txt`` row ``x y width height`` as ``[x0, y0, x1, y1]``."""
    x, y, w, h = _columns(4, float)(fields)
    if w < 0 or h < 0:
        raise ValueError("negative width or height")
    return [x, y, x + w, y + h]


def read_cub(root: Path, split: str, with_captions: bool = True, dataset: str = "cub") -> Split:
    """``split`` ("train" or "test", CUB's official image split) of CUB-200-2011, its folder
    ``CUB_200_2011`` as released with Reed et al.'s ``text_c10`` folder placed inside::

        <root>/classes.txt               <class id> <class folder>   (001.Black_footed_Albatross)
        <root>/images.txt                <image id> <class folder>/<file>.jpg
        <root>/image_class_labels.txt    <image id> <class id>
        <root>/train_test_split.txt      <image id> <1 train | 0 test>
        <root>/bounding_boxes.txt        <image id> <x> <y> <width> <height>   (pixels)
        <root>/images/<class folder>/<file>.jpg
        <root>/text_c10/<class folder>/<file stem>.txt   ten captions, one per line

    ``categories`` are the class folder names in ``classes.txt`` order; ``labels`` their
    one-hot rows. Each image has one box ``(category, x, y, x + width, y + height)``.
    ``with_captions=False`` reads a plain CUB download without ``text_c10``
    (``captions is None``). Reed et al.'s zero-shot class split is not used: P4 classifies
    every species, so it needs CUB's image split.
    """
    if split not in ("train", "test"):
        raise ValueError(f"unknown CUB split {split!r}; expected train or test")
    root = Path(root)
    images_file = root / "images.txt"
    classes = _id_table(root / "classes.txt", _columns(1, str))
    images = _id_table(images_file, _columns(1, str))
    class_of = _id_table(root / "image_class_labels.txt", _columns(1, str))
    is_train = _id_table(root / "train_test_split.txt", _columns(1, _train_flag))
    boxes = _id_table(root / "bounding_boxes.txt", _xywh)
    for table, name in ((class_of, "image_class_labels.txt"), (is_train, "train_test_split.txt"),
                        (boxes, "bounding_boxes.txt")):
        missing = [i for i in images if i not in table]
        if missing:
            raise DataError(f"{root / name}: no line for image id {missing[0]} of {images_file}")
    category_index = {class_id: i for i, class_id in enumerate(classes)}
    for image_id, (class_id,) in class_of.items():
        if class_id not in category_index:
            raise DataError(f"{root / 'image_class_labels.txt'}: image {image_id} has class "
                            f"{class_id}, which is not in {root / 'classes.txt'}")

    wanted = 1 if split == "train" else 0
    ids = [i for i in images if is_train[i][0] == wanted]
    category_ids = torch.tensor([category_index[class_of[i][0]] for i in ids], dtype=torch.int64)
    paths = [root / "images" / images[i][0] for i in ids]
    _check_images(paths, images_file)
    captions = ([read_reed_captions((root / "text_c10" / images[i][0]).with_suffix(".txt"))
                 for i in ids] if with_captions else None)
    categories = [folder for (folder,) in classes.values()]
    return Split(dataset=dataset, split=split, classes=categories, image_paths=paths,
                 labels=_one_hot(category_ids, len(categories)), categories=categories,
                 category_ids=category_ids, captions=captions,
                 boxes=[[(int(c), *boxes[i])] for i, c in zip(ids, category_ids)], root=root,
                 info={"captions_per_image": REED_CAPTIONS if with_captions else 0})


# ---------------------------------------------------------------- Oxford-102 Flowers

FLOWERS_SPLITS = {"train": "trnid", "val": "valid", "test": "tstid"}  # our name -> setid.mat key


def _mat_integers(path: Path, key: str) -> np.ndarray:
    """Variable ``key`` of a MATLAB file, flattened, as int64; it must hold integers."""
    try:
        mat = loadmat(path)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (MatReadError, ValueError, TypeError, OSError) as err:
        raise DataError(f"{path}: not a readable MATLAB file ({err})") from None
    if key not in mat:
        raise DataError(f"{path}: no variable {key!r}")
    values = np.asarray(mat[key]).ravel()
    if not np.issubdtype(values.dtype, np.number) or not np.all(np.mod(values, 1) == 0):
        raise DataError(f"{path}: {key} must hold integers")
    return values.astype(np.int64)


def read_flowers(root: Path, split: str, with_captions: bool = True,
                 dataset: str = "flowers") -> Split:
    """``split`` ("train", "val" or "test", the official ``setid.mat`` split) of Oxford-102
    Flowers, with Reed et al.'s ``text_c10`` folder placed beside the official files::

        <root>/imagelabels.mat   labels: 1 x 8189, the class (1..102) of image_<n>
        <root>/setid.mat         trnid, valid, tstid: 1 x n, 1-based image numbers
        <root>/jpg/image_%05d.jpg
        <root>/text_c10/class_%05d/image_%05d.txt   ten captions, one per line

    The dataset names no classes: ``categories`` are Reed's folder names ``class_00001`` ..
    for classes 1 .. the largest label; ``labels`` their one-hot rows.
    ``with_captions=False`` reads the official files alone (``captions is None``).
    """
    if split not in FLOWERS_SPLITS:
        raise ValueError(f"unknown Flowers split {split!r}; expected one of "
                         f"{', '.join(FLOWERS_SPLITS)}")
    root = Path(root)
    labels_file, setid_file = root / "imagelabels.mat", root / "setid.mat"
    image_labels = _mat_integers(labels_file, "labels")
    numbers = _mat_integers(setid_file, FLOWERS_SPLITS[split])
    if len(image_labels) == 0 or image_labels.min() < 1:
        raise DataError(f"{labels_file}: labels must be 1-based class numbers")
    outside = numbers[(numbers < 1) | (numbers > len(image_labels))]
    if len(outside):
        raise DataError(f"{setid_file}: {FLOWERS_SPLITS[split]} has image number {outside[0]}, "
                        f"outside 1..{len(image_labels)} of {labels_file}")
    if len(set(numbers.tolist())) != len(numbers):
        raise DataError(f"{setid_file}: {FLOWERS_SPLITS[split]} lists an image more than once")

    classes = image_labels[numbers - 1]
    categories = [f"class_{k:05d}" for k in range(1, int(image_labels.max()) + 1)]
    category_ids = torch.from_numpy(classes - 1)
    paths = [root / "jpg" / f"image_{n:05d}.jpg" for n in numbers]
    _check_images(paths, setid_file)
    captions = ([read_reed_captions(root / "text_c10" / f"class_{c:05d}" / f"image_{n:05d}.txt")
                 for n, c in zip(numbers, classes)] if with_captions else None)
    return Split(dataset=dataset, split=split, classes=categories, image_paths=paths,
                 labels=_one_hot(category_ids, len(categories)), categories=categories,
                 category_ids=category_ids, captions=captions, root=root,
                 info={"captions_per_image": REED_CAPTIONS if with_captions else 0})


# ---------------------------------------------------------------- decoder vocabulary

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIAL_TOKENS = (PAD, START, END, UNK)
MIN_WORD_COUNT = 5  # the min_word_freq of Show, Attend and Tell implementations


class CaptionVocabulary:
    """The word vocabulary of a caption decoder: ids 0-3 are ``<pad>``, ``<start>``, ``<end>``
    and ``<unk>``, then the words in the order given (by :meth:`build`: most frequent first).

    Words are :func:`tokenize`'s, which never yields a special token (it drops ``<`` and
    ``>``), so ``decode(encode(c))`` is the normalised caption ``" ".join(tokenize(c))``
    whenever every word of ``c`` is in the vocabulary.
    """

    pad_id, start_id, end_id, unk_id = range(4)

    def __init__(self, words: Sequence[str], min_count: int = MIN_WORD_COUNT):
        self.tokens = [*SPECIAL_TOKENS, *words]
        self.index = {token: i for i, token in enumerate(self.tokens)}
        if len(self.index) != len(self.tokens):
            raise ValueError("the vocabulary has duplicate words or repeats a special token")
        self.min_count = min_count

    @classmethod
    def build(cls, captions_per_image: Iterable[Iterable[str]],
              min_count: int = MIN_WORD_COUNT) -> CaptionVocabulary:
        """The words occurring at least ``min_count`` times (every occurrence counts) in the
        captions, which should be the training captions only; most frequent first, ties
        alphabetically. Rarer words map to ``<unk>``."""
        counts = Counter(w for captions in captions_per_image for c in captions for w in tokenize(c))
        words = sorted((w for w, n in counts.items() if n >= min_count),
                       key=lambda w: (-counts[w], w))
        return cls(words, min_count)

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, captions_per_image: Sequence[Sequence[str]], max_length: int,
               captions_per_row: int | None = None) -> torch.Tensor:
        """``N x K x max_length`` int64 ids: row ``[n, k]`` is ``<start> w_1 .. w_m <end>``
        for caption ``k`` of image ``n``, then ``<pad>``. Words past ``max_length - 2`` are cut
        (``<end>`` is always kept). ``K`` is ``captions_per_row``, by default the largest
        caption count of an image; an image with fewer captions gets all-``<pad>`` rows
        (``(ids[:, :, 0] == start_id)`` marks the real ones), one with more is an error."""
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2 (<start>, <end>), got {max_length}")
        most = max((len(captions) for captions in captions_per_image), default=0)
        k = most if captions_per_row is None else captions_per_row
        if most > k:
            raise ValueError(f"an image has {most} captions, more than captions_per_row={k}")
        ids = torch.full((len(captions_per_image), k, max_length), self.pad_id, dtype=torch.int64)
        for n, captions in enumerate(captions_per_image):
            for j, caption in enumerate(captions):
                words = [self.index.get(w, self.unk_id) for w in tokenize(caption)]
                row = [self.start_id, *words[:max_length - 2], self.end_id]
                ids[n, j, :len(row)] = torch.tensor(row)
        return ids

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """The words of one id sequence up to its first ``<end>``, ``<pad>`` and ``<start>``
        left out, joined by spaces."""
        words = []
        for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids):
            if not 0 <= i < len(self.tokens):
                raise ValueError(f"id {i} is outside the vocabulary (size {len(self.tokens)})")
            if i == self.end_id:
                break
            if i not in (self.pad_id, self.start_id):
                words.append(self.tokens[i])
        return " ".join(words)

    def to_json(self) -> str:
        """The vocabulary as JSON text, to save with a run; :meth:`from_json` reads it back."""
        return json.dumps({"min_count": self.min_count, "tokens": self.tokens})

    @classmethod
    def from_json(cls, text: str) -> CaptionVocabulary:
        """The vocabulary that :meth:`to_json` wrote; ids are kept exactly."""
        doc = json.loads(text)
        if not isinstance(doc, dict) or not isinstance(doc.get("tokens"), list) \
                or tuple(doc["tokens"][:4]) != SPECIAL_TOKENS:
            raise ValueError(f"not a caption vocabulary: expected tokens starting with "
                             f"{', '.join(SPECIAL_TOKENS)}")
        return cls(doc["tokens"][4:], int(doc["min_count"]))
