"""Caption datasets (Flickr8k, CUB-200-2011, Oxford-102 Flowers) against fixtures in each
dataset's own layout and the real Flickr8k copy, concept and word vocabularies by hand, and
the captioning metrics against pycocoevalcap's scorers called directly."""

import math
import re
import shutil
import threading
from functools import lru_cache

import numpy as np
import pytest
import torch
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
from scipy.io import loadmat, savemat

from annotlib.data.captions import (
    MIN_WORD_COUNT,
    CaptionVocabulary,
    concept_labels,
    concept_vocabulary,
    read_cub,
    read_flickr8k,
    read_flickr8k_concepts,
    read_flowers,
    tokenize,
)
from annotlib.data.labels import DataError
from annotlib.metrics import captioning
from annotlib.metrics.captioning import caption_metrics

from .conftest import FIXTURES

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="java not found")


def copy_fixture(tmp_path, name):
    root = tmp_path / name
    shutil.copytree(FIXTURES / name, root)
    return root


# ---------------------------------------------------------------- Flickr8k

FLICKR_TRAIN = ["1000268201_693b08cb0e.jpg", "1001773457_577c3a7d70.jpg", "1002674143_1b742ab4b8.jpg"]
FLICKR_VAL = ["1003163366_44323f5815.jpg", "1007129816_e794419615.jpg"]
FLICKR_TEST = ["1007320043_627395c3d8.jpg"]


@pytest.mark.parametrize("split, names", [("train", FLICKR_TRAIN), ("val", FLICKR_VAL),
                                          ("test", FLICKR_TEST)])
def test_flickr8k_splits_follow_the_official_lists(split, names):
    data = read_flickr8k(FIXTURES / "flickr8k", split)
    assert [p.name for p in data.image_paths] == names
    assert all(p.parent.name == "Flicker8k_Dataset" and p.is_file() for p in data.image_paths)
    assert [len(c) for c in data.captions] == [5] * len(names)
    assert data.classes == [] and data.labels is None and data.categories is None


def test_flickr8k_captions_are_the_token_lines_in_number_order():
    data = read_flickr8k(FIXTURES / "flickr8k", "val")
    assert data.captions[0][0] == "A man lays on a bench while his dog sits by him ."
    assert data.captions[1][4] == "The man with pierced ears is wearing glasses and an orange hat ."
    # the token file's unlisted image (as in the official file) is in no split
    everything = [p.name for s in ("train", "val", "test")
                  for p in read_flickr8k(FIXTURES / "flickr8k", s).image_paths]
    assert sorted(everything) == sorted(FLICKR_TRAIN + FLICKR_VAL + FLICKR_TEST)


def test_flickr8k_errors_name_the_file_and_line(tmp_path):
    root = copy_fixture(tmp_path, "flickr8k")
    token = root / "Flickr8k_text" / "Flickr8k.token.txt"
    lines = token.read_text().splitlines()
    token.write_text("\n".join(line for line in lines if not line.startswith(FLICKR_VAL[1])))
    with pytest.raises(DataError, match=r"Flickr_8k\.devImages\.txt: line 2: "
                                        r"1007129816_e794419615\.jpg has 0 captions"):
        read_flickr8k(root, "val")
    token.write_text("\n".join(lines[:7] + ["1003163366_44323f5815.jpg a caption without a tab"]))
    with pytest.raises(DataError, match=r"Flickr8k\.token\.txt: line 8 "):
        read_flickr8k(root, "val")
    token.write_text("\n".join(lines))
    (root / "Flicker8k_Dataset" / FLICKR_TRAIN[1]).unlink()
    with pytest.raises(DataError, match=rf"{FLICKR_TRAIN[1]}: image listed in .*trainImages"):
        read_flickr8k(root, "train")
    with pytest.raises(ValueError, match="unknown Flickr8k split"):
        read_flickr8k(root, "dev")


def test_flickr8k_concepts_come_from_the_training_captions():
    val = read_flickr8k_concepts(FIXTURES / "flickr8k", "val", min_images=2)
    # by hand, over the three training images: "girl" and "little" are in images 1 and 3,
    # "white" in images 2 and 3; every other content word is in one image only
    assert val.classes == ["girl", "little", "white"]
    # val image 1 has "a white dog", val image 2 none of the three words
    assert val.labels.tolist() == [[0, 0, 1], [0, 0, 0]]
    assert val.labels.dtype == torch.int8


