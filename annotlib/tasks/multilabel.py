"""Multi-label annotation (P0, P3): logits, an elementwise loss, per-label thresholds and,
for partial labels, label hiding and curriculum rounds."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..data import Split
from ..data.labels import keep_label_proportion, pseudo_label
from ..metrics import annotation_metrics, mean_average_precision, tune_thresholds
from .base import Task

DEFAULT_THRESHOLD = 0.5


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
                      thresholds: float | torch.Tensor) -> dict[str, float]:
    """CP, CR, CF1, OP, OR, OF1 and N+ at ``thresholds``, named ``<metric>@<suffix>``."""
    return {f"{k}@{suffix}": v for k, v in annotation_metrics(scores, targets, thresholds).items()}


class MultiLabelTask(Task):
    """Sigmoid scores over the split's ``classes``.

    ``threshold_split``: where per-label MCC thresholds are tuned after training ("val", or
    "train" as P0 does); a label with fewer than ``min_tuning_positives`` positives there
    keeps the threshold 0.5. ``label_proportion`` (P3): the proportion of every train/val
    image's labels kept known, the rest unknown; test stays complete.
    ``curriculum_rounds`` (P3): extra training rounds, each on pseudo-labels of the previous
    round's confident predictions (score >= ``curriculum_threshold`` positive, <= 1 - it negative).
    """

    name = "multilabel"

    def __init__(self, loss: nn.Module, *, threshold_split: str = "val", min_tuning_positives: int = 1,
                 label_proportion: float = 1.0, curriculum_rounds: int = 0, curriculum_threshold: float = 0.9):
        super().__init__(loss)
        if threshold_split not in ("val", "train"):
            raise ValueError(f"threshold_split must be 'val' or 'train', got {threshold_split!r}")
        if not 0 < label_proportion <= 1:
            raise ValueError(f"label_proportion must be in (0, 1], got {label_proportion}")
        if curriculum_rounds < 0:
            raise ValueError(f"curriculum_rounds must be >= 0, got {curriculum_rounds}")
        if isinstance(min_tuning_positives, bool) or not isinstance(min_tuning_positives, int) \
                or min_tuning_positives < 1:
            raise ValueError(f"min_tuning_positives must be an integer >= 1, got {min_tuning_positives!r}")
        self.calibration_split = threshold_split
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
            for offset, s in enumerate(("train", "val")):
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
        at_half = annotation_metrics(scores, targets)
        return {"loss": self.loss(outputs.float(), targets.float()).item(),
                "mAP": mean_average_precision(scores, targets), "CF1": at_half["CF1"], "OF1": at_half["OF1"]}

    def evaluate(self, outputs, split):
        scores, targets = self.scores(outputs), split.labels.to(outputs.device)
        metrics = {"mAP": mean_average_precision(scores, targets),
                   **annotation_scores(scores, targets, "0.5", DEFAULT_THRESHOLD)}
        if self.thresholds is not None:
            metrics.update(annotation_scores(scores, targets, "tuned", self.thresholds.to(scores.device)))
        return metrics

    def calibrate(self, outputs, split):
        thresholds, untunable = run_thresholds(self.scores(outputs), split.labels.to(outputs.device),
                                               self.min_tuning_positives)
        self.thresholds = thresholds.cpu()
        return {"thresholds_tuned_on": split.split, "labels": len(self.classes),
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
        return [*super().protocol(), f"per-label MCC thresholds tuned on {self.calibration_split}{kept}"]

    def state_dict(self):
        if self.thresholds is None:
            return {}
        return {"thresholds": dict(zip(self.classes, self.thresholds.tolist()))}

    def load_state_dict(self, state):
        if "thresholds" in state:
            stored = state["thresholds"]
            self.thresholds = torch.tensor([stored[name] for name in self.classes], dtype=torch.float64)
