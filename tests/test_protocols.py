"""Two protocols for one paper: ours (epoch and thresholds on a validation carve) and P0's as
published (all of train, epoch chosen on TEST by CF1@0.5, thresholds on augmented train,
strict ``>``): the selection split, the augmented tuning split, the strict rule, P0's grid."""

import csv

import pytest
import torch

from annotlib.data import Split, load_split
from annotlib.data.synthetic import generate_synthetic
from annotlib.losses import BCELoss
from annotlib.metrics import annotation_metrics, per_class_f1
from annotlib.papers import PAPERS, grid
from annotlib.papers.p0 import PROTOCOLS, TUNING_POSITIVES, p0_config, protocol_of
from annotlib.tasks import MultiLabelTask
from annotlib.train import TrainConfig, prepare_run, run_annotation
from annotlib.train.run import selection_protocol


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    return generate_synthetic(tmp_path_factory.mktemp("data") / "synthetic", num_images=200, image_size=32, seed=3)


@pytest.fixture
def tiny(synthetic_root):
    return TrainConfig(dataset="synthetic", data_root=str(synthetic_root), image_size=32, backbone="resnet10t",
                       epochs=3, batch_size=32, lr=3e-3, normalize="dataset", progress=False, seed=0)


# --- the strict rule, against counts worked out by hand ----------------------------------------

def harmonic(a, b):
    return 2 * a * b / (a + b)


def test_strict_and_non_strict_thresholds_against_a_hand_computation():
    # Two labels, four images; label 0 is judged at 0.5 and label 1 at 0.3, so the scores equal
    # to a threshold (0.5 on image 0, 0.3 on images 1 and 3) are predicted by >= and not by >.
    scores = torch.tensor([[0.5, 0.1], [0.9, 0.3], [0.2, 0.8], [0.5, 0.3]])
    targets = torch.tensor([[1, 0], [1, 1], [0, 1], [0, 0]])
    thresholds = torch.tensor([0.5, 0.3])
    # >=: label 0 predicted on images 0, 1, 3 (TP 2 of Pred 3, GT 2); label 1 on 1, 2, 3 (TP 2, Pred 3, GT 2).
    # >:  label 0 predicted on image 1 (TP 1, Pred 1, GT 2); label 1 on image 2 (TP 1, Pred 1, GT 2).
    hand = {False: {"CP": (2 / 3 + 2 / 3) / 2, "CR": 1.0, "OP": 4 / 6, "OR": 4 / 4, "N+": 2},
            True: {"CP": 1.0, "CR": (1 / 2 + 1 / 2) / 2, "OP": 2 / 2, "OR": 2 / 4, "N+": 2}}
    for strict, expected in hand.items():
        got = annotation_metrics(scores, targets, thresholds, strict=strict)
        for name, value in expected.items():
            assert got[name] == pytest.approx(value), (strict, name)
        assert got["CF1"] == pytest.approx(harmonic(expected["CP"], expected["CR"]))
        assert got["OF1"] == pytest.approx(harmonic(expected["OP"], expected["OR"]))
    # per label, 2 TP / (Pred + GT): >= gives 4/5 for both labels, > gives 2/3 for both
    assert per_class_f1(scores, targets, thresholds).tolist() == pytest.approx([4 / 5, 4 / 5])
    assert per_class_f1(scores, targets, thresholds, strict=True).tolist() == pytest.approx([2 / 3, 2 / 3])
    # a scalar threshold applies to every label: > 0.5 drops image 0's and image 3's label 0
    assert annotation_metrics(scores, targets, 0.5, strict=True)["OP"] == pytest.approx(2 / 2)


