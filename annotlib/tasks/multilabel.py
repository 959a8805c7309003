"""Multi-label annotation (P0, P3): logits, an elementwise loss, per-label thresholds and,
for partial labels, label hiding and curriculum rounds."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..data import Split
from ..data.labels import keep_label_proportion, pseudo_label
from ..metrics import annotation_metrics, mean_average_precision, tune_thresholds
from ..stats import multilabel_outputs
from .base import Task

DEFAULT_THRESHOLD = 0.5
# Where thresholds may be tuned: "train_augmented" is the train split's images through the
# training augmentation, as P0's code tunes them on its (flipping) training loader.
THRESHOLD_SPLITS = ("val", "train", "train_augmented")
# The validation metrics that may choose the epoch, and whether higher is better.
SELECTION_METRICS = {"mAP": "max", "CF1": "max", "OF1": "max", "loss": "min"}


def run_thresholds(scores: torch.Tensor, targets: torch.Tensor,
                   min_positives: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-label MCC thresholds, and the mask of labels that could not be tuned.

    A label without a positive in the tuning split has MCC 0 at every threshold; the tie
    rule would pick the grid's smallest value and flood the test split with that label, so
    such a label keeps the default threshold instead. A threshold fitted to one or two
    positives is hardly better, so labels with fewer than ``min_positives`` keep it too.
    """
    if min_positives < 1:
        raise ValueError(f"min_positives must be >= 1, got {min_positives}")
    thresholds = tune_thresholds(scores, targets)
    untunable = (targets == 1).sum(0) < min_positives
    thresholds[untunable] = DEFAULT_THRESHOLD
    return thresholds, untunable


def annotation_scores(scores: torch.Tensor, targets: torch.Tensor, suffix: str,
                      thresholds: float | torch.Tensor, strict: bool = False) -> dict[str, float]:
    """CP, CR, CF1, OP, OR, OF1 and N+ at ``thresholds``, named ``<metric>@<suffix>``."""
    return {f"{k}@{suffix}": v for k, v in annotation_metrics(scores, targets, thresholds, strict=strict).items()}


