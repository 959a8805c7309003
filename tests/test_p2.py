"""P2 in the library: the sentiment model on a timm backbone, the metric-learning task trained
through the runner on the synthetic set's emotions, the loss's emotion tables from a dataset's
category names, the folder datasets through the registry, and the grid."""

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, average_precision_score

from annotlib import reproduce
from annotlib.data import DATASETS, load_split
from annotlib.data.emotions import EMOTIONS, category_polarity, wheel_distance
from annotlib.data.synthetic import generate_synthetic
from annotlib.losses import SentimentLoss, create_loss
from annotlib.models import create_model
from annotlib.papers import PAPERS, grid
from annotlib.papers.p2 import METHODS, p2_config
from annotlib.tasks import create_task
from annotlib.train import load_run, run_annotation

from .conftest import FIXTURES


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return generate_synthetic(tmp_path_factory.mktemp("data") / "synthetic", num_images=240, image_size=32, seed=3)


def test_the_model_returns_unit_svs_and_logits_whose_cams_average_to_them():
    torch.manual_seed(0)
    model = create_model("sentiment", "resnet10t", num_classes=8, stages=[1, 3], reduced_channels=6).eval()
    x = torch.randn(3, 3, 64, 64)
    out = model(x)
    assert out["embedding"].shape == (3, 2 * 6 * 7 // 2) and out["logits"].shape == (3, 8)
    torch.testing.assert_close(out["embedding"].norm(dim=1), torch.ones(3))
    torch.testing.assert_close(model.embed(x), out["embedding"])
    # GAP + linear: the logits are the CAMs' means over the grid
    torch.testing.assert_close(model.cam(x).mean((2, 3)), out["logits"], rtol=1e-4, atol=1e-5)
    sv_classifier = create_model("sentiment", "resnet10t", num_classes=8, classifier_input="sv")
    with pytest.raises(ValueError, match="classifier_input='pooled'"):
        sv_classifier.cam(x)


def test_the_loss_takes_its_emotion_tables_from_the_category_names():
    shuffled = ["fear", "amusement", "anger", "awe", "sadness", "contentment", "disgust", "excitement"]
    loss = create_loss("sentiment")
    loss.set_categories(shuffled)
    assert loss.polarity.tolist() == [0, 1, 0, 1, 0, 1, 0, 1]
    assert torch.equal(loss.wheel_distance, wheel_distance(shuffled).float())
    assert loss.wheel_distance[0, 2].item() == 1 + 3  # fear and anger: three steps apart on the wheel
    birds = ["albatross", "auklet"]
    with pytest.raises(ValueError, match=r"\['albatross', 'auklet'\] are not in positive or negative"):
        create_loss("sentiment").set_categories(birds)
    triplet = create_loss("sentiment", metric="triplet")
    triplet.set_categories(birds)  # the triplet loss needs no polarity
    assert triplet(torch.randn(4, 2), torch.randn(4, 3), torch.tensor([0, 0, 1, 1])) > 0


def test_task_options_are_checked():
    with pytest.raises(ValueError, match="m must be >= 0"):
        create_task("metric_learning", "sentiment", m=-1)
    with pytest.raises(ValueError, match="ks must be positive"):
        create_task("metric_learning", "sentiment", ks=[0])


def test_the_task_trains_on_balanced_batches_and_evaluates_against_scikit_learn(root, tmp_path):
    cfg = p2_config("synthetic", "sentiment", data_root=str(root), image_size=32, epochs=2, batch_size=32,
                    task_kwargs={"m": 4}, device="cpu", progress=False)
    metrics = run_annotation(cfg, tmp_path)
    run = load_run(tmp_path)
    assert isinstance(run.task.loss, SentimentLoss) and run.task.loss.w == 0.5
    for batch in run.batches("train", train=True):
        assert (torch.bincount(batch["category_ids"], minlength=8) >= 4).all()
    outputs = run.outputs("test")
    ids = run.splits["test"].category_ids
    assert metrics["test"]["accuracy"] == pytest.approx(accuracy_score(ids, outputs["logits"].argmax(1)))
    sign = category_polarity(run.splits["test"].categories)
    assert metrics["test"]["polarity_accuracy"] == pytest.approx(
        accuracy_score(sign[ids], sign[outputs["logits"].argmax(1)]))
    e = outputs["embedding"].double()
    distances = torch.cdist(e, e).numpy() ** 2
    ap = [average_precision_score(np.delete(ids.numpy() == ids[q].item(), q), -np.delete(distances[q], q))
          for q in range(len(ids))]
    assert metrics["test"]["mAP"] == pytest.approx(np.mean(ap), abs=1e-4)
    assert set(metrics["test"]) == {"accuracy", "polarity_accuracy", "mAP", "P@5", "P@10", "P@20", "nDCG"}
    assert metrics["selection"]["metric"] == "accuracy" and json.loads((tmp_path / "task.json").read_text()) == \
        {"categories": list(EMOTIONS)}


def test_the_softmax_and_triplet_baselines_change_only_the_loss():
    configs = {m: p2_config("fi", m) for m in METHODS}
    assert configs["softmax"].loss_kwargs == {"w": 0.0} and configs["triplet"].loss_kwargs == {"metric": "triplet"}
    base = configs["sentiment"].to_dict()
    for cfg in configs.values():
        assert {k for k, v in cfg.to_dict().items() if base[k] != v} <= {"loss_kwargs"}
    with pytest.raises(ValueError, match="loss_kwargs: set by the P2 method"):
        p2_config("fi", "softmax", loss_kwargs={"w": 0.3})


def test_affective_folder_sets_are_registered():
    assert {"fi", "iapsa", "artphoto", "abstract"} <= set(DATASETS)
    train = load_split("fi", "train", FIXTURES / "fi")
    assert train.categories == list(EMOTIONS) and train.category_ids is not None
    assert len(load_split("fi", "val", FIXTURES / "fi")) and len(load_split("fi", "test", FIXTURES / "fi"))


def test_grids_and_notebook_parameters_reproduce_every_training(tmp_path):
    (smoke,) = grid("smoke", papers=["p2"])
    (quick,) = grid("quick", papers=["p2"])
    assert smoke.config.epochs == 1 and quick.parameters == {"methods": list(METHODS)}
    paper = grid("paper", papers=["p2"])
    assert [r.path for r in paper][:2] == ["p2/fi/seed1", "p2/fi/seed2"] and len(paper) == 8
    assert paper[0].config.optimizer == "sgd" and paper[0].config.batch_size == 128
    params = json.loads(json.dumps(reproduce.notebook_parameters(quick, tmp_path, ["tsne"])))
    named = {k: v for k, v in params.items() if k not in ("dataset", "methods", "extra", "output_dir", "projections")}
    rebuilt = [p2_config(params["dataset"], m, **named, **params["extra"]) for m in params["methods"]]
    assert rebuilt == [cfg for _, cfg in PAPERS["p2"].trainings(quick)]
