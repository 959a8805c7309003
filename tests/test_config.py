"""TrainConfig: old run folders still load, fingerprints, and every optimisation option acts."""

import pytest
import torch

from annotlib.models import create_model
from annotlib.train import TrainConfig
from annotlib.train.loop import make_optimizer, make_scheduler


def test_a_config_written_before_tasks_and_heads_loads_into_their_kwargs():
    old = {**TrainConfig().to_dict(), "threshold_split": "train", "label_proportion": 0.3,
           "curriculum_rounds": 1, "curriculum_threshold": 0.9, "dropout": 0.0}
    for name in ("task_kwargs", "head_kwargs", "paper", "backbone_lr", "momentum", "nesterov", "scheduler",
                 "step_epochs", "step_gamma"):
        del old[name]
    cfg = TrainConfig.from_dict(old)
    assert cfg.task_kwargs == {"threshold_split": "train", "label_proportion": 0.3, "curriculum_rounds": 1}
    assert cfg.head_kwargs == {"dropout": 0.0}  # P3's; P0's 0.3 is the head's default and is dropped
    # An old P0 run (defaults everywhere) is the same run as its new config.
    p0_old = {k: v for k, v in TrainConfig().to_dict().items() if k not in ("task_kwargs", "head_kwargs")}
    p0_old.update(threshold_split="val", label_proportion=1.0, curriculum_rounds=0, curriculum_threshold=0.9,
                  dropout=0.3)
    assert TrainConfig.from_dict(p0_old).fingerprint() == TrainConfig().fingerprint()


def test_fingerprint_ignores_cosmetic_fields_and_differences_name_the_fields():
    cfg = TrainConfig()
    assert cfg.fingerprint() == cfg.replace(progress=False).fingerprint() != cfg.replace(lr=1.0).fingerprint()
    assert cfg.replace(lr=1.0, epochs=3).differences(cfg) == ["lr: 1.0 vs 0.0001", "epochs: 3 vs 40"]
    assert TrainConfig.from_dict({**cfg.to_dict(), "fingerprint": cfg.fingerprint()}) == cfg


@pytest.mark.parametrize("field, value", [("optimizer", "lamb"), ("scheduler", "poly"), ("normalize", "x")])
def test_an_unknown_choice_is_named_with_what_is_allowed(field, value):
    with pytest.raises(ValueError, match=rf"{field} must be one of .*, got '{value}'"):
        TrainConfig(**{field: value})


def test_kwargs_must_be_dicts():
    with pytest.raises(ValueError, match="loss_kwargs must be a dict of options, got 'abc'"):
        TrainConfig(loss_kwargs="abc")


def test_sgd_takes_momentum_and_nesterov_and_groups_take_the_backbone_lr():
    model = create_model("multilabel", "resnet10t", num_classes=3)
    cfg = TrainConfig(optimizer="sgd", lr=0.1, momentum=0.8, nesterov=True, backbone_lr=0.01, weight_decay=1e-4)
    optimizer = make_optimizer(model, cfg)
    assert isinstance(optimizer, torch.optim.SGD)
    head, backbone = optimizer.param_groups
    assert (head["lr"], backbone["lr"]) == (0.1, 0.01) and head["momentum"] == 0.8 and head["nesterov"]
    assert len(backbone["params"]) == len(list(model.backbone.parameters()))
    assert len(head["params"]) == len(list(model.head.parameters()))


def test_a_zero_backbone_lr_leaves_the_backbone_out_of_the_optimizer():
    model = create_model("multilabel", "resnet10t", num_classes=3, freeze_backbone=True)
    (group,) = make_optimizer(model, TrainConfig(backbone_lr=0.0)).param_groups
    assert len(group["params"]) == 2  # the head's weight and bias


def lrs(cfg, steps_per_epoch=5):
    model = torch.nn.Linear(2, 2)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch)
    out = []
    for _ in range(cfg.epochs * steps_per_epoch):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_each_scheduler_follows_its_formula():
    import math
    assert lrs(TrainConfig(scheduler="none", lr=0.5, epochs=2)) == [0.5] * 10
    step = lrs(TrainConfig(scheduler="step", lr=1.0, epochs=3, step_epochs=1, step_gamma=0.1))
    assert step == pytest.approx([1.0] * 5 + [0.1] * 5 + [0.01] * 5)
    cosine = lrs(TrainConfig(scheduler="cosine", lr=1.0, epochs=2))
    assert cosine == pytest.approx([0.5 * (1 + math.cos(math.pi * t / 10)) for t in range(10)])
    onecycle = lrs(TrainConfig(scheduler="onecycle", lr=1.0, epochs=2, pct_start=0.3))
    assert max(onecycle) == pytest.approx(1.0) and onecycle.index(max(onecycle)) == 2


def test_val_fraction_zero_is_allowed_only_where_nothing_reads_val():
    from annotlib.train.run import build_task
    none = TrainConfig(val_fraction=0.0)
    with pytest.raises(ValueError) as caught:
        build_task(none)
    message = str(caught.value)  # both needs named, in one line
    assert "\n" not in message and message.startswith("val_fraction=0 carves no validation split, but ")
    assert "selection_split='val'" in message and "task_kwargs threshold_split='val'" in message
    on_test = none.replace(selection_split="test")
    with pytest.raises(ValueError, match=r"^val_fraction=0 .* but task_kwargs threshold_split='val' \(the "
                                         r"multilabel task calibrates there\) need one"):
        build_task(on_test)
    for split in ("train", "train_augmented"):  # P0's published protocol, and its unaugmented variant
        assert build_task(on_test.replace(task_kwargs={"threshold_split": split})).calibration_split == split
    with pytest.raises(ValueError, match=r"^val_fraction=0 .* but selection_split='val' need one"):
        build_task(none.replace(task_kwargs={"threshold_split": "train"}))
    # with a carve, either split may select the epoch
    assert build_task(TrainConfig(selection_split="test")).calibration_split == "val"
    with pytest.raises(ValueError, match=r"^selection_split must be one of val, test, got 'train'$"):
        TrainConfig(selection_split="train")