def test_the_multilabel_task_applies_the_strict_rule_and_its_selection_metric():
    scores = torch.tensor([[0.5, 0.1], [0.9, 0.3], [0.2, 0.8], [0.5, 0.3]])
    targets = torch.tensor([[1, 0], [1, 1], [0, 1], [0, 0]])
    split = Split(dataset="hand", split="test", classes=["x", "y"], image_paths=["a"] * 4, labels=targets)
    logits = torch.logit(scores.double()).float()
    strict, loose = (MultiLabelTask(BCELoss(), strict_threshold=s, selection_metric="CF1") for s in (True, False))
    for task, rule in ((strict, True), (loose, False)):
        # the task scores sigmoid(logit); both rules at 0.5 as annotation_metrics computes them
        expected = annotation_metrics(torch.sigmoid(logits), targets, 0.5, strict=rule)
        assert task.evaluate(logits, split)["CF1@0.5"] == expected["CF1"]
        assert task.validation_metrics(logits, split)["CF1"] == expected["CF1"]
    assert strict.selection == ("CF1", "max") and MultiLabelTask(BCELoss(), selection_metric="loss").selection \
        == ("loss", "min")
    assert any("score > threshold" in note for note in strict.protocol())
    assert not any("score > threshold" in note for note in loose.protocol())
    with pytest.raises(ValueError, match="^selection_metric must be one of mAP, CF1, OF1, loss, got 'AP'$"):
        MultiLabelTask(BCELoss(), selection_metric="AP")
    with pytest.raises(ValueError, match="^threshold_split must be one of val, train, train_augmented"):
        MultiLabelTask(BCELoss(), threshold_split="test")


# --- the augmented training split -------------------------------------------------------------

def test_augmented_train_outputs_are_each_image_once_in_order_through_a_training_flip(tiny):
    # fp32, so that the reference below (outside autocast) agrees to rounding;
    # 160 train images in batches of 48: the last batch is padded
    run = prepare_run(tiny.replace(eval_batch_size=48, bf16=False))
    plain = run.outputs("train")
    augmented = run.outputs("train_augmented")
    assert augmented.shape == plain.shape
    # Independent reference: each image's four flips, unaugmented batches flipped by hand.
    images = torch.cat([batch["image"] for batch in run.batches("train")])
    with torch.inference_mode():
        run.model.eval()
        flips = torch.stack([run.model(images.flip(dims)).float() if dims else run.model(images).float()
                             for dims in ((), (3,), (2,), (2, 3))])
    distance = (flips - augmented[None]).abs().amax(-1)  # 4 x N
    assert bool((distance.amin(0) < 1e-5).all())  # every row is its own image, flipped some way
    drawn = distance.argmin(0)
    assert len(set(drawn.tolist())) == 4  # all four flips occur among 160 images
    # drawn once, reproducibly; without flips it is the plain split
    run._outputs.clear()
    assert torch.equal(run.outputs("train_augmented"), augmented)
    still = prepare_run(tiny.replace(hflip=False, vflip=False))
    assert torch.allclose(still.outputs("train_augmented"), still.outputs("train"), atol=1e-5)


# --- the selection split ------------------------------------------------------------------------

