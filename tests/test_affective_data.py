import shutil
from collections import Counter
from functools import partial

import pytest
import torch

from annotlib.data import DataError
from annotlib.data.emotions import (
    EMOTIONS,
    NEGATIVE,
    POSITIVE,
    graded_relevance,
    polarity,
    wheel_distance,
)
from annotlib.data.folders import (
    FOLDER_DATASETS,
    read_abstract,
    read_artphoto,
    read_image_folder,
    seeded_holdout,
)

from .conftest import FIXTURES


def copy_fixture(tmp_path, name):
    return shutil.copytree(FIXTURES / name, tmp_path / name)


# emotions

def test_wheel_order_and_polarity_sets():
    assert EMOTIONS == ("amusement", "contentment", "awe", "excitement",
                        "fear", "sadness", "disgust", "anger")
    assert POSITIVE == set(EMOTIONS[:4]) and NEGATIVE == set(EMOTIONS[4:])


def test_wheel_distance_is_one_plus_cyclic_steps_by_hand():
    dis = wheel_distance(EMOTIONS)
    assert dis[0, 0] == 1 and dis[0, 1] == 2 and dis[0, 4] == 5 and dis[0, 7] == 2  # cyclic
    assert dis[2, 6] == 5 and dis[5, 1] == 5 and dis[3, 4] == 2
    brute = [[1 + min((j - i) % 8, (i - j) % 8) for j in range(8)] for i in range(8)]
    assert dis.tolist() == brute


def test_wheel_distance_follows_given_categories_and_wheel():
    dis = wheel_distance(["anger", "amusement", "fear"])
    assert dis.tolist() == [[1, 2, 4], [2, 1, 5], [4, 5, 1]]
    assert wheel_distance(["a", "c"], wheel=["a", "b", "c"]).tolist() == [[1, 2], [2, 1]]
    with pytest.raises(ValueError, match="'joy'.*not in the wheel"):
        wheel_distance(["joy"])


def test_polarity_and_graded_relevance():
    categories = ["fear", "awe", "anger", "amusement"]
    ids = torch.tensor([0, 1, 1, 3, 2])
    assert polarity(ids, categories).tolist() == [0, 1, 1, 1, 0]
    assert polarity(ids, categories, positive={"fear"}, negative={"awe", "anger", "amusement"}) \
        .tolist() == [1, 0, 0, 0, 0]
    gains = graded_relevance(categories)
    assert gains.tolist() == [[2, 0, 1, 0], [0, 2, 0, 1], [1, 0, 2, 0], [0, 1, 0, 2]]
    with pytest.raises(ValueError, match="'joy'"):
        polarity(ids, ["joy", "awe", "anger", "fear"])


# FI: folders + split lists

def test_fi_fixture_reads_its_lists_in_wheel_order():
    splits = {s: read_image_folder(FIXTURES / "fi", s, "fi") for s in ("train", "val", "test")}
    assert [len(s) for s in splits.values()] == [16, 8, 8]
    for name, split in splits.items():
        assert split.categories == split.classes == list(EMOTIONS)
        lines = (FIXTURES / "fi" / f"{name}.txt").read_text().split()
        assert [p.relative_to(FIXTURES / "fi").as_posix() for p in split.image_paths] == lines
        # the category is the folder name, and labels are its one-hot row
        assert [split.categories[i] for i in split.category_ids] == [p.split("/")[0] for p in lines]
        assert torch.equal(split.labels, torch.eye(8, dtype=torch.int8)[split.category_ids])
    assert splits["train"].category_ids[:2].tolist() == [EMOTIONS.index("amusement")] * 2


def test_class_order_follows_the_classes_argument():
    classes = sorted(EMOTIONS)
    split = read_image_folder(FIXTURES / "fi", "test", "fi", classes=classes)
    assert split.categories == classes
    assert [classes[i] for i in split.category_ids] == [p.parent.name for p in split.image_paths]


def test_class_folder_outside_the_classes_is_named(tmp_path):
    root = copy_fixture(tmp_path, "fi")
    (root / "joy").mkdir()
    with pytest.raises(DataError, match="joy.*not one of"):
        read_image_folder(root, "train", "fi")


