"""The PASCAL VOC, MS-COCO and NUS-WIDE readers against fixtures in each dataset's own layout."""

import json
import shutil

import pytest

from annotlib.data import DataError, load_split
from annotlib.data.coco import read_coco
from annotlib.data.nuswide import read_nuswide
from annotlib.data.voc import VOC_CLASSES, read_voc

from .conftest import FIXTURES

# ---------------------------------------------------------------- PASCAL VOC


@pytest.fixture
def voc_root(tmp_path):
    """The mini VOCdevkit; the committed lists cover cat, dog and person, and the other 17
    classes get the all-absent ``<class>_<split>.txt`` lists every VOCdevkit has."""
    root = tmp_path / "VOC2007"
    shutil.copytree(FIXTURES / "voc", root)
    lists = root / "ImageSets" / "Main"
    for split in ("train", "val", "trainval"):
        ids = (lists / f"{split}.txt").read_text().split()
        for name in VOC_CLASSES:
            path = lists / f"{name}_{split}.txt"
            if not path.exists():
                path.write_text("".join(f"{i} -1\n" for i in ids))
    return root


def voc_values(root, split):
    """{(image id, class): VOC value} parsed straight from the list files."""
    values = {}
    for name in VOC_CLASSES:
        for line in (root / "ImageSets" / "Main" / f"{name}_{split}.txt").read_text().splitlines():
            image_id, value = line.split()
            values[image_id, name] = int(value)
    return values


