"""The embedded default dataset: textured scenes of small shapes, generated on first use.

Every notebook has to run on a fresh machine with nothing downloaded, so this module
draws a small stand-in for the real datasets that carries what all five papers need:

- a multi-label tag set (13 object kinds, 9 scene tags) with a long-tailed frequency
  (object kinds are drawn with Zipf weights) and real co-occurrence (a latent theme,
  e.g. "night", favours some objects and scene tags: crescents and stars at night);
- a box per object; clutter shapes that are not labels; partial occlusion; noise;
- 2-5 template captions;
- one of eight emotions, rendered as a global colour grade: the tint hue walks round
  the colour wheel with the emotion wheel (neighbours look alike), brightness and
  saturation go up for the positive half and down for the negative half. Emotions
  are drawn independently of the content.

It is written in the AIA JSON layout (:mod:`annotlib.data.aia`) plus extra fields::

    <root>/images/00000.png, <root>/train.json, <root>/test.json
    {"samples": [{"image_name", "image_labels", "boxes": [[class, x0, y0, x1, y1], ...],
                  "captions": [...], "emotion": "awe"}, ...],
     "labels": [...], "emotions": [...], "params": {...}}

Boxes are pixels, x1 and y1 exclusive. Image ``i`` is drawn from its own generator
seeded with ``(seed, i)``, so the same parameters give byte-identical files.
"""

from __future__ import annotations

import colorsys
import dataclasses
import json
import logging
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from .aia import read_aia
from .cache import cache_dir
from .labels import DataError, Split

VERSION = 1  # bump when the drawing recipe changes; it is part of the default root and the params

log = logging.getLogger(__name__)

EMOTIONS = ("amusement", "contentment", "awe", "excitement", "fear", "sadness", "disgust", "anger")

OBJECTS = ("circle", "square", "triangle", "star", "ring", "cross", "diamond", "hexagon",
           "arrow", "heart", "crescent", "bolt", "bar")  # in Zipf rank order
TEXTURES = ("stripes", "dots", "checks", "waves", "grid")
LABELS = OBJECTS + TEXTURES + ("night", "grass", "water", "border")

# Latent themes make the co-occurrence: probability, object-weight multipliers,
# texture-weight multipliers, probability of each extra scene tag.
THEMES = {
    "plain": (0.45, {}, {}, {"border": 0.12}),
    "workshop": (0.2, {"square": 3, "hexagon": 6, "cross": 3, "bar": 8, "bolt": 5},
                 {"grid": 12, "checks": 3}, {"border": 0.3}),
    "garden": (0.15, {"circle": 2, "heart": 8, "diamond": 2}, {"dots": 2}, {"grass": 1.0}),
    "sea": (0.12, {"triangle": 3, "ring": 4, "arrow": 4}, {"waves": 10}, {"water": 1.0}),
    "night": (0.08, {"star": 6, "crescent": 25}, {}, {"night": 1.0, "water": 0.3}),
}
TEXTURE_WEIGHTS = {None: 2.0, "stripes": 1.2, "dots": 0.5, "checks": 0.3, "waves": 0.1, "grid": 0.08}
OBJECT_WEIGHTS = {kind: 1.0 / (rank + 1) ** 1.3 for rank, kind in enumerate(OBJECTS)}

COLOURS = {"red": (0.85, 0.12, 0.1), "orange": (0.95, 0.55, 0.1), "yellow": (0.95, 0.88, 0.15),
           "green": (0.15, 0.65, 0.2), "cyan": (0.1, 0.8, 0.85), "blue": (0.15, 0.3, 0.9),
           "purple": (0.55, 0.2, 0.75), "pink": (0.95, 0.5, 0.7), "white": (0.95, 0.95, 0.95),
           "gray": (0.5, 0.5, 0.5), "black": (0.08, 0.08, 0.08)}
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)