def test_missing_listed_file_names_list_and_line(tmp_path):
    root = copy_fixture(tmp_path, "fi")
    (root / "val.txt").write_text("awe/awe_0025.jpg\n\nawe/awe_9999.jpg\n")
    with pytest.raises(DataError, match=r"val\.txt: line 3: image .*awe_9999\.jpg not found"):
        read_image_folder(root, "val", "fi")


@pytest.mark.parametrize("text, problem", [
    ("awe_0025.jpg\n", "line 1 is 'awe_0025.jpg', expected '<class>/<file>'"),
    ("joy/awe_0025.jpg\n", "line 1 names class 'joy'"),
    ("awe/awe_0025.jpg\nawe/awe_0025.jpg\n", "line 2: 'awe/awe_0025.jpg' is listed twice"),
])
def test_malformed_list_lines(tmp_path, text, problem):
    root = copy_fixture(tmp_path, "fi")
    (root / "val.txt").write_text(text)
    with pytest.raises(DataError, match=problem):
        read_image_folder(root, "val", "fi")


def test_empty_or_missing_split_list_is_an_error(tmp_path):
    root = copy_fixture(tmp_path, "fi")
    (root / "val.txt").write_text("\n")
    with pytest.raises(DataError, match="fi/val: the split is empty"):
        read_image_folder(root, "val", "fi")
    (root / "test.txt").unlink()
    with pytest.raises(DataError, match=r"test\.txt: split list not found"):
        read_image_folder(root, "test", "fi")


def test_missing_root_is_named(tmp_path):
    with pytest.raises(DataError, match="nowhere: fi folder not found"):
        read_image_folder(tmp_path / "nowhere", "train", "fi")


# IAPSa: folders without split lists, our seeded holdout

def test_iapsa_holdout_is_stratified_seeded_and_disjoint():
    root = FIXTURES / "iapsa"
    train, test = (read_image_folder(root, s, "iapsa") for s in ("train", "test"))
    files = sorted(p for p in root.rglob("*") if p.is_file())
    assert sorted(train.image_paths + test.image_paths) == files
    assert not set(train.image_paths) & set(test.image_paths)
    assert {p.suffix for p in files} == {".jpg", ".png"}
    sizes = Counter(p.parent.name for p in files)  # amusement 5, contentment 3, fear 6, ...
    held_out = Counter(p.parent.name for p in test.image_paths)
    assert {e: held_out[e] for e in sizes} == {e: round(0.2 * n) for e, n in sizes.items()}
    assert train.categories == list(EMOTIONS)
    assert [EMOTIONS[i] for i in test.category_ids] == [p.parent.name for p in test.image_paths]
    again = read_image_folder(root, "test", "iapsa")
    other = read_image_folder(root, "test", "iapsa", seed=3)
    assert again.image_paths == test.image_paths and other.image_paths != test.image_paths
    assert "ours" in test.info["split_source"]
    with pytest.raises(ValueError, match="no split lists.*'train' or 'test'"):
        read_image_folder(root, "val", "iapsa")


def test_seeded_holdout_depends_on_names_not_listing_order():
    names = [f"{c}/{i}.jpg" for c in "ab" for i in range(10)]
    ids = [0] * 10 + [1] * 10
    mask = seeded_holdout(names, ids, 0.2, seed=0)
    reversed_mask = seeded_holdout(names[::-1], ids[::-1], 0.2, seed=0)[::-1]
    assert (mask == reversed_mask).all()
    assert mask[:10].sum() == 2 and mask[10:].sum() == 2


# ArtPhoto: flat folder, emotion in the file name