def test_voc_labels_follow_the_class_lists_with_difficult_only_unknown(voc_root):
    assert VOC_CLASSES[:3] == ["aeroplane", "bicycle", "bird"] and VOC_CLASSES[-1] == "tvmonitor"
    for split in ("train", "val", "trainval"):
        data = read_voc(voc_root, split, dataset="voc2007")
        ids = (voc_root / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
        assert [p.stem for p in data.image_paths] == ids
        assert all(p.is_file() for p in data.image_paths)
        assert data.classes == VOC_CLASSES and data.labels.dtype.is_signed
        values = voc_values(voc_root, split)
        for count_difficult, difficult_as in ((False, -1), (True, 1)):
            labels = read_voc(voc_root, split, count_difficult=count_difficult).labels
            expected = [[{1: 1, -1: 0, 0: difficult_as}[values[i, c]] for c in VOC_CLASSES]
                        for i in ids]
            assert labels.tolist() == expected
    train = read_voc(voc_root, "train")
    assert train.info["difficult_only_labels"] == 1  # person in 000002


def test_voc_boxes_are_zero_based_with_difficult_flags_and_skips_counted(voc_root):
    train = read_voc(voc_root, "train")
    cat, dog, person = (VOC_CLASSES.index(c) for c in ("cat", "dog", "person"))
    # 000001: person 2,3..10,16 and dog 5,6..14,12 in VOC's 1-based inclusive pixels
    assert train.boxes[0] == [(person, 1.0, 2.0, 10.0, 16.0), (dog, 4.0, 5.0, 14.0, 12.0)]
    assert train.boxes[1] == [(cat, 0.0, 0.0, 16.0, 12.0), (person, 2.0, 3.0, 8.0, 15.0)]
    assert train.boxes[2] == [(person, 3.0, 1.0, 12.0, 14.0)]  # its dog object has no bndbox
    assert train.info["difficult"] == {"000001": [False, False], "000002": [False, True],
                                       "000004": [False]}
    assert train.info["objects_without_box"] == 1 and train.info["positives_without_box"] == 1
    val = read_voc(voc_root, "val")
    assert val.boxes[1] == [] and val.info["positives_without_box"] == 1  # 000005: dog, no object
    subset = val.subset([1])
    assert subset.info["difficult"][subset.image_paths[0].stem] == []


def test_voc_load_split_reads_the_official_splits(voc_root, monkeypatch):
    monkeypatch.setenv("ANNOTLIB_DATA_ROOT", str(voc_root.parent))
    sizes = {s: len(load_split("voc2007", s)) for s in ("train", "val", "trainval")}
    assert sizes == {"train": 3, "val": 2, "trainval": 5}  # the official lists, nothing carved
    val = load_split("voc2007", "val")
    assert [p.stem for p in val.image_paths] == ["000003", "000005"] and val.dataset == "voc2007"
    cat = VOC_CLASSES.index("cat")
    assert val.labels[0, cat] == -1
    assert load_split("voc2007", "val", count_difficult=True).labels[0, cat] == 1
    with pytest.raises(DataError, match=r"Main/test\.txt: list file not found"):
        load_split("voc2007", "test")
    with pytest.raises(ValueError, match="unknown split 'trainval'"):
        load_split("corel-5k", "trainval", voc_root)  # an extra split name only where official


def _drop_dog_list(root):
    (root / "ImageSets/Main/dog_train.txt").unlink()


def _drop_image(root):
    (root / "JPEGImages/000002.jpg").unlink()


def _break_xml(root):
    path = root / "Annotations/000004.xml"
    path.write_text(path.read_text().replace("</annotation>", ""))


def _disagree(root):
    path = root / "ImageSets/Main/cat_train.txt"
    path.write_text(path.read_text().replace("000002", "000003"))


def _bad_value(root):
    path = root / "ImageSets/Main/person_train.txt"
    path.write_text(path.read_text().replace(" 0\n", " 2\n"))


def _unknown_object(root):
    path = root / "Annotations/000001.xml"
    path.write_text(path.read_text().replace("<name>dog</name>", "<name>unicorn</name>"))


@pytest.mark.parametrize("damage, message", [
    (_drop_dog_list, r"dog_train\.txt: list file not found"),
    (_drop_image, r"000002\.jpg: image listed in .*train\.txt not found"),
    (_break_xml, r"000004\.xml: malformed XML"),
    (_disagree, r"cat_train\.txt: its image ids disagree with the split list .*\['000002'\]"),
    (_bad_value, r"person_train\.txt: line 2 is '000002  2'"),
    (_unknown_object, r"000001\.xml: object 'unicorn' is not a VOC class"),
])
def test_voc_errors_name_the_file(voc_root, damage, message):
    damage(voc_root)
    with pytest.raises(DataError, match=message):
        read_voc(voc_root, "train")


@pytest.mark.realdata
def test_voc2007_official_sizes_and_per_class_positives(data_root):
    root = data_root / "VOC2007"
    if not root.is_dir():
        pytest.skip("VOC2007 not found under the data root")
    for split, size in (("train", 2500), ("val", 2508)):
        data = load_split("voc2007", split, root)
        assert len(data) == size and data.classes == VOC_CLASSES
        for column, name in enumerate(VOC_CLASSES):
            lines = (root / "ImageSets" / "Main" / f"{name}_{split}.txt").read_text().splitlines()
            values = [line.split()[1] for line in lines if line.strip()]
            assert int((data.labels[:, column] == 1).sum()) == values.count("1"), (split, name)
            assert int((data.labels[:, column] == -1).sum()) == values.count("0"), (split, name)


# ---------------------------------------------------------------- MS-COCO 2014


@pytest.fixture
def coco_root(tmp_path):
    root = tmp_path / "COCO2014"
    shutil.copytree(FIXTURES / "coco", root)
    return root


@pytest.mark.parametrize("split, folder", [("train", "train2014"), ("test", "val2014")])
def test_coco_reader_matches_the_json(coco_root, split, folder):
    data = read_coco(coco_root, split)
    doc = json.loads((coco_root / "annotations" / f"instances_{folder}.json").read_text())
    by_id = {c["id"]: c["name"] for c in doc["categories"]}
    assert data.classes == [by_id[i] for i in sorted(by_id)]
    assert data.image_paths == [coco_root / folder / im["file_name"] for im in doc["images"]]
    assert all(p.is_file() for p in data.image_paths) and data.labels.dtype.is_signed
    for row, image in enumerate(doc["images"]):
        anns = [a for a in doc["annotations"] if a["image_id"] == image["id"]]
        names = {data.classes[i] for i in data.labels[row].nonzero().flatten().tolist()}
        assert names == {by_id[a["category_id"]] for a in anns}
        x_y_x_y = [(data.classes.index(by_id[a["category_id"]]), a["bbox"][0], a["bbox"][1],
                    a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]) for a in anns]
        assert data.boxes[row] == x_y_x_y
    without = sum(not any(a["image_id"] == im["id"] for a in doc["annotations"])
                  for im in doc["images"])
    assert data.info["images_without_labels"] == without
    assert data.info["crowd_annotations"] == sum(a["iscrowd"] for a in doc["annotations"])