def test_selection_on_test_without_a_validation_carve_picks_the_test_argmax(tiny, tmp_path):
    cfg = tiny.replace(val_fraction=0.0, selection_split="test",
                       task_kwargs={"threshold_split": "train_augmented", "selection_metric": "CF1",
                                    "strict_threshold": True})
    metrics = run_annotation(cfg, tmp_path)
    with open(tmp_path / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert "test_CF1" in rows[0] and not any(key.startswith("val_") for key in rows[0])
    best = max(rows, key=lambda r: float(r["test_CF1"]))  # the first of equals, as fit keeps it
    assert metrics["selection"] == {"split": "test", "metric": "CF1", "mode": "max", "epoch": int(best["epoch"])}
    # trained on all of train: no validation split at all
    full = load_split("synthetic", "train", cfg.data_root, val_fraction=0.0)
    assert len(full) + len(load_split("synthetic", "test", cfg.data_root)) == 200
    assert len(load_split("synthetic", "val", cfg.data_root, val_fraction=0.0)) == 0  # readable, empty
    assert metrics["num_images"] == {"train": len(full), "test": len(load_split("synthetic", "test", cfg.data_root))}
    assert metrics["val"] == {} and metrics["calibration"]["thresholds_tuned_on"] == "train_augmented"
    assert metrics["protocol"][0] == ("epoch chosen on the TEST split by CF1 (highest) (optimistic: the split "
                                      "that is scored also picked the weights)")
    assert "per-label MCC thresholds tuned on train through the training augmentation (as P0's code)" \
        in metrics["protocol"]


def test_selection_protocol_replaces_the_tasks_val_note_or_leads_with_its_own():
    notes = ["epoch chosen on val mAP (highest)", "per-label MCC thresholds tuned on val"]
    assert selection_protocol(notes, "val") == notes
    assert selection_protocol(notes, "test")[0].startswith("epoch chosen on the TEST split by mAP (highest) (")
    assert selection_protocol(["beam 3"], "test")[0].startswith("epoch chosen on the TEST split (optimistic")


# --- P0's two protocols in its grid --------------------------------------------------------------

def test_p0_published_protocol_is_a_named_variant_told_apart_in_rows_and_differences():
    paper = PAPERS["p0"]
    runs = grid("paper", papers=["p0"], datasets=["corel-5k"])
    chosen = [r for r in runs if paper.restrict(r, ["unsymmetric", "published"])]
    assert [r.variant for r in chosen] == ["unsymmetric-published-seed1"]
    assert [r.variant for r in runs if paper.restrict(r, ["unsymmetric"])] == \
        ["unsymmetric-seed1", "unsymmetric-published-seed1"]
    assert len([r for r in runs if paper.restrict(r, ["ours"])]) == 4
    assert not [r for r in grid("quick", papers=["p0"]) if paper.restrict(r, ["published"])]
    published, ours = chosen[0].config, p0_config("corel-5k", "unsymmetric")
    assert published == p0_config("corel-5k", "unsymmetric", protocol="published")
    assert (published.val_fraction, published.selection_split) == (0.0, "test")
    assert protocol_of(published.to_dict()) == "published" and protocol_of(ours.to_dict()) == "ours"

    def metrics_of(cfg, split, weights=None):
        cfg = cfg.replace(weights_file=weights, backbone="mobilenetv2_100", image_size=128, epochs=6)
        return {"loss": cfg.loss, "config": cfg.to_dict(), "runtime": {"bf16_autocast": True},
                "selection": {"split": split, "metric": "CF1" if split == "test" else "mAP"},
                "num_images": {"train": 4050, "test": 499, **({"val": 450} if split == "val" else {})}}

    ours_m, published_m = metrics_of(ours, "val", "/w/mnv2.safetensors"), metrics_of(published, "test")
    assert paper.row(ours_m) == {"loss": "unsymmetric", "selected on": "val"}
    assert paper.row(published_m) == {"loss": "unsymmetric", "selected on": "TEST (as published)"}
    ours_d, published_d = paper.differences(ours_m), paper.differences(published_m)
    for wanted in ("backbone mobilenetv2_100 (paper: tresnet_m)", "image size 128 (paper: 448)",
                   "epochs 6 (paper: 40)", "bf16 autocast (paper: fp32)"):
        assert wanted in ours_d and wanted in published_d
    assert "pretrained weights from a local file (mnv2.safetensors)" in ours_d
    assert "random init (paper: ImageNet-pretrained)" in published_d
    assert "trained on train less a 10% validation carve (450 images) (paper: all of train)" in ours_d
    assert "epoch chosen on val by mAP (paper: on test by CF1@0.5)" in ours_d
    assert "thresholds tuned on val (paper: train, augmented)" in ours_d
    assert "labels predicted at score >= threshold (paper: >)" in ours_d
    assert ours.task_kwargs == {"min_tuning_positives": TUNING_POSITIVES}  # measured, docs/PAPERS.md P0
    assert f"labels with fewer than {TUNING_POSITIVES} tuning positives keep 0.5 (paper: every label tuned)" \
        in ours_d
    assert "epoch chosen on the TEST split by CF1 (as published; optimistic)" in published_d
    assert not any("carve" in d or "thresholds tuned" in d or ">=" in d or "tuning positives" in d
                   for d in published_d)
    voc = metrics_of(ours.replace(test_split="val"), "val")
    assert "the val split evaluated as test (paper: test)" in paper.differences(voc)
    assert set(PROTOCOLS) <= set(paper.methods)