@pytest.mark.realdata
def test_real_flickr8k_has_its_documented_sizes(data_root):
    root = data_root / "Flickr8k"
    splits = {s: read_flickr8k(root, s) for s in ("train", "val", "test")}
    assert {s: len(d) for s, d in splits.items()} == {"train": 2897, "val": 1000, "test": 1000}
    assert all(len(c) == 5 for d in splits.values() for c in d.captions)
    names = [{p.name for p in d.image_paths} for d in splits.values()]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])

    concepts = concept_vocabulary(splits["train"].captions)
    assert len(concepts) == 100 and "dog" in concepts and "the" not in concepts
    labels = concept_labels(splits["val"].captions, concepts)
    dog = re.compile(r"\bdog\b")  # an independent reading of "a caption contains the word"
    expected = [any(dog.search(c.lower()) for c in caps) for caps in splits["val"].captions]
    assert labels[:, concepts.index("dog")].bool().tolist() == expected


# ---------------------------------------------------------------- CUB-200-2011


def test_cub_reads_the_official_split_boxes_and_reed_captions():
    train = read_cub(FIXTURES / "cub", "train")
    test = read_cub(FIXTURES / "cub", "test")
    assert train.categories == train.classes == ["001.Black_footed_Albatross", "002.Laysan_Albatross"]
    # train_test_split.txt: image 1 is the test image, 2-4 train
    assert [p.name for p in test.image_paths] == ["Black_Footed_Albatross_0046_18.jpg"]
    assert [p.name for p in train.image_paths] == ["Black_Footed_Albatross_0009_34.jpg",
                                                   "Laysan_Albatross_0002_1027.jpg",
                                                   "Laysan_Albatross_0003_1033.jpg"]
    assert train.category_ids.tolist() == [0, 1, 1]
    assert train.labels.tolist() == [[1, 0], [0, 1], [0, 1]]
    # bounding_boxes.txt "2 139.0 30.0 153.0 264.0" is x, y, width, height
    assert train.boxes[0] == [(0, 139.0, 30.0, 292.0, 294.0)]
    assert test.boxes[0] == [(0, 27.0, 112.0, 352.0, 341.0)]
    assert [len(c) for c in train.captions] == [10, 10, 10]
    assert train.captions[0][0] == "this bird has a dark body and black wings."


def test_cub_without_captions_reads_a_plain_download(tmp_path):
    root = copy_fixture(tmp_path, "cub")
    shutil.rmtree(root / "text_c10")
    data = read_cub(root, "train", with_captions=False)
    assert data.captions is None and len(data) == 3
    with pytest.raises(DataError, match=r"Black_Footed_Albatross_0009_34\.txt: file not found"):
        read_cub(root, "train")


@pytest.mark.parametrize("file, line, replacement, message", [
    ("bounding_boxes.txt", 2, "2 139.0 30.0 153.0", r"bounding_boxes\.txt: line 2 .*4 value"),
    ("bounding_boxes.txt", 3, "3 14.0 112.0 -1 186.0", r"bounding_boxes\.txt: line 3 .*negative"),
    ("train_test_split.txt", 4, "4 2", r"train_test_split\.txt: line 4 .*0 or 1"),
    ("image_class_labels.txt", 1, "1 3", r"image_class_labels\.txt: image 1 has class 3"),
    ("images.txt", 2, "2 001.Black_footed_Albatross/missing.jpg", r"missing\.jpg: image listed"),
    ("bounding_boxes.txt", 4, "", r"bounding_boxes\.txt: no line for image id 4 of .*images\.txt"),
])
def test_cub_errors_name_the_file(tmp_path, file, line, replacement, message):
    root = copy_fixture(tmp_path, "cub")
    lines = (root / file).read_text().splitlines()
    lines[line - 1] = replacement
    (root / file).write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=message):
        read_cub(root, "train", with_captions=False)


def test_cub_caption_files_must_have_ten_lines(tmp_path):
    root = copy_fixture(tmp_path, "cub")
    path = root / "text_c10" / "002.Laysan_Albatross" / "Laysan_Albatross_0002_1027.txt"
    path.write_text("\n".join(path.read_text().splitlines()[:9]))
    with pytest.raises(DataError, match=r"Laysan_Albatross_0002_1027\.txt: 9 captions, expected 10"):
        read_cub(root, "train")


# ---------------------------------------------------------------- Oxford-102 Flowers