# Outlines in a unit circle, before rotation.
_STAR = [(np.cos(a), np.sin(a)) for a in np.linspace(-np.pi / 2, 1.5 * np.pi, 10, endpoint=False)]
_HEART_T = np.linspace(0, 2 * np.pi, 40, endpoint=False)
POLYGONS = {
    "square": [(-0.7, -0.7), (0.7, -0.7), (0.7, 0.7), (-0.7, 0.7)],
    "diamond": [(0, -1), (0.6, 0), (0, 1), (-0.6, 0)],  # elongated, so not a turned square
    "triangle": [(np.cos(a), np.sin(a)) for a in np.radians([-90, 30, 150])],
    "hexagon": [(np.cos(a), np.sin(a)) for a in np.radians(np.arange(0, 360, 60))],
    "star": [(x * (1 if i % 2 == 0 else 0.42), y * (1 if i % 2 == 0 else 0.42))
             for i, (x, y) in enumerate(_STAR)],
    "cross": [(-0.3, -0.95), (0.3, -0.95), (0.3, -0.3), (0.95, -0.3), (0.95, 0.3), (0.3, 0.3),
              (0.3, 0.95), (-0.3, 0.95), (-0.3, 0.3), (-0.95, 0.3), (-0.95, -0.3), (-0.3, -0.3)],
    "arrow": [(-1, -0.18), (0.2, -0.18), (0.2, -0.55), (1, 0), (0.2, 0.55), (0.2, 0.18), (-1, 0.18)],
    "bolt": [(-0.15, -1), (0.55, -1), (0.15, -0.2), (0.6, -0.2), (-0.3, 1), (-0.05, 0.1), (-0.5, 0.1)],
    "bar": [(-1, -0.2), (1, -0.2), (1, 0.2), (-1, 0.2)],
    "heart": list(zip(16 * np.sin(_HEART_T) ** 3 / 17,
                      (-13 * np.cos(_HEART_T) + 5 * np.cos(2 * _HEART_T) + 2 * np.cos(3 * _HEART_T)
                       + np.cos(4 * _HEART_T)) / 17 - 0.15)),
}
# Turning range in degrees: squares, crosses and diamonds stay upright enough to tell apart.
MAX_TURN = {"square": 20, "cross": 20, "diamond": 15, "heart": 25}

TEXTURE_WORD = {None: "plain", "stripes": "striped", "dots": "dotted", "checks": "checkered",
                "waves": "wavy", "grid": "grid"}
PLACES = (("in the top left", "at the top", "in the top right"),
          ("on the left", "in the centre", "on the right"),
          ("in the bottom left", "at the bottom", "in the bottom right"))
NUMBERS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
           "eleven", "twelve")


def default_synthetic_root(num_images: int = 3000, image_size: int = 96, seed: int = 0) -> Path:
    return cache_dir() / f"synthetic-v{VERSION}-n{num_images}-s{image_size}-seed{seed}"