class MultiLabelTask(Task):
    """Sigmoid scores over the split's ``classes``.

    ``threshold_split``: where per-label MCC thresholds are tuned after training ("val";
    "train"; or "train_augmented", the training images through the training flips and crops,
    as P0's code does); a label with fewer than ``min_tuning_positives`` positives there
    keeps the threshold 0.5. ``selection_metric``: the validation metric that picks the
    epoch (mAP; CF1 or OF1 at 0.5; loss). ``strict_threshold``: a label is predicted where
    its score is ``>`` its threshold (P0's evaluation code) rather than ``>=``, at 0.5 and
    tuned alike; tuning itself compares with ``>=``, as P0's does.
    ``label_proportion`` (P3): the proportion of every train/val image's labels kept known,
    the rest unknown; test stays complete.
    ``curriculum_rounds`` (P3): extra training rounds, each on pseudo-labels of the previous
    round's confident predictions (score >= ``curriculum_threshold`` positive, <= 1 - it negative).
    """

    name = "multilabel"

    def __init__(self, loss: nn.Module, *, threshold_split: str = "val", min_tuning_positives: int = 1,
                 selection_metric: str = "mAP", strict_threshold: bool = False,
                 label_proportion: float = 1.0, curriculum_rounds: int = 0, curriculum_threshold: float = 0.9):
        super().__init__(loss)
        if threshold_split not in THRESHOLD_SPLITS:
            raise ValueError(f"threshold_split must be one of {', '.join(THRESHOLD_SPLITS)}, got {threshold_split!r}")
        if selection_metric not in SELECTION_METRICS:
            raise ValueError(f"selection_metric must be one of {', '.join(SELECTION_METRICS)}, "
                             f"got {selection_metric!r}")
        if not isinstance(strict_threshold, bool):
            raise TypeError(f"strict_threshold must be true or false, got {strict_threshold!r}")
        if not 0 < label_proportion <= 1:
            raise ValueError(f"label_proportion must be in (0, 1], got {label_proportion}")
        if curriculum_rounds < 0:
            raise ValueError(f"curriculum_rounds must be >= 0, got {curriculum_rounds}")
        if isinstance(min_tuning_positives, bool) or not isinstance(min_tuning_positives, int) \
                or min_tuning_positives < 1:
            raise ValueError(f"min_tuning_positives must be an integer >= 1, got {min_tuning_positives!r}")
        self.calibration_split = threshold_split
        self.selection = (selection_metric, SELECTION_METRICS[selection_metric])
        self.strict = strict_threshold
        self.min_tuning_positives = min_tuning_positives
        self.label_proportion = label_proportion
        self.rounds = curriculum_rounds + 1
        self.curriculum_threshold = curriculum_threshold
        self.thresholds: torch.Tensor | None = None
        self.classes: list[str] = []

    def setup(self, splits: dict[str, Split], seed: int) -> dict[str, Split]:
        for split in splits.values():
            split.require("labels", self.name)
        self.classes = splits["train"].classes
        if self.label_proportion < 1:  # P3's protocol: train and val lose labels, test stays complete
            splits = dict(splits)
            for offset, s in enumerate(s for s in ("train", "val") if s in splits):  # val_fraction=0: no val
                labels = keep_label_proportion(splits[s].labels, self.label_proportion, seed * 2 + offset)
                splits[s] = dataclasses.replace(splits[s], labels=labels)
        return splits

    def fields(self, split: Split) -> dict[str, torch.Tensor]:
        return {"labels": split.labels}

    def training_step(self, model, batch):
        return self.loss(model(batch["image"]).float(), batch["labels"].float())

    def predict_step(self, model, images):
        return model(images).float()

    @staticmethod
    def scores(logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits.float())

    def validation_metrics(self, outputs, split):
        scores, targets = self.scores(outputs), split.labels.to(outputs.device)
        at_half = annotation_metrics(scores, targets, strict=self.strict)
        return {"loss": self.loss(outputs.float(), targets.float()).item(),
                "mAP": mean_average_precision(scores, targets), "CF1": at_half["CF1"], "OF1": at_half["OF1"]}

    def evaluate(self, outputs, split):
        scores, targets = self.scores(outputs), split.labels.to(outputs.device)
        metrics = {"mAP": mean_average_precision(scores, targets),
                   **annotation_scores(scores, targets, "0.5", DEFAULT_THRESHOLD, self.strict)}
        if self.thresholds is not None:
            metrics.update(annotation_scores(scores, targets, "tuned", self.thresholds.to(scores.device),
                                             self.strict))
        return metrics

    def test_outputs(self, outputs, split):
        scores = self.scores(outputs)
        decisions = {"0.5": (scores, DEFAULT_THRESHOLD)}
        if self.thresholds is not None:
            decisions["tuned"] = (scores, self.thresholds)
        return multilabel_outputs(scores, split.labels, decisions, strict=self.strict)

    def calibrate(self, outputs, split):
        thresholds, untunable = run_thresholds(self.scores(outputs), split.labels.to(outputs.device),
                                               self.min_tuning_positives)
        self.thresholds = thresholds.cpu()
        return {"thresholds_tuned_on": self.calibration_split, "labels": len(self.classes),
                # kept at the default threshold
                "labels_without_tuning_positives": int(untunable.sum()),
                "min_tuning_positives": self.min_tuning_positives}

    def next_round(self, run, round_):
        train = run.splits["train"]
        labels = pseudo_label(self.scores(run.outputs("train")).cpu(), train.labels,
                              threshold=self.curriculum_threshold)
        run.splits["train"] = dataclasses.replace(train, labels=labels)
        return {"round": round_, "pseudo_labels": int((train.labels < 0).sum() - (labels < 0).sum()),
                "unknown_left": int((labels < 0).sum())}

    def protocol(self):
        # The label proportion and curriculum rounds are what a run varies, not how it is judged.
        kept = ("" if self.min_tuning_positives == 1 else
                f" (labels with fewer than {self.min_tuning_positives} positives there keep 0.5)")
        where = ("train through the training augmentation (as P0's code)"
                 if self.calibration_split == "train_augmented" else self.calibration_split)
        rule = ["labels predicted where score > threshold (strict, as P0's code)"] if self.strict else []
        return [*super().protocol(), f"per-label MCC thresholds tuned on {where}{kept}", *rule]

    def state_dict(self):
        if self.thresholds is None:
            return {}
        return {"thresholds": dict(zip(self.classes, self.thresholds.tolist()))}

    def load_state_dict(self, state):
        if "thresholds" in state:
            stored = state["thresholds"]
            self.thresholds = torch.tensor([stored[name] for name in self.classes], dtype=torch.float64)