def test_flowers_fixture_has_the_official_mat_layout():
    labels = loadmat(FIXTURES / "flowers" / "imagelabels.mat")["labels"]
    setid = loadmat(FIXTURES / "flowers" / "setid.mat")
    assert labels.shape == (1, 6)
    assert {k: setid[k].shape for k in ("trnid", "valid", "tstid")} == \
        {"trnid": (1, 3), "valid": (1, 1), "tstid": (1, 2)}


@pytest.mark.parametrize("split, numbers, classes", [
    ("train", [1, 3, 5], [1, 2, 3]), ("val", [2], [3]), ("test", [4, 6], [1, 2])])
def test_flowers_splits_follow_setid(split, numbers, classes):
    # imagelabels.mat: image_00001 .. image_00006 have classes 1, 3, 2, 1, 3, 2
    data = read_flowers(FIXTURES / "flowers", split)
    assert [p.name for p in data.image_paths] == [f"image_{n:05d}.jpg" for n in numbers]
    assert data.categories == data.classes == ["class_00001", "class_00002", "class_00003"]
    assert data.category_ids.tolist() == [c - 1 for c in classes]
    assert data.labels.tolist() == [[int(k == c) for k in (1, 2, 3)] for c in classes]
    assert [len(c) for c in data.captions] == [10] * len(numbers)
    assert data.boxes is None


def test_flowers_captions_come_from_the_class_folder():
    data = read_flowers(FIXTURES / "flowers", "val")  # image 2, class 3
    expected = (FIXTURES / "flowers" / "text_c10" / "class_00003" / "image_00002.txt")
    assert data.captions[0] == expected.read_text().splitlines()


def test_flowers_errors_name_the_file(tmp_path):
    root = copy_fixture(tmp_path, "flowers")
    savemat(root / "setid.mat", {"trnid": np.array([[1, 7]]), "valid": np.array([[2]]),
                                 "tstid": np.array([[4]])})
    with pytest.raises(DataError, match=r"setid\.mat: trnid has image number 7, outside 1\.\.6"):
        read_flowers(root, "train")
    savemat(root / "setid.mat", {"trnid": np.array([[1]])})
    with pytest.raises(DataError, match=r"setid\.mat: no variable 'valid'"):
        read_flowers(root, "val")
    (root / "imagelabels.mat").write_text("not a MATLAB file")
    with pytest.raises(DataError, match=r"imagelabels\.mat: not a readable MATLAB file"):
        read_flowers(root, "train")


# ---------------------------------------------------------------- concept vocabulary

CONCEPT_CAPTIONS = [
    ["A dog runs.", "The dog's red ball"],
    ["2 dogs", "a Dog, a cat!"],
    ["A cat sits", "cat cat cat cat"],
    ["A dog", "ball ball ball ball", "a red bird"],
]


def test_concept_vocabulary_counts_images_not_words():
    # images per word: dog 3; cat 2 (5 uses); red 2; ball 2 (5 uses in image 4 and one in
    # image 1); dogs, runs, sits, bird 1; "a", "the", "s" are stop words, "2" a number
    assert concept_vocabulary(CONCEPT_CAPTIONS, size=10, min_images=2) == ["dog", "ball", "cat",
                                                                          "red"]
    assert concept_vocabulary(CONCEPT_CAPTIONS, size=2, min_images=2) == ["dog", "ball"]
    assert concept_vocabulary(CONCEPT_CAPTIONS, size=10, min_images=3) == ["dog"]
    assert concept_vocabulary(CONCEPT_CAPTIONS, size=1, min_images=1, stopwords=()) == ["a"]


def test_concept_vocabulary_is_deterministic():
    first = concept_vocabulary(CONCEPT_CAPTIONS, min_images=1)
    assert concept_vocabulary(CONCEPT_CAPTIONS[::-1], min_images=1) == first
    assert concept_vocabulary([caps[::-1] for caps in CONCEPT_CAPTIONS], min_images=1) == first
    # ties at one image each, alphabetical
    assert first == ["dog", "ball", "cat", "red", "bird", "dogs", "runs", "sits"]


def test_concept_labels_mark_any_caption_with_the_word():
    labels = concept_labels(CONCEPT_CAPTIONS, ["dog", "cat", "bird"])
    assert labels.dtype == torch.int8
    assert labels.tolist() == [[1, 0, 0], [1, 1, 0], [0, 1, 0], [1, 0, 1]]
    with pytest.raises(ValueError, match="duplicates"):
        concept_labels(CONCEPT_CAPTIONS, ["dog", "dog"])