def generate_synthetic(root: Path, *, num_images: int = 3000, image_size: int = 96,
                       seed: int = 0) -> Path:
    """Draw the set into ``root`` (about 4 s per 1000 images at 96 px) and return ``root``.

    Returns at once when ``root`` already holds a set with the same parameters. The set is
    written to a temporary sibling and renamed into place, so ``root`` is complete or absent.
    Generating is logged naming ``root``: a warning, except into :func:`default_synthetic_root`.
    """
    if num_images < 5 or image_size < 32:
        raise ValueError(f"need num_images >= 5 and image_size >= 32, got {num_images}, {image_size}")
    root = Path(root)
    params = {"version": VERSION, "num_images": num_images, "image_size": image_size, "seed": seed}
    if _holds(root, params):
        return root
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise DataError(f"{root}: exists and is not a synthetic set with parameters {params}; "
                        "remove it or choose another root")
    # Said aloud: a mistyped data_root would otherwise get a new set silently. The default
    # root, in the cache, is generated there by design.
    default = root == default_synthetic_root(num_images, image_size, seed)
    log.log(logging.INFO if default else logging.WARNING,
            "%s: no synthetic set there, generating one (%d images of %d px, seed %d)",
            root, num_images, image_size, seed)
    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(root)
    tmp = root.parent / f".{root.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)  # this process was interrupted here before
    try:
        (tmp / "images").mkdir(parents=True)
        jobs = [(tmp / "images", seed, image_size, start, min(start + 100, num_images))
                for start in range(0, num_images, 100)]
        workers = min(len(jobs), os.cpu_count() or 1)
        if workers > 1:
            with ProcessPoolExecutor(workers) as pool:
                chunks = list(pool.map(_draw_chunk, jobs))
        else:
            chunks = list(map(_draw_chunk, jobs))
        samples = [sample for chunk in chunks for sample in chunk]
        for split, rows in (("train", [s for i, s in enumerate(samples) if i % 5 != 4]),
                            ("test", [s for i, s in enumerate(samples) if i % 5 == 4])):
            doc = {"samples": rows, "labels": list(LABELS), "emotions": list(EMOTIONS), "params": params}
            (tmp / f"{split}.json").write_text(json.dumps(doc), encoding="utf-8")
        try:
            os.rename(tmp, root)  # replaces an empty directory; fails on a non-empty one
        except OSError:
            if not _holds(root, params):  # else another process finished the same set first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def read_synthetic(root: Path, split: str) -> Split:
    """``split`` ("train" or "test") of a generated set, with boxes, captions and emotions."""
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; the synthetic set has train and test")
    root = Path(root)
    base = read_aia(root, split, "synthetic")
    path = root / f"{split}.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(doc.get("params"), dict):  # e.g. an AIA set, in the same layout
        raise DataError(f"{path}: not a generated synthetic set (it has no params); give the folder "
                        "of one, or a new folder to generate one in")
    if doc.get("emotions") != list(EMOTIONS):
        raise DataError(f"{path}: emotion list {doc.get('emotions')} is not {list(EMOTIONS)}")
    boxes, captions, emotions = [], [], []
    for i, sample in enumerate(doc["samples"]):
        try:
            boxes.append([(int(c), float(x0), float(y0), float(x1), float(y1))
                          for c, x0, y0, x1, y1 in sample["boxes"]])
            captions.append([str(text) for text in sample["captions"]])
            emotions.append(EMOTIONS.index(sample["emotion"]))
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"{path}: sample {i} has missing or malformed boxes, captions "
                            f"or emotion ({err!r})") from None
    return dataclasses.replace(base, boxes=boxes, captions=captions,
                               categories=list(EMOTIONS), category_ids=torch.tensor(emotions, dtype=torch.int64),
                               info={**base.info, "params": doc.get("params")})