def test_artphoto_reads_emotions_from_file_names():
    root = FIXTURES / "artphoto"
    train, test = read_artphoto(root, "train"), read_artphoto(root, "test")
    paths = train.image_paths + test.image_paths
    assert len(paths) == 24 and all(p.suffix == ".jpg" for p in paths)  # ReadMe.rtf ignored
    by_name = dict(zip(paths, torch.cat([train.category_ids, test.category_ids]).tolist()))
    for path, category in by_name.items():
        prefix = path.name.split("_")[0]
        assert EMOTIONS[category] == ("sadness" if prefix == "sad" else prefix)
    assert Counter(test.category_ids.tolist()) == {i: 1 for i in range(8)}  # round(0.2 * 3)


def test_artphoto_unknown_prefix_is_named(tmp_path):
    root = copy_fixture(tmp_path, "artphoto")
    shutil.copy(root / "awe_201.jpg", root / "joy_1.jpg")
    with pytest.raises(DataError, match=r"joy_1\.jpg: expected a name '<emotion>_<n>'"):
        read_artphoto(root, "train")


# Abstract: flat folder + vote table

def test_abstract_majority_votes_and_ties_dropped():
    root = FIXTURES / "abstract"
    train, test = read_abstract(root, "train"), read_abstract(root, "test")
    assert train.info["ties_dropped"] == 2
    got = {p.name: EMOTIONS[i] for split in (train, test)
           for p, i in zip(split.image_paths, split.category_ids.tolist())}
    # by hand from the fixture's CSV (columns Amusement, Anger, Awe, Content, Disgust,
    # Excitement, Fear, Sad); abstract_5 (tie) and abstract_8 (no votes) are dropped
    assert got == {"abstract_1.jpg": "amusement", "abstract_2.jpg": "anger",
                   "abstract_3.jpg": "contentment", "abstract_4.jpg": "sadness",
                   "abstract_6.jpg": "fear", "abstract_7.jpg": "awe",
                   "abstract_9.jpg": "disgust", "abstract_10.jpg": "excitement",
                   "abstract_11.jpg": "contentment", "abstract_12.jpg": "amusement",
                   "abstract_13.jpg": "amusement", "abstract_14.jpg": "contentment"}
    # round(0.2 * n_c): one of the three amusement and of the three contentment paintings
    assert sorted(EMOTIONS[i] for i in test.category_ids) == ["amusement", "contentment"]


@pytest.mark.parametrize("edit, problem", [
    (lambda t: t.replace("'Sad'", "'Joy'"), "header's emotion columns"),
    (lambda t: t.replace("'abstract_3.jpg',0,0,0,4", "'abstract_3.jpg',0,0,x,4"), "line 4 is"),
    (lambda t: t.replace("abstract_6.jpg", "abstract_99.jpg"), "abstract_99.jpg not found"),
])
def test_abstract_bad_vote_file(tmp_path, edit, problem):
    root = copy_fixture(tmp_path, "abstract")
    csv_path = root / "ABSTRACT_groundTruth.csv"
    csv_path.write_text(edit(csv_path.read_text()))
    with pytest.raises(DataError, match=problem):
        read_abstract(root, "train")


# registration for the core's DATASETS table

def test_folder_datasets_entries():
    assert {name: entry.folder for name, entry in FOLDER_DATASETS.items()} == {
        "fi": "FI", "iapsa": "IAPSa", "artphoto": "ArtPhoto", "abstract": "Abstract"}
    assert FOLDER_DATASETS["fi"].official_splits == ("train", "val", "test")
    split = FOLDER_DATASETS["artphoto"].read(FIXTURES / "artphoto", "test")
    assert split.dataset == "artphoto" and isinstance(FOLDER_DATASETS["fi"].read, partial)


@pytest.mark.realdata
def test_real_fi_copy(data_root):
    root = data_root / "FI"
    if not root.is_dir():
        pytest.skip("FI not found under the data root")
    splits = {s: read_image_folder(root, s, "fi") for s in ("train", "val", "test")}
    assert [len(s) for s in splits.values()] == [4034, 252, 756]
    for split in splits.values():
        assert split.categories == list(EMOTIONS)
        assert set(split.category_ids.tolist()) == set(range(8))
    paths = [set(s.image_paths) for s in splits.values()]
    assert not (paths[0] & paths[1] or paths[0] & paths[2] or paths[1] & paths[2])