# ---------------------------------------------------------------- decoder vocabulary


def test_tokenize_lower_cases_and_strips_punctuation():
    assert tokenize("A dog's ball, in the t-shirt's   Pocket!") == \
        ["a", "dog", "s", "ball", "in", "the", "t", "shirt", "s", "pocket"]


def test_caption_vocabulary_build_and_encode_by_hand():
    captions = [["A dog runs.", "a dog sits"], ["a cat runs"]]
    vocabulary = CaptionVocabulary.build(captions, min_count=2)
    # counts: a 3, dog 2, runs 2 (ties alphabetical), sits 1, cat 1
    assert vocabulary.tokens == ["<pad>", "<start>", "<end>", "<unk>", "a", "dog", "runs"]
    ids = vocabulary.encode(captions, max_length=6)
    assert ids.dtype == torch.int64 and ids.shape == (2, 2, 6)
    assert ids[0].tolist() == [[1, 4, 5, 6, 2, 0], [1, 4, 5, 3, 2, 0]]
    assert ids[1].tolist() == [[1, 4, 3, 6, 2, 0], [0] * 6]  # cat -> <unk>; missing caption
    assert vocabulary.encode([["a dog runs"]], max_length=4).tolist() == [[[1, 4, 5, 2]]]
    assert vocabulary.encode([["a dog"]], max_length=4, captions_per_row=3)[0, 1:].eq(0).all()
    with pytest.raises(ValueError, match="more than captions_per_row=1"):
        vocabulary.encode(captions, max_length=6, captions_per_row=1)


def test_caption_vocabulary_defaults_and_decode():
    assert MIN_WORD_COUNT == 5
    vocabulary = CaptionVocabulary.build([["a dog"] * 4, ["a dog"]])
    assert vocabulary.min_count == 5 and vocabulary.tokens[4:] == ["a", "dog"]
    assert CaptionVocabulary.build([["a dog"] * 4]).tokens[4:] == []  # 4 uses < 5
    assert vocabulary.decode([1, 4, 0, 5, 2, 4, 4]) == "a dog"  # <start>, <pad> dropped; stops
    assert vocabulary.decode(torch.tensor([4, 3, 2])) == "a <unk>"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        vocabulary.decode([7])


def test_caption_vocabulary_round_trip_and_reload(tmp_path):
    train = read_flickr8k(FIXTURES / "flickr8k", "train").captions
    vocabulary = CaptionVocabulary.build(train, min_count=1)
    ids = vocabulary.encode(train, max_length=40)
    for n, captions in enumerate(train):
        for k, caption in enumerate(captions):
            assert vocabulary.decode(ids[n, k]) == " ".join(tokenize(caption))
    path = tmp_path / "vocabulary.json"
    path.write_text(vocabulary.to_json())
    reloaded = CaptionVocabulary.from_json(path.read_text())
    assert reloaded.tokens == vocabulary.tokens and reloaded.min_count == 1
    assert torch.equal(reloaded.encode(train, max_length=40), ids)
    with pytest.raises(ValueError, match="not a caption vocabulary"):
        CaptionVocabulary.from_json('{"tokens": ["a", "b"], "min_count": 5}')


# ---------------------------------------------------------------- captioning metrics

CANDIDATES = ["A dog runs on the grass.", "Two men are playing football!",
              "a girl in a pink dress", "The cat sleeps."]
REFERENCES = [
    ["A brown dog is running on the grass .", "A dog runs across a field.", "dog on grass"],
    ["Two men play soccer in a park .", "Men are playing football outside."],
    ["A little girl in a pink dress climbs stairs .", "A girl wearing pink.",
     "A child in a pink dress ."],
    ["A cat is sleeping on a sofa .", "The cat sleeps on the couch."],
]
# REFERENCES/CANDIDATES as the fallback tokenisation writes them, by hand
FALLBACK_CANDIDATES = ["a dog runs on the grass", "two men are playing football",
                       "a girl in a pink dress", "the cat sleeps"]
FALLBACK_REFERENCES = [
    ["a brown dog is running on the grass", "a dog runs across a field", "dog on grass"],
    ["two men play soccer in a park", "men are playing football outside"],
    ["a little girl in a pink dress climbs stairs", "a girl wearing pink",
     "a child in a pink dress"],
    ["a cat is sleeping on a sofa", "the cat sleeps on the couch"],
]