def _holds(root: Path, params: dict) -> bool:
    try:
        doc = json.loads((root / "train.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("params") == params and (root / "test.json").is_file()


def _remove_stale_partials(root: Path) -> None:
    """Delete temporary folders left by killed generations (their process is gone)."""
    for path in root.parent.glob(f".{root.name}.partial-*"):
        try:
            os.kill(int(path.name.rsplit("-", 1)[1]), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (ValueError, PermissionError):  # not our name pattern, or a live process
            pass


# ---------------------------------------------------------------- drawing one image

def _draw_chunk(job: tuple[Path, int, int, int, int]) -> list[dict]:
    """Draw and save images ``start..stop-1``; each from its own generator, so the files do
    not depend on how the work is split between processes."""
    folder, seed, size, start, stop = job
    samples = []
    for i in range(start, stop):
        pixels, sample = _draw(np.random.default_rng([seed, i]), size)
        samples.append({"image_name": f"{i:05d}.png", **sample})
        Image.fromarray(pixels).save(folder / samples[-1]["image_name"])
    return samples


def _draw(rng: np.random.Generator, size: int) -> tuple[np.ndarray, dict]:
    """One image (``size x size x 3`` uint8) and its sample record, without the name."""
    theme = rng.choice(list(THEMES), p=[t[0] for t in THEMES.values()])
    _, object_boost, texture_boost, tag_probs = THEMES[theme]
    textures = list(TEXTURE_WEIGHTS)
    weights = np.array([w * texture_boost.get(t, 1) for t, w in TEXTURE_WEIGHTS.items()])
    texture = textures[rng.choice(len(textures), p=weights / weights.sum())]
    tags = [tag for tag, p in tag_probs.items() if rng.random() < p]

    # Labels stay within 1-6: object kinds fill what the scene tags leave.
    n_kinds = min(rng.choice([1, 2, 3, 4], p=[0.3, 0.35, 0.22, 0.13]), 6 - len(tags) - (texture is not None))
    weights = np.array([w * object_boost.get(k, 1) for k, w in OBJECT_WEIGHTS.items()])
    kinds = rng.choice(len(OBJECTS), n_kinds, replace=False, p=weights / weights.sum())
    instances = [OBJECTS[k] for k in kinds for _ in range(rng.choice([1, 2, 3], p=[0.75, 0.2, 0.05]))]

    yy, xx = (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5)
    img = _background(rng, size, texture, yy, xx)
    if "grass" in tags or "water" in tags:
        _ground(rng, img, "grass" if "grass" in tags else "water", yy, xx)
    if "night" in tags:
        img *= 0.25
        sky = rng.integers(0, [size, int(size * 0.6)], (rng.integers(8, 20), 2))
        img[sky[:, 1], sky[:, 0]] = rng.uniform(0.7, 1.0, (len(sky), 1))
    for _ in range(rng.integers(1, 4)):  # clutter behind the objects
        d = int(size * rng.uniform(0.06, 0.16))
        x, y = rng.integers(0, size - d, 2)
        _paint(img, _blob_mask(rng, d), x, y, _colour(rng, rng.choice(list(COLOURS))))

    margin = int(size * rng.uniform(0.03, 0.06)) if "border" in tags else 1
    objects = _place(rng, img, instances, size, margin)
    for _ in range(rng.integers(0, 4)):  # thin lines over them: clutter that occludes
        line = Image.new("L", (size, size))
        ImageDraw.Draw(line).line([tuple(p) for p in rng.uniform(0, size, (3, 2))], fill=255, width=1)
        _paint(img, np.asarray(line, dtype=np.float32) / 255, 0, 0, _colour(rng, rng.choice(list(COLOURS))))
    if "border" in tags:
        frame = np.ones((size, size), dtype=np.float32)
        frame[margin:-margin, margin:-margin] = 0
        _paint(img, frame, 0, 0, _colour(rng, rng.choice(list(COLOURS))))

    emotion = int(rng.integers(len(EMOTIONS)))
    img = _grade(rng, img, emotion)
    img += rng.normal(0, rng.uniform(0.02, 0.06), img.shape).astype(np.float32)
    pixels = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)

    labels = [k for k in OBJECTS if any(o["kind"] == k for o in objects)]
    labels += [t for t in LABELS[len(OBJECTS):] if t == texture or t in tags]
    return pixels, {
        "image_labels": labels,
        "boxes": [[LABELS.index(o["kind"]), *o["box"]] for o in objects],
        "captions": _captions(rng, objects, texture, tags, size),
        "emotion": EMOTIONS[emotion],
    }


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32)


def _colour(rng: np.random.Generator, name: str) -> np.ndarray:
    return np.clip(np.array(COLOURS[name], dtype=np.float32) + rng.uniform(-0.08, 0.08, 3), 0, 1)


def _background(rng, size, texture, yy, xx) -> np.ndarray:
    hue, sat, val = rng.uniform(), rng.uniform(0.1, 0.5), rng.uniform(0.35, 0.9)
    c1 = _hsv(hue, sat, val)
    c2 = _hsv(hue + rng.normal(0, 0.08), sat, np.clip(val + rng.choice([-1, 1]) * rng.uniform(0.15, 0.3), 0, 1))
    phi = rng.uniform(0, np.pi)
    u, v = xx * np.cos(phi) + yy * np.sin(phi), -xx * np.sin(phi) + yy * np.cos(phi)
    period = size * rng.uniform(0.07, 0.15)
    if texture == "stripes":
        m = np.clip(0.5 + 1.5 * np.sin(2 * np.pi * u / period), 0, 1)
    elif texture == "checks":
        m = (np.sin(2 * np.pi * u / period) * np.sin(2 * np.pi * v / period) > 0).astype(np.float32)
    elif texture == "dots":
        du, dv = (u / period) % 1 - 0.5, (v / period) % 1 - 0.5
        m = (du ** 2 + dv ** 2 < rng.uniform(0.2, 0.3) ** 2).astype(np.float32)
    elif texture == "waves":
        t = (v + period * 0.4 * np.sin(2 * np.pi * u / (2.5 * period))) / period
        m = (t % 1 < 0.3).astype(np.float32)
    elif texture == "grid":
        w = 1.5 / period
        m = (((u / period) % 1 < w) | ((v / period) % 1 < w)).astype(np.float32)
    else:  # plain: a smooth gradient only
        m = np.clip(u / size, 0, 1)
    img = c1 + m[..., None] * (c2 - c1)
    return img * (1 + 0.15 * (v / size - 0.5))[..., None]  # uneven lighting


def _ground(rng, img, kind, yy, xx) -> None:
    size = img.shape[0]
    top = size * rng.uniform(0.6, 0.8)
    cols = np.arange(size)
    if kind == "grass":
        edge = top + rng.uniform(-size * 0.04, size * 0.04, size)  # ragged blades
        colour = _hsv(rng.uniform(0.25, 0.38), rng.uniform(0.5, 0.8), rng.uniform(0.35, 0.7))
        shade = 0.8 + 0.2 * rng.random(size)[None, :, None]  # vertical streaks
    else:
        edge = top + size * 0.03 * np.sin(2 * np.pi * cols / (size * rng.uniform(0.2, 0.4)) + rng.uniform(0, 6))
        colour = _hsv(rng.uniform(0.55, 0.65), rng.uniform(0.5, 0.8), rng.uniform(0.4, 0.8))
        shade = 1 + 0.25 * (np.sin(yy * 1.3 + xx * 0.2) > 0.8)[..., None]  # ripples
    band = yy > edge[None, :]
    img[band] = (colour * shade * np.ones_like(img))[band]


def _paint(img: np.ndarray, mask: np.ndarray, x: int, y: int, colour: np.ndarray) -> None:
    h, w = mask.shape
    region = img[y:y + h, x:x + w]
    region += mask[..., None] * (colour - region)


def _shape_mask(rng, kind: str, diameter: int) -> np.ndarray:
    """A ``diameter``-square alpha mask of one shape, drawn at 4x and box-filtered (anti-aliased)."""
    n = diameter * 4
    r = n / 2
    canvas = Image.new("L", (n, n))
    draw = ImageDraw.Draw(canvas)
    angle = np.radians(rng.uniform(-MAX_TURN.get(kind, 180), MAX_TURN.get(kind, 180)))
    if kind == "circle":
        draw.ellipse([0, 0, n - 1, n - 1], fill=255)
    elif kind == "ring":
        draw.ellipse([0, 0, n - 1, n - 1], outline=255, width=max(4, int(0.3 * r)))
    elif kind == "crescent":
        draw.ellipse([0, 0, n - 1, n - 1], fill=255)
        cx, cy = r + 0.45 * r * np.cos(angle), r + 0.45 * r * np.sin(angle)
        draw.ellipse([cx - 0.85 * r, cy - 0.85 * r, cx + 0.85 * r, cy + 0.85 * r], fill=0)
    else:
        c, s = np.cos(angle), np.sin(angle)
        draw.polygon([(r + 0.98 * r * (x * c - y * s), r + 0.98 * r * (x * s + y * c))
                      for x, y in POLYGONS[kind]], fill=255)
    return np.asarray(canvas.resize((diameter, diameter), Image.BOX), dtype=np.float32) / 255


def _blob_mask(rng, diameter: int) -> np.ndarray:
    """An irregular polygon: clutter that is none of the label shapes."""
    n = diameter * 4
    k = rng.integers(5, 9)
    angles = np.sort(rng.uniform(0, 2 * np.pi, k))
    radii = rng.uniform(0.3, 1.0, k) * n / 2
    canvas = Image.new("L", (n, n))
    ImageDraw.Draw(canvas).polygon(list(zip(n / 2 + radii * np.cos(angles), n / 2 + radii * np.sin(angles))),
                                   fill=255)
    return np.asarray(canvas.resize((diameter, diameter), Image.BOX), dtype=np.float32) / 255


def _place(rng, img, instances, size, margin) -> list[dict]:
    """Paint the objects in random order where they overlap earlier ones by at most a
    third of the smaller box (partial occlusion); one that finds no place is left out."""
    objects = []
    for kind in rng.permutation(instances):
        d = max(8, int(size * np.exp(rng.uniform(np.log(0.1), np.log(0.3)))))
        for _ in range(30):
            x, y = (int(v) for v in rng.integers(margin, size - margin - d + 1, 2))
            if all(_overlap((x, y, x + d, y + d), o["square"]) <= 1 / 3 for o in objects):
                break
        else:
            continue
        mask = _shape_mask(rng, kind, d)
        # Pick a colour that stands out from the local background by brightness.
        local = float(img[y:y + d, x:x + d].mean(axis=(0, 1)) @ LUMA)
        names = [n for n, c in COLOURS.items() if abs(float(np.array(c) @ LUMA) - local) > 0.2]
        name = str(rng.choice(names))
        _paint(img, mask, x, y, _colour(rng, name))
        ys, xs = np.nonzero(mask > 0.5)
        objects.append({"kind": str(kind), "colour": name, "diameter": d, "square": (x, y, x + d, y + d),
                        "box": [x + int(xs.min()), y + int(ys.min()), x + int(xs.max()) + 1, y + int(ys.max()) + 1]})
    return objects


def _overlap(a, b) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    return w * h / min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))


