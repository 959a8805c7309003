import json
import shutil

import numpy as np
import pytest
from PIL import Image

from annotlib.data import DataError, cached_images, load_split
from annotlib.data.aia import read_aia

from .conftest import FIXTURES


@pytest.fixture
def aia_root(tmp_path):
    root = tmp_path / "Corel-5k"
    shutil.copytree(FIXTURES / "aia", root)
    return root


def test_aia_reader_matches_the_json(aia_root):
    split = read_aia(aia_root, "train", "corel-5k")
    doc = json.loads((aia_root / "train.json").read_text())
    assert split.classes == doc["labels"]
    assert [p.name for p in split.image_paths] == [s["image_name"] for s in doc["samples"]]
    for row, sample in zip(split.labels, doc["samples"]):
        assert sorted(split.classes[i] for i in row.nonzero().flatten()) == sorted(sample["image_labels"])
    assert split.info["images_without_labels"] == 1


def test_load_split_carves_a_seeded_validation_split(aia_root, monkeypatch):
    monkeypatch.setenv("ANNOTLIB_DATA_ROOT", str(aia_root.parent))
    train, val = load_split("corel-5k", "train"), load_split("corel-5k", "val")
    test = load_split("corel-5k", "test")
    assert (len(train), len(val), len(test)) == (9, 1, 3)
    assert not set(train.image_paths) & set(val.image_paths)
    assert load_split("corel-5k", "val").image_paths == val.image_paths
    other = load_split("corel-5k", "val", val_seed=1, val_fraction=0.3)
    assert len(other) == 3


def test_load_split_rejects_unknown_names(aia_root):
    with pytest.raises(ValueError, match="unknown dataset"):
        load_split("corel-6k", "train", aia_root)
    with pytest.raises(ValueError, match="unknown split"):
        load_split("corel-5k", "dev", aia_root)


def test_label_outside_vocabulary_names_the_file(aia_root):
    doc = json.loads((aia_root / "train.json").read_text())
    doc["samples"][3]["image_labels"].append("unicorn")
    (aia_root / "train.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"train\.json.*'unicorn'.*not in the vocabulary"):
        read_aia(aia_root, "train")


@pytest.mark.parametrize("text, problem", [
    ('{"samples": [', "malformed JSON"),
    ('{"samples": []}', '"labels" list'),
    ('{"samples": [{"image_name": "a.jpeg"}], "labels": []}', "sample 0 lacks"),
])
def test_malformed_json_names_the_file(aia_root, text, problem):
    (aia_root / "test.json").write_text(text)
    with pytest.raises(DataError, match="test.json") as err:
        read_aia(aia_root, "test")
    assert problem in str(err.value)


def test_missing_annotation_file_and_empty_split(aia_root):
    with pytest.raises(DataError, match="val.json: annotation file not found"):
        read_aia(aia_root, "val")
    (aia_root / "test.json").write_text(json.dumps({"samples": [], "labels": ["sky"]}))
    with pytest.raises(DataError, match="test: the split is empty"):
        read_aia(aia_root, "test")


def test_cache_decodes_once_and_matches_pil(aia_root):
    split = read_aia(aia_root, "train")
    images = cached_images(split.image_paths, 20, workers=1)
    assert images.shape == (10, 20, 20, 3) and images.dtype == np.uint8
    expected = np.asarray(Image.open(split.image_paths[3]).convert("RGB").resize((20, 20), Image.BILINEAR))
    assert np.array_equal(images[3], expected)
    again = cached_images(split.image_paths, 20, workers=2)
    assert again.filename == images.filename  # the same cache file, not a second decode


def test_missing_and_corrupt_images_are_named_and_nothing_is_cached(aia_root, tmp_path):
    split = read_aia(aia_root, "train")
    (aia_root / "images" / "1004.jpeg").unlink()
    with pytest.raises(DataError, match=r"1004\.jpeg: image file not found"):
        cached_images(split.image_paths, 16, workers=1)
    split = read_aia(aia_root, "test")
    bad = split.image_paths[1]
    bad.write_bytes(bad.read_bytes()[:200])  # a truncated JPEG
    cache = tmp_path / "c"
    for workers in (1, 2):
        with pytest.raises(DataError, match=r"2001\.jpeg: cannot decode image"):
            cached_images(split.image_paths, 16, workers=workers, root=cache)
    assert not list((cache / "images").glob("*"))


def test_cache_key_follows_file_changes(aia_root):
    split = read_aia(aia_root, "test")
    first = np.array(cached_images(split.image_paths, 16, workers=1))
    Image.new("RGB", (30, 30), (255, 0, 0)).save(split.image_paths[0])
    second = cached_images(split.image_paths, 16, workers=1)
    assert not np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    red = second[0].reshape(-1, 3).mean(0)
    assert red[0] > 240 and red[1] < 15 and red[2] < 15