def test_coco_load_split_carves_val_from_train2014(coco_root, monkeypatch):
    monkeypatch.setenv("ANNOTLIB_DATA_ROOT", str(coco_root.parent))
    train, val, test = (load_split("coco2014", s) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (3, 1, 3)
    assert not set(train.image_paths) & set(val.image_paths)
    assert all(p.parent.name == "train2014" for p in train.image_paths + val.image_paths)
    assert all(p.parent.name == "val2014" for p in test.image_paths)
    assert train.dataset == "coco2014" and train.classes == test.classes


def test_coco_errors_name_the_file(coco_root):
    path = coco_root / "annotations" / "instances_train2014.json"
    doc = json.loads(path.read_text())
    doc["annotations"][0]["category_id"] = 91
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"train2014\.json: annotation 0 .*category id 91"):
        read_coco(coco_root, "train")
    path.write_text('{"images": [')
    with pytest.raises(DataError, match=r"instances_train2014\.json: malformed JSON"):
        read_coco(coco_root, "train")
    path.unlink()
    with pytest.raises(DataError, match=r"instances_train2014\.json: annotation file not found"):
        read_coco(coco_root, "train")


# ---------------------------------------------------------------- NUS-WIDE


@pytest.fixture
def nus_root(tmp_path):
    """The mini NUS-WIDE; label files for concepts no fixture image has are all zeros."""
    root = tmp_path / "NUS-WIDE"
    shutil.copytree(FIXTURES / "nuswide", root)
    for part in ("Train", "Test"):
        n = len((root / "ImageList" / f"{part}Imagelist.txt").read_text().split())
        for concept in (root / "Concepts81.txt").read_text().split():
            path = root / "TrainTestLabels" / f"Labels_{concept}_{part}.txt"
            if not path.exists():
                path.write_text("0\n" * n)
    return root


@pytest.mark.parametrize("split, part", [("train", "Train"), ("test", "Test")])
def test_nuswide_reader_matches_the_label_files(nus_root, split, part):
    data = read_nuswide(nus_root, split)
    concepts = (nus_root / "Concepts81.txt").read_text().split()
    assert data.classes == concepts and len(concepts) == 81
    names = (nus_root / "ImageList" / f"{part}Imagelist.txt").read_text().split()
    assert data.image_paths == [nus_root / "Flickr" / n.split("\\")[0] / n.split("\\")[1]
                                for n in names]
    assert all(p.is_file() for p in data.image_paths) and data.labels.dtype.is_signed
    for column, concept in enumerate(concepts):
        text = (nus_root / "TrainTestLabels" / f"Labels_{concept}_{part}.txt").read_text()
        assert data.labels[:, column].tolist() == [int(v) for v in text.split()]
    assert data.info["images_without_labels"] == {"train": 0, "test": 1}[split]


def test_nuswide_load_split_carves_val_from_train(nus_root, monkeypatch):
    monkeypatch.setenv("ANNOTLIB_DATA_ROOT", str(nus_root.parent))
    train, val, test = (load_split("nus-wide", s) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (2, 1, 2)
    assert not set(train.image_paths) & set(val.image_paths) and train.dataset == "nus-wide"


def test_nuswide_errors_name_the_file(nus_root):
    path = nus_root / "TrainTestLabels" / "Labels_sky_Train.txt"
    path.write_text(path.read_text() + "0\n")
    with pytest.raises(DataError, match=r"Labels_sky_Train\.txt: 4 labels for an image list of 3"):
        read_nuswide(nus_root, "train")
    path.write_text("0\n2\n0\n")
    with pytest.raises(DataError, match=r"Labels_sky_Train\.txt: line 2 is '2'"):
        read_nuswide(nus_root, "train")
    path.unlink()
    with pytest.raises(DataError, match=r"Labels_sky_Train\.txt: label file not found"):
        read_nuswide(nus_root, "train")