def _grade(rng, img: np.ndarray, emotion: int) -> np.ndarray:
    """The emotion as a colour grade. Its wheel angle (jittered, so neighbours get confused)
    sets the tint hue; the angle's sine, positive for the first four emotions and negative
    for the rest, sets saturation and brightness."""
    theta = 2 * np.pi * (emotion + 0.5) / len(EMOTIONS) + rng.normal(0, 0.3)
    polarity = np.sin(theta)
    luma = (img @ LUMA)[..., None]
    img = luma + (1 + 0.35 * polarity) * (img - luma)
    tint = rng.uniform(0.2, 0.35)
    img = (1 - tint) * img + tint * _hsv(theta / (2 * np.pi), 0.9, 1.0)
    return img * (1 + 0.25 * polarity + rng.normal(0, 0.05))


# ---------------------------------------------------------------- captions

def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _plural(kind: str) -> str:
    return kind + ("es" if kind.endswith("s") else "s")


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _captions(rng, objects: list[dict], texture, tags: list[str], size: int) -> list[str]:
    """2-5 captions from five templates, in random order."""
    groups: dict[str, list[dict]] = {}
    for o in sorted(objects, key=lambda o: -o["diameter"]):  # most salient kind first
        groups.setdefault(o["kind"], []).append(o)

    def size_word(o):
        return "small " if o["diameter"] < 0.17 * size else "large " if o["diameter"] > 0.25 * size else ""

    def detailed(kind, members):
        if len(members) == 1:
            return _article(f"{size_word(members[0])}{members[0]['colour']} {kind}")
        colours = {m["colour"] for m in members}
        colour = f"{colours.pop()} " if len(colours) == 1 else ""
        return f"{NUMBERS[len(members)]} {colour}{_plural(kind)}"

    def plain(kind, members):
        return _article(kind) if len(members) == 1 else f"{NUMBERS[len(members)]} {_plural(kind)}"

    scene = f"on a {TEXTURE_WORD[texture]} background"
    scene += {"grass": " with grass below", "water": " with water below"}.get(
        next((t for t in tags if t in ("grass", "water")), ""), "")
    scene += " inside a border" if "border" in tags else ""
    scene += " at night" if "night" in tags else ""
    setting = next((word for tag, word in (("night", "night"), ("water", "seaside"), ("grass", "garden"))
                    if tag in tags), TEXTURE_WORD[texture])
    main = max(objects, key=lambda o: o["diameter"])
    x0, y0, x1, y1 = main["box"]
    where = PLACES[min(2, int(1.5 * (y0 + y1) / size))][min(2, int(1.5 * (x0 + x1) / size))]
    others = len(objects) - 1
    rest = f" and {NUMBERS[others]} other shape{'s' * (others > 1)}" if others else ""

    templates = [
        f"{_join([detailed(k, m) for k, m in groups.items()])} {scene}",
        f"a picture of {_join([plain(k, m) for k, m in groups.items()])}",
        f"{NUMBERS[len(objects)]} shape{'s' * (len(objects) > 1)}: {_join([plain(k, m) for k, m in groups.items()])}",
        f"{detailed(main['kind'], [main])} {where}{rest}",
        f"{_article(setting)} scene with {_join([plain(k, m) for k, m in groups.items()])}",
    ]
    chosen = rng.choice(len(templates), rng.integers(2, 6), replace=False)
    return [templates[i] for i in chosen]
