"""The readers on the real datasets under ANNOTLIB_DATA_ROOT (or ../shared/data); skipped when absent."""

import pytest

from annotlib.data import cached_images, load_split


@pytest.mark.realdata
@pytest.mark.parametrize("dataset, n_train, n_test, n_classes", [
    ("corel-5k", 4500, 499, 260), ("esp-game", 18689, 2081, 268), ("iapr-tc-12", 17665, 1962, 291)])
def test_aia_datasets_have_their_published_sizes(data_root, dataset, n_train, n_test, n_classes):
    train, val, test = (load_split(dataset, s, data_root / {"corel-5k": "Corel-5k", "esp-game": "ESP-Game",
                                                            "iapr-tc-12": "IAPR-TC-12"}[dataset])
                        for s in ("train", "val", "test"))
    assert len(train) + len(val) == n_train and len(val) == round(0.1 * n_train)
    assert len(test) == n_test
    assert train.num_classes == test.num_classes == n_classes and train.classes == test.classes
    assert not set(train.image_paths) & set(val.image_paths)


@pytest.mark.realdata
def test_corel_vocabulary_file_agrees_and_images_decode(data_root, monkeypatch):
    monkeypatch.setenv("ANNOTLIB_DATA_ROOT", str(data_root))
    test = load_split("corel-5k", "test")
    vocabulary = (data_root / "Corel-5k" / "corel5k_vocabulary.txt").read_text().split()
    assert test.classes == vocabulary
    images = cached_images(test.image_paths[:40], 32)
    assert images.shape == (40, 32, 32, 3) and images.std() > 10
    full = load_split("corel-5k", "train")
    assert full.info["images_without_labels"] == 7  # the known unlabelled Corel-5k training images
