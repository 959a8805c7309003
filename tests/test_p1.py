"""P1 in the library: the label-sequence task's targets, evaluation and options, the CNN-RNN
model on a timm backbone, the method configs and the notebook parameters."""

import json

import pytest
import torch

from annotlib import reproduce
from annotlib.data import Split
from annotlib.losses import create_loss
from annotlib.metrics import annotation_metrics, mean_average_precision
from annotlib.models import create_model
from annotlib.papers import PAPERS, grid
from annotlib.papers.p1 import METHODS, p1_config
from annotlib.tasks import LabelSequenceTask, create_task


def split(labels, name="train"):
    labels = torch.tensor(labels, dtype=torch.int8)
    return Split("toy", name, ["a", "b", "c", "d"], [f"{i}.png" for i in range(len(labels))], labels=labels)


def task(**kwargs):
    return create_task("label_sequence", "cross_entropy", {"ignore_index": -1}, **kwargs)


def test_teacher_forcing_targets_are_the_training_frequency_order_then_end():
    train = split([[1, 1, 0, 1], [0, 1, 0, 1], [0, 1, 0, 0], [0, 0, 1, 1]])  # counts 1, 3, 1, 3
    t = task()
    t.setup({"train": train, "val": train, "test": train}, seed=0)
    # b and d (3 each, b first by index), then a and c; END is 4, padding -1
    assert t.fields(split([[1, 1, 1, 1], [-1, 0, 1, 0]], "val"))["sequence"].tolist() == \
        [[1, 3, 0, 2, 4], [2, 4, -1, -1, -1]]


def test_evaluation_reads_the_decoded_sets_and_the_step_scores():
    test = split([[1, 0, 0, 1], [0, 1, 0, 0], [0, 1, 1, 0]], "test")
    labels = torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 1, 0, 1]])
    scores = torch.tensor([[0.9, 0.1, 0.2, 0.4], [0.1, 0.8, 0.3, 0.2], [0.2, 0.7, 0.5, 0.6]])
    metrics = task(top_k=2).evaluate({"labels": labels, "scores": scores, "sequence": None}, test)
    assert metrics["mAP"] == pytest.approx(mean_average_precision(scores, test.labels))
    assert metrics["OF1@decoded"] == pytest.approx(annotation_metrics(labels, test.labels, 0.5)["OF1"])
    top2 = torch.tensor([[1.0, 0, 0, 1], [0, 1, 1, 0], [0, 1, 0, 1]])  # each image's two best scores
    assert metrics["CF1@top2"] == pytest.approx(annotation_metrics(top2, test.labels, 0.5)["CF1"])


def test_the_task_refuses_a_loss_that_would_count_the_padding():
    with pytest.raises(ValueError, match=r"loss=cross_entropy and loss_kwargs=\{'ignore_index': -1\}"):
        create_task("label_sequence", "cross_entropy")
    with pytest.raises(ValueError, match="beam_size, max_length and top_k must be positive"):
        task(beam_size=0)


def test_the_model_teacher_forces_and_decodes_on_a_timm_backbone():
    model = create_model("cnn_rnn", "resnet10t", num_classes=4, embed_dim=8, hidden_dim=16).eval()
    x = torch.randn(3, 3, 32, 32)
    sequence = torch.tensor([[1, 3, 4], [2, 4, -1], [4, -1, -1]])
    logits = model(x, sequence=sequence)
    assert logits.shape == (3, 3, 5) and logits.dtype == torch.float32
    direct = model.head(model.embed(x), sequence)
    torch.testing.assert_close(logits, direct)
    result = model.decode(x, beam_size=3)
    assert result.labels.shape == (3, 4) and result.scores.shape == (3, 4)
    loss = LabelSequenceTask(create_loss("cross_entropy", ignore_index=-1)).training_step(
        model.train(), {"image": x, "sequence": sequence})
    loss.backward()
    assert model.head.label_embedding.grad is not None and next(model.backbone.parameters()).grad is not None


def test_methods_share_the_backbone_resolution_and_epochs_and_set_their_own_task():
    seq, bce = (p1_config("voc2007", m, epochs=5, image_size=128) for m in ("cnn_rnn", "bce"))
    assert (seq.task, seq.head, seq.loss, seq.backbone_lr) == ("label_sequence", "cnn_rnn", "cross_entropy", 0.0)
    assert (bce.task, bce.head, bce.loss) == ("multilabel", "multilabel", "bce")
    for field in ("backbone", "image_size", "epochs", "lr", "seed"):
        assert getattr(seq, field) == getattr(bce, field)
    with pytest.raises(ValueError, match="loss: set by the P1 method"):
        p1_config("voc2007", "bce", loss="focal")
    with pytest.raises(ValueError, match="unknown P1 method 'rnn'"):
        p1_config("voc2007", "rnn")


def test_grids_and_notebook_parameters_reproduce_every_training(tmp_path):
    (quick,) = grid("quick", papers=["p1"])
    assert quick.path == "p1/synthetic/seed0" and quick.parameters == {"methods": ["cnn_rnn", "bce"]}
    assert grid("paper", papers=["p1"])[0].parameters == {"methods": list(METHODS)}
    paper = grid("paper", papers=["p1"])
    assert [r.path for r in paper] == ["p1/voc2007/seed1", "p1/coco2014/seed1", "p1/nus-wide/seed1"]
    assert paper[1].config.task_kwargs == {"top_k": 3}  # P1's COCO table is top-3
    params = json.loads(json.dumps(reproduce.notebook_parameters(quick, tmp_path, ["tsne"])))
    named = {k: v for k, v in params.items() if k not in ("dataset", "methods", "extra", "output_dir", "projections")}
    rebuilt = [p1_config(params["dataset"], m, **named, **params["extra"]) for m in params["methods"]]
    assert rebuilt == [cfg for _, cfg in PAPERS["p1"].trainings(quick)]