def direct_scores(gts, res):
    """BLEU-1..4, ROUGE-L and CIDEr-D from pycocoevalcap's scorers on tokenised captions."""
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    scores = {f"BLEU-{n}": b for n, b in enumerate(bleu, 1)}
    scores["ROUGE-L"] = Rouge().compute_score(gts, res)[0]
    scores["CIDEr-D"] = Cider().compute_score(gts, res)[0]
    return scores


@needs_java
def test_caption_metrics_equal_pycocoevalcap():
    result = caption_metrics(CANDIDATES, REFERENCES)  # the one METEOR start of the suite
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": r} for r in refs] for i, refs in enumerate(REFERENCES)})
    res = tokenizer.tokenize({i: [{"caption": c}] for i, c in enumerate(CANDIDATES)})
    assert result["tokenizer"] == "PTBTokenizer" and "tokenizer_note" not in result
    for name, value in direct_scores(gts, res).items():
        assert result[name] == pytest.approx(value, abs=1e-12), name
    assert "METEOR_missing" not in result
    # pycocoevalcap's Meteor object, on the same running jar
    assert result["METEOR"] == pytest.approx(captioning._meteor_scorer().compute_score(gts, res)[0])
    assert 0 < result["METEOR"] < 1 and result["CIDEr-D"] > 0


def test_bleu_1_by_hand():
    # clipped unigram precision: "the" counts min(3, 2) = 2 and "cat" 1 of 4 words; brevity
    # penalty exp(1 - 6 / 4) for a 4-word candidate against a 6-word reference
    result = caption_metrics(["the the the cat"], [["the cat sat on the mat"]], meteor=False)
    assert result["BLEU-1"] == pytest.approx(0.75 * math.exp(1 - 6 / 4), rel=1e-6)
    assert result["METEOR"] is None and result["METEOR_missing"] == "not requested"


def test_caption_metrics_without_java_fall_back_and_say_so(monkeypatch):
    monkeypatch.setattr(captioning.shutil, "which", lambda name: None)
    result = caption_metrics(dict(enumerate(CANDIDATES)), REFERENCES)
    assert result["tokenizer"] == "fallback" and "java not found" in result["tokenizer_note"]
    assert result["METEOR"] is None and result["METEOR_missing"] == "java not found"
    gts = dict(enumerate(FALLBACK_REFERENCES))
    res = {i: [c] for i, c in enumerate(FALLBACK_CANDIDATES)}
    for name, value in direct_scores(gts, res).items():
        assert result[name] == pytest.approx(value, abs=1e-12), name


def test_a_failing_meteor_gives_none_and_releases_its_process(monkeypatch):
    class BrokenMeteor:
        """Fails as pycocoevalcap's Meteor does when its jar dies: holding its lock."""
        lock = threading.Lock()

        def compute_score(self, gts, res):
            self.lock.acquire()
            raise ValueError("could not convert string to float: ''")

    broken = lru_cache(maxsize=1)(BrokenMeteor)
    monkeypatch.setattr(captioning, "_meteor_scorer", broken)
    monkeypatch.setattr(captioning, "_ptb_tokenize", lambda gts, res: (gts, res))
    monkeypatch.setattr(captioning.shutil, "which", lambda name: "/usr/bin/java")
    result = caption_metrics(CANDIDATES, REFERENCES)
    assert result["METEOR"] is None and result["METEOR_missing"].startswith("METEOR failed")
    assert not BrokenMeteor.lock.locked() and broken.cache_info().currsize == 0

    def cannot_start():
        raise FileNotFoundError("java")
    monkeypatch.setattr(captioning, "_meteor_scorer", cannot_start)
    assert caption_metrics(CANDIDATES, REFERENCES)["METEOR_missing"].startswith(
        "METEOR could not start")


def test_caption_metrics_check_their_inputs():
    with pytest.raises(ValueError, match="same ids"):
        caption_metrics({0: "a dog", 5: "a cat"}, REFERENCES[:2], meteor=False)
    with pytest.raises(TypeError, match="must be a list of strings"):
        caption_metrics(["a dog"], ["a dog"], meteor=False)
    with pytest.raises(ValueError, match="no reference caption"):
        caption_metrics(["a dog"], [[]], meteor=False)
    with pytest.raises(ValueError, match="no captions"):
        caption_metrics([], [], meteor=False)
