"""P3 in training: partial train/val labels, and curriculum labelling rounds."""

import pytest
import torch

from annotlib.data import load_split
from annotlib.data.labels import pseudo_label
from annotlib.data.synthetic import generate_synthetic
from annotlib.train import TrainConfig, load_run, prepare_run, run_annotation


def test_pseudo_label_by_threshold_fills_only_confident_unknowns():
    scores = torch.tensor([[0.95, 0.05, 0.5, 0.91], [0.2, 0.99, 0.08, 0.92]])
    targets = torch.tensor([[-1, -1, -1, 0], [-1, 1, -1, -1]], dtype=torch.int8)
    expected = torch.tensor([[1, 0, -1, 0], [-1, 1, 0, 1]], dtype=torch.int8)
    assert torch.equal(pseudo_label(scores, targets, threshold=0.9), expected)


def test_pseudo_label_by_proportion_takes_the_most_confident_unknowns():
    scores = torch.tensor([[0.97, 0.4, 0.02], [0.6, 0.1, 0.3]])
    targets = torch.full((2, 3), -1, dtype=torch.int8)
    # Confidences 0.97 0.6 0.98 / 0.6 0.9 0.7: the top half (3 of 6) are 0.98, 0.97, 0.9.
    expected = torch.tensor([[1, -1, 0], [-1, 0, -1]], dtype=torch.int8)
    assert torch.equal(pseudo_label(scores, targets, proportion=0.5), expected)
    with pytest.raises(ValueError, match="exactly one"):
        pseudo_label(scores, targets)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return generate_synthetic(tmp_path_factory.mktemp("data") / "synthetic", num_images=300, image_size=48, seed=2)


def config(root, **changes):
    return TrainConfig(dataset="synthetic", data_root=str(root), image_size=48, backbone="resnet10t", epochs=1,
                       batch_size=32, lr=3e-3, normalize="dataset", progress=False, seed=0, device="cpu",
                       **changes)


def test_label_proportion_hides_train_and_val_labels_but_not_test(root):
    run = prepare_run(config(root, task_kwargs={"label_proportion": 0.25}))
    classes = run.splits["train"].num_classes
    for split in ("train", "val"):
        known = (run.splits[split].labels >= 0).sum(1)
        assert (known == round(0.25 * classes)).all()
    assert (run.splits["test"].labels >= 0).all()


@pytest.mark.slow
def test_curriculum_round_adds_pseudo_labels_and_trains_again(root, tmp_path):
    task_kwargs = {"label_proportion": 0.3, "curriculum_rounds": 1, "curriculum_threshold": 0.7}
    metrics = run_annotation(config(root, loss="partial_bce", task_kwargs=task_kwargs).replace(epochs=2), tmp_path)
    (round1,) = metrics["rounds"]
    assert round1["pseudo_labels"] > 0 and round1["unknown_left"] >= 0
    assert (tmp_path / "round1" / "best.pt").exists() and metrics["weights"] == "round1/best.pt"
    # The run loads its last round's weights, not round 0's.
    run = load_run(tmp_path)
    final = torch.load(tmp_path / "round1" / "best.pt", weights_only=True)
    assert all(torch.equal(v, final[k]) for k, v in run.model.state_dict().items())
    assert not torch.equal(final["head.1.weight"], torch.load(tmp_path / "best.pt", weights_only=True)["head.1.weight"])
    assert 0 < metrics["test"]["mAP"] <= 1


def test_test_split_can_be_an_official_split_with_val_carved_from_train(root):
    run = prepare_run(config(root, test_split="val"))
    official_val = set(load_split("synthetic", "val", root).image_paths)
    assert set(run.splits["test"].image_paths) == official_val
    assert not official_val & (set(run.splits["train"].image_paths) | set(run.splits["val"].image_paths))
    assert len(run.splits["val"]) == round(0.1 * (len(run.splits["train"]) + len(run.splits["val"])))
